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
