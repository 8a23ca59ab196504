"""How far predictions move when the same sections come from another lab or scanner (the check the field notes ask
for beside held-out patients): each head is fitted on the sections as scanned, then predicts every test section as
scanned, from a re-stained copy of its image, and from a re-stained and coarsened copy (eval/stain_copies.py).
The last rows fit the default pipeline's head on the training sections' copies too (their spots keep their
section's targets and cross-validation group; features z-scored per copy, as per section).

    .venv/bin/python bench/stain_stability.py [--data ../shared/data/her2st]

Per contender and split: mean per-gene r against the measured expression on each view, and the stability of each
copy: the Pearson r, per gene across the section's spots, between the predictions from the copy and from the scan
(1: the copy changes nothing), averaged over genes and test sections. Every contender and view in one run, fp32,
hvg:50 chosen per fold on its training sections, log1p(counts / library size * 1e4) targets. Rewrites the
`stain_stability` section of BENCHMARKS.md. The copies are tiled, uncompressed TIFFs under --copies (3.2 GB for
HER2ST's six sections), kept for the next run, whose features then come from the cache.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation._settings import settings
from spafoundation.eval.expression_benchmark import Contender, FeatureStore, SplitTargets, pipeline_contender
from spafoundation.eval.metrics import evaluate_expression, pearson_per_gene
from spafoundation.eval.splits import LOPO, benchmark_splits
from spafoundation.eval.stain_copies import jittered_copy
from spafoundation.io.readers import read_dataset
from spafoundation.pp.genes import expression_matrix
from spafoundation.tasks.expression import DEFAULT_ENCODER, resolve_encoder
from spafoundation.utils.precision import REFERENCE

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["C2", "C3", "C4", "C5", "C6", "A1"]
VIEWS = ("scan", "stain", "coarse")
COARSEN = (2.0, 4.0)  # the coarse copy's downscale factor, drawn log-uniformly per section


def copies(sections: dict, folder: Path) -> dict:
    """``<section>@stain`` and ``<section>@coarse`` of every section, each with its own reproducible draw."""
    out = {}
    for n, a in sections.items():
        seed = zlib.crc32(n.encode())
        factor = float(np.exp(np.random.default_rng(seed).uniform(*np.log(COARSEN))))
        out[f"{n}@stain"] = jittered_copy(a, folder, seed=seed, name=f"{n}_stain")
        out[f"{n}@coarse"] = jittered_copy(a, folder, seed=seed + 1, coarsen=factor, name=f"{n}_coarse")
    return out


def view_name(section: str, view: str) -> str:
    return section if view == "scan" else f"{section}@{view}"


def contenders() -> list[tuple[str, Contender, tuple[str, ...]]]:
    """(row name, contender, the views of each training section its head is fitted on)."""
    z = {"standardize": "section"}
    pipeline = pipeline_contender("default pipeline", DEFAULT_ENCODER)
    scans = ("scan",)
    return [(c.name, c, scans) for c in (Contender("mean colour + ridge, per-section z", source="mean_colour", **z),
                                         Contender("colour/texture + ridge, per-section z", source="colour_texture",
                                                   **z),
                                         Contender(f"{DEFAULT_ENCODER} + ridge", encoder=DEFAULT_ENCODER),
                                         pipeline)] + [
        # training on augmented copies (issue #17): the README's table of what it gives the default pipeline
        ("default pipeline, fitted on the scans + their re-stained copies", pipeline, ("scan", "stain")),
        ("default pipeline, fitted on the scans + their re-stained and coarse copies", pipeline, VIEWS)]


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--cache-dir", default=str(ROOT / "bench_out" / "cache"))
    ap.add_argument("--copies", default=str(ROOT / "bench_out" / "stain_copies"), help="where the copies are written")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sections = read_dataset(args.data, SECTIONS)
    store = FeatureStore({**sections, **copies(sections, Path(args.copies))}, args.cache_dir,
                         encoders={DEFAULT_ENCODER: resolve_encoder(DEFAULT_ENCODER, precision=REFERENCE)})
    rows = []
    with settings.override(precision=REFERENCE):
        for kind, direction, test, train in benchmark_splits(sections):
            split = SplitTargets.of(sections, train, test, "hvg:50")
            for name, c, fitted_on in contenders():
                X = np.concatenate([store.get(c, view_name(n, v))[0] for v in fitted_on for n in train])
                head = split.fit(c, X, store.get(c, train[0])[1], copies=len(fitted_on))
                for t in test:
                    y = expression_matrix(sections[t], split.genes)
                    pred = {v: head.predict(store.get(c, view_name(t, v))[0]) for v in VIEWS}
                    row = {"contender": name, "split": kind, "direction": direction, "test": t}
                    for v in VIEWS:
                        row[f"r {v}"] = evaluate_expression(y, pred[v])["mean_r"]
                        if v != "scan":
                            row[f"stability {v}"] = float(np.nanmean(pearson_per_gene(pred["scan"], pred[v])))
                    rows.append(row)
                    print(row, flush=True)
    table = summary(pd.DataFrame(rows))
    print(table)
    body = (f"## Stain and scanner stability of the predictions\n\n"
            f"Command: `.venv/bin/python bench/stain_stability.py`\n\n{__doc__.split(chr(10) + chr(10))[0]}\n\n"
            "Copies: the whole image re-stained in HED optical density (haematoxylin, eosin and residual each scaled "
            "by 1 + N(0, 0.1) and shifted by N(0, 0.03); brightness by up to 10%), and a second draw of the same, "
            f"downscaled by a factor drawn in [{COARSEN[0]:g}, {COARSEN[1]:g}] and scaled back up. r: mean per-gene "
            "Pearson against the measured expression (hvg:50, normalised targets, fp32). Stability: per-gene Pearson "
            "between the predictions from the copy and from the scan, averaged over genes, then sections. "
            "Leave-one-patient-out is the mean of C -> A1 and A1 -> C.\n\n"
            + markdown(table) + f"\n\n{time.perf_counter() - t0:.0f} s on this machine.")
    if not args.no_write:
        update_section("stain_stability", body)
    return 0


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean over test sections per direction, then over the leave-one-patient-out directions."""
    metrics = [c for c in rows.columns if c.startswith(("r ", "stability "))]
    per_direction = rows.groupby(["contender", "split", "direction"], sort=False)[metrics].mean().reset_index()
    lopo = per_direction[per_direction["split"] == LOPO].groupby("contender", sort=False)[metrics].mean()
    within = per_direction[per_direction["split"] != LOPO].groupby("contender", sort=False)[metrics].mean()
    return pd.concat({"leave-one-patient-out": lopo, "within patient C": within}, names=["split"]).reset_index()


def markdown(table: pd.DataFrame) -> str:
    cols = ["split", "contender", "r scan", "r stain", "r coarse", "stability stain", "stability coarse"]
    head = ["split", "contender", "r as scanned", "r re-stained", "r re-stained + coarse", "stability re-stained",
            "stability re-stained + coarse"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table[cols].iterrows():
        lines.append("| " + " | ".join([r["split"], r["contender"]] + [f"{r[c]:.3f}" for c in cols[2:]]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run())
