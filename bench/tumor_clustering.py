"""Tumour detection and spatial clustering benchmarks on HER2ST, every contender in the same run.

    .venv/bin/python bench/tumor_clustering.py [--data ../shared/data/her2st] [--out bench_out/tumor_clustering]

Tumour detection on patient C's sections C2-C6 and patient A's A1: leave-one-patient-out first (C -> A and A -> C,
then their mean), then leave-one-section-out within patient C; each section labelled by the pathologist's labels
where it has them (A1), else the annotations of expression clusters (C2-C6). Prints the tables and the ratios of the
default pipeline to the colour and random-init baselines (tumour ROC AUC, per headline row; the random-init rows the
mean over 8 seeds of their weights, their range printed under the table). Clustering: all imaged
sections clustered together first (domains shared across patients, as `cluster` makes them), then each on its own;
ratios of the default domain features to the other image features, of smoothed to unsmoothed observed expression and
of features z-scored per section to the same as they are (ARI), all measured in this run; rewrites the `tumor` and `clustering` sections of
BENCHMARKS.md (not with --no-write)."""

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
RANDOM_SEEDS = 8  # the random-init rows: the mean over this many draws of their weights, with their range


def ratio(a_name: str, a: float, b_name: str, b: float) -> str:
    return f"- {a_name} / {b_name}: {a:.3f} / {b:.3f} = **{a / b:.2f}x**"


def _tumor_ratios(by: pd.Series) -> list[str]:
    pipe = next(c for c in by.index if c.endswith("(default)"))
    rnd = next(c for c in by.index if c.startswith("random-"))
    rnd_route = [c for c in by.index if c.startswith("random-") and "logistic, per-section z" in c]
    markers = next(c for c in by.index if c.startswith("label-free"))
    expression_pipeline = next(c for c in by.index if c.startswith("expression pipeline") and c.endswith(" z"))
    return [ratio(pipe, by[pipe], b, by[b]) for b in ("mean colour + logistic", "colour/texture + logistic", rnd,
                                                      *rnd_route, expression_pipeline)] + [
        ratio(markers, by[markers], "mean colour + logistic", by["mean colour + logistic"])]


def tumor_ratios(summary: pd.DataFrame) -> list[str]:
    """Ratios of mean ROC AUC on the leave-one-patient-out mean of the directions (the headline), then on
    leave-one-section-out; rows of tumor_summary.csv."""
    from spafoundation.eval.splits import LOSO, headline

    lines = []
    for rows in (headline(summary), summary[summary["split"] == LOSO]):
        if len(rows):
            lines += [f"{rows['split'].iloc[0]}, {rows['direction'].iloc[0]}:",
                      *_tumor_ratios(rows.set_index("contender")["roc_auc"])]
    return lines


def clustering_ratios(rows: pd.DataFrame) -> list[str]:
    """The default row against every other image contender, and smoothed against unsmoothed features; ARI averaged
    over seeds within a section, then over sections (as the tables)."""
    by = rows.groupby(["contender", "test"], sort=False)["ari"].mean().groupby("contender", sort=False).mean()
    lines = []
    default = next((c for c in by.index if c.endswith("(default)")), None)
    if default:
        lines += [ratio(default, by[default], c, by[c]) for c in by.index
                  if c != default and "observed" not in c and by[c] > 0]
    pairs = [(c, c.replace(", smoothed", "")) for c in by.index if c.endswith(", smoothed") and "observed" in c]
    pairs = [(a, b if b in by.index else b + " (baseline)") for a, b in pairs]
    pairs += [(c, c.replace(", per-section z", "")) for c in by.index if ", per-section z" in c and c != default]
    return lines + [ratio(a, by[a], b, by[b]) for a, b in pairs if b in by.index and by[b] > 0]


def benchmark_commands(data: str, out: Path, *options: str) -> tuple[list[str], list[str]]:
    """The tumour and clustering benchmark commands of this script, writing to ``out``, each with ``options``
    (e.g. another default encoder) appended."""
    common = ["--out", str(out), "--quiet", "--precision", REFERENCE, *options]
    return (["benchmark", "tumor", data, "--sections", "C2,C3,C4,C5,C6,A1", "--label-column",
             "label,cluster_annotation", "--random-seeds", str(RANDOM_SEEDS), *common],
            ["benchmark", "clustering", data, *common])


def run_commands(*commands: list[str]) -> int:
    """Run each CLI command in turn; the first non-zero exit code stops them."""
    for cli in commands:
        code = main(cli)
        if code:
            return code
    return 0


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "tumor_clustering"))
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    out = Path(args.out)
    tumor_cli, cluster_cli = benchmark_commands(args.data, out)
    code = run_commands(tumor_cli, cluster_cli)
    if code:
        return code
    here = "`.venv/bin/python bench/tumor_clustering.py`"
    t_lines = tumor_ratios(pd.read_csv(out / "tumor_summary.csv"))
    c_lines = []
    for part in ("joint", "imaged", "pathologist"):
        f = out / f"clustering_{part}_per_section.csv"
        if f.exists():
            c_lines += [f"{part}:", *clustering_ratios(pd.read_csv(f))]
    print("\nratios (tumour ROC AUC):\n" + "\n".join(t_lines))
    print("\nratios (clustering ARI):\n" + "\n".join(c_lines))
    if not args.no_write:
        t_md = (out / "tumor_benchmark.md").read_text().replace(
            f"`spafoundation {' '.join(tumor_cli)}`", here)
        update_section("tumor", "## Tumour detection (leave-one-patient-out, leave-one-section-out)\n\n" + t_md +
                       "\nRatios (same run, mean ROC AUC of a row):\n\n" + "\n".join(t_lines))
        c_md = (out / "clustering_benchmark.md").read_text().replace(
            f"`spafoundation {' '.join(cluster_cli)}`", here)
        update_section("clustering", "## Spatial clustering (ARI / NMI against reference regions)\n\n" + c_md +
                       "\nRatios (same run, mean ARI over sections):\n\n" + "\n".join(c_lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
