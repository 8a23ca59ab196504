"""``sf.tl.fit_expression`` / ``sf.tl.predict_expression``: gene expression from the H&E alone."""

from __future__ import annotations

from collections.abc import Mapping

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections
from spafoundation.pp.genes import TARGET_SUM
from spafoundation.tl._common import cache_dir, progress


def fit_expression(data, encoder=defaults.ENCODER, *, sections=None, library_key: str = LIBRARY_KEY,
                   genes=defaults.EXPRESSION_GENES, head: str = defaults.EXPRESSION_HEAD,
                   target_sum: float | None = TARGET_SUM, head_params: dict | None = None, reference=None,
                   **feature_options):
    """Fit a model of spot expression from H&E on sections with counts (the ``fit-expression`` command).

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``. Training sections need counts in ``X`` and an H&E image.
    encoder
        Encoder name, model folder or Encoder (see ``sf.tl.embed``); a name is built on ``sf.settings.device``, only
        when the features use an encoder.
    sections
        The sections to train on (default: all of ``data``).
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    genes
        ``"hvg:K"`` (highly variable, Seurat rule, chosen on the training sections), ``"mean:K"``, a gene-list file
        or a list of gene symbols (``sf.pp.select_genes``).
    head
        ``"ridge-ensemble"`` (default: the mean of a ridge on every feature block and one on the spot patch's
        colour/texture and nuclei alone, plus two shared expression programs; ``head_params={"programs": 0}`` turns
        them off), ``"ridge"``, ``"mlp"``, ``"finetune"`` (the whole encoder; meant for a GPU) or ``"mean"``.
    target_sum
        Targets are log1p(counts / library size * target_sum) (``sf.pp.normalize``); None: log1p of raw counts.
    head_params
        Hyper-parameters of the head (``epochs``, ``lr``, ...).
    reference
        Sections with counts, images not needed (one AnnData told apart by ``obs[library_key]``, or a mapping),
        whose genes' co-variation also shapes the default head's expression programs: e.g. the cohort's other
        patients or a public atlas of the tissue. Most useful when the training sections are few
        (tasks/expression_reference.py); ``fit-expression --reference``.
    **feature_options
        ``source``, ``tta``, ``context``, ``neighbours_um``, ``standardize``, ``stain_norm`` (``"none"``,
        ``"macenko"`` or ``"reinhard"``: patches normalised to a reference fitted on the training sections and
        saved in the model; tasks/spot_features.py); the defaults are the benchmarked pipeline's.

    Returns
    -------
    ExpressionModel
        ``predict`` / ``sf.tl.predict_expression``, ``save(folder)`` / ``ExpressionModel.load(folder)``; its repr
        says what it was fitted on, ``reliable()`` which genes to trust.
    """
    from spafoundation._settings import settings
    from spafoundation.tasks.expression import fit_expression as fit

    train = Sections(data, library_key, images=True, counts=True).select(sections)
    if reference is not None:
        reference = Sections(reference, library_key, counts=True).select(None)
    # a name is built by the task code, on settings.device, only if the features use it (at fp32 for "finetune")
    return fit(list(train.values()), encoder, genes=genes, head=head, target_sum=target_sum, cache_dir=cache_dir(),
               progress=progress(), head_params=head_params, device=settings.device, reference=reference,
               **feature_options)


def predict_expression(data, model, *, sections=None, library_key: str = LIBRARY_KEY):
    """Predicted expression of every spot from its H&E patch and position (counts are not needed).

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``. Every section predicted needs its H&E image.
    model
        An ExpressionModel (``sf.tl.fit_expression``), or the folder of a saved one.
    sections
        The sections to predict (default: all of ``data``).
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.

    Returns
    -------
    A new AnnData per section (a mapping for a mapping; one AnnData, the sections stacked, for an AnnData) with the
    same ``obs``, ``obsm['spatial']`` and ``uns['spatial']`` as the input, so ``sc.pl.spatial`` draws it:

    - ``X``: predicted log1p(normalised expression), float32, one column per model gene;
    - ``var['cv_pearson']``, ``var['reliable']``: each gene's cross-validated r (over held-out training patients,
      else sections, else stripes of the one training section) and whether it reaches 0.1;
    - ``uns['spafoundation_prediction']``: the model's description and each section's image-shift report
      (``['shift'][section]``).
    """
    from spafoundation.tasks.expression import ExpressionModel, merge_predictions

    if not isinstance(model, ExpressionModel):
        model = ExpressionModel.load(model)
    split = Sections(data, library_key, images=True)
    preds = {n: model.predict(a, cache_dir=cache_dir(), progress=progress())
             for n, a in split.select(sections).items()}
    return preds if isinstance(data, Mapping) else merge_predictions(preds)
