"""How much expression a perfect tumour map carries to another patient: a tumour-label oracle beside the default
pipeline and the best colour baseline, on the same leave-one-patient-out splits and genes, in one run.

    .venv/bin/python bench/expression_headroom.py [--data ../shared/data/her2st]

The oracle predicts every gene from the *true* tumour label of the test spots (A1: the pathologist's labels; C2-C6:
the authors' annotation of their expression clusters, as in the tumour benchmark; spots of unknown label at the
training prevalence), each gene's intercept and slope on the label fitted on the training patient's labelled spots.
It reads the test spots' labels, so it is not a contender: it says how much of a gene's spot-to-spot variation in
the other patient the tumour / non-tumour contrast explains with the sign and scale learnt on the training
patient, i.e. what any image model gets from recognising tumour alone. Also printed: the share of genes whose
relation to the label has the same sign in both patients. Rewrites the `expression_headroom` section of
BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spafoundation as sf
from _markdown import update_section
from spafoundation.eval import expression_benchmark as eb
from spafoundation.eval.metrics import evaluate_expression
from spafoundation.eval.splits import LOPO, benchmark_splits
from spafoundation.io.readers import read_dataset
from spafoundation.pp.genes import expression_matrix
from spafoundation.tasks.expression import DEFAULT_ENCODER
from spafoundation.tasks.labels import label_source, tumor_labels
from spafoundation.utils.precision import REFERENCE

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["C2", "C3", "C4", "C5", "C6", "A1"]
LABEL_COLUMNS = "label,cluster_annotation"  # the tumour benchmark's order of preference
BASELINE = "colour/texture + ridge, per-section z"  # the best colour baseline across patients (BENCHMARKS.md)
ORACLE = "oracle: true tumour label of the test spots, per-gene line fitted on the training patient"


def labels(adata) -> np.ndarray:
    return tumor_labels(adata, label_source(adata, LABEL_COLUMNS))


def _line(label: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(2, genes): each gene's intercept and slope on the label, least squares."""
    return np.linalg.lstsq(np.stack([np.ones(len(label)), label], axis=1), y, rcond=None)[0]


def oracle_rows(data, genes_per_split: dict) -> tuple[list[dict], dict[str, float]]:
    """The oracle's mean r per test section of each leave-one-patient-out split, and per direction the share of
    genes whose slope on the label has the same sign in the training and the test patient."""
    rows, agreement = [], {}
    for kind, direction, test, train in benchmark_splits(data):
        if kind != LOPO:
            continue
        genes = genes_per_split[f"{kind}:{direction}:{'+'.join(test)}"]
        y = np.concatenate([expression_matrix(data[n], genes) for n in train])
        lab = np.concatenate([labels(data[n]) for n in train])
        known = np.isfinite(lab)
        coef = _line(lab[known], y[known])
        prevalence = lab[known].mean()
        test_slopes = []
        for t in test:
            lt = labels(data[t])
            ok = np.isfinite(lt)
            lt = np.where(ok, lt, prevalence)
            y_true = expression_matrix(data[t], genes)
            m = evaluate_expression(y_true, coef[0] + lt[:, None] * coef[1])
            rows.append({"direction": direction, "test": t, "mean_r": m["mean_r"]})
            test_slopes.append(_line(lt[ok], y_true[ok])[1])
        agreement[direction] = float(np.mean(np.sign(np.mean(test_slopes, axis=0)) == np.sign(coef[1])))
    return rows, agreement


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--cache-dir", default=str(ROOT / "bench_out" / "cache"))
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = read_dataset(args.data, SECTIONS)
    contenders = [c for c in eb.baseline_contenders(DEFAULT_ENCODER, "random-vitt16", options=False)
                  if c.name == BASELINE or c.name.endswith("(default)")]
    gene_sets = {"hvg:50": "hvg:50", "785-gene list": str(Path(args.data) / "gene_lists/her_hvg_cut_1000.npy")}
    lines = ["| genes | train -> test | " + " | ".join(c.name for c in contenders) + f" | {ORACLE} | "
             "genes whose slope on the label has the same sign in both patients |", "|" + "---|" * (len(contenders) + 4)]
    with sf.settings.override(precision=REFERENCE, progress=False):
        for label, spec in gene_sets.items():
            rows, genes = eb.run_expression_benchmark(data, contenders, genes=spec, cache_dir=args.cache_dir)
            summary = eb.summarize(rows, contenders)
            summary = summary[summary["split"] == LOPO].set_index(["contender", "direction"])["mean_r"]
            oracle, agreement = oracle_rows(data, genes)
            per_direction = {d: np.mean([r["mean_r"] for r in oracle if r["direction"] == d]) for d in agreement}
            directions = [*per_direction, "mean of the directions"]
            per_direction["mean of the directions"] = float(np.mean(list(per_direction.values())))
            for d in directions:
                share = f"{agreement[d]:.0%}" if d in agreement else "-"
                cells = [f"{summary[(c.name, d if d in agreement else 'mean of the directions (2)')]:.3f}"
                         for c in contenders]
                row = f"| {label} | {d} | " + " | ".join(cells) + f" | {per_direction[d]:.3f} | {share} |"
                print(row, flush=True)
                lines.append(row)
    body = ("## How much a perfect tumour map explains across patients (expression headroom)\n\n"
            "Command: `.venv/bin/python bench/expression_headroom.py`\n\n"
            f"HER2ST, {LOPO} (train on patient C's C2-C6, test A1, and the reverse), normalised targets "
            f"(log1p(counts / library size * 1e4)), genes chosen on the training sections of each split as in the "
            f"expression benchmark, encoders at {REFERENCE}; mean per-gene Pearson r per test section, averaged over "
            "a direction's test sections. The oracle reads the true tumour label of the test spots (A1: "
            "pathologist labels; C: the authors' cluster annotation) and predicts each gene by the line on the label "
            "fitted on the training patient: what recognising tumour perfectly would give an image model. Where "
            "the default pipeline is at or above the oracle, it already gets what the tumour contrast carries "
            "across these two patients, and the rest of a gene's variation in the other patient follows other "
            "rules than in the training patient.\n\n"
            + "\n".join(lines) + f"\n\n{time.perf_counter() - t0:.0f} s on this machine.")
    if not args.no_write:
        update_section("expression_headroom", body)
    return 0


if __name__ == "__main__":
    sys.exit(run())
