"""``spafoundation tumor DATA --out DIR``: a tumour probability per spot and over a tissue grid, with heatmaps.

Routes: ``supervised`` (logistic regression on spot features, trained on the spots of a label column) and
``markers`` (label-free: the predicted expression of tumour marker genes, from an expression model trained on the
sections with counts). Everything is written into a temporary folder that replaces DIR at the end."""

from __future__ import annotations

import json
from pathlib import Path

from spafoundation import defaults
from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_format_option,
    add_precision_option,
    add_stain_option,
    api_settings,
    check_format_available,
    command_dataset,
    imaged_sections,
    non_negative_float,
    parse_sections,
)
from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_dir, check_output_dir


def run(args, data: dict | None = None) -> int:
    import anndata as ad

    from spafoundation import pl, tl
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.tasks.tumor import TumorModel, sample_note

    out = Path(args.out)
    check_output_dir(out)  # before the work: never replace a folder of the user's
    check_format_available(args)
    wanted, train_names = parse_sections(args.sections), parse_sections(args.train_sections)
    # only the sections it uses are read (HER2ST's 36 take 22 s, its 6 imaged 2 s: BENCHMARKS.md): those to score,
    # and those to train on unless a saved model scores them; without --train-sections any imaged section may train,
    # and without --sections every imaged one is scored, so only the imaged sections are read (no step uses the others)
    needed = None
    if wanted and (args.model or train_names):
        needed = list(dict.fromkeys([*wanted, *([] if args.model else train_names)]))
    given, data = data, command_dataset(args, data, needed, imaged_only=needed is None)
    for option, names in (("--sections", wanted), ("--train-sections", train_names)):
        missing = [s for s in names or [] if s not in data]
        if missing and needed is None:  # left out as imageless, or not in the data: read to tell which
            data.update(command_dataset(args, given, missing))  # an unknown one: the reader names it
            missing = [s for s in missing if s not in data]
        if missing:
            raise InputError(args.data, option, f"no section {', '.join(missing)} (have: {', '.join(data)})")
    imaged = {n: a for n, a in data.items() if image_path(a)}
    targets = imaged_sections({n: a for n, a in data.items() if not wanted or n in wanted}, args.data, "to score")
    train = {n: a for n, a in imaged.items() if not train_names or n in train_names}
    model = TumorModel.load(args.model, encoder=args.encoder) if args.model else None
    with api_settings(args):
        res = tl.tumor_maps(data, label_column=args.label_column, route=args.route, markers=args.markers,
                            positive=args.positive, sections=list(targets), train_sections=list(train), model=model,
                            encoder=args.encoder or defaults.ENCODER, grid_um=args.grid_um,
                            stain_norm=args.stain_norm)
    with atomic_dir(out) as tmp:
        spots = list(res["spots"].values())
        merged = spots[0] if len(spots) == 1 else ad.concat(spots, merge="same", uns_merge="unique")
        if args.format == "spatialdata":
            from spafoundation.io.spatialdata_write import write_spatialdata

            write_spatialdata(tmp / "tumor.zarr", res["spots"], grids={"tumor_grid": res["grid"]})
        else:
            merged.write_h5ad(tmp / "spots.h5ad")
        if res["grid"] and args.format == "h5ad":
            grids = list(res["grid"].values())
            (grids[0] if len(grids) == 1 else ad.concat(grids, merge="same", uns_merge="unique")).write_h5ad(
                tmp / "grid.h5ad")
        if res["model"] is not None and args.model is None:
            res["model"].save(tmp / "model")
        if res["marker_model"] is not None:
            res["marker_model"].save(tmp / "marker_expression_model")
        (tmp / "metrics.json").write_text(json.dumps(res["metrics"], indent=2) + "\n")
        if not args.no_figure:
            for n, a in res["spots"].items():
                pl.tumor(a, res["grid"].get(n), path=tmp / f"{n}_tumor.png")
    for route, per in res["metrics"].items():
        for n, m in per.items():
            print(f"{n} {route}: ROC AUC {m['roc_auc']:.3f}, PR AUC {m['pr_auc']:.3f} "
                  f"({m['n_positive']}/{m['n_spots']} tumour spots, {sample_note(m)})")
    n_grid = sum(g.n_obs for g in res["grid"].values())
    print(f"wrote {out}: {merged.n_obs} spots" + (f", {n_grid} grid tiles" if n_grid else ""))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("tumor", help="tumour probability per spot and over the tissue, with heatmaps")
    p.add_argument("data", help="dataset folder, manifest or .h5ad")
    add_data_options(p)
    p.add_argument("--out", required=True, help="output folder (spots.h5ad, grid.h5ad, figures, metrics.json: per route and labelled "
                   "section, ROC and PR AUC, held_out (out-of-sample: not among the sections of the model that "
                   "scored it) and trained_on (those sections))")
    p.add_argument("--sections", help="comma-separated sections to score (default: every imaged section)")
    p.add_argument("--train-sections", help="sections to train on (default: every imaged section with labels "
                   "or counts); a scored training section is scored by a model fitted without it")
    p.add_argument("--route", choices=["supervised", "markers", "both"],
                   help="default: supervised with --label-column or --model, else markers")
    p.add_argument("--label-column", help="obs column of the labels (supervised), e.g. label or cluster_annotation")
    p.add_argument("--positive", default=r"cancer|tumou?r|carcinoma|malignan",
                   help="regular expression of the tumour labels (case-insensitive)")
    p.add_argument("--markers", help="comma-separated tumour marker genes (label-free route; default: HER2+ breast "
                   "cancer markers ERBB2, GRB7, STARD3, PGAP3, KRT8/18/19, EPCAM, CDH1, MUC1, CD24)")
    p.add_argument("--model", help="a tumour model folder written by an earlier run (DIR/model)")
    p.add_argument("--encoder", help="encoder name or model folder (default: spafoundation-default)")
    p.add_argument("--grid-um", type=non_negative_float, default=defaults.TUMOR_GRID_UM,
                   help="pitch of the tissue grid (0: spots only)")
    add_format_option(p, "DIR/tumor.zarr, in place of spots.h5ad and grid.h5ad")
    p.add_argument("--no-figure", action="store_true", help="do not draw heatmaps")
    add_stain_option(p, fitted=True, where="the reference is fitted over tissue patches of the training sections and "
                     "saved with the model (--model: the model's own)")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
