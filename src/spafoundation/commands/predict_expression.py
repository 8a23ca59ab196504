"""``spafoundation predict-expression MODEL_DIR DATA --out pred.h5ad``: expression from H&E alone.

Counts are not needed. Where a section does have counts for the model's genes, the metrics of the prediction and a
figure of observed vs predicted maps are written beside the output."""

from __future__ import annotations

import json
from pathlib import Path

from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_format_option,
    add_precision_option,
    api_settings,
    check_format_available,
    command_dataset,
    imaged_sections,
    parse_sections,
)
from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_path, check_output_file, write_h5ad


def _evaluate(model, adata, pred) -> dict | None:
    import numpy as np

    from spafoundation.eval.metrics import evaluate_expression
    from spafoundation.pp.genes import expression_matrix

    # a section measured on another panel is scored on the model's genes it has (m['n_genes'] says how many)
    shared = [i for i, g in enumerate(model.genes) if g in adata.var_names]
    if adata.n_vars == 0 or not shared:
        return None
    genes = [model.genes[i] for i in shared]
    obs = expression_matrix(adata, genes, model.target_sum)
    m = evaluate_expression(obs, np.asarray(pred.X)[:, shared])
    m["per_gene_r"] = dict(zip(genes, [None if not np.isfinite(v) else float(v) for v in m.pop("r")], strict=True))
    return m


def run(args, data: dict | None = None) -> int:
    from spafoundation import tl
    from spafoundation.tasks.expression import ExpressionModel, merge_predictions
    from spafoundation.tasks.spot_features import recipe_stain

    out = Path(args.out)
    check_output_file(out, ".zarr" if args.format == "spatialdata" else ".h5ad")
    check_format_available(args)
    model = ExpressionModel.load(args.model, encoder=args.encoder)
    figure_genes = parse_sections(args.genes)  # the same comma-separated list, spaces stripped
    unknown = [g for g in figure_genes or [] if g not in model.genes]
    if unknown:  # checked before the work, not when drawing the figure after it
        raise InputError(args.model, "--genes", f"not predicted by this model: {', '.join(unknown[:10])} (it predicts "
                         f"{', '.join(model.genes[:10])}{', ...' if len(model.genes) > 10 else ''})")
    data = command_dataset(args, data, parse_sections(args.sections), imaged_only=True)
    imaged = imaged_sections(data, args.data, "to predict from")
    metrics = {}
    if (line := model.reliability_summary()) is not None:
        print(line)
    if (stain := recipe_stain(model.recipe)) is not None:  # the model's own: the head learnt on normalised patches
        print(f"stain normalisation: {stain.method}, to the model's reference ({stain.source})")
    with api_settings(args):
        preds = tl.predict_expression(imaged, model)
    for name, adata in imaged.items():
        shift = preds[name].uns["spafoundation_prediction"].get("shift", {}).get(name)
        if shift is not None:
            limit = "" if shift["training_limit"] is None else f" (training sections: up to {shift['training_limit']:.2f})"
            print(f"{name}: image shift {shift['score']:.2f}{limit}"
                  + ("; OUT OF THE TRAINING RANGE: another stain, scanner or resolution" if shift["out_of_range"] else ""))
        m = _evaluate(model, adata, preds[name])
        if m is not None:
            metrics[name] = m
            print(f"{name}: {adata.n_obs} spots; mean per-gene r {m['mean_r']:.3f}, median {m['median_r']:.3f}, "
                  f"{m['n_significant']}/{m['n_genes']} genes significant (BH 5%)"
                  + (f"; scored on the {m['n_genes']} of {len(model.genes)} model genes it has"
                     if m["n_genes"] < len(model.genes) else ""))
        else:
            print(f"{name}: {adata.n_obs} spots predicted (no counts to compare with)")
    merged = merge_predictions(preds)
    if args.format == "spatialdata":
        from spafoundation.io.spatialdata_write import write_spatialdata

        write_spatialdata(out, {n: imaged[n] for n in preds}, expression=preds)
    else:
        write_h5ad(merged, out)
    print(f"wrote {out}: {merged.n_obs} spots x {merged.n_vars} genes")
    if metrics:
        with atomic_path(out.with_suffix(".metrics.json")) as tmp:
            Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n")
        if not args.no_figure:
            from spafoundation.report.spatial_maps import plot_observed_vs_predicted

            for name, m in metrics.items():
                genes = figure_genes or _best_genes(m["per_gene_r"], 4)
                fig = out.with_name(f"{out.stem}_{name}_maps.png")
                plot_observed_vs_predicted(imaged[name], preds[name], genes, fig, target_sum=model.target_sum)
                print(f"wrote {fig}")
    return 0


def _best_genes(per_gene_r: dict, k: int) -> list[str]:
    ranked = sorted((v, g) for g, v in per_gene_r.items() if v is not None)
    return [g for _, g in ranked[::-1][:k]]


def register(subparsers) -> None:
    p = subparsers.add_parser("predict-expression", help="predict spot gene expression from H&E with a fitted model")
    p.add_argument("model", help="model folder written by fit-expression")
    p.add_argument("data", help="dataset folder, manifest (image + spot coordinates) or .h5ad")
    add_data_options(p)
    p.add_argument("--sections", help="comma-separated sections (default: every imaged section)")
    p.add_argument("--out", required=True, help="predicted expression, .h5ad (.zarr with --format spatialdata)")
    add_format_option(p, "the --out .zarr")
    p.add_argument("--encoder", help="override the encoder the model refers to (name or model folder)")
    p.add_argument("--genes", help="comma-separated genes for the observed vs predicted figure "
                                   "(default: the 4 best predicted)")
    p.add_argument("--no-figure", action="store_true", help="do not draw observed vs predicted maps")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
