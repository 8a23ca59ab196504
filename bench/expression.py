"""Expression benchmark: leave-one-section-out over the imaged HER2ST sections, every contender in one run.

    .venv/bin/python bench/expression.py [--data ../shared/data/her2st] [--out bench_out/expression]

Prints the tables and the ratios of the default pipeline's mean per-gene r to the mean-colour and random-init
baselines measured in the same run, and rewrites the `expression` section of BENCHMARKS.md."""

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


def ratios(summary: pd.DataFrame) -> list[str]:
    by = summary.set_index("contender")["mean_r"]
    default = next(c for c in by.index if c.endswith("(default)"))
    lines = []
    for base in ("mean colour + ridge", next(c for c in by.index if c.startswith("random-") and c.endswith("ridge"))):
        lines.append(f"- default pipeline / {base}: {by[default]:.3f} / {by[base]:.3f} = **{by[default] / by[base]:.2f}x**")
    return lines


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "expression"))
    ap.add_argument("--sections", default="C2,C3,C4,C5,C6")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    cli = ["benchmark", "expression", args.data, "--sections", args.sections, "--out", args.out,
           "--quiet", "--precision", REFERENCE]
    code = main(cli)
    if code:
        return code
    out = Path(args.out)
    body = [(out / "expression_benchmark.md").read_text().replace(f"`spafoundation {' '.join(cli)}`",
                                                                    "`.venv/bin/python bench/expression.py`")]
    for target in ("hest", "normalized"):
        summary = pd.read_csv(out / f"expression_{target}_summary.csv")
        lines = ratios(summary)
        print(f"\nratios ({target} targets):\n" + "\n".join(lines))
        body.append(f"Ratios, {target} targets (same run):\n\n" + "\n".join(lines))
    if not args.no_write:
        update_section("expression", "## Expression from H&E (leave-one-section-out)\n\n" + "\n\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(run())
