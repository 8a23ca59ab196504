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
    from spafoundation.eval.superres_benchmark import (
        run_superres_benchmark,
        superres_markdown,
        superres_summary,
    )
    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.readers import read_dataset
    from spafoundation.utils.atomic import atomic_path

    data = read_dataset(args.data, parse_sections(args.sections), with_images=False, **data_options(args))
    usable = {n: a for n, a in data.items() if image_path(a) and a.n_vars > 0}
    if not usable:
        raise InputError(args.data, "sections", "the benchmark needs imaged sections with counts")
    t0 = time.perf_counter()
    rows, genes, details = run_superres_benchmark(usable, args.encoder or "spafoundation-default", genes=args.genes,
                                                  step_um=args.step_um, progress=not args.quiet)
    summary = superres_summary(rows)
    out = Path(args.out)
    with atomic_path(out / "superres_per_section.csv") as tmp:
        rows.to_csv(tmp, index=False)
    with atomic_path(out / "superres_summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(out / "superres_genes.json") as tmp:
        Path(tmp).write_text(json.dumps(genes, indent=1) + "\n")
    table = superres_markdown(summary)
    command = "spafoundation " + " ".join(shlex.quote(a) for a in args.argv)
    md = (f"Command: `{command}`\n\n{precision_note()}Sections: {', '.join(usable)}. Coarse pseudo-spots: 2 x 2 "
          "spots of the array grid (square or hexagonal), counts summed, centre at the mean; every method sees only "
          "them. Truth: the real spots. Splits: leave-one-patient-out (the models fitted on one patient's coarse "
          "pseudo-spots, applied to the other's sections), per direction and the mean of the directions, then "
          "within-patient (fitted on the coarse pseudo-spots of every section of the patient, the test sections "
          f"included). Genes: {args.genes} chosen per direction on the training sections' coarse counts, among "
          "the genes the test sections measure (superres_genes.json). Targets: log1p of library-size normalised "
          "counts. Metrics per test section, then averaged: Pearson r per gene across fine spots, RMSE, SSIM of the "
          "gene maps on the array grid (3 x 3 window, holes left out). Ours (bold): the superpixel model anchored "
          "to the coarse spots with weights calibrated on the test section's own coarse pseudo-spots (scale "
          "transfer one level up, the image deviation from the model's head), the training weights where the "
          "section trained the model or has too few spots in blocks.\n\n"
          f"{table}\n\nSuperpixels: {details['superpixels_per_section']:.0f} per section at the encoder's token "
          f"pitch, {details['superpixels_s_per_section']:.0f} s per section (encoder {args.encoder or 'default'}); "
          f"whole benchmark {time.perf_counter() - t0:.0f} s on this machine.\n\n"
          f"{anchoring_note(details)}\n\n{verdict(summary)}\n")
    with atomic_path(out / "superres_benchmark.md") as tmp:
        Path(tmp).write_text(md)
    print(table)
    print(f"\n{anchoring_note(details)}\n\n{verdict(summary)}")
    print(f"\nwrote {out}/superres_benchmark.md")
    return 0


def anchoring_note(details: dict) -> str:
    """The anchoring weights per direction: the model's (learned on its training sections) and each test
    section's, with where they came from, and the image's signal within a block."""
    lines = ["Anchoring weights (image / neighbours):"]
    for d, v in details["directions"].items():
        t = v["training_anchoring"]
        per = "; ".join(f"{n} {w['image']:.2f} / {w['interpolation']:.2f}"
                        f"{'' if w['weights_from'] == 'this section' else ' (training weights)'}"
                        for n, w in v["anchoring"].items())
        lines.append(f"- {d}: learned on the training sections {t['image']:.2f} / {t['interpolation']:.2f} "
                     f"({t['method']}); per test section {per}. Image signal within a block (Pearson r between the "
                     "image model's deviation of each fine spot from its coarse block and the true deviation, per "
                     f"gene, averaged): {v['image_within_block_r']:.3f}.")
    return "\n".join(lines)


def verdict(summary) -> str:
    """What the run shows, read from its own numbers: per direction, our anchored map against the nearest coarse
    spot (what the measurements alone give) and against the best baseline by mean r."""
    from spafoundation.eval.superres_benchmark import METHODS, OURS

    lines = []
    for (split, d), g in summary.groupby(["split", "direction"], sort=False):
        by = g.set_index("method")
        if OURS not in by.index:
            continue
        baselines = [m for m in METHODS[:4] if m in by.index]
        best = max(baselines, key=lambda m: by.loc[m, "mean_r"])
        ours, near = by.loc[OURS], by.loc[METHODS[0]]
        d_r, d_ssim = ours["mean_r"] - near["mean_r"], ours["ssim"] - near["ssim"]
        ok = round(d_r, 4) >= 0 and round(d_ssim, 4) >= 0  # at the precision shown
        lines.append(f"- {split}, {d}: against the nearest coarse spot mean r {d_r:+.4f}, SSIM {d_ssim:+.4f} "
                     f"({'not worse' if ok else 'worse'}); against the best "
                     f"baseline ({best}) mean r {ours['mean_r'] - by.loc[best, 'mean_r']:+.4f}, SSIM "
                     f"{ours['ssim'] - by.loc[best, 'ssim']:+.4f}.")
    return "Verdict:\n" + "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser("superres", help="pseudo-low-resolution benchmark of super-resolution maps")
    p.add_argument("data", help="dataset with imaged sections with counts on a spot array (array_row/array_col, "
                   "or a regular lattice of spot centres)")
    add_data_options(p)
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--sections", help="comma-separated sections (default: every imaged section with counts)")
    p.add_argument("--encoder", help="encoder (default: spafoundation-default)")
    p.add_argument("--genes", default="hvg:50",
                   help="genes (default hvg:50, chosen per split on the training sections' coarse counts)")
    p.add_argument("--step-um", type=positive_float, help="superpixel pitch (default one encoder token)")
    p.add_argument("--quiet", action="store_true")
    add_precision_option(p)
    p.set_defaults(func=run)
