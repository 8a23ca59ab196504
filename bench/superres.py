"""Super-resolution benchmark (pseudo-low-resolution) on the imaged HER2ST sections, all methods in one run.

    .venv/bin/python bench/superres.py [--data ../shared/data/her2st] [--out bench_out/superres]

Prints the table and the ratios of our anchored superpixel model to each baseline (mean per-gene r, same run),
and rewrites the `superres` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation.cli import main
from spafoundation.utils.precision import REFERENCE

ROOT = Path(__file__).resolve().parent.parent


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "superres"))
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    cli = ["benchmark", "superres", args.data, "--sections", "C2,C3,C4,C5,C6", "--out", args.out,
           "--quiet", "--precision", REFERENCE]
    code = main(cli)
    if code:
        return code
    out = Path(args.out)
    by = pd.read_csv(out / "superres_per_section.csv").groupby("method", sort=False)[["mean_r", "ssim"]].mean()
    ours = "superpixel model + coarse anchors"
    lines = [f"- {ours} / {m}: r {by.loc[ours, 'mean_r']:.3f} / {by.loc[m, 'mean_r']:.3f} = "
             f"**{by.loc[ours, 'mean_r'] / by.loc[m, 'mean_r']:.2f}x**; SSIM {by.loc[ours, 'ssim']:.3f} vs "
             f"{by.loc[m, 'ssim']:.3f}" for m in by.index if m != ours]
    print("\nratios:\n" + "\n".join(lines))
    if not args.no_write:
        md = (out / "superres_benchmark.md").read_text().replace(f"`spafoundation {' '.join(cli)}`",
                                                                 "`.venv/bin/python bench/superres.py`")
        update_section("superres", "## Super-resolution (pseudo-low-resolution)\n\n" + md +
                       "\nRatios (same run):\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
