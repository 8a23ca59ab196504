"""Stain normalisation (io/stain.py) on real patient C patches: a stain-shifted copy goes back to the original's look,
glass is never taken for stain, and a patch without tissue is left as it is."""

from __future__ import annotations

import numpy as np
import pytest

from spafoundation.errors import InputError
from spafoundation.io import stain
from spafoundation.io.patches import extract_patches, tissue_mask
from spafoundation.models.cache import embedding_key
from spafoundation.models.embed_handcrafted import handcrafted_key
from spafoundation.models.handcrafted import hed_to_rgb, rgb_to_hed

METHODS = ("macenko", "reinhard")


@pytest.fixture(scope="module")
def c2_patches(her2st_c2):
    """12 spot patches of C2 (112 um at 64 px)."""
    return extract_patches(her2st_c2, 112.0, 64, xy=stain.sample_centres(her2st_c2.obsm["spatial"], 12))


def stain_shifted(patches: np.ndarray) -> np.ndarray:
    """The same tissue as another lab would stain it: more haematoxylin, less eosin."""
    hed = rgb_to_hed(patches).astype(np.float64)
    hed[..., 0] *= 1.4
    hed[..., 1] *= 0.65
    return hed_to_rgb(hed)


def od_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(stain.optical_density(a) - stain.optical_density(b))[mask].mean())


@pytest.mark.parametrize("method", METHODS)
def test_a_stain_shifted_copy_is_mapped_back_to_the_reference(c2_patches, method):
    mask = tissue_mask(c2_patches)
    shifted = stain_shifted(c2_patches)
    before = od_error(shifted, c2_patches, mask)
    assert before > 0.2  # the shift is large enough to matter

    normalizer = stain.StainNormalizer(stain.fit_reference(c2_patches, method, "C2"))
    same = normalizer.transform(c2_patches, normalizer.estimate(c2_patches))
    assert od_error(same, c2_patches, mask) < 0.03  # the reference's own slide is (nearly) left alone
    back = normalizer.transform(shifted, normalizer.estimate(shifted))  # one estimate for the "slide"
    assert od_error(back, c2_patches, mask) < 0.4 * before
    each = normalizer.transform(shifted)  # every patch estimated from itself
    assert od_error(each, c2_patches, mask) < 0.8 * before
    assert normalizer.n_identity == 0


@pytest.mark.parametrize("method", METHODS)
def test_a_patch_without_tissue_is_left_as_it_is_and_counted(c2_patches, method):
    glass = np.full((64, 64, 3), 242, np.uint8)
    black = np.zeros((64, 64, 3), np.uint8)  # glass a viewer export masked to black
    assert stain.stain_statistics(glass, method) is None and stain.stain_statistics(black, method) is None
    normalizer = stain.StainNormalizer(stain.builtin_reference(method))
    batch = np.stack([glass, black, c2_patches[0]])
    out = normalizer.transform(batch)
    assert np.array_equal(out[:2], batch[:2]) and not np.array_equal(out[2], batch[2])
    assert normalizer.n_identity == 2
    assert np.array_equal(normalizer.transform(batch[:1], None), batch[:1]) and normalizer.n_identity == 3
    with pytest.raises(InputError, match="stain_norm"):
        stain.fit_reference(np.stack([glass, black]), method)


def test_black_masked_glass_is_not_taken_for_stain(c2_patches):
    """A1's export blacks out the glass: OD ~5.5 in every channel, which a plain OD threshold takes for the
    densest stain. The estimate of a slide must not move when black glass is added beside its tissue."""
    framed = c2_patches.copy()
    framed[:, :, :24] = 0
    tissue_only = c2_patches[:, :, 24:]
    assert len(stain.tissue_pixels(framed)) == len(stain.tissue_pixels(tissue_only))
    for method in METHODS:
        a, b = stain.stain_statistics(framed, method), stain.stain_statistics(tissue_only, method)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    ref = stain.builtin_reference("reinhard")
    out = stain.StainNormalizer(ref).transform(framed, stain.stain_statistics(framed, "reinhard"))
    assert (out[:, :, :24] == 0).all()  # masked glass stays black


def test_reference_round_trip_and_damaged_references():
    ref = stain.builtin_reference("macenko")
    again = stain.StainReference.from_dict(ref.to_dict(), "config.json")
    assert again.digest() == ref.digest() and again.source == ref.source
    bad = {**ref.to_dict(), "max_concentration": [1.0, -2.0]}
    with pytest.raises(InputError, match=r"config\.json: recipe\.stain_reference\.max_concentration"):
        stain.StainReference.from_dict(bad, "config.json", "recipe.stain_reference")
    with pytest.raises(InputError, match=r"stain_reference\.method"):
        stain.StainReference.from_dict({"method": "vahadane"})
    with pytest.raises(InputError, match="stain_matrix"):
        stain.StainReference.from_dict({**ref.to_dict(), "stain_matrix": [[1, 2, 3]]})


def test_cache_keys_differ_by_method_and_reference():
    common = {"slide": {"path": "x.jpg", "size": 1, "mtime_ns": 1}, "mpp": 0.69, "xy": np.zeros((3, 2))}
    macenko, reinhard = stain.builtin_reference("macenko"), stain.builtin_reference("reinhard")
    other = stain.StainReference("macenko", {**macenko.values, "max_concentration": [2.0, 1.0]})
    emb = [embedding_key(**common, encoder="e", patch_um=112, input_size=112, tta=False, stain=s)
           for s in (None, macenko, reinhard, other)]
    hand = [handcrafted_key(**common, kind="colour_texture", patch_um=112, patch_px=64, stain=s)
            for s in (None, macenko, reinhard, other)]
    assert len(set(emb)) == 4 and len(set(hand)) == 4
    # without a normalisation the key is what it was before the option existed: existing caches stay valid
    assert emb[0] == embedding_key(**common, encoder="e", patch_um=112, input_size=112, tta=False)


@pytest.mark.parametrize("method", METHODS)
def test_a_reference_image_gives_the_reference_of_its_tissue_and_glass_is_refused(c2_patches, method, tmp_path):
    from PIL import Image

    tile = tmp_path / "tile.png"
    Image.fromarray(np.concatenate(list(c2_patches), axis=1)).save(tile)
    ref = stain.reference_from_image(tile, method)
    fitted = stain.fit_reference(c2_patches, method)
    assert ref.method == method and ref.source == f"image {tile}"
    for k in stain.KEYS[method]:
        np.testing.assert_allclose(ref.arrays[k], fitted.arrays[k], rtol=1e-6)
    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((64, 64, 3), 242, np.uint8)).save(glass)
    with pytest.raises(InputError) as e:
        stain.reference_from_image(glass, method)
    assert "glass.png" in str(e.value) and "--stain-reference" in str(e.value)
