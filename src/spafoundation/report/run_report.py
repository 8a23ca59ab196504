"""The report of ``spafoundation run``: reads what each step wrote into the run folder and lays it out as one
self-contained HTML page (report.html). Parts whose step was disabled or wrote nothing are left out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spafoundation.report.html import Block, write_report
from spafoundation.run_folder import RunFolder
from spafoundation.tasks.reliability import LEVELS, RELIABLE_R


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _overview(folder: RunFolder, sections: dict) -> Path:
    """H&E thumbnails with the spots, coloured by log total counts where counts exist."""
    from spafoundation.report.spatial_maps import plot_panels

    panels = []
    for n, a in sections.items():
        total = np.log1p(np.asarray(a.X.sum(axis=1)).ravel()) if a.n_vars else np.zeros(a.n_obs)
        panels.append({"adata": a, "values": total, "cmap": "viridis",
                       "title": f"{n}: log total counts" if a.n_vars else f"{n}: spots (no counts)"})
    return plot_panels(panels, folder.overview, n_cols=min(4, len(panels)),
                       title="sections and spots")


def _expression_block(folder: RunFolder, top_genes: int) -> Block | None:
    import anndata as ad

    from spafoundation.report.spatial_maps import plot_panels

    pred_path = folder.predicted
    if not pred_path.is_file():
        return None
    b = Block("Expression from H&E")
    cfg = _read_json(folder.expression_model_config)
    if cfg:
        tr = cfg.get("training", {})
        target = "library-size normalised counts" if (cfg.get("target") or {}).get("target_sum") else "counts"
        b.paragraphs.append(f"Model trained on {', '.join(tr.get('sections', []))} ({tr.get('n_spots', '?')} "
                            f"spots), {len(cfg.get('genes', []))} genes, head {cfg.get('head')}, features "
                            f"{cfg.get('recipe')}, encoder {(cfg.get('encoder') or {}).get('name')}. "
                            f"Targets: log1p of {target}.")
    pred = ad.read_h5ad(pred_path)
    if "reliable" in pred.var:
        reliable = list(pred.var_names[pred.var["reliable"].to_numpy(bool)])
        level = next((LEVELS[k] for k in LEVELS if f"cv_pearson_{k}" in pred.var), LEVELS["sections"])
        b.paragraphs.append(f"Genes to trust: {len(reliable)} of {pred.n_vars} reach a cross-validated r of "
                            f"{RELIABLE_R} over {level} (var['cv_pearson'], var['reliable'])"
                            f"{': ' + ', '.join(reliable) if reliable else ''}.")
    for n, s in (pred.uns.get("spafoundation_prediction", {}).get("shift") or {}).items():
        limit = s.get("training_limit")
        b.paragraphs.append(f"{n}: image shift {float(s['score']):.2f} from the training sections"
                            + (f" (each training section lay at most {float(limit):.2f} from the others)"
                               if limit is not None else "")
                            + (": OUT OF THE TRAINING RANGE (another stain, scanner or resolution); expect lower "
                               "accuracy than the cross-validated r" if s.get("out_of_range") else "") + ".")
    metrics = _read_json(folder.predicted_metrics) or {}
    if metrics:
        b.paragraphs.append("Held-out sections (never seen in training): Pearson r per gene between predicted and "
                            "measured expression across the spots of the section.")
        b.tables.append([{"section": n, "mean r": m["mean_r"], "median r": m["median_r"],
                          "genes significant (BH 5%)": f"{m['n_significant']}/{m['n_genes']}",
                          "RMSE": m.get("rmse", float("nan"))} for n, m in metrics.items()])
        for n in metrics:
            fig = folder.predicted_maps(n)
            if fig.is_file():
                b.figures.append((fig, f"{n}: observed (top) and predicted (bottom) expression of the best-predicted "
                                       "genes"))
    for n in sorted(set(pred.obs["section"].astype(str))) if "section" in pred.obs else []:
        if n in metrics:
            continue
        sub = pred[pred.obs["section"].astype(str) == n].copy()
        sub.uns["spatial"] = {n: pred.uns["spatial"][n]} if n in pred.uns.get("spatial", {}) else sub.uns["spatial"]
        genes = list(sub.var_names[np.argsort(-np.asarray(sub.X).std(axis=0))[:top_genes]])
        fig = plot_panels([{"adata": sub, "values": np.asarray(sub[:, g].X).ravel(), "title": f"{g} predicted"}
                           for g in genes], folder.predicted_figure(n),
                          title=f"{n}: predicted expression (most variable predicted genes; no counts to compare)")
        b.figures.append((fig, f"{n}: predicted expression"))
    return b


def _task_block(folder: RunFolder, d: Path, title: str, text: str, suffix: str, metric_rows) -> Block | None:
    if not d.is_dir():
        return None
    b = Block(title, paragraphs=[text])
    rows = metric_rows(_read_json(folder.metrics(d)) or {})
    if rows:
        b.tables.append(rows)
    b.figures += [(f, f.stem.replace("_", " ")) for f in folder.figures(d, suffix)]
    return b


def _out_of_sample(m: dict) -> str:
    return {True: "yes", False: "no"}.get(m.get("held_out"), "unknown")


def _tumor_rows(metrics: dict) -> list[dict]:
    return [{"route": route, "section": n, "ROC AUC": m["roc_auc"], "PR AUC": m["pr_auc"],
             "tumour spots": f"{m['n_positive']}/{m['n_spots']}", "out-of-sample": _out_of_sample(m),
             "model trained on": ", ".join(m.get("trained_on") or []) or "unknown"}
            for route, per in metrics.items() for n, m in per.items()]


def _cluster_rows(metrics: dict) -> list[dict]:
    return [{"section": n, "ARI": m["ari"], "NMI": m["nmi"], "spots scored": m["n_spots"]} for n, m in metrics.items()]


def _image_note(adata) -> str:
    """'yes', 'no', or what a downscaled copy costs: the detail the maps of that section rest on."""
    from spafoundation.io.anndata_spec import image_path, image_scale, microns_per_pixel, spatial_meta

    if not image_path(adata):
        return "no"
    scale = image_scale(adata)
    if scale >= 1.0:
        return "yes"
    source = spatial_meta(adata)["metadata"].get("image_source") or "given"
    return (f"downscaled copy ({source}): {microns_per_pixel(adata) / scale:.2f} um/px, {1 / scale:.1f}x coarser "
            "than the full-resolution H&E; its maps are less accurate")


def build_run_report(out: Path, data_path: str, data: dict, cfg: dict, summary: list[dict], *,
                     top_genes: int = 4, notes: Sequence[str] = ()) -> Path:
    """The report of the run folder ``out``; ``data``: the dataset the run read (with its thumbnails, for the
    overview); ``notes``: what the run left out and why (shown under Run)."""
    from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta
    from spafoundation.tasks.tumor import tumor_routes

    folder = RunFolder(out)
    imaged = [n for n, a in data.items() if image_path(a)]
    ds = Block("Dataset", paragraphs=[f"{len(data)} sections, {len(imaged)} with an H&E image."])
    ds.tables.append([{"section": n, "spots": a.n_obs, "genes": a.n_vars, "image": _image_note(a),
                       "um/px": microns_per_pixel(a), "spot um": spatial_meta(a)["metadata"].get("spot_diameter_um")}
                      for n, a in data.items()])
    ds.figures.append((_overview(folder, {n: data[n] for n in imaged}),
                       "H&E of each imaged section with its spots"))
    blocks = [ds]
    expr = _expression_block(folder, top_genes)
    if expr:
        blocks.append(expr)
    sr = _task_block(folder, folder.superres, "Super-resolution maps",
                     "Expression on superpixels of the encoder's patch tokens over the whole tissue (X in "
                     "superres/<section>.h5ad, arrays in <section>_maps.npz). Sections with counts are anchored "
                     "to their spots (inside a spot: its measurement plus the image's and the neighbouring spots' "
                     "deviations, weighted as learned by scale transfer; between spots: the image prediction plus "
                     "interpolated spot residuals); the others come from the image alone.", "superres", lambda _: [])
    if sr:
        blocks.append(sr)
    t = cfg.get("tumor", {})
    route = t.get("route") or tumor_routes(None, bool(t.get("label_column")))[0]
    tumor = _task_block(folder, folder.tumor, "Tumour map",
                        f"Route: {route}. Supervised: logistic regression on spot features trained on the spots of "
                        f"obs['{t.get('label_column')}']; label-free: the predicted expression of tumour marker "
                        "genes (z-scored). A section used in training is scored by a model fitted without it; "
                        "out-of-sample: the section is not among those the model that scored it was fitted on. "
                        f"Grid: {t.get('grid_um')} um tiles over the whole tissue.", "tumor", _tumor_rows)
    if tumor:
        blocks.append(tumor)
    c = cfg.get("clusters", {})
    features = str(c.get("features")).replace("_", "/")  # colour_texture reads colour/texture
    clusters = _task_block(folder, folder.clusters, "Spatial domains",
                           f"{c.get('method')} on {features} features, k = {c.get('n_clusters')}, "
                           f"smoothing weight {c.get('smooth')} over each section's spot graph; domains shared "
                           "across sections.", "clusters", _cluster_rows)
    if clusters:
        blocks.append(clusters)
    blocks.append(Block("Run", paragraphs=["Steps, times and the config (config.yaml in the run folder repeats the "
                                           "run: spafoundation run --config DIR/config.yaml --out DIR).",
                                           *(n[:1].upper() + n[1:] + "." for n in notes)],
                        tables=[summary] if summary else []))
    return write_report(folder.report, "spafoundation report", blocks,
                        subtitle=f"data: {data_path}; encoder: {cfg.get('encoder')}")
