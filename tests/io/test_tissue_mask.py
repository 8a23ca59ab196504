"""The thumbnail tissue mask on white, tinted and black (masked) glass, checked against where the spots are.

A1 (patient A) is a viewer export whose glass was blacked out; C2 is a full-resolution scan on pink-tinted glass.
Each is also seen with the other background: A1 with its black painted as glass, C2 with its glass painted black."""

import numpy as np
import pytest
from scipy import ndimage

from spafoundation.io import read_dataset
from spafoundation.io.anndata_spec import microns_per_pixel
from spafoundation.io.patches import (
    THUMB_SIDE,
    masked_background,
    open_section_slide,
    thumbnail_tissue_mask,
    window_fraction,
)

SPOT_CELL_UM = 200.0  # HER2ST's spot pitch: each spot stands for a 200 um square of tissue
GLASS = (240, 238, 236)


def thumbnail(adata):
    with open_section_slide(adata) as slide:
        return slide.thumbnail(THUMB_SIDE)


def spots_on_tissue(mask, adata, scale) -> float:
    """Share of spots whose 100 um square is at least half tissue on ``mask``."""
    um_per_px = microns_per_pixel(adata) / scale
    xy = adata.obsm["spatial"] * scale
    return float((window_fraction(mask, xy[:, 0], xy[:, 1], 50 / um_per_px) >= 0.5).mean())


def area_over_spot_cells(mask, adata, scale) -> float:
    um_per_px = microns_per_pixel(adata) / scale
    return float(mask.sum() * um_per_px**2 / (adata.n_obs * SPOT_CELL_UM**2))


@pytest.fixture(scope="module")
def a1(her2st_root):
    return read_dataset(her2st_root, ["A1"], with_images=False)["A1"]


def test_black_glass_is_not_tissue(a1):
    thumb, scale = thumbnail(a1)
    black = masked_background(thumb)
    assert 0.5 < black.mean() < 0.8  # most of the frame is blacked-out glass
    mask = thumbnail_tissue_mask(thumb)
    assert not (mask & black).any()
    assert spots_on_tissue(mask, a1, scale) >= 0.9
    # the tissue under the spots, and the viewer's pasted thumbnail of the section (under 1 mm2)
    assert 0.85 < area_over_spot_cells(mask, a1, scale) < 1.15
    # the same section on white glass: the same tissue, within a few percent
    white = thumb.copy()
    white[black] = GLASS
    on_white = thumbnail_tissue_mask(white)
    assert abs(int(mask.sum()) - int(on_white.sum())) < 0.05 * on_white.sum()


def test_tinted_glass_masked_to_black_keeps_the_tissue(her2st_c2):
    thumb, scale = thumbnail(her2st_c2)
    assert not masked_background(thumb).any()
    mask = thumbnail_tissue_mask(thumb)
    assert spots_on_tissue(mask, her2st_c2, scale) >= 0.95
    assert 0.8 < area_over_spot_cells(mask, her2st_c2, scale) < 1.1
    # glass blacked out 15 thumbnail px (~70 um) beyond the tissue, as a viewer's export does
    blacked = thumb.copy()
    blacked[~ndimage.binary_dilation(mask, iterations=15)] = 0
    on_black = thumbnail_tissue_mask(blacked)
    assert spots_on_tissue(on_black, her2st_c2, scale) >= 0.95
    assert abs(int(on_black.sum()) - int(mask.sum())) < 0.05 * mask.sum()


def test_dark_specks_are_left_to_the_tissue_rule():
    """Ink dots or debris on glass are not a masked background: the glass stays what the threshold sees."""
    rng = np.random.default_rng(0)
    thumb = np.full((400, 400, 3), 240, np.uint8)
    thumb[100:300, 100:300] = (150, 90, 160)  # stained tissue
    thumb[20:24, 20:24] = 0
    assert not masked_background(thumb).any()
    thumb[:, 340:] = rng.integers(0, 20, size=(400, 60, 3))  # a blacked-out band
    assert masked_background(thumb)[:, 345:].all()
    mask = thumbnail_tissue_mask(thumb)
    assert mask[110:290, 110:290].all() and not mask[:, 330:].any()
