"""Super-resolution benchmark by pseudo-low-resolution: no superpixel ground truth exists, so neighbouring spots
are merged into coarse pseudo-spots (2 x 2 spots on the array grid, square or hexagonal; counts summed, centre at
the mean), every method sees only the coarse pseudo-spots, and predictions at the original spots are compared with
their real counts (per-gene Pearson per section, RMSE, SSIM of the gene maps on the array grid).

Splits (``superres_splits``): leave-one-patient-out first, the headline (the models are fitted on one patient's
coarse pseudo-spots and applied to the other patient's sections, which they never saw), per direction and the mean
of the directions; then within-patient (fitted on the coarse pseudo-spots of all the patient's sections, the test
sections included, never their real spots). Genes: chosen per direction on the training sections' coarse counts,
among the genes the test sections measure.

Methods, all in one run: nearest coarse spot; inverse-distance weighting (image-unaware); colour-aware IDW
(TESLA's idea); the spot-level expression model applied at the fine spots; our superpixel model alone (image
only) and anchored to the coarse measurements, once with the anchoring weights learned on the training sections
and once as ``spafoundation superres`` does it (the default map): weights calibrated on the test section's own
coarse pseudo-spots (``section_anchoring``), the training weights where the section trained the model."""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from spafoundation.eval.metrics import evaluate_expression, pearson_per_gene, ssim_grid
from spafoundation.eval.splits import LOPO, benchmark_splits, section_patient, summarize_splits
from spafoundation.pp.genes import TARGET_SUM, common_genes, expression_matrix, select_genes
from spafoundation.tasks.heads import RidgeHead
from spafoundation.tasks.spot_features import locations_adata, spot_features
from spafoundation.tasks.superres import (
    anchor_to_measurements,
    fit_superres,
    idw,
    section_anchoring,
    spot_members,
    spot_radius_px,
    superpixels,
    values_at_spots,
)

SPOT_RECIPE = {"source": "encoder+colour_texture", "context": 2.0, "neighbours_um": 0.0}
METHODS = ("nearest coarse spot", "inverse-distance weighting", "colour-aware IDW (TESLA-style)",
           "spot-level model at fine spots", "superpixel model, image only",
           "superpixel model + coarse anchors, training weights", "superpixel model + coarse anchors")
OURS = METHODS[-1]  # the default map of `spafoundation superres`: anchoring calibrated on the section itself
METRICS = ("mean_r", "median_r", "rmse", "ssim")
WITHIN = "within-patient"


