"""Patches of a fixed physical size around spots, resampled to an encoder's input; tissue masks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import torch
from torch.utils.data import Dataset

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, image_scale, library_id, microns_per_pixel
from spafoundation.io.downscaled import open_image
from spafoundation.io.slide import Slide

# A pixel is tissue when it is coloured (stain) or dark; glass is bright and grey.
SATURATION_MIN = 0.08
DARK_MAX = 200
THUMB_SIDE = 2000  # px of the thumbnail tissue is found on
# Brightest channel (0-255, blurred thumbnail) below which a large region is glass masked to black by an export (a
# viewer's PNG, a masked scan): stained tissue never gets that dark at thumbnail scale, its most crowded nuclei stay
# above ~130 in the red or blue channel of HER2ST's scans.
MASKED_MAX = 50
GLASS_MIN = 240.0  # grey level of clean glass (HER2ST's: 238-244), the least a masked image's glass is taken to be
# Share of its bounding box a region fills to be a pasted rectangle (the blur's reach rounds its corners a little).
INSET_FILL = 0.95
# What the thumbnail tissue mask finds for the same image (1: Otsu; 2: glass masked to black is none; 3: nor a picture
# pasted onto such an image). Outputs drawn on the mask record it, so a rerun redoes them when it changes.
TISSUE_MASK_VERSION = 3


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image (any leading batch dims)."""
    rgb = rgb.astype(np.int16)
    hi = rgb.max(axis=-1)
    lo = rgb.min(axis=-1)
    saturation = (hi - lo) / np.maximum(hi, 1)
    return ((saturation > SATURATION_MIN) & (hi < 250)) | (hi < DARK_MAX)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of ``values`` (Otsu, 1979)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def masked_background(thumb: np.ndarray, min_object: float = 1e-3) -> np.ndarray:
    """The glass an export blacked out: near-black regions of at least ``min_object`` of the thumbnail (dark specks,
    ink or debris, are left to the tissue rule), widened by the blur's reach, since the blur smears the black edge
    into a ring of mid-grey that is no tissue either."""
    from scipy import ndimage

    brightest = ndimage.uniform_filter(thumb.max(axis=-1).astype(np.float32), size=5)
    black = brightest < MASKED_MAX
    labels, n = ndimage.label(black)
    if n:
        sizes = np.bincount(labels.ravel())
        large = sizes >= min_object * black.size
        large[0] = False
        black = large[labels]
    return ndimage.binary_dilation(black, iterations=3) if black.any() else black


