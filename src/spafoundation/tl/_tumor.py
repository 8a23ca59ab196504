"""``sf.tl.tumor_score``: tumour probability (from labels) or marker score (label-free) of every spot;
``sf.tl.tumor_maps``: the same as new AnnData (and over a tissue grid), with the models and metrics."""

from __future__ import annotations

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections, copy_data
from spafoundation.tasks.labels import TUMOR_PATTERN
from spafoundation.tl._common import cache_dir, encoder_for, progress

SCORE_COLUMNS = ("tumor_probability", "tumor_marker_score", "tumor_label")


def tumor_score(data, *, label_column: str | None = None, route: str | None = None, markers=None,
                positive: str = TUMOR_PATTERN, sections=None, train_sections=None, model=None,
                encoder=defaults.ENCODER, stain_norm: str = defaults.STAIN_NORM, library_key: str = LIBRARY_KEY,
                copy: bool = False):
    """Score every spot for tumour (the ``tumor`` command, spots only).

    Supervised (``label_column`` given): a logistic regression on the spot's image features, trained on the spots
    with labels. Label-free (``route="markers"``, the default without labels): a ridge regression from the same
    features to tumour marker genes, trained on sections with counts. A section that is also a training section is
    scored by a model fitted without it.

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``.
    label_column
        Column of ``obs`` with region labels (``"label"``, ``"cluster_annotation"``); tumour labels match
        ``positive``.
    route
        ``"supervised"``, ``"markers"`` or ``"both"``; default supervised with labels, else markers.
    markers
        Marker genes (list or comma-separated); default HER2+ breast cancer markers.
    positive
        Regular expression of the tumour labels (case-insensitive).
    sections, train_sections
        Sections to score and to train on (default: every section with an H&E image).
    model
        A fitted TumorModel (``tasks.tumor.TumorModel.load``) instead of training (supervised route).
    encoder
        Encoder name, model folder or Encoder (see ``sf.tl.embed``).
    stain_norm
        ``"none"``, ``"macenko"`` or ``"reinhard"``: every patch mapped to a stain reference fitted over tissue
        patches of the training sections (``io/stain.py``); a given ``model`` keeps its own.
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    copy
        Work on a copy and return it, instead of writing into ``data``.

    Returns
    -------
    None, or a copy of ``data`` with ``copy=True``. Writes, for the sections scored,

    - ``obs['tumor_probability']`` (supervised) and/or ``obs['tumor_marker_score']`` (markers, z-scored in the
      section);
    - ``obs['tumor_label']``: 1 tumour, 0 other, NaN unknown, where ``label_column`` is given;
    - ``uns['spafoundation_tumor']``: routes, features, encoder, and ``metrics`` (ROC and PR AUC per route where
      labels are known; in an AnnData of several sections, ``uns['spafoundation_tumor'][section]``).
    """
    data = copy_data(data) if copy else data
    split = Sections(data, library_key, images=True, counts=True)
    res = tumor_maps(split.by_name, label_column=label_column, route=route, markers=markers, positive=positive,
                     sections=sections, train_sections=train_sections, model=model, encoder=encoder,
                     stain_norm=stain_norm)
    for column in SCORE_COLUMNS:
        values = {n: s.obs[column].to_numpy() for n, s in res["spots"].items() if column in s.obs}
        if values:
            split.set_obs(column, values)
    split.set_uns("spafoundation_tumor", {
        n: {**s.uns["spafoundation_tumor"], "metrics": {r: m[n] for r, m in res["metrics"].items() if n in m}}
        for n, s in res["spots"].items()})
    return data if copy else None


def tumor_maps(data, *, label_column: str | None = None, route: str | None = None, markers=None,
               positive: str = TUMOR_PATTERN, sections=None, train_sections=None, model=None,
               encoder=defaults.ENCODER, grid_um: float | None = None, stain_norm: str = defaults.STAIN_NORM,
               library_key: str = LIBRARY_KEY) -> dict:
    """Tumour scores as new AnnData, with the models and metrics behind them (the ``tumor`` command's outputs;
    ``tumor_score`` writes the same scores into its input).

    Parameters
    ----------
    data, label_column, route, markers, positive, sections, train_sections, stain_norm, library_key
        As in ``tumor_score``.
    model
        A fitted TumorModel instead of training (supervised route); it scores with its own encoder.
    encoder
        Encoder name, model folder or Encoder (see ``sf.tl.embed``); not built when ``model`` is given.
    grid_um
        Also score a tissue grid of this pitch (microns) in every scored section; None or 0: spots only.

    Returns
    -------
    A dict: ``"spots"`` (section -> a copy of the section's AnnData with the ``obs`` columns and
    ``uns['spafoundation_tumor']`` that ``tumor_score`` writes, without ``metrics``), ``"grid"`` (section -> AnnData
    of the grid's tiles, ``obs['tumor_probability']`` / ``['tumor_marker_score']``; empty without ``grid_um``),
    ``"metrics"`` (route -> section -> ROC and PR AUC, ``held_out``, ``trained_on``), ``"model"`` (the TumorModel
    fitted on every labelled training section, or ``model``; None without the supervised route) and
    ``"marker_model"`` (the ExpressionModel of the marker genes; None without the markers route).
    """
    from spafoundation.errors import InputError
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.tasks.tumor import marker_list, tumor_routes
    from spafoundation.tasks.tumor import tumor_maps as score_sections

    split = Sections(data, library_key, images=True, counts=True)
    targets = {n: a for n, a in split.select(sections).items() if image_path(a)}
    train = {n: a for n, a in split.select(train_sections).items() if image_path(a)}
    if not targets:
        raise InputError(None, "image", "tumour scores need sections with an H&E image")
    genes = marker_list(markers)
    return score_sections(targets, train, routes=tumor_routes(route, labelled=bool(label_column or model)),
                          label_column=label_column, positive=positive, markers=genes, model=model,
                          encoder=encoder_for(encoder) if model is None else None, grid_um=grid_um or None,
                          cache_dir=cache_dir(), progress=progress(), stain_norm=stain_norm)
