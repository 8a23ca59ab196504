import numpy as np
import pytest

from spafoundation.io import extract_patches
from spafoundation.models import embed_handcrafted
from spafoundation.models.embed_handcrafted import handcrafted_features
from spafoundation.models.handcrafted import colour_texture_features, mean_colour


def test_chunked_features_equal_one_pass_and_are_cached(c2_16, tmp_path, monkeypatch):
    monkeypatch.setattr(embed_handcrafted, "CHUNK", 5)  # 16 spots in 4 chunks, the last one short
    feats = handcrafted_features(c2_16, "colour_texture", 112.0, 32, cache_dir=tmp_path)
    whole = colour_texture_features(extract_patches(c2_16, 112.0, 32))
    np.testing.assert_array_equal(feats, whole)
    assert len(list((tmp_path / "handcrafted").glob("*.npz"))) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("a cache hit must not read patches")

    with monkeypatch.context() as m:
        m.setattr(embed_handcrafted, "extract_patches", no_reading)
        np.testing.assert_array_equal(handcrafted_features(c2_16, "colour_texture", 112.0, 32, cache_dir=tmp_path),
                                      feats)
    # another field of view, kind or set of spots is another entry
    wide = handcrafted_features(c2_16, "colour_texture", 224.0, 32, cache_dir=tmp_path)
    colour = handcrafted_features(c2_16, "mean_colour", 112.0, 32, cache_dir=tmp_path)
    fewer = handcrafted_features(c2_16[:9].copy(), "colour_texture", 112.0, 32, cache_dir=tmp_path)
    assert not np.allclose(wide, feats) and colour.shape == (16, 3) and len(fewer) == 9
    np.testing.assert_array_equal(colour, mean_colour(extract_patches(c2_16, 112.0, 32)))
    assert len(list((tmp_path / "handcrafted").glob("*.npz"))) == 4


def test_damaged_entry_is_recomputed_and_no_cache_writes_nothing(c2_16, tmp_path, monkeypatch):
    feats = handcrafted_features(c2_16, "colour_texture", 112.0, 32, cache_dir=tmp_path)
    (entry,) = (tmp_path / "handcrafted").glob("*.npz")
    entry.write_bytes(b"not an npz")
    np.testing.assert_array_equal(handcrafted_features(c2_16, "colour_texture", 112.0, 32, cache_dir=tmp_path), feats)
    off = tmp_path / "off"
    monkeypatch.setenv("SPAFOUNDATION_CACHE", str(off))  # where the default cache would go
    np.testing.assert_array_equal(handcrafted_features(c2_16, "colour_texture", 112.0, 32, cache_dir=False), feats)
    assert not off.exists()


@pytest.mark.parametrize(("kind", "width"), [("mean_colour", 3), ("colour_texture", 42)])
def test_no_spots_gives_the_features_width(c2_16, tmp_path, kind, width):
    assert handcrafted_features(c2_16[:0].copy(), kind, 112.0, 32, cache_dir=tmp_path).shape == (0, width)
