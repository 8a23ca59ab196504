"""A 20000 x 20000 px pyramidal slide (1.2 GB of RGB) is read region by region without ever being loaded.

The slide is a periodic tiling of a 1024 px crop of real H&E (section C2), written as JPEG tiles with four
reduced levels in SubIFDs. Because it is periodic, only a handful of distinct tiles exist per level: each is
JPEG-encoded once and its bytes repeated, so writing the 1.2 GB image takes seconds. Periodicity also gives
the exact expected pixels of any region."""

import subprocess
import sys
import tracemalloc

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from spafoundation.io import open_slide
from spafoundation.io.anndata_spec import image_path

SIDE = 20000
TILE = 512
PERIOD = 1024
LEVELS = 5  # 20000, 10000, 5000, 2500, 1250 px
MPP = 0.5
FULL_BYTES = SIDE * SIDE * 3
JPEG_ARGS = {"level": 90, "colorspace": "RGB", "outcolorspace": "YCBCR", "subsampling": (2, 2)}


def periodic_window(pattern: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    ph, pw = pattern.shape[:2]
    return pattern[np.ix_((y0 + np.arange(h)) % ph, (x0 + np.arange(w)) % pw)]


def encoded_tiles(pattern: np.ndarray, side: int):
    """JPEG bytes of every tile of a ``side`` x ``side`` periodic image, row by row, each distinct tile once."""
    cache: dict[tuple[int, int], bytes] = {}
    n = -(-side // TILE)
    period = pattern.shape[0]
    for i in range(n):
        for j in range(n):
            key = (i * TILE % period, j * TILE % period)
            if key not in cache:
                cache[key] = imagecodecs.jpeg8_encode(periodic_window(pattern, *key, TILE, TILE), **JPEG_ARGS)
            yield cache[key]


@pytest.fixture(scope="module")
def big_slide(her2st_c2, tmp_path_factory):
    with open_slide(image_path(her2st_c2)) as c2:
        x, y = her2st_c2.obsm["spatial"][len(her2st_c2) // 2]
        crop = c2.read_level_region(0, int(x) - PERIOD // 2, int(y) - PERIOD // 2, PERIOD, PERIOD)
    patterns = [crop] + [
        np.asarray(Image.fromarray(crop).reduce(2**k)) for k in range(1, LEVELS)
    ]  # box reduction of the crop = box reduction of its periodic tiling, since 2**k divides PERIOD
    path = tmp_path_factory.mktemp("big") / "slide_20k.tif"
    common = {"dtype": np.uint8, "tile": (TILE, TILE), "compression": "jpeg", "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            encoded_tiles(patterns[0], SIDE),
            shape=(SIDE, SIDE, 3),
            subifds=LEVELS - 1,
            resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER",
            **common,
        )
        for k in range(1, LEVELS):
            side = SIDE // 2**k
            tif.write(encoded_tiles(patterns[k], side), shape=(side, side, 3), subfiletype=1, **common)
    return path, patterns


def test_pyramid_levels_and_metadata(big_slide):
    path, _ = big_slide
    assert path.stat().st_size < FULL_BYTES / 5  # compressed on disk
    with open_slide(path) as slide:
        assert (slide.width, slide.height) == (SIDE, SIDE)
        assert slide.level_downsamples == [1, 2, 4, 8, 16]
        assert slide.mpp == pytest.approx(MPP)


def test_region_reads_are_exact_and_use_little_memory(big_slide):
    path, patterns = big_slide
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, SIDE, size=(200, 2))
    tracemalloc.start()
    try:
        with open_slide(path) as slide:
            # 100 um at 0.5 um/px = 200 px at level 0, returned at 200 px: no resampling, exact pixels
            patches = [slide.read_region((float(x), float(y)), 100, 200) for x, y in centres[:100]]
            # 400 um into 100 px: read from level 2 (downsample 4, 200 px) and halved
            coarse = [slide.read_region((float(x), float(y)), 400, 100) for x, y in centres[100:]]
            thumb, scale = slide.thumbnail(1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"peak traced memory {peak / 1e6:.1f} MB for a {FULL_BYTES / 1e9:.1f} GB slide")
    assert peak < FULL_BYTES / 20  # < 60 MB, i.e. the full image is never materialised

    for (x, y), patch in zip(centres[:100], patches):
        x0, y0 = round(x - 100), round(y - 100)
        expected = periodic_window(patterns[0], y0, x0, 200, 200).astype(int)
        inside = np.zeros((200, 200), bool)
        inside[max(0, -y0) : SIDE - y0, max(0, -x0) : SIDE - x0] = True
        assert np.abs(patch.astype(int) - expected)[inside].mean() < 4  # JPEG error only
        assert (patch[~inside] == 255).all()  # outside the slide is white
    assert all(p.shape == (100, 100, 3) for p in coarse)
    assert thumb.shape == (1000, 1000, 3) and scale == pytest.approx(0.05)


def test_peak_resident_memory_of_a_fresh_process(big_slide):
    """The same reads in a new process: its peak RSS grows by far less than the 1.2 GB image (C buffers included,
    which tracemalloc does not see)."""
    path, _ = big_slide
    code = f"""
import resource
import numpy as np
from spafoundation.io import open_slide
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open_slide({str(path)!r}) as slide:
    for x, y in np.random.default_rng(1).uniform(0, {SIDE}, size=(300, 2)):
        slide.read_region((float(x), float(y)), 100, 224)
    slide.thumbnail(1000)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    base_kb, peak_kb = (int(v) for v in out.stdout.split())
    grown = (peak_kb - base_kb) * 1024
    print(f"peak RSS grew by {grown / 1e6:.1f} MB reading a {FULL_BYTES / 1e9:.1f} GB slide")
    assert grown < FULL_BYTES / 10
