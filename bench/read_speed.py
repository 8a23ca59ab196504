"""Start-up and reading speed: what a user waits for before any model runs.

- ``spafoundation --help``: a fresh process building the whole parser, against a fresh process importing the
  numerical stack that the commands import where they run (torch, anndata): what --help cost when the parser
  imported it.
- HER2ST's 36 legacy ST count tables (13,620 spots x ~15,500 genes): read with the integer parser whole-number
  tables take (``io/legacy_st._whole_counts``), against numpy's float parser that reads every other table, in the
  same run, on the same bytes, with the values checked equal.

Run: .venv/bin/python bench/read_speed.py [--data ../shared/data/her2st] [--repeats 3]
Writes its table into BENCHMARKS.md (section ``read_speed``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation.io.legacy_st import read_counts_table
from spafoundation.io.readers import read_dataset

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(work, repeats: int) -> tuple[float, object]:
    """The median wall time of ``repeats`` calls of ``work()``, and what the last call returned."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def fresh_process_seconds(code: str, repeats: int) -> float:
    return median_seconds(lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True),
                          repeats)[0]


def float_parser(path: Path) -> np.ndarray:
    """The float path of ``read_counts_table`` on its own: the same split, then numpy's float parser."""
    with gzip.open(path, "rb") as fh:
        lines = fh.read().rstrip(b"\n").replace(b"\r", b"").split(b"\n")
    rows = [line.split(b"\t", 1)[1] for line in lines[1:] if line]
    return np.loadtxt(io.BytesIO(b"\n".join(rows)), delimiter="\t", dtype=np.float64, ndmin=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tables = sorted((Path(args.data) / "ST-cnts").glob("*.tsv.gz"))
    if not tables:
        sys.exit(f"no count tables under {args.data}/ST-cnts")

    help_s = fresh_process_seconds("from spafoundation.cli import build_parser; build_parser()", args.repeats)
    stack_s = fresh_process_seconds("import torch, anndata, spafoundation.io", args.repeats)
    print(f"--help parser {help_s:.2f} s; importing torch + anndata + spafoundation.io {stack_s:.2f} s")

    ours, theirs, spots = [], [], 0
    for _ in range(args.repeats):
        t_ours = t_float = 0.0
        for path in tables:
            t0 = time.perf_counter()
            _, _, values = read_counts_table(path)
            t1 = time.perf_counter()
            reference = float_parser(path)
            t_float += time.perf_counter() - t1
            t_ours += t1 - t0
            assert np.array_equal(values, reference), path
            spots += len(values)
        ours.append(t_ours)
        theirs.append(t_float)
    ours_s, float_s = statistics.median(ours), statistics.median(theirs)
    print(f"{len(tables)} count tables: {ours_s:.1f} s (read_counts_table) vs {float_s:.1f} s (float parser): "
          f"{float_s / ours_s:.2f}x")

    def dataset_seconds(**options) -> tuple[float, int]:
        return median_seconds(lambda: len(read_dataset(args.data, with_images=False, **options)), args.repeats)

    imaged_s, n_imaged = dataset_seconds(imaged_only=True)
    all_s, n_all = dataset_seconds()
    print(f"read_dataset: {n_imaged} imaged sections {imaged_s:.1f} s, all {n_all} sections {all_s:.1f} s")

    body = f"""## Start-up and reading

What a user waits for before any model runs, on this machine (2 cores), each the median of {args.repeats} runs in one
run of the script. `--help`: a fresh Python process building the whole command-line parser, against one importing
the numerical stack the commands load where they run (the parser imported it until stop 35). Count tables: the
{len(tables)} HER2ST legacy ST tables ({spots // args.repeats} spots x ~15,500 genes), `read_counts_table` (whole numbers
parsed as integers) against the float parser alone on the same bytes (which every table went through before), values
checked equal. Reading the dataset: `read_dataset(..., with_images=False)` of the sections with an H&E image only
(`imaged_only=True`, what the commands that need an image read without `--sections`: the others' count tables are
never opened) against all of them.

| what | ours | baseline | speed-up |
|---|---|---|---|
| `spafoundation --help` (parser, fresh process) | {help_s:.2f} s | {stack_s:.2f} s (torch + anndata + readers) | **{stack_s / help_s:.1f}x** |
| {len(tables)} count tables | {ours_s:.1f} s | {float_s:.1f} s (float parser) | **{float_s / ours_s:.2f}x** |
| HER2ST's {n_imaged} imaged sections (`imaged_only`) | {imaged_s:.1f} s | {all_s:.1f} s (all {n_all} sections) | \
**{all_s / imaged_s:.1f}x** |

Reproduce: `.venv/bin/python bench/read_speed.py`"""
    update_section("read_speed", body)


if __name__ == "__main__":
    main()
