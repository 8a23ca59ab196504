"""How far to trust a prediction: does a gene's cross-validated r (stored in every expression model) predict how
well it is predicted on a held-out section and on a held-out patient, and does the image-shift score flag the
other patient's scan and not a held-out section of the training patient?

    .venv/bin/python bench/reliability.py [--data ../shared/data/her2st]

Fits the default expression model (fp32) on training sections of HER2ST, predicts held-out sections, and per
held-out section prints: mean r, the Spearman correlation between each gene's cv_pearson and its realised r, the
mean r of the reliable genes against the rest, and the shift score against the training range. Rewrites the
`reliability` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation import defaults
from spafoundation.eval.metrics import pearson_per_gene
from spafoundation.io.readers import read_dataset
from spafoundation.pp.genes import expression_matrix
from spafoundation.tasks.expression import DEFAULT_ENCODER, fit_expression, resolve_encoder
from spafoundation.utils.precision import REFERENCE

ROOT = Path(__file__).resolve().parent.parent
# (training sections, held-out sections): patient C only (section-level cv), then C with A1 (patient-level cv), then
# one section alone (cv over stripes of it: one Xenium run or Visium slide is all many users have)
FITS = [(["C2", "C3", "C4", "C5"], ["C6", "A1"]), (["C2", "C3", "C4", "A1"], ["C5", "C6"]), (["C3"], ["C6", "A1"])]


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--cache-dir", default=str(ROOT / "bench_out" / "cache"))
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = read_dataset(args.data, sorted({s for tr, te in FITS for s in tr + te}))
    encoder = resolve_encoder(DEFAULT_ENCODER, precision=REFERENCE)
    gene_sets = {"top-50 HVG": "hvg:50", "785-gene list": str(Path(args.data) / "gene_lists/her_hvg_cut_1000.npy")}
    lines = ["| genes | trained on | cv over | held out | mean r | Spearman(cv r, r) | reliable genes | "
             "mean r reliable / rest | shift score | training range | flagged |", "|" + "---|" * 11]
    for label, spec in gene_sets.items():
        for train, tests in FITS:
            measured = sorted(set.intersection(*(set(data[t].var_names) for t in tests)))  # genes to score
            model = fit_expression([data[n] for n in train], encoder, genes=spec, cache_dir=args.cache_dir,
                                   candidate_genes=measured)
            cv_over = next(k for k in ("patients", "sections", "stripes") if k in model.gene_cv)
            for t in tests:
                pred = model.predict(data[t], cache_dir=args.cache_dir)
                r = pearson_per_gene(expression_matrix(data[t], model.genes, model.target_sum), pred.X)
                cv, rel = pred.var["cv_pearson"].to_numpy(), pred.var["reliable"].to_numpy()
                ok = np.isfinite(r) & np.isfinite(cv)
                rho = spearmanr(cv[ok], r[ok])[0]
                shift = pred.uns["spafoundation_prediction"]["shift"][t]
                row = (f"| {label} | {'+'.join(train)} | {cv_over} | {t} | {np.nanmean(r):.3f} | {rho:.2f} | "
                       f"{int(rel.sum())}/{len(rel)} | {np.nanmean(r[rel]):.3f} / {np.nanmean(r[~rel]):.3f} | "
                       f"{shift['score']:.2f} | {_number(shift['training_limit'])} | "
                       f"{'yes' if shift['out_of_range'] else 'no'} |")
                print(row, flush=True)
                lines.append(row)
    body = ("## How far to trust a prediction (per-gene cv r, image shift)\n\n"
            "Command: `.venv/bin/python bench/reliability.py`\n\n"
            f"Default expression model ({DEFAULT_ENCODER} pipeline, {defaults.EXPRESSION_HEAD} head, {REFERENCE}), "
            "fitted on the training "
            "sections, scored per held-out section: Pearson r per gene across its spots. 'cv over': the level of the "
            "stored cross-validated r (patients where the training sections come from two; stripes: 4 contiguous bands "
            "of the one training section held out in turn). Reliable: cv r >= 0.1. "
            "Shift: median distance of the section's spots to the nearest training spot in whitened colour/texture "
            "space; training range: the largest such distance of a training section from the others.\n\n"
            + "\n".join(lines) + f"\n\n{time.perf_counter() - t0:.0f} s on this machine.")
    if not args.no_write:
        update_section("reliability", body)
    return 0


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"  # no training range from one training section


if __name__ == "__main__":
    sys.exit(run())
