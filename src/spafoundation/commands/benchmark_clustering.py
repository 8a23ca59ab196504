"""``spafoundation benchmark clustering DATA --out DIR``: spatial domains against reference regions.

In one run: the imaged sections against ``--reference`` (default the authors' cluster annotations), first all
clustered together into ``--n-clusters`` domains (the headline: domains shared across patients, as ``cluster``
makes them), then each on its own, with image, predicted-expression and observed-expression contenders; and every
section with counts and ``--pathologist-column`` (no image needed), each on its own, with the observed-expression
contenders only."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from spafoundation import defaults
from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_precision_option,
    cache_dir,
    data_options,
    parse_sections,
    positive_int,
    precision_note,
    unit_interval,
)
from spafoundation.errors import InputError


def run(args) -> int:
    from spafoundation.eval.clustering_benchmark import (
        clustering_contenders,
        clustering_markdown,
        joint_contenders,
        run_clustering_benchmark,
        run_joint_clustering,
        summarize_clustering,
    )
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.readers import read_dataset
    from spafoundation.tasks.expression import DEFAULT_ENCODER
    from spafoundation.utils.atomic import atomic_path

    wanted = parse_sections(args.sections)
    data = read_dataset(args.data, wanted, with_images=False, **data_options(args))
    parts = []
    imaged = [n for n, a in data.items() if image_path(a) and a.n_vars > 0 and args.reference in a.obs]
    if imaged:
        parts.append((f"imaged sections against obs['{args.reference}']", args.reference,
                      read_dataset(args.data, imaged, **data_options(args)), True))
    labelled = {n: a for n, a in data.items() if a.n_vars > 0 and args.pathologist_column in a.obs
                and a.obs[args.pathologist_column].notna().any()}
    if labelled:
        parts.append((f"sections with counts against obs['{args.pathologist_column}']", args.pathologist_column,
                      labelled, False))
    if not parts:
        raise InputError(args.data, f"obs['{args.reference}'] / obs['{args.pathologist_column}']",
                         "no section with counts has reference regions")
    out = Path(args.out)
    command = "spafoundation " + " ".join(shlex.quote(a) for a in args.argv)
    md = [f"Command: `{command}`\n\n{precision_note()}Every clustering is repeated with {args.seeds} seeds "
          f"(k-means initialisation, Leiden's) and its ARI and NMI averaged over them; unknown spots are left out of "
          f"the scores. Smoothing: features replaced by (1 - w) x own + w x mean of graph neighbours, w = "
          f"{args.smooth}."]
    encoder = args.default_encoder or DEFAULT_ENCODER
    if len(imaged) > 1:  # the headline: every imaged section in one clustering, as `cluster` makes domains
        t0 = time.perf_counter()
        sections = parts[0][2]
        contenders = joint_contenders(encoder, args.random_encoder, smooth_weight=args.smooth)
        rows = run_joint_clustering(sections, contenders, reference=args.reference, n_clusters=args.n_clusters,
                                    cache_dir=cache_dir(args), progress=not args.quiet, seeds=args.seeds)
        table = clustering_markdown(summarize_clustering(rows, contenders))
        with atomic_path(out / "clustering_joint_per_section.csv") as tmp:
            rows.to_csv(tmp, index=False)
        title = f"imaged sections clustered together against obs['{args.reference}']"
        print(f"\n{title} ({', '.join(sections)}; {args.n_clusters} domains)\n{table}")
        md.append(f"### {title}\n\nSections: {', '.join(sections)}, all clustered together into {args.n_clusters} "
                  f"domains (`cluster`'s default), so a domain should mean the same tissue in every section, whatever "
                  f"its patient, lab or scan; ARI and NMI per section against its own regions, then mean and sd over "
                  f"sections, and the mean ARI of each patient's sections. 'domains ~ patient NMI': the normalised "
                  f"mutual information between domains and patients (0: every domain shared by the patients in "
                  f"proportion; higher: domains split by patient). 'per-section z': every feature z-scored within "
                  f"its section.\n\n{table}\n\n{time.perf_counter() - t0:.0f} s on this machine.")
    for title, ref, sections, with_images in parts:
        t0 = time.perf_counter()
        contenders = clustering_contenders(encoder, args.random_encoder, with_images=with_images,
                                           smooth_weight=args.smooth)
        rows = run_clustering_benchmark(sections, contenders, reference=ref, cache_dir=cache_dir(args),
                                        progress=not args.quiet, seeds=args.seeds)
        table = clustering_markdown(summarize_clustering(rows, contenders))
        slug = "imaged" if with_images else "pathologist"
        with atomic_path(out / f"clustering_{slug}_per_section.csv") as tmp:
            rows.to_csv(tmp, index=False)
        print(f"\n{title}, each section on its own ({', '.join(sections)})\n{table}")
        md.append(f"### {title}, each section on its own\n\nSections: {', '.join(sections)}, each clustered on its "
                  f"own into k = its number of reference regions.\n\n{table}\n\n"
                  f"{time.perf_counter() - t0:.0f} s on this machine.")
    with atomic_path(out / "clustering_benchmark.md") as tmp:
        Path(tmp).write_text("\n\n".join(md) + "\n")
    print(f"\nwrote {out}/clustering_benchmark.md and per-section CSVs")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("clustering", help="spatial clustering against reference regions (ARI, NMI)")
    p.add_argument("data", help="dataset with reference regions in obs")
    add_data_options(p)
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--sections", help="comma-separated sections (default: all)")
    p.add_argument("--reference", default="cluster_annotation", help="reference column of the imaged sections")
    p.add_argument("--pathologist-column", default="label", help="pathologist label column (expression part)")
    p.add_argument("--smooth", type=unit_interval, default=0.5, help="smoothing weight of the smoothed contenders")
    p.add_argument("--n-clusters", type=positive_int, default=defaults.N_DOMAINS,
                   help=f"domains of the imaged sections clustered together (default {defaults.N_DOMAINS}, as cluster)")
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="clustering seeds per contender and section, scores averaged (default 5)")
    p.add_argument("--default-encoder", help="the encoder of the image contenders (default: the shipped one)")
    p.add_argument("--random-encoder", default="random-vitt16", help="the random-init baseline")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
