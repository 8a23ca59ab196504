"""``spafoundation cluster DATA --out DIR``: spatial domains from the spots' colour/texture, image features, predicted
or observed expression.

Spot features are smoothed over each section's neighbour graph (stored as squidpy does), then all sections are
clustered together (k-means or Leiden); with a reference column, ARI and NMI are reported per section."""

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
    positive_float,
    positive_int,
    unit_interval,
)
from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_dir, check_output_dir

KEY = "spatial_domain"


def run(args, data: dict | None = None) -> int:
    import anndata as ad

    from spafoundation import pl, tl
    from spafoundation.eval.metrics import clustering_agreement
    from spafoundation.io.anndata_spec import microns_per_pixel
    from spafoundation.io.patches import tissue_grid
    from spafoundation.tasks.expression import ExpressionModel
    from spafoundation.tasks.spot_features import locations_adata

    out = Path(args.out)
    check_output_dir(out)  # before the work: never replace a folder of the user's
    check_format_available(args)
    wanted = parse_sections(args.sections)
    # observed expression needs no image: without thumbnails, whether read here or handed over by run
    data = command_dataset(args, data, wanted, with_images=args.features != "expression")
    usable = data if args.features == "expression" else imaged_sections(data, args.data, "to cluster from")
    sections = {n: a.copy() for n, a in usable.items()}
    if args.reference_column and not any(args.reference_column in a.obs for a in sections.values()):
        raise InputError(args.data, f"obs['{args.reference_column}']", "no selected section has this column")
    grids = {}
    if args.grid_um:
        for n, a in sections.items():
            grids[n] = locations_adata(a, tissue_grid(a, args.grid_um))
            grids[n].uns["grid"] = {"step_um": args.grid_um, "mpp": microns_per_pixel(a), "section": n}
    model = ExpressionModel.load(args.expression_model, encoder=args.encoder) if args.expression_model else None
    with api_settings(args):
        tl.spatial_domains(sections, features=args.features, encoder=args.encoder or defaults.ENCODER,
                           expression_model=model, genes=args.genes, method=args.method, n_clusters=args.n_clusters,
                           resolution=args.resolution, smooth=args.smooth, radius_um=args.radius_um, seed=args.seed,
                           per_section=args.per_section, locations=grids, key_added=KEY, stain_norm=args.stain_norm)
    metrics = {}
    for n, a in sections.items():  # the command's record of its own options, over sf.tl's
        a.uns["spafoundation_clustering"] = {k: getattr(args, k) for k in (
            "features", "method", "n_clusters", "resolution", "smooth", "radius_um", "seed", "per_section")}
        if args.reference_column and args.reference_column in a.obs:
            metrics[n] = clustering_agreement(a.obs[args.reference_column], a.obs[KEY])
            print(f"{n}: ARI {metrics[n]['ari']:.3f}, NMI {metrics[n]['nmi']:.3f} against "
                  f"{args.reference_column} ({metrics[n]['n_spots']} spots)")
    with atomic_dir(out) as tmp:
        spots = list(sections.values())
        if args.format == "spatialdata":
            from spafoundation.io.spatialdata_write import write_spatialdata

            write_spatialdata(tmp / "clusters.zarr", sections, grids={"domain_grid": grids})
        else:
            (spots[0] if len(spots) == 1 else ad.concat(spots, merge="same", uns_merge="unique")).write_h5ad(
                tmp / "spots.h5ad")
        if grids and args.format == "h5ad":
            g = list(grids.values())
            (g[0] if len(g) == 1 else ad.concat(g, merge="same", uns_merge="unique")).write_h5ad(tmp / "grid.h5ad")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if not args.no_figure:
            for n, a in sections.items():
                pl.domains(a, KEY, grid=grids.get(n), reference=args.reference_column, path=tmp / f"{n}_clusters.png")
    print(f"wrote {out}: {sum(a.n_obs for a in sections.values())} spots in "
          f"{len(next(iter(sections.values())).obs[KEY].cat.categories)} domains")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("cluster", help="spatial domains from image features or (predicted) expression")
    p.add_argument("data", help="dataset folder, manifest or .h5ad")
    add_data_options(p)
    p.add_argument("--out", required=True, help="output folder (spots.h5ad, grid.h5ad, metrics.json, figures)")
    p.add_argument("--sections", help="comma-separated sections (default: all; image features need an image)")
    p.add_argument("--features", choices=defaults.DOMAIN_FEATURE_KINDS, default=defaults.DOMAIN_FEATURES,
                   help="cluster on the spots' colour/texture (z-scored per section), image features (the same and "
                        "the encoder's embeddings), observed expression, or expression predicted by "
                        f"--expression-model (default {defaults.DOMAIN_FEATURES}: it beat image features in the "
                        "clustering benchmark, BENCHMARKS.md)")
    p.add_argument("--expression-model", help="model folder from fit-expression (for --features predicted)")
    p.add_argument("--encoder", help="encoder name or model folder, for --features image or predicted "
                                      "(default: spafoundation-default)")
    p.add_argument("--genes", default=defaults.DOMAIN_EXPRESSION_GENES,
                   help=f"genes for --features expression (default {defaults.DOMAIN_EXPRESSION_GENES})")
    p.add_argument("--method", choices=["kmeans", "leiden"], default=defaults.DOMAIN_METHOD)
    p.add_argument("--n-clusters", type=positive_int, default=defaults.N_DOMAINS,
                   help=f"number of domains (Leiden: found by bisection; default {defaults.N_DOMAINS})")
    p.add_argument("--resolution", type=positive_float, help="Leiden resolution (instead of --n-clusters)")
    p.add_argument("--smooth", type=unit_interval, default=defaults.DOMAIN_SMOOTH,
                   help="weight of the neighbours' mean in the smoothed features (0: no smoothing)")
    p.add_argument("--radius-um", type=positive_float,
                   help="neighbour radius (default 1.5 x the nearest-spot distance)")
    p.add_argument("--reference-column", help="obs column of reference regions: ARI and NMI per section")
    p.add_argument("--grid-um", type=non_negative_float, default=defaults.DOMAIN_GRID_UM,
                   help="also assign a tissue grid of this pitch to domains")
    p.add_argument("--per-section", action="store_true", help="cluster each section on its own")
    add_format_option(p, "DIR/clusters.zarr, in place of spots.h5ad and grid.h5ad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figure", action="store_true")
    add_stain_option(p, fitted=True, where="colour/texture and image features: the reference is fitted over tissue "
                     "patches of all the clustered sections, so they share one look")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
