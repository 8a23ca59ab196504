"""Super-resolution benchmark (pseudo-low-resolution) on the imaged HER2ST sections, all methods in one run.

    .venv/bin/python bench/superres.py [--data ../shared/data/her2st] [--out bench_out/superres] [--no-write]

Sections C2-C6 (patient C) and A1 (patient A): leave-one-patient-out (C -> A and A -> C, and their mean), then
within patient C. Prints the table and, per direction, the ratios of our anchored superpixel model to the nearest
coarse spot (mean per-gene r and SSIM, same run), and rewrites the `superres` section of BENCHMARKS.md unless
--no-write."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation.cli import main
from spafoundation.eval.superres_benchmark import METHODS, OURS
from spafoundation.utils.precision import REFERENCE

ROOT = Path(__file__).resolve().parent.parent
NEAREST = METHODS[0]  # what the coarse measurements alone give


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "superres"))
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    cli = ["benchmark", "superres", args.data, "--sections", "C2,C3,C4,C5,C6,A1", "--out", args.out,
           "--quiet", "--precision", REFERENCE]
    code = main(cli)
    if code:
        return code
    out = Path(args.out)
    summary = pd.read_csv(out / "superres_summary.csv")
    lines = []
    for (split, direction), g in summary.groupby(["split", "direction"], sort=False):
        by = g.set_index("method")
        o, b = by.loc[OURS], by.loc[NEAREST]
        lines.append(f"- {split}, {direction}: {OURS} / {NEAREST}: r {o['mean_r']:.3f} / {b['mean_r']:.3f} = "
                     f"**{o['mean_r'] / b['mean_r']:.3f}x**; SSIM {o['ssim']:.3f} / {b['ssim']:.3f} = "
                     f"**{o['ssim'] / b['ssim']:.3f}x**")
    print("\nratios:\n" + "\n".join(lines))
    if not args.no_write:
        md = (out / "superres_benchmark.md").read_text().replace(f"`spafoundation {' '.join(cli)}`",
                                                                 "`.venv/bin/python bench/superres.py`")
        update_section("superres", "## Super-resolution (pseudo-low-resolution)\n\n" + md +
                       "\nRatios (same run):\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
