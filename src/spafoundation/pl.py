"""``sf.pl``: the figures the commands draw, over the section's H&E, for one section at a time.

Each function returns a matplotlib Figure, or writes it to ``path`` (PNG, atomically) and returns the path. For
other plots, every result keeps ``obsm['spatial']`` and ``uns['spatial']``, so ``sc.pl.spatial`` and squidpy's
``sq.pl.spatial_scatter`` draw it directly."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np

from spafoundation._sections import LIBRARY_KEY, Sections

__all__ = ["domains", "expression", "superres", "tumor"]

TUMOR_SCORES = {"tumor_probability": ("tumour probability", "magma", 0.0, 1.0),
                "tumor_marker_score": ("marker score (z)", "magma", None, None)}


def _one(data, section: str | None, library_key: str) -> tuple[str, ad.AnnData]:
    """The section to draw: ``section`` of ``data``, or its only one."""
    parts = Sections(data, library_key).select(section)
    if len(parts) != 1:
        raise ValueError(f"draw one section at a time: section= one of {list(parts)}")
    return next(iter(parts.items()))


def _grid_pitch_px(grid: ad.AnnData) -> float:
    return grid.uns["grid"]["step_um"] / grid.uns["grid"]["mpp"]


def expression(prediction, genes: Sequence[str] | None = None, *, observed=None, section: str | None = None,
               library_key: str = LIBRARY_KEY, path=None):
    """Predicted expression maps (``sf.tl.predict_expression``); with ``observed`` (the section with its counts),
    observed above predicted with each gene's Pearson r.

    Parameters
    ----------
    prediction
        A prediction AnnData (or mapping of them).
    genes
        Genes to draw; default the first four reliable genes, else the first four.
    observed
        The same section with counts in ``X`` (an AnnData or mapping), for observed vs predicted.
    section
        Which section, where ``prediction`` holds several.
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    path
        Write the figure here (PNG) instead of returning it.

    Returns
    -------
    matplotlib Figure, or ``path``.
    """
    from spafoundation.report.spatial_maps import plot_observed_vs_predicted, plot_panels

    name, pred = _one(prediction, section, library_key)
    if genes is None:
        reliable = list(pred.var_names[pred.var["reliable"].to_numpy(bool)]) if "reliable" in pred.var else []
        genes = (reliable or list(pred.var_names))[:4]
    genes = [g for g in genes if g in pred.var_names]
    if observed is not None:
        _, obs = _one(observed, name, library_key)
        target_sum = pred.uns.get("spafoundation_prediction", {}).get("model", {}).get("target_sum", 1e4)
        return plot_observed_vs_predicted(obs, pred, genes, path, target_sum=target_sum)
    panels = [{"adata": pred, "values": np.asarray(pred[:, g].X).ravel(), "title": f"{g} predicted"} for g in genes]
    return plot_panels(panels, path, title=f"{name}: predicted expression (log1p normalised)")


def superres(spots, genes: Sequence[str] | None = None, *, section: str | None = None,
             library_key: str = LIBRARY_KEY, path=None):
    """Super-resolution expression maps (``sf.tl.superres``), each gene's colour range its 1st-99th percentile.

    Parameters
    ----------
    spots
        The superpixel AnnData of ``sf.tl.superres`` (or a mapping of them).
    genes
        Genes to draw; default the first four.
    section, library_key, path
        As in ``expression``.

    Returns
    -------
    matplotlib Figure, or ``path``.
    """
    from spafoundation.report.spatial_maps import plot_panels

    name, spa = _one(spots, section, library_key)
    step_um = spa.uns["superres"]["step_um"]
    d = step_um / next(iter(spa.uns["spatial"].values()))["scalefactors"]["microns_per_pixel"]
    panels = []
    for g in [g for g in (genes or list(spa.var_names[:4])) if g in spa.var_names]:
        v = np.asarray(spa[:, g].X).ravel()
        lo, hi = np.percentile(v, [1, 99])
        panels.append({"adata": spa, "values": v, "title": f"{g}, {step_um:g} um", "vmin": lo, "vmax": hi,
                       "diameter_px": d})
    return plot_panels(panels, path, title=f"{name}: super-resolution expression (log1p normalised)")


def tumor(data, grid: ad.AnnData | None = None, *, section: str | None = None, library_key: str = LIBRARY_KEY,
          path=None):
    """Tumour scores over the H&E (``sf.tl.tumor_score``): each route's score at the spots, then on a tissue
    ``grid`` where given, then the labels where known.

    Parameters
    ----------
    data
        Scored AnnData (or mapping).
    grid
        The section's tissue grid with the same scores (the ``tumor`` command's ``grid.h5ad``).
    section, library_key, path
        As in ``expression``.

    Returns
    -------
    matplotlib Figure, or ``path``.
    """
    from spafoundation.report.spatial_maps import plot_panels

    name, spots = _one(data, section, library_key)
    panels = []
    for col, (title, cmap, vmin, vmax) in TUMOR_SCORES.items():
        if col in spots.obs:
            panels.append({"adata": spots, "values": spots.obs[col].to_numpy(), "title": f"{title}, spots",
                           "cmap": cmap, "vmin": vmin, "vmax": vmax})
        if grid is not None and col in grid.obs:
            panels.append({"adata": grid, "values": grid.obs[col].to_numpy(), "cmap": cmap, "vmin": vmin,
                           "vmax": vmax, "diameter_px": _grid_pitch_px(grid),
                           "title": f"{title}, {grid.uns['grid']['step_um']:g} um grid"})
    if "tumor_label" in spots.obs:
        lab = spots.obs["tumor_label"].map({1.0: "tumour", 0.0: "other"}).fillna("unknown").to_numpy()
        panels.append({"adata": spots, "values": lab, "title": "labels", "categorical": True})
    if not panels:
        raise ValueError("no tumour score in obs: run sf.tl.tumor_score first")
    return plot_panels(panels, path, title=f"{name}: tumour detection")


def domains(data, key: str = "spatial_domain", *, grid: ad.AnnData | None = None, reference: str | None = None,
            section: str | None = None, library_key: str = LIBRARY_KEY, path=None):
    """Spatial domains (``sf.tl.spatial_domains``), on a tissue ``grid`` too where given, beside a reference
    column (pathologist regions) where given.

    Parameters
    ----------
    data
        Clustered AnnData (or mapping).
    key
        Column of ``obs`` with the domains (``key_added``).
    grid
        The section's tissue grid with the same column (the ``cluster`` command's ``grid.h5ad``).
    reference
        Column of ``obs`` to draw beside the domains.
    section, library_key, path
        As in ``expression``.

    Returns
    -------
    matplotlib Figure, or ``path``.
    """
    from spafoundation.report.spatial_maps import plot_panels

    name, spots = _one(data, section, library_key)
    panels = [{"adata": spots, "values": spots.obs[key].to_numpy(), "title": "domains, spots", "categorical": True}]
    if grid is not None:
        panels.append({"adata": grid, "values": grid.obs[key].to_numpy(), "categorical": True,
                       "diameter_px": _grid_pitch_px(grid), "title": f"domains, {grid.uns['grid']['step_um']:g} um grid"})
    if reference and reference in spots.obs:
        panels.append({"adata": spots, "values": spots.obs[reference].astype(str).to_numpy(),
                       "title": f"reference: {reference}", "categorical": True})
    return plot_panels(panels, path, title=f"{name}: spatial domains")


def __dir__() -> list[str]:
    # tab completion shows the figures, as scanpy's sc.pl does, not the imports they use
    return __all__
