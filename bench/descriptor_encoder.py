"""spafoundation-descriptor (the second shipped checkpoint, for the embedding alone) in the tumour and clustering
benchmarks: bench/tumor_clustering.py's commands with it as the default encoder, every baseline in the same run.
Its expression rows are in bench/expression.py's tables.

    .venv/bin/python bench/descriptor_encoder.py [--data ../shared/data/her2st] [--out bench_out/descriptor_encoder]

Prints the ratios of bench/tumor_clustering.py (here the "(default)" tumour row is the default route on this
encoder) and rewrites the `descriptor_encoder` section of BENCHMARKS.md (not with --no-write)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from tumor_clustering import benchmark_commands, clustering_ratios, run_commands, tumor_ratios

ROOT = Path(__file__).resolve().parent.parent
ENCODER = "spafoundation-descriptor"


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "descriptor_encoder"))
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    out = Path(args.out)
    tumor_cli, cluster_cli = benchmark_commands(args.data, out, "--default-encoder", ENCODER)
    code = run_commands(tumor_cli, cluster_cli)
    if code:
        return code
    t_lines = tumor_ratios(pd.read_csv(out / "tumor_summary.csv"))
    c_lines = clustering_ratios(pd.read_csv(out / "clustering_joint_per_section.csv"))
    print("\nratios (tumour ROC AUC):\n" + "\n".join(t_lines))
    print("\nratios (clustering ARI, all sections together):\n" + "\n".join(c_lines))
    if not args.no_write:
        here = "`.venv/bin/python bench/descriptor_encoder.py`"
        shown = {f"`spafoundation {' '.join(cli)}`": here for cli in (tumor_cli, cluster_cli)}
        parts = []
        for name in ("tumor_benchmark.md", "clustering_benchmark.md"):
            md = (out / name).read_text()
            for cmd, repl in shown.items():
                md = md.replace(cmd, repl)
            parts.append(md.replace("\n## ", "\n### "))
        update_section("descriptor_encoder", "## spafoundation-descriptor in the tumour and clustering benchmarks\n\n"
                       f"The second shipped checkpoint (models/checkpoints/descriptor/MODEL_CARD.md) as the default "
                       f"encoder of bench/tumor_clustering.py's commands ({here}); the default tumour route and "
                       "domain features are chosen on spafoundation-default's runs above.\n\n" + "\n".join(parts)
                       + "\nRatios, tumour (same run, mean ROC AUC):\n\n" + "\n".join(t_lines)
                       + "\n\nRatios, clustering of all sections together (same run, mean ARI):\n\n"
                       + "\n".join(c_lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
