"""How long `fit-expression` takes once the features are cached: ours against an earlier revision of the package,
in the same run, on the same cached features, with the predictions checked equal.

The default head (a ridge ensemble plus two expression programs, each alpha by grouped inner cross-validation) and
the per-gene cross-validated r stored in the model (one refit per held-out section, and per held-out patient
where there are two) are all scaling + PCA + ridge fits: the time is theirs, not the features'.

Run: .venv/bin/python bench/fit_speed.py [--data ../shared/data/her2st] [--baseline REV] [--repeats 2]
Each fit runs in a fresh process (the current tree, then the baseline's ``src`` from ``git archive``), alternating;
the median of ``--repeats`` is reported. Writes its table into BENCHMARKS.md (section ``fit_speed``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section

ROOT = Path(__file__).resolve().parent.parent
# the revision before the shared transforms, the refits without cross-validation and the Gram-matrix SVD
BASELINE = "e35014f"
CASES = {"C2-C5 (one patient)": (["C2", "C3", "C4", "C5"], "C6"),
         "C2-C5 + A1 (two patients)": (["C2", "C3", "C4", "C5", "A1"], "C6")}

WORKER = """
import json, sys, time
import numpy as np
from spafoundation.io.readers import read_dataset
from spafoundation.tasks.expression import fit_expression
data, cache, train, test, out = sys.argv[1:6]
train = train.split(",")
sections = read_dataset(data, train + [test])
t0 = time.perf_counter()
model = fit_expression([sections[n] for n in train], cache_dir=cache)
seconds = time.perf_counter() - t0
np.save(out, np.asarray(model.predict(sections[test], cache_dir=cache).X))
print(json.dumps({"seconds": seconds, "genes": len(model.genes), "spots": model.training["n_spots"]}))
"""


def fit_once(src: Path, data: str, cache: str, train: list[str], test: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, data, cache, ",".join(train), test, str(out)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--cache-dir", default=str(ROOT / "bench_out" / "cache"))
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        sources = {"ours": ROOT / "src", "baseline": tmp / "src"}
        for case, (train, test) in CASES.items():
            seconds = {k: [] for k in sources}
            for _ in range(args.repeats):
                for name, src in sources.items():
                    info = fit_once(src, args.data, args.cache_dir, train, test, tmp / f"{name}.npy")
                    seconds[name].append(info["seconds"])
                    print(case, name, f"{info['seconds']:.1f} s", flush=True)
            diff = float(np.max(np.abs(np.load(tmp / "ours.npy") - np.load(tmp / "baseline.npy"))))
            ours, base = statistics.median(seconds["ours"]), statistics.median(seconds["baseline"])
            rows.append((case, info["spots"], info["genes"], ours, base, diff))
            print(f"{case}: {ours:.1f} s vs {base:.1f} s ({base / ours:.2f}x), predictions differ by at most {diff:.1e}")
    lines = "\n".join(f"| {case} | {spots} | {genes} | {ours:.1f} s | {base:.1f} s | **{base / ours:.1f}x** | {diff:.0e} |"
                      for case, spots, genes, ours, base, diff in rows)
    body = f"""## Fitting an expression model

`fit_expression` with every default (hvg:50, the default features from the cache, the ridge-ensemble head with its
programs, and the per-gene cross-validated r stored in the model), timed from the read sections to the fitted model
in a fresh process, on this machine (2 cores), the median of {args.repeats} alternating runs; the baseline is the
package at `{args.baseline}` on the same cached features. Max |difference| of the two models' predictions of C6 (log1p
normalised expression).

| training sections | spots | genes | ours | baseline (`{args.baseline}`) | speed-up | max prediction difference |
|---|---|---|---|---|---|---|
{lines}

Reproduce: `.venv/bin/python bench/fit_speed.py`"""
    update_section("fit_speed", body)


if __name__ == "__main__":
    main()
