"""``sf.tl.fit_superres`` / ``sf.tl.superres``: expression on superpixels much finer than the spots."""

from __future__ import annotations

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections
from spafoundation.tl._common import cache_dir, encoder_for, progress


def fit_superres(data, encoder=defaults.ENCODER, *, sections=None, library_key: str = LIBRARY_KEY,
                 genes=defaults.SUPERRES_GENES, step_um: float | None = None, superpixels: dict | None = None):
    """Fit the super-resolution model on sections with counts (the ``superres`` command's training).

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``.
    encoder
        Encoder name, model folder or Encoder (see ``sf.tl.embed``).
    sections
        The sections to train on (default: every section of ``data`` with counts).
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    genes
        ``"hvg:K"``, ``"mean:K"``, a gene-list file or a list of symbols, chosen on the training sections.
    step_um
        Superpixel pitch: one encoder token (default) divided by a whole number, e.g. 8 (um).
    superpixels
        A dict that keeps the training sections' superpixels (section -> ``tasks.superres.Superpixels``): those
        already in it are used, those computed here are added, so that ``sf.tl.superres`` given the same dict maps
        the training sections without computing them again (which, without the cache, costs a second pass of the
        encoder over their tissue).

    Returns
    -------
    SuperresModel
        For ``sf.tl.superres``; ``save(folder)`` / ``SuperresModel.load(folder)``.
    """
    from spafoundation.errors import InputError
    from spafoundation.tasks.superres import check_spots_resolvable
    from spafoundation.tasks.superres import fit_superres as fit
    from spafoundation.tasks.superres import superpixels as section_superpixels

    split = Sections(data, library_key, images=True, counts=True)
    train = {n: a for n, a in split.select(sections).items() if a.n_vars > 0}
    if not train:
        raise InputError(None, "counts", "no section has counts to train super-resolution on")
    enc = encoder_for(encoder)
    check_spots_resolvable(train, enc, step_um)  # before any superpixel is computed
    cached = superpixels if superpixels is not None else {}
    for n, a in train.items():
        if n not in cached:
            cached[n] = section_superpixels(a, enc, step_um=step_um, progress=progress(), cache_dir=cache_dir())
    return fit(train, enc, genes=genes, step_um=step_um, cached={n: cached[n] for n in train})


def superres(data, model=None, *, sections=None, library_key: str = LIBRARY_KEY, image_weight: float | None = None,
             superpixels: dict | None = None, **fit_options):
    """Expression on superpixels over the whole tissue, anchored to the measured spots where there are counts.

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``. Every section mapped needs its H&E image.
    model
        A SuperresModel (``sf.tl.fit_superres``) or the folder of a saved one; None: fitted here on the sections of
        ``data`` with counts (``fit_options``: ``encoder``, ``genes``, ``step_um``).
    sections
        The sections to map (default: all of ``data``).
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    image_weight
        Inside measured spots, how much of the image's pattern to keep around the measurement (0: flat at the
        measurement, 1: the full pattern); default learned on the section's own spots.
    superpixels
        Superpixels already computed, section -> ``tasks.superres.Superpixels`` of the same spots at the model's
        ``step_um`` (the dict given to ``fit_superres``), used instead of computing them again.

    Returns
    -------
    A new AnnData of superpixels per section (a mapping for a mapping; one AnnData, the sections stacked, for an
    AnnData): ``X`` predicted log1p(normalised expression), ``obsm['spatial']`` superpixel centres in the section's
    full-resolution pixels, ``uns['spatial']`` the section's library, ``uns['superres']`` (``step_um``,
    ``anchoring``), ``layers['counts']`` the spots' counts redistributed over their superpixels (sections with
    counts).
    """
    from spafoundation.tasks.superres import SuperresModel, superres_adata
    from spafoundation.tasks.superres import superpixels as section_superpixels

    kept = superpixels if superpixels is not None else {}
    if model is None:
        model = fit_superres(data, library_key=library_key, superpixels=kept, **fit_options)
    elif not isinstance(model, SuperresModel):
        model = SuperresModel.load(model)
    split = Sections(data, library_key, images=True, counts=True)
    parts = {}
    for n, a in split.select(sections).items():
        sp = kept.get(n) or section_superpixels(a, model.encoder, step_um=model.step_um, progress=progress(),
                                                cache_dir=cache_dir())
        parts[n] = superres_adata(a, sp, model.predict(sp), model, image_weight=image_weight)
        warn_if_coarser_than_superpixels(n, a, parts[n].uns["superres"]["step_um"])
    return split.merge(parts)


def warn_if_coarser_than_superpixels(section: str, adata, step_um: float) -> None:
    """One warning line where the section's image holds less detail than two pixels per superpixel side (Space
    Ranger's hires PNG read as the H&E: ~11 um/px for 16 um superpixels): the maps cannot show what it lacks."""
    import logging

    from spafoundation.io.anndata_spec import image_scale, microns_per_pixel

    detail_um = microns_per_pixel(adata) / image_scale(adata)
    if 2 * detail_um > step_um:
        logging.getLogger(__name__).warning(
            "section %s: its H&E holds %.1f um/px of detail, %.1f pixels per %g um superpixel: the maps follow the "
            "measured spots more than the image (the full-resolution H&E, or a larger step_um, gives them detail "
            "to draw on)", section, detail_um, step_um / detail_um, step_um)