def pasted_insets(masked: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Pictures pasted onto an image whose glass was blacked out (a viewer's thumbnail of the section, a legend):
    regions the mask left that are axis-aligned rectangles framed by glass. The export blacked out the slide's own
    glass, so glass left bright around a rectangle is the background of a picture on top of it; a section's own
    outline is not a rectangle. The region holding the most tissue is never one (an image padded with black to a
    larger frame is a glass-framed rectangle too). ``tissue``: the tissue candidates, glass being what is not."""
    from scipy import ndimage

    insets = np.zeros(masked.shape, dtype=bool)
    labels, n = ndimage.label(~masked)
    if not masked.any() or n < 2:
        return insets
    most_tissue = int(np.argmax(ndimage.sum(tissue, labels, index=np.arange(1, n + 1))))
    for i, box in enumerate(ndimage.find_objects(labels)):
        if i == most_tissue:
            continue
        region = labels[box] == i + 1
        if region.mean() < INSET_FILL:
            continue
        rim = np.zeros(region.shape, dtype=bool)
        rim[[0, -1], :] = rim[:, [0, -1]] = True
        rim &= region
        if tissue[box][rim].mean() < 0.5:  # framed by glass, not cut through tissue
            insets[box] |= region
    return insets


def thumbnail_tissue_mask(thumb: np.ndarray, min_object: float = 1e-3) -> np.ndarray:
    """Tissue on a whole-slide thumbnail: pixels darker than an Otsu threshold of the blurred grey level, capped
    just below the glass level (the 95th percentile), then small specks removed. Unlike ``tissue_mask`` (a fixed
    colour rule for patches), this adapts to tinted or uneven glass, which a saturation rule takes for tissue.
    What is no part of the slide (``off_slide_mask``) is never tissue."""
    return _thumbnail_tissue(thumb, min_object)[0]


def off_slide_mask(thumb: np.ndarray, min_object: float = 1e-3) -> np.ndarray:
    """What on a thumbnail is no part of the slide: glass an export blacked out (``masked_background``) and the
    pictures pasted onto such an image (``pasted_insets``). Empty on a plain scan."""
    return _thumbnail_tissue(thumb, min_object)[1]


def _thumbnail_tissue(thumb: np.ndarray, min_object: float) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, off the slide) of a thumbnail. Masked glass stands in for clean glass in the threshold, so the
    threshold still falls between tissue and glass as on the unmasked scan, not inside the tissue (Otsu on the
    tissue alone would split dense tumour from pale stroma)."""
    from scipy import ndimage

    grey = ndimage.uniform_filter(thumb.astype(np.float32).mean(axis=-1), size=5)
    masked = masked_background(thumb, min_object)
    if masked.all():
        return np.zeros(grey.shape, dtype=bool), masked
    glass = float(np.percentile(grey[~masked], 95))
    if masked.any():
        # what the mask left is mostly tissue, whose brightest pixels understate the glass
        glass = max(glass, GLASS_MIN)
        grey[masked] = glass
    threshold = min(otsu_threshold(grey), glass - 10.0)
    off_slide = masked | pasted_insets(masked, grey < threshold)
    mask = ndimage.binary_opening((grey < threshold) & ~off_slide, iterations=2)
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_object * mask.size
        small[0] = False
        mask[small[labels]] = False
    return mask, off_slide


def tissue_fraction(patches: np.ndarray, off_slide: np.ndarray | None = None) -> np.ndarray:
    """Share of tissue pixels per patch, for patches shaped (n, h, w, 3). ``off_slide`` (n, h, w) marks the pixels
    that are no part of the slide (``patch_off_slide``: masked glass, a pasted picture): never tissue, however dark."""
    tissue = tissue_mask(patches)
    if off_slide is not None:
        tissue &= ~off_slide
    return tissue.reshape(len(patches), -1).mean(axis=1)


def section_off_slide(slide: Slide) -> tuple[np.ndarray, float] | None:
    """(``off_slide_mask`` of the slide's thumbnail, thumbnail px per level-0 px), or None when all of it is slide."""
    thumb, scale = slide.thumbnail(THUMB_SIDE)
    off = off_slide_mask(thumb)
    return (off, scale) if off.any() else None


def patch_off_slide(off: tuple[np.ndarray, float], xy: np.ndarray, size_px: float, out_px: int) -> np.ndarray:
    """(n, out_px, out_px): which pixels of the patches of side ``size_px`` (level-0 px) centred on ``xy``, resampled
    to ``out_px``, fall off the slide on a ``section_off_slide`` map (nearest thumbnail pixel)."""
    mask, scale = off
    offsets = ((np.arange(out_px) + 0.5) / out_px - 0.5) * size_px
    cols = np.clip(np.floor((xy[:, :1] + offsets) * scale).astype(int), 0, mask.shape[1] - 1)
    rows = np.clip(np.floor((xy[:, 1:] + offsets) * scale).astype(int), 0, mask.shape[0] - 1)
    return mask[rows[:, :, None], cols[:, None, :]]


def window_fraction(mask: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: float) -> np.ndarray:
    """Share of True pixels of ``mask`` in the squares of half-side ``half`` (mask px) around each centre."""
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    x0 = np.clip(np.floor(cx - half).astype(int), 0, w)
    x1 = np.clip(np.ceil(cx + half).astype(int), 0, w)
    y0 = np.clip(np.floor(cy - half).astype(int), 0, h)
    y1 = np.clip(np.ceil(cy + half).astype(int), 0, h)
    area = np.maximum(1, (x1 - x0) * (y1 - y0))
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside / area


def section_tissue(adata: ad.AnnData) -> tuple[np.ndarray, float, int, int]:
    """(tissue mask of the thumbnail, thumbnail px per full-resolution px, slide width, slide height)."""
    with open_section_slide(adata) as slide:
        thumb, scale = slide.thumbnail(THUMB_SIDE)
        return thumbnail_tissue_mask(thumb), scale, slide.width, slide.height


def tissue_share(adata_or_tissue, xy: np.ndarray, size_um: float, mpp: float | None = None) -> np.ndarray:
    """Tissue share of the squares of side ``size_um`` centred on ``xy`` (full-resolution px)."""
    mask, scale, _, _ = section_tissue(adata_or_tissue) if isinstance(adata_or_tissue, ad.AnnData) \
        else adata_or_tissue
    mpp = mpp if mpp is not None else microns_per_pixel(adata_or_tissue)
    half = max(0.5, size_um / mpp * scale / 2)
    return window_fraction(mask, xy[:, 0] * scale, xy[:, 1] * scale, half)


def tissue_grid(adata: ad.AnnData, step_um: float, min_tissue: float = 0.5) -> np.ndarray:
    """Centres (full-resolution px, x then y) of a square grid of pitch ``step_um`` over the section's tissue: the
    squares of side ``step_um`` around them are at least ``min_tissue`` tissue on the thumbnail's mask. The
    grid covers the whole tissue, spots or not (a map over the slide, not only over the capture area); cell
    (row, col) is centred at ((col + 0.5) * step, (row + 0.5) * step)."""
    if step_um <= 0:
        raise InputError(None, "--grid-um", f"must be positive, got {step_um}")
    tissue = section_tissue(adata)
    _, _, w, h = tissue
    mpp = microns_per_pixel(adata)
    step_px = step_um / mpp
    xs = np.arange(step_px / 2, w - step_px / 2 + 1e-9, step_px)
    ys = np.arange(step_px / 2, h - step_px / 2 + 1e-9, step_px)
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    xy = np.stack([gx, gy], axis=1)
    return xy[tissue_share(tissue, xy, step_um, mpp) >= min_tissue]


def open_section_slide(adata: ad.AnnData) -> Slide:
    path = image_path(adata)
    if not path:
        raise InputError(None, f"uns['spatial']['{library_id(adata)}']['metadata']['image_path']",
                         "this section has no image")
    return open_image(path, mpp=microns_per_pixel(adata), scale=image_scale(adata))


def extract_patches(
    adata: ad.AnnData,
    size_um: float,
    out_px: int,
    *,
    xy: np.ndarray | None = None,
    slide: Slide | None = None,
) -> np.ndarray:
    """uint8 array (n, out_px, out_px, 3) of ``size_um`` patches centred on each spot (or on ``xy``)."""
    centres = adata.obsm["spatial"] if xy is None else np.asarray(xy)
    own = slide is None
    slide = open_section_slide(adata) if own else slide
    try:
        mpp = microns_per_pixel(adata)
        out = np.empty((len(centres), out_px, out_px, 3), dtype=np.uint8)
        for i, (x, y) in enumerate(centres):
            out[i] = slide.read_region((float(x), float(y)), size_um, out_px, mpp=mpp)
        return out
    finally:
        if own:
            slide.close()


class PatchDataset(Dataset):
    """Streams spot patches as uint8 CHW tensors; each DataLoader worker opens its own slide handle."""

    def __init__(self, adata: ad.AnnData, size_um: float, out_px: int, transform=None, xy: np.ndarray | None = None):
        self.path = image_path(adata)
        if not self.path:
            raise InputError(None, "image_path", f"section {library_id(adata)} has no image")
        self.mpp, self.scale = microns_per_pixel(adata), image_scale(adata)
        self.xy = np.asarray(adata.obsm["spatial"] if xy is None else xy, dtype=np.float64)
        self.size_um, self.out_px, self.transform = size_um, out_px, transform
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.xy)

    def __getitem__(self, i: int):
        if self._slide is None:
            self._slide = open_image(self.path, mpp=self.mpp, scale=self.scale)
        x, y = self.xy[i]
        patch = self._slide.read_region((float(x), float(y)), self.size_um, self.out_px, mpp=self.mpp)
        tensor = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))
        return self.transform(tensor) if self.transform is not None else tensor

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_slide"] = None  # slide handles do not cross process boundaries
        return state
