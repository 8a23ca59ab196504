"""Spot maps drawn on the section's H&E thumbnail: observed vs predicted expression, labels, clusters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np

from spafoundation.io.anndata_spec import library_id, spot_diameter_fullres
from spafoundation.utils.atomic import atomic_path


def _figure(n_rows: int, n_cols: int, panel: float = 3.2, to_file: bool = True):
    """``to_file``: the figure goes to a file, so no display is needed (Agg); otherwise the session's own backend
    (a notebook's inline one) shows it."""
    import matplotlib

    if to_file:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows), squeeze=False)
    return plt, fig, axes


def draw_spots(ax, adata: ad.AnnData, values: np.ndarray, *, title: str = "", cmap: str = "viridis",
               vmin=None, vmax=None, categorical: bool = False, diameter_px: float | None = None):
    """Spots of ``adata`` coloured by ``values`` over its hires thumbnail (full-res coordinates scaled down).
    ``diameter_px``: marker size in full-resolution px (default the section's spot diameter; a grid's pitch)."""
    lib = library_id(adata)
    meta = adata.uns.get("spatial", {}).get(lib, {})
    scalef = float(meta.get("scalefactors", {}).get("tissue_hires_scalef", 1.0))
    hires = meta.get("images", {}).get("hires")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64) * scalef
    if hires is not None:
        ax.imshow(hires)
    try:
        size_px = (diameter_px or spot_diameter_fullres(adata)) * scalef
    except Exception:  # spot size unknown: a readable default
        size_px = 6.0
    # scatter sizes are in points^2; convert the spot diameter in data pixels after the axes are laid out
    ax.set_xlim(xy[:, 0].min() - size_px, xy[:, 0].max() + size_px)
    ax.set_ylim(xy[:, 1].max() + size_px, xy[:, 1].min() - size_px)
    ax.set_aspect("equal")
    bbox = ax.get_window_extent()
    span = max(1.0, float(np.ptp(xy[:, 0])) + 2 * size_px)
    points_per_px = bbox.width / ax.figure.dpi * 72 / span
    s = max(1.0, (size_px * points_per_px) ** 2)
    if categorical:
        cats = np.asarray(values).astype(str)
        uniq = sorted(set(cats))
        import matplotlib

        # tab10 while it suffices: tab20 puts near-identical shades side by side
        palette = matplotlib.colormaps["tab10" if len(uniq) <= 10 else "tab20"]
        for i, c in enumerate(uniq):
            m = cats == c
            ax.scatter(xy[m, 0], xy[m, 1], s=s, color=palette(i % palette.N), label=c, linewidths=0)
        ax.legend(fontsize=6, markerscale=0.6, loc="lower right", frameon=False)
        sc = None
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=s, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return sc


def plot_observed_vs_predicted(section: ad.AnnData, prediction: ad.AnnData, genes: Sequence[str], path,
                               *, target_sum=1e4):
    """One column per gene: observed (normalised as the model's targets) above predicted, Pearson r in the
    title. Each map has its own colour range (1st-99th percentile): a regression toward the mean compresses
    predictions, and what a reader compares is the pattern. Written atomically as PNG (``path=None``: the figure
    is returned)."""
    from spafoundation.eval.metrics import pearson_per_gene
    from spafoundation.pp.genes import expression_matrix

    genes = [g for g in genes if g in prediction.var_names]
    if not genes:
        raise ValueError("none of the requested genes is predicted")
    observed = expression_matrix(section, genes, target_sum)
    predicted = np.asarray(prediction[:, genes].X, dtype=np.float64)
    r = pearson_per_gene(observed, predicted)
    plt, fig, axes = _figure(2, len(genes), to_file=path is not None)
    for j, g in enumerate(genes):
        for row, (adata, vals, title) in enumerate([(section, observed[:, j], f"{g} observed"),
                                                    (prediction, predicted[:, j], f"{g} predicted (r = {r[j]:.2f})")]):
            lo, hi = np.percentile(vals, [1, 99])
            sc = draw_spots(axes[row, j], adata, vals, title=title, vmin=lo, vmax=hi)
            fig.colorbar(sc, ax=axes[row, j], shrink=0.7)
    fig.suptitle(f"{library_id(section)}: observed vs predicted, log1p normalised expression", fontsize=10)
    return save_figure(plt, fig, path) if path is not None else fig


def plot_panels(panels: Sequence[dict], path, *, title: str = "", n_cols: int | None = None):
    """Maps side by side, one per dict of ``draw_spots`` arguments (``adata``, ``values``, ``title``, and any of
    ``categorical``, ``cmap``, ``vmin``, ``vmax``, ``diameter_px``); continuous maps get a colour bar. Written
    atomically to ``path``, or returned as a matplotlib Figure for ``path=None``."""
    n_cols = n_cols or len(panels)
    n_rows = -(-len(panels) // n_cols)
    plt, fig, axes = _figure(n_rows, n_cols, to_file=path is not None)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(axes.ravel(), panels, strict=False):
        sc = draw_spots(ax, **p)
        if sc is not None:
            fig.colorbar(sc, ax=ax, shrink=0.7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(plt, fig, path) if path is not None else fig


def save_figure(plt, fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    plt.close(fig)
    return path
