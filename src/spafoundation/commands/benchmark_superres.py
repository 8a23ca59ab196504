"""``spafoundation benchmark superres DATA --out DIR``: pseudo-low-resolution benchmark of super-resolution."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from spafoundation.commands._common import (
    add_data_options,
    add_precision_option,
    data_options,
    parse_sections,
    positive_float,
    precision_note,
)
from spafoundation.errors import InputError


def run(args) -> int:
    from spafoundation.eval.superres_benchmark import run_superres_benchmark, superres_markdown
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.readers import read_dataset
    from spafoundation.utils.atomic import atomic_path

    data = read_dataset(args.data, parse_sections(args.sections), with_images=False, **data_options(args))
    usable = {n: a for n, a in data.items() if image_path(a) and a.n_vars > 0}
    if not usable:
        raise InputError(args.data, "sections", "the benchmark needs imaged sections with counts")
    t0 = time.perf_counter()
    rows, genes, timing = run_superres_benchmark(usable, args.encoder or "spafoundation-default", genes=args.genes,
                                                 step_um=args.step_um, progress=not args.quiet)
    out = Path(args.out)
    with atomic_path(out / "superres_per_section.csv") as tmp:
        rows.to_csv(tmp, index=False)
    with atomic_path(out / "superres_genes.json") as tmp:
        Path(tmp).write_text(json.dumps(genes) + "\n")
    table = superres_markdown(rows)
    w = timing["anchoring"]
    command = "spafoundation " + " ".join(shlex.quote(a) for a in args.argv)
    md = (f"Command: `{command}`\n\n{precision_note()}Sections: {', '.join(usable)}. Coarse pseudo-spots: 2 x 2 "
          "spots of the array grid (square or hexagonal), counts summed, centre at the mean; every method sees only "
          "them. Truth: the real spots. Genes: "
          f"{args.genes} chosen on the coarse counts ({len(genes)}; superres_genes.json). Targets: log1p of "
          "library-size normalised counts. Metrics per section, then averaged: Pearson r per gene across fine "
          "spots, RMSE, SSIM of the gene maps on the array grid (3 x 3 window, holes left out).\n\n"
          f"{table}\n\nSuperpixels: {timing['superpixels_per_section']:.0f} per section at the encoder's token "
          f"pitch, {timing['superpixels_s_per_section']:.0f} s per section (encoder {args.encoder or 'default'}); "
          f"whole benchmark {time.perf_counter() - t0:.0f} s on this machine.\n\n"
          f"Anchoring weights, learned on the coarse pseudo-spots alone ({w['method']}): image {w['image']:.2f}, "
          f"neighbours {w['interpolation']:.2f}. The image's signal within a block: the Pearson r (per gene, then "
          "averaged) between the image model's deviation of each fine spot from its coarse block and the true "
          f"deviation is {timing['image_within_block_r']:.3f}. {verdict(rows)}\n")
    with atomic_path(out / "superres_benchmark.md") as tmp:
        Path(tmp).write_text(md)
    print(table)
    print(f"\nwrote {out}/superres_benchmark.md")
    return 0


def verdict(rows) -> str:
    """What the run shows, read from its own numbers: our anchored map against the best baseline."""
    from spafoundation.eval.superres_benchmark import METHODS

    by = rows.groupby("method")[["mean_r", "ssim"]].mean()
    ours, baselines = METHODS[-1], [m for m in METHODS[:4] if m in by.index]
    best = max(baselines, key=lambda m: by.loc[m, "mean_r"])
    d_r, d_ssim = by.loc[ours, "mean_r"] - by.loc[best, "mean_r"], by.loc[ours, "ssim"] - by.loc[best, "ssim"]
    wins = int((rows[rows.method == ours].set_index("test")["mean_r"]
                > rows[rows.method == best].set_index("test")["mean_r"]).sum())
    return (f"Against the best baseline ({best}): mean r {d_r:+.4f}, SSIM {d_ssim:+.3f}; higher r on {wins} of "
            f"{rows.test.nunique()} sections.")


def register(subparsers) -> None:
    p = subparsers.add_parser("superres", help="pseudo-low-resolution benchmark of super-resolution maps")
    p.add_argument("data", help="dataset with imaged sections with counts on a spot array (array_row/array_col, "
                   "or a regular lattice of spot centres)")
    add_data_options(p)
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--sections", help="comma-separated sections (default: every imaged section with counts)")
    p.add_argument("--encoder", help="encoder (default: spafoundation-default)")
    p.add_argument("--genes", default="hvg:50", help="genes (default hvg:50, chosen on the coarse counts)")
    p.add_argument("--step-um", type=positive_float, help="superpixel pitch (default one encoder token)")
    p.add_argument("--quiet", action="store_true")
    add_precision_option(p)
    p.set_defaults(func=run)
