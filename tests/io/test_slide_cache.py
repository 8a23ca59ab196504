"""JPEG/PNG images are decoded once and shared by later handles, within a memory budget, and re-read when the
file changes."""

import os

import numpy as np
from PIL import Image

from spafoundation.io import open_slide
from spafoundation.io import slide as slide_mod


def _png(path, value):
    Image.fromarray(np.full((40, 50, 3), value, np.uint8)).save(path)
    return path


def test_decoded_images_are_shared_bounded_and_fresh(tmp_path, monkeypatch):
    cache = slide_mod._DecodedImages(max_bytes=2 * 40 * 50 * 3)
    monkeypatch.setattr(slide_mod, "_DECODED", cache)
    a, b, c = (_png(tmp_path / f"{k}.png", v) for k, v in (("a", 10), ("b", 20), ("c", 30)))
    with open_slide(a, mpp=1.0) as s1, open_slide(a, mpp=1.0) as s2:
        r1 = s1.read_level_region(0, 0, 0, 5, 5)
        assert s1._load() is s2._load()  # one decoded array for both handles
        assert not s1._load().flags.writeable
        r1[:] = 0  # regions are copies: the shared array is untouched
        assert s2.read_level_region(0, 0, 0, 5, 5).max() == 10
    for p in (b, c):
        with open_slide(p, mpp=1.0) as s:
            s.read_level_region(0, 0, 0, 1, 1)
    assert len(cache._items) == 2 and not any(k[0].endswith("a.png") for k in cache._items)  # oldest evicted
    _png(c, 99)
    os.utime(c, ns=(0, 123))
    with open_slide(c, mpp=1.0) as s:
        assert s.read_level_region(0, 0, 0, 1, 1)[0, 0, 0] == 99  # the changed file is decoded again


def test_tiff_of_one_compressed_strip_is_decoded_once(c2_small, tmp_path, monkeypatch):
    """A strip covering the level would be decoded whole for every region: the level is decoded once and shared,
    and regions equal those of the tiled TIFF of the same pixels."""
    import tifffile

    monkeypatch.setattr(slide_mod, "_DECODED", slide_mod._DecodedImages())
    monkeypatch.setattr(slide_mod, "WHOLE_CHUNK_PX", 1 << 20)  # c2_small's strip is 5.7 Mpx
    one_strip = tmp_path / "one_strip.tif"
    tifffile.imwrite(one_strip, c2_small.rgb, photometric="rgb", compression="zlib",
                     rowsperstrip=c2_small.rgb.shape[0])
    decodes = []
    decode = slide_mod.TiffSlide._decode
    monkeypatch.setattr(slide_mod.TiffSlide, "_decode", lambda self, level: decodes.append(level) or decode(self, level))
    xy = c2_small.xy[::20]
    with open_slide(one_strip, mpp=c2_small.mpp) as a, open_slide(c2_small.tiff, mpp=c2_small.mpp) as b:
        for p in xy:
            np.testing.assert_array_equal(a.read_region(p, 100, 64), b.read_region(p, 100, 64))
    with open_slide(one_strip, mpp=c2_small.mpp) as again:
        again.read_region(xy[0], 100, 64)
    assert decodes == [0]  # once, for every region and both handles