def coarsen(adata: ad.AnnData, factor: int = 2) -> tuple[np.ndarray, ad.AnnData]:
    """(block id of every spot, the coarse AnnData: counts summed per block, centre at the mean). A block is
    ``factor`` x ``factor`` spots of the array (``lattice``)."""
    row, col = lattice(adata)
    keys = list(zip(row // factor, col // factor, strict=True))
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    block = np.array([uniq[k] for k in keys])
    onehot = sp.csr_matrix((np.ones(len(block)), (block, np.arange(len(block)))), shape=(len(uniq), len(block)))
    X = onehot @ sp.csr_matrix(adata.X)
    xy = (onehot @ np.asarray(adata.obsm["spatial"], float)) / np.asarray(onehot.sum(1))
    coarse = ad.AnnData(X, obs=pd.DataFrame(index=[f"block{i}" for i in range(len(uniq))]), var=adata.var.copy())
    coarse.obsm["spatial"] = xy
    coarse.uns["spatial"] = adata.uns["spatial"]
    return block, coarse


def lattice(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Integer (row, column) of each spot on its array, a hexagonal array's columns halved so that neighbouring
    spots of a row are neighbouring columns. From obs['array_row'/'array_col'] (hexagonal when every row + col has
    the same parity, as on Visium); without them (or with the readers' -1), from the spot centres: pitch = median
    distance to the 4 nearest spots, rows = the y spacing of neighbours off the spot's own row (a pitch on a square
    lattice, 0.87 pitch on a hexagonal one), columns = x over the pitch (half a pitch on a hexagonal lattice, then
    halved). Lattices rotated against the image axes are not recovered."""
    if {"array_row", "array_col"} <= set(adata.obs):
        row = adata.obs["array_row"].to_numpy().astype(np.int64)
        col = adata.obs["array_col"].to_numpy().astype(np.int64)
        if (row >= 0).all() and (col >= 0).all():  # -1: the readers' "no array position" (a manifest without it)
            hexagonal = adata.n_obs > 1 and len(np.unique((row + col) % 2)) == 1
            return row, col // 2 if hexagonal else col
    xy = np.asarray(adata.obsm["spatial"], float)
    if len(xy) < 3:
        return np.zeros(len(xy), np.int64), np.arange(len(xy), dtype=np.int64)
    d, idx = cKDTree(xy).query(xy, k=min(5, len(xy)))
    pitch = float(np.median(d[:, 1:]))
    dy = np.abs(xy[idx[:, 1:], 1] - xy[:, None, 1])
    off_row = dy[(dy > 0.3 * pitch) & (d[:, 1:] < 1.3 * pitch)]
    row_step = float(np.median(off_row)) if off_row.size else pitch
    hexagonal = row_step < 0.95 * pitch
    row = np.round((xy[:, 1] - xy[:, 1].min()) / row_step).astype(np.int64)
    col = np.round((xy[:, 0] - xy[:, 0].min()) / (pitch / 2 if hexagonal else pitch)).astype(np.int64)
    if not hexagonal:
        return row, col
    col += int(np.round(np.mean((row + col) % 2)))  # Visium's convention: row + col even, then halve
    return row, col // 2


def array_image(rows_cols: tuple[np.ndarray, np.ndarray], values: np.ndarray) -> np.ndarray:
    """(genes, rows, cols) maps of spot values on the array (``rows_cols``: ``lattice(adata)``), NaN where there
    is no spot."""
    r, c = rows_cols
    img = np.full((values.shape[1], r.max() - r.min() + 1, c.max() - c.min() + 1), np.nan, dtype=np.float32)
    img[:, r - r.min(), c - c.min()] = values.T
    return img


def superres_splits(sections: dict[str, ad.AnnData]) -> list[tuple[str, str, list[str], list[str]]]:
    """(split kind, direction, test sections, training sections). Leave-one-patient-out first (``benchmark_splits``:
    the superres model is fitted on one patient's coarse pseudo-spots and applied to the other's), then within each
    patient with two or more sections (every patient when there is no leave-one-patient-out split): the model is
    fitted on the coarse pseudo-spots of all its sections, the test sections included (never their real spots)."""
    lopo = [s for s in benchmark_splits(sections) if s[0] == LOPO]
    patients: dict = {}
    for n, a in sections.items():
        patients.setdefault(section_patient(a), []).append(n)
    within = [(WITHIN, f"within {p}" if p is not None else "within the sections", names, names)
              for p, names in patients.items() if len(names) >= 2 or not lopo]
    return lopo + within


def run_superres_benchmark(sections: dict[str, ad.AnnData], encoder, *, genes: str = "hvg:50",
                           step_um: float | None = None, progress: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    """Per (split, direction, method, test section) metrics, the gene list of each direction (chosen on its
    training sections' coarse counts, among the genes its test sections measure) and the run's details: the
    anchoring weights of each direction's model and of each test section, timings."""
    from spafoundation.tasks.expression import resolve_encoder

    enc = resolve_encoder(encoder)
    details: dict = {"directions": {}}
    t0 = time.perf_counter()
    sps = {n: superpixels(a, enc, step_um=step_um, progress=progress) for n, a in sections.items()}
    details["superpixels_s_per_section"] = (time.perf_counter() - t0) / len(sections)
    details["superpixels_per_section"] = float(np.mean([len(s) for s in sps.values()]))
    coarse = {n: coarsen(a) for n, a in sections.items()}
    coarse_xy = {n: np.asarray(c.obsm["spatial"], float) for n, (_, c) in coarse.items()}
    fine_members, coarse_members = {}, {}
    for n, a in sections.items():
        fm = spot_members(sps[n].xy, np.asarray(a.obsm["spatial"], float), spot_radius_px(a))
        fine_members[n] = fm
        coarse_members[n] = np.where(fm >= 0, coarse[n][0][np.maximum(fm, 0)], -1)
    # the spot-level model's features: patches at the coarse centres (training), at the fine ones (test)
    coarse_feats = {n: spot_features(locations_adata(a, coarse_xy[n]), SPOT_RECIPE, enc) for n, a in sections.items()}
    fine_feats: dict = {}
    rows, gene_lists = [], {}
    for split, direction, test, train in superres_splits(sections):
        gene_list = select_genes([coarse[n][1] for n in train], genes, TARGET_SUM,
                                 candidates=common_genes([sections[n] for n in test]))
        gene_lists[direction] = gene_list
        coarse_y = {n: expression_matrix(coarse[n][1], gene_list, TARGET_SUM) for n in dict.fromkeys(train + test)}
        t0 = time.perf_counter()
        model = fit_superres({n: sections[n] for n in train}, enc, genes=gene_list, step_um=step_um, cached=sps,
                             footprints={n: (coarse_members[n], coarse_y[n], coarse_xy[n]) for n in train})
        fit_s = time.perf_counter() - t0
        spot_head = RidgeHead().fit(np.concatenate([coarse_feats[n] for n in train]),
                                    np.concatenate([coarse_y[n] for n in train]),
                                    np.concatenate([[n] * len(coarse_feats[n]) for n in train]))
        anchoring, within = {}, []
        for n in test:
            a, s, c = sections[n], sps[n], coarse[n][1]
            truth = expression_matrix(a, gene_list, TARGET_SUM)
            fine_xy, block = np.asarray(a.obsm["spatial"], float), coarse[n][0]
            colour = s.features[:, -3:]
            fine_colour = values_at_spots(colour, s.xy, fine_members[n], fine_xy)
            coarse_colour = values_at_spots(colour, s.xy, coarse_members[n], coarse_xy[n])
            pred_sp = model.predict(s)
            # what `spafoundation superres` does on a section with counts: weights calibrated on the section's own
            # (here coarse) spots, unless they trained the model or are too few; and, for comparison, the weights
            # the model learned on its training sections
            weights = section_anchoring(s.features, coarse_members[n], coarse_y[n], coarse_xy[n], model,
                                        in_training=n in train)
            anchoring[n] = weights
            anchored = {k: anchor_to_measurements(s.xy, pred_sp, coarse_members[n], coarse_xy[n], coarse_y[n],
                                                  image=w["image"], interpolation=w["interpolation"])
                        for k, w in (("section", weights), ("training", model.anchoring))}
            if n not in fine_feats:
                fine_feats[n] = spot_features(a, SPOT_RECIPE, enc)
            preds = {
                METHODS[0]: idw(coarse_xy[n], coarse_y[n], fine_xy, k=1),
                METHODS[1]: idw(coarse_xy[n], coarse_y[n], fine_xy),
                METHODS[2]: idw(coarse_xy[n], coarse_y[n], fine_xy, src_colour=coarse_colour, dst_colour=fine_colour),
                METHODS[3]: spot_head.predict(fine_feats[n]),
                METHODS[4]: values_at_spots(pred_sp, s.xy, fine_members[n], fine_xy),
                METHODS[5]: values_at_spots(anchored["training"], s.xy, fine_members[n], fine_xy),
                METHODS[6]: values_at_spots(anchored["section"], s.xy, fine_members[n], fine_xy),
            }
            # the ceiling of any image method: how well the image's deviation of a spot from its block follows the
            # truth's
            image_dev = preds[METHODS[4]] - values_at_spots(pred_sp, s.xy, coarse_members[n], coarse_xy[n])[block]
            within.append(float(np.nanmean(pearson_per_gene(truth - coarse_y[n][block], image_dev))))
            grid = lattice(a)
            obs_img = array_image(grid, truth)
            for method, P in preds.items():
                m = evaluate_expression(truth, P)
                rows.append({"split": split, "direction": direction, "method": method, "test": n,
                             "mean_r": m["mean_r"], "median_r": m["median_r"], "rmse": m["rmse"],
                             "ssim": ssim_grid(obs_img, array_image(grid, P)), "n_fine": a.n_obs, "n_coarse": c.n_obs})
        details["directions"][direction] = {"split": split, "train": list(train), "test": list(test),
                                            "n_genes": len(gene_list), "fit_s": fit_s,
                                            "training_anchoring": dict(model.anchoring), "anchoring": anchoring,
                                            "image_within_block_r": float(np.mean(within))}
    return pd.DataFrame(rows), gene_lists, details


def superres_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, direction, method), metrics averaged over the direction's test sections: the
    leave-one-patient-out directions, their mean (each direction weighs the same), then within-patient."""
    summary = summarize_splits(rows.rename(columns={"method": "contender"}), METHODS, METRICS)
    return summary.rename(columns={"contender": "method"})


def superres_markdown(summary: pd.DataFrame) -> str:
    lines = ["| split | direction | method | mean r | median r | RMSE | SSIM | test sections |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        bold = "**" if r["method"] == OURS else ""
        lines.append(f"| {r['split']} | {r['direction']} | {bold}{r['method']}{bold} | {r['mean_r']:.3f} | "
                     f"{r['median_r']:.3f} | {r['rmse']:.3f} | {r['ssim']:.3f} | {int(r['n_test'])} |")
    return "\n".join(lines)
