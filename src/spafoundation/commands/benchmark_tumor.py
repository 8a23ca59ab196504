"""``spafoundation benchmark tumor DATA --out DIR``: tumour detection on held-out sections, every route in one run."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_precision_option,
    cache_dir,
    data_options,
    parse_sections,
    precision_note,
)
from spafoundation.errors import InputError


def run(args) -> int:
    from spafoundation.eval.expression_benchmark import benchmark_splits
    from spafoundation.eval.tumor_benchmark import (
        run_tumor_benchmark,
        summarize_tumor,
        tumor_contenders,
        tumor_markdown,
    )
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.readers import read_dataset
    from spafoundation.tasks.expression import DEFAULT_ENCODER
    from spafoundation.utils.atomic import atomic_path

    data = read_dataset(args.data, parse_sections(args.sections), **data_options(args))
    usable = {n: a for n, a in data.items() if image_path(a) and a.n_vars > 0 and args.label_column in a.obs}
    if len(usable) < 2:
        raise InputError(args.data, f"obs['{args.label_column}']",
                         "the benchmark needs at least two imaged sections with counts and this label column")
    contenders = tumor_contenders(args.default_encoder or DEFAULT_ENCODER, args.random_encoder)
    t0 = time.perf_counter()
    rows = run_tumor_benchmark(usable, contenders, label_column=args.label_column, positive=args.positive,
                               cache_dir=cache_dir(args), progress=not args.quiet)
    summary = summarize_tumor(rows, contenders)
    out = Path(args.out)
    with atomic_path(out / "tumor_per_section.csv") as tmp:
        rows.to_csv(tmp, index=False)
    table = tumor_markdown(summary)
    kinds = sorted({k for k, _, _ in benchmark_splits(usable)})
    command = "spafoundation " + " ".join(shlex.quote(a) for a in args.argv)
    md = (f"Command: `{command}`\n\n{precision_note()}Sections: {', '.join(usable)}; splits: {', '.join(kinds)}.\n"
          f"Labels: obs['{args.label_column}'] matching /{args.positive}/ (case-insensitive) is tumour; unknown "
          "spots are left out." + (" On HER2ST these are the authors' annotations of expression clusters: labels "
          "that come from expression, not from a pathologist." if args.label_column == "cluster_annotation" else "")
          + "\nMetrics: ROC AUC and PR AUC per test section, averaged over sections.\n\n"
          f"{table}\n\n{time.perf_counter() - t0:.0f} s on this machine.\n")
    with atomic_path(out / "tumor_benchmark.md") as tmp:
        Path(tmp).write_text(md)
    print(table)
    print(f"\nwrote {out}/tumor_benchmark.md and tumor_per_section.csv")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("tumor", help="held-out-section benchmark of tumour detection")
    p.add_argument("data", help="dataset with at least two imaged, labelled sections with counts")
    add_data_options(p)
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--sections", help="comma-separated sections")
    p.add_argument("--label-column", default="cluster_annotation", help="obs column of the labels")
    p.add_argument("--positive", default=r"cancer|tumou?r|carcinoma|malignan", help="regex of tumour labels")
    p.add_argument("--default-encoder", help="the encoder of the pipeline (default: the shipped one)")
    p.add_argument("--random-encoder", default="random-vitt16", help="the random-init baseline")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
