"""Start-up and reading speed: what a user waits for before any model runs.

- ``spafoundation --help``: a fresh process building the whole parser, against a fresh process importing the
  numerical stack that the commands import where they run (torch, anndata): what --help cost when the parser
  imported it.
- Reading HER2ST without images: its 6 imaged sections only (``imaged_only``) against all 36.
- Patches from a TIFF written as one compressed strip (C2's H&E re-saved so; what some microscope software and
  image editors write): the level decoded once and kept (``io/slide.TiffSlide``, ``WHOLE_CHUNK_PX``), against
  decoding the strip again for every region (what every read did before), on the same spots, patches checked equal.

Run: .venv/bin/python bench/read_speed.py [--data ../shared/data/her2st] [--repeats 3]
Writes its table into BENCHMARKS.md (section ``read_speed``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import update_section
from spafoundation.io import slide as slide_module
from spafoundation.io.anndata_spec import image_path, microns_per_pixel
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


def one_strip_tiff_seconds(data: str, repeats: int, n_spots: int = 20) -> tuple[float, float, int]:
    """(s per patch decoding the level once, s per patch decoding the strip per region, megapixels) on C2."""
    import tempfile

    c2 = read_dataset(data, sections=["C2"], with_images=False)["C2"]
    Image.MAX_IMAGE_PIXELS = None
    rgb = np.asarray(Image.open(image_path(c2)).convert("RGB"))
    xy, mpp = c2.obsm["spatial"][:n_spots], microns_per_pixel(c2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one_strip.tif"
        tifffile.imwrite(path, rgb, photometric="rgb", compression="zlib", rowsperstrip=rgb.shape[0])

        def patches():
            slide_module._DECODED.clear()
            with slide_module.open_slide(path, mpp=mpp) as slide:
                return np.stack([slide.read_region(p, 100, 224) for p in xy])

        once_s, once = median_seconds(patches, repeats)
        default, slide_module.WHOLE_CHUNK_PX = slide_module.WHOLE_CHUNK_PX, 1 << 62
        try:
            each_s, each = median_seconds(patches, repeats)
        finally:
            slide_module.WHOLE_CHUNK_PX = default
    assert np.array_equal(once, each)
    return once_s / n_spots, each_s / n_spots, rgb.shape[0] * rgb.shape[1] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "her2st"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (Path(args.data) / "ST-cnts").is_dir():
        sys.exit(f"no count tables under {args.data}/ST-cnts")

    help_s = fresh_process_seconds("from spafoundation.cli import build_parser; build_parser()", args.repeats)
    stack_s = fresh_process_seconds("import torch, anndata, spafoundation.io", args.repeats)
    print(f"--help parser {help_s:.2f} s; importing torch + anndata + spafoundation.io {stack_s:.2f} s")

    def dataset_seconds(**options) -> tuple[float, int]:
        return median_seconds(lambda: len(read_dataset(args.data, with_images=False, **options)), args.repeats)

    imaged_s, n_imaged = dataset_seconds(imaged_only=True)
    all_s, n_all = dataset_seconds()
    print(f"read_dataset: {n_imaged} imaged sections {imaged_s:.1f} s, all {n_all} sections {all_s:.1f} s")

    strip_once, strip_each, strip_mpx = one_strip_tiff_seconds(args.data, args.repeats)
    print(f"one-strip TIFF ({strip_mpx:.0f} Mpx): {strip_once:.3f} s per patch decoded once, {strip_each:.3f} s "
          f"decoding per region: {strip_each / strip_once:.1f}x")

    body = f"""## Start-up and reading

What a user waits for before any model runs, on this machine (2 cores), each the median of {args.repeats} runs in one
run of the script. `--help`: a fresh Python process building the whole command-line parser, against one importing
the numerical stack the commands load where they run (the parser imported it until stop 35). Reading the dataset:
`read_dataset(..., with_images=False)` of the sections with an H&E image only (`imaged_only=True`, what the commands
that need an image read without `--sections`: the others' count tables are never opened) against all of them.
One-strip TIFF: C2's H&E ({strip_mpx:.0f} Mpx) re-saved as a TIFF of one zlib strip, 20 spot patches (100 um,
224 px) read through `open_slide`, the whole level decoded once and kept against the strip decoded again for each
region, the time per patch including the one decode (so it falls with more spots), patches checked equal.

| what | ours | baseline | speed-up |
|---|---|---|---|
| `spafoundation --help` (parser, fresh process) | {help_s:.2f} s | {stack_s:.2f} s (torch + anndata + readers) | **{stack_s / help_s:.1f}x** |
| HER2ST's {n_imaged} imaged sections (`imaged_only`) | {imaged_s:.1f} s | {all_s:.1f} s (all {n_all} sections) | \
**{all_s / imaged_s:.1f}x** |
| a patch from a one-strip compressed TIFF | {strip_once:.3f} s | {strip_each:.3f} s (the strip decoded per region) | \
**{strip_each / strip_once:.1f}x** |

Reproduce: `.venv/bin/python bench/read_speed.py`"""
    update_section("read_speed", body)


if __name__ == "__main__":
    main()
