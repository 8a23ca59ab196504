"""``sf.tl.tumor_score``: tumour probability (from labels) or marker score (label-free) of every spot."""

from __future__ import annotations

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections, copy_data
from spafoundation.tasks.labels import TUMOR_PATTERN
from spafoundation.tl._common import cache_dir, encoder_for, progress

SCORE_COLUMNS = ("tumor_probability", "tumor_marker_score", "tumor_label")


def tumor_score(data, *, label_column: str | None = None, route: str | None = None, markers=None,
                positive: str = TUMOR_PATTERN, sections=None, train_sections=None, model=None,
                encoder=defaults.ENCODER, library_key: str = LIBRARY_KEY, copy: bool = False):
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
    from spafoundation.errors import InputError
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.tasks.tumor import marker_list, tumor_maps, tumor_routes

    data = copy_data(data) if copy else data
    split = Sections(data, library_key)
    targets = {n: a for n, a in split.select(sections).items() if image_path(a)}
    train = {n: a for n, a in split.select(train_sections).items() if image_path(a)}
    if not targets or not train:
        raise InputError(None, "image", "tumour scores need sections with an H&E image")
    res = tumor_maps(targets, train, routes=tumor_routes(route, labelled=bool(label_column or model)),
                     label_column=label_column, positive=positive, markers=marker_list(markers), model=model,
                     encoder=encoder_for(encoder), cache_dir=cache_dir(), progress=progress())
    for column in SCORE_COLUMNS:
        values = {n: s.obs[column].to_numpy() for n, s in res["spots"].items() if column in s.obs}
        if values:
            split.set_obs(column, values)
    split.set_uns("spafoundation_tumor", {
        n: {**s.uns["spafoundation_tumor"], "metrics": {r: m[n] for r, m in res["metrics"].items() if n in m}}
        for n, s in res["spots"].items()})
    return data if copy else None
