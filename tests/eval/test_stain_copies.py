"""Re-stained and coarsened copies of a real section (C2 at 1/4 scale): the same spots and counts, the tissue under
every spot, moved colours, less detail when coarsened, the same pixels from the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from spafoundation.eval.stain_copies import jittered_copy, restain_image
from spafoundation.io import read_dataset
from spafoundation.io.anndata_spec import image_path
from spafoundation.io.patches import extract_patches
from tests.io.layouts import write_manifest


@pytest.fixture(scope="module")
def section(c2_small, tmp_path_factory):
    return read_dataset(write_manifest(tmp_path_factory.mktemp("manifest"), c2_small))["S1"]


def test_restain_without_a_draw_keeps_the_pixels(c2_small):
    rgb = tifffile.imread(c2_small.tiff)[:300, :300, :3]
    same = restain_image(rgb, np.ones(3), np.zeros(3), 1.0)
    assert np.abs(same.astype(int) - rgb).max() <= 1  # float round trip through optical density


def test_copies_keep_spots_and_counts_and_move_stain_or_detail(section, tmp_path):
    stained = jittered_copy(section, tmp_path, seed=3, name="S1_stain")
    coarse = jittered_copy(section, tmp_path, seed=3, coarsen=3.0, name="S1_coarse")
    for copy in (stained, coarse):
        assert image_path(copy) != image_path(section)
        np.testing.assert_array_equal(copy.obsm["spatial"], section.obsm["spatial"])
        assert list(copy.obs_names) == list(section.obs_names) and (copy.X != section.X).nnz == 0
    patches = {k: extract_patches(a, 112.0, 64).astype(np.float64) for k, a in
               (("scan", section), ("stain", stained), ("coarse", coarse))}
    colour = {k: p.mean(axis=(1, 2)) for k, p in patches.items()}
    assert np.abs(colour["stain"] - colour["scan"]).mean() > 2  # grey levels: the stain moved
    # the same tissue under every spot: the spots' colours still rank alike
    assert min(np.corrcoef(colour["stain"][:, c], colour["scan"][:, c])[0, 1] for c in range(3)) > 0.9
    contrast = {k: np.abs(np.diff(p, axis=2)).mean() for k, p in patches.items()}
    assert contrast["coarse"] < 0.8 * contrast["stain"]  # a coarser scan's detail


def test_same_seed_same_pixels_and_an_existing_copy_is_kept(section, tmp_path):
    first = jittered_copy(section, tmp_path / "a", seed=7)
    again = jittered_copy(section, tmp_path / "b", seed=7)
    other = jittered_copy(section, tmp_path / "c", seed=8)
    pixels = [tifffile.imread(image_path(a)) for a in (first, again, other)]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])
    path = tmp_path / "a" / "S1.tif"
    before = path.stat().st_mtime_ns
    jittered_copy(section, tmp_path / "a", seed=7)
    assert path.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="coarsen"):
        jittered_copy(section, tmp_path / "d", seed=7, coarsen=0.5)
