"""The thumbnail tissue mask on white, tinted and black (masked) glass, checked against where the spots are.

A1 (patient A) is a viewer export whose glass was blacked out, with a thumbnail of the section pasted in its top-right
corner; C2 is a full-resolution scan on pink-tinted glass. Each is also seen with the other background: A1 with its
black painted as glass, C2 with its glass painted black."""

import numpy as np
import pytest
from scipy import ndimage

from spafoundation.io import read_dataset
from spafoundation.io.anndata_spec import microns_per_pixel
from spafoundation.io.patches import (
    THUMB_SIDE,
    masked_background,
    off_slide_mask,
    open_section_slide,
    patch_off_slide,
    thumbnail_tissue_mask,
    tissue_fraction,
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
    assert spots_on_tissue(mask, a1, scale) >= 0.95
    # the tissue under the spots (12.5 mm2 against 13.8 mm2 of spot cells), without the pasted thumbnail's 0.9 mm2
    assert 0.85 < area_over_spot_cells(mask, a1, scale) < 0.95
    # the same section on white glass: the same tissue, within a few percent, once the pasted thumbnail is left out
    # (on white glass nothing says it is pasted)
    white = thumb.copy()
    white[black] = GLASS
    on_white = thumbnail_tissue_mask(white) & ~off_slide_mask(thumb)
    assert abs(int(mask.sum()) - int(on_white.sum())) < 0.05 * on_white.sum()


def test_pasted_thumbnail_is_off_the_slide(a1):
    """The viewer pasted a thumbnail of the section, on white glass, into A1's top-right corner: it is off the slide,
    and the section itself is not touched."""
    thumb, scale = thumbnail(a1)
    inset = off_slide_mask(thumb) & ~masked_background(thumb)
    rows, cols = np.nonzero(inset)
    w = inset.shape[1]
    assert rows.min() == 0 and cols.max() == w - 1  # one rectangle in the corner
    assert inset.sum() == (rows.max() + 1) * (w - cols.min()) and inset.mean() < 0.1
    assert not (thumbnail_tissue_mask(thumb) & inset).any()
    xy = (a1.obsm["spatial"] * scale).astype(int)
    assert not inset[xy[:, 1], xy[:, 0]].any()  # no spot under it
    # the patch tissue share uses the same map: black glass and the pasted picture are no tissue, the spots are
    with open_section_slide(a1) as slide:
        size_px = 112 / microns_per_pixel(a1)
        inset_centre = np.array([[cols.mean(), rows.mean()]]) / scale
        spots = a1.obsm["spatial"][::40]
        glass = np.array([[1000.0, 7000.0], [300.0, 300.0]])  # blacked-out corners of the frame
        centres = np.concatenate([spots, glass, inset_centre])
        patches = np.stack([slide.read_region(tuple(c), 112, 56, mpp=microns_per_pixel(a1)) for c in centres])
    off = patch_off_slide((off_slide_mask(thumb), scale), centres, size_px, 56)
    tf = tissue_fraction(patches, off)
    assert np.median(tf[: len(spots)]) > 0.9 and (tf[len(spots):] < 0.1).all()


def test_inset_rule_on_a_synthetic_export():
    """A blacked-out export with a section outlined loosely (glass left around it) and a picture on white glass
    pasted in a corner: the picture is off the slide, the section is not; an image that is one glass-framed
    rectangle padded with black (the same rectangle holding the most tissue) keeps it."""
    frame = np.zeros((400, 400, 3), np.uint8)
    yy, xx = np.mgrid[:400, :400]
    frame[((yy - 250) / 110.0) ** 2 + ((xx - 180) / 140.0) ** 2 < 1] = GLASS
    section = ((yy - 250) / 100.0) ** 2 + ((xx - 180) / 130.0) ** 2 < 1
    frame[section] = (150, 90, 160)
    frame[:90, 300:] = GLASS  # the pasted picture: white glass and a small stained section
    frame[20:70, 320:380] = (160, 100, 170)
    mask = thumbnail_tissue_mask(frame)
    assert mask[200:300, 100:260].all() and not mask[:90, 300:].any()
    assert off_slide_mask(frame)[:90, 300:].all() and not off_slide_mask(frame)[section].any()
    padded = np.zeros_like(frame)
    padded[60:340, 60:340] = GLASS
    padded[120:280, 100:300] = (150, 90, 160)
    assert thumbnail_tissue_mask(padded)[130:270, 110:290].all()
    assert not (off_slide_mask(padded) & ~masked_background(padded)).any()


def test_patch_share_leaves_out_what_is_off_the_slide():
    """A patch half over stained tissue, half over blacked-out glass: dark, but only half of it is tissue."""
    patch = np.full((1, 8, 8, 3), (150, 90, 160), np.uint8)
    patch[:, :, 4:] = 0
    assert tissue_fraction(patch)[0] == 1.0  # dark pixels: tissue to the colour rule alone
    off_map = np.zeros((100, 100), bool)
    off_map[:, 50:] = True  # right half of a thumbnail at 1/10 of the slide
    off = patch_off_slide((off_map, 0.1), np.array([[500.0, 300.0]]), 80.0, 8)
    assert off.shape == (1, 8, 8) and off[0, :, 4:].all() and not off[0, :, :4].any()
    assert tissue_fraction(patch, off)[0] == 0.5


def test_tinted_glass_masked_to_black_keeps_the_tissue(her2st_c2):
    thumb, scale = thumbnail(her2st_c2)
    assert not off_slide_mask(thumb).any()  # a plain scan: all of it is slide, the mask as before masked glass
    mask = thumbnail_tissue_mask(thumb)
    assert spots_on_tissue(mask, her2st_c2, scale) >= 0.95
    assert 0.8 < area_over_spot_cells(mask, her2st_c2, scale) < 1.1
    # glass blacked out 15 thumbnail px (~70 um) beyond the tissue, as a viewer's export does
    blacked = thumb.copy()
    blacked[~ndimage.binary_dilation(mask, iterations=15)] = 0
    on_black = thumbnail_tissue_mask(blacked)
    assert (off_slide_mask(blacked) == masked_background(blacked)).all()  # the outline is no pasted picture
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
