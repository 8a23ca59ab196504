"""``spafoundation benchmark expression DATA --out DIR``: every contender on held-out sections, in one run."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from spafoundation.commands._common import (
    add_cache_args,
    add_data_options,
    add_precision_option,
    add_random_seeds_option,
    cache_dir,
    check_random_seeds,
    data_options,
    parse_sections,
    parse_target_sum,
    precision_note,
    spread_note,
)
from spafoundation.errors import InputError

TARGETS = {
    "hest": ("none", "log1p of raw counts (the HEST-Benchmark rule; comparable with its published numbers)"),
    "normalized": ("1e4", "log1p(counts / library size * 1e4) (what fit-expression predicts by default)"),
}


def genes_note(spec: str) -> str:
    kind, _, k = str(spec).partition(":")
    if kind in ("hvg", "mean") and k.isdigit():
        return (f"{spec}, chosen on the training sections of each fold only (genes detected in >= 10% of the spots "
                "of every training section)")
    return f"the list {Path(spec).name}, less the genes a fold's training or test sections do not measure"


def run(args) -> int:
    from spafoundation.eval.expression_benchmark import (
        REFERENCE_ROW,
        baseline_contenders,
        markdown_table,
        run_expression_benchmark,
        seed_spread,
        summarize,
    )
    from spafoundation.eval.splits import LOPO, benchmark_splits
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.readers import read_dataset
    from spafoundation.tasks.expression import DEFAULT_ENCODER
    from spafoundation.tasks.heads import REFERENCE_AXES
    from spafoundation.utils.atomic import atomic_path

    check_random_seeds(args)
    data = read_dataset(args.data, parse_sections(args.sections), **data_options(args))
    usable = {n: a for n, a in data.items() if image_path(a) and a.n_vars > 0}
    if len(usable) < 2:
        raise InputError(args.data, "sections", "the benchmark needs at least two sections with images and counts")
    default = args.default_encoder or DEFAULT_ENCODER
    reference = None
    if args.reference_sections:
        names = None if args.reference_sections == "all" else parse_sections(args.reference_sections)
        reference = {n: a for n, a in read_dataset(args.data, names, **data_options(args)).items() if a.n_vars > 0}
        if not reference:
            raise InputError(args.data, "--reference-sections", "none of these sections has counts")
    contenders = baseline_contenders(default, args.random_encoder, extra_encoders=args.encoder or [],
                                     options=not args.no_options, hires=args.hires_copies,
                                     reference=reference is not None, random_seeds=args.random_seeds)
    out = Path(args.out)
    command = "spafoundation " + " ".join(shlex.quote(a) for a in args.argv)
    sections_md = []
    for target in args.targets.split(","):
        if target not in TARGETS:
            raise InputError(None, "--targets", f"unknown target {target!r}; choose from {sorted(TARGETS)}")
        target_sum = parse_target_sum(TARGETS[target][0])
        t0 = time.perf_counter()
        rows, genes = run_expression_benchmark(usable, contenders, genes=args.genes, target_sum=target_sum,
                                               cache_dir=cache_dir(args), progress=not args.quiet,
                                               copies_dir=out / "hires_copies", reference=reference)
        summary = summarize(rows, contenders)
        with atomic_path(out / f"expression_{target}_per_section.csv") as tmp:
            rows.to_csv(tmp, index=False)
        with atomic_path(out / f"expression_{target}_summary.csv") as tmp:
            summary.to_csv(tmp, index=False)
        with atomic_path(out / f"expression_{target}_genes.json") as tmp:
            Path(tmp).write_text(json.dumps(genes, indent=1) + "\n")
        table = markdown_table(summary) + spread_note(seed_spread(rows, contenders))
        print(f"\ntargets: {TARGETS[target][1]}\n{table}")
        sections_md.append(f"### Targets: {TARGETS[target][1]}\n\n{table}\n\n"
                           f"{time.perf_counter() - t0:.0f} s on this machine.")
    splits = benchmark_splits(usable)
    kinds = list(dict.fromkeys(k for k, _, _, _ in splits))
    header = (f"Command: `{command}`\n\n{precision_note()}"
              f"Sections: {', '.join(usable)}; splits: {', '.join(kinds)} ({len(splits)} folds: "
              + "; ".join(f"{d}: train {'+'.join(tr)}, test {'+'.join(te)}" for k, d, te, tr in splits if k == LOPO)
              + ("; " if LOPO in kinds else "") + "leave-one-section-out within each patient)"
              + ("" if LOPO in kinds else "; leave-one-patient-out needs two imaged patients") +
              f".\nGenes: {genes_note(args.genes)}; per-fold lists in expression_<targets>_genes.json.\n"
              "Metric: Pearson r per gene across the spots of each test section, averaged over genes (constant "
              "predictions counted, not averaged), then over test sections; never pooled across sections.\n"
              + ("Rows ending 'hires-only copy (2000 px)': fitted on the training sections' own images, predicting "
                 "each test section from a 2000 px PNG of its image read at its scale (as Space Ranger's "
                 "tissue_hires_image.png; eval/hires_copies.py).\n" if args.hires_copies else "")
              + (f"Rows naming '{REFERENCE_ROW}': the default pipeline whose shared axes (its programs' and the "
                 f"{REFERENCE_AXES} its members' targets are reduced to) are also estimated from the counts of "
                 f"{len(reference)} reference sections (no image used), in each fold less the training and test "
                 "sections and every section of a test patient (tasks/expression_reference.py).\n"
                 if reference else ""))
    md = header + "\n" + "\n\n".join(sections_md) + "\n"
    with atomic_path(out / "expression_benchmark.md") as tmp:
        Path(tmp).write_text(md)
    print(f"\nwrote {out}/expression_benchmark.md and per-section CSVs")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("expression", help="held-out-section benchmark of expression prediction")
    p.add_argument("data", help="dataset with at least two imaged sections with counts")
    add_data_options(p)
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--sections", help="comma-separated sections (default: every imaged section with counts)")
    p.add_argument("--genes", default="hvg:50", help="hvg:K, mean:K or a gene-list file (default hvg:50)")
    p.add_argument("--targets", default="hest,normalized",
                   help="comma-separated: hest (log1p counts), normalized (log1p of library-size normalised counts)")
    p.add_argument("--encoder", action="append", help="another encoder to compare (repeatable)")
    p.add_argument("--default-encoder", help="the encoder of the default pipeline (default: the shipped one)")
    p.add_argument("--random-encoder", default="random-vitt16", help="the random-init baseline (default random-vitt16)")
    add_random_seeds_option(p, "+ ridge, and in the default pipeline")
    p.add_argument("--no-options", action="store_true", help="skip the tta / context / neighbour ablations")
    p.add_argument("--hires-copies", action="store_true",
                   help="also score the default pipeline and colour/texture on 2000 px copies of the test images "
                        "(as Space Ranger's tissue_hires_image.png), written to OUT/hires_copies")
    p.add_argument("--reference-sections",
                   help="'all' or comma-separated sections of DATA whose counts (no image needed) also inform the "
                        "default head's expression programs, in an extra row; each fold leaves out its training "
                        "and test sections and every section of a test patient")
    add_cache_args(p)
    add_precision_option(p)
    p.set_defaults(func=run)
