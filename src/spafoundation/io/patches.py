"""Patches of a fixed physical size around spots, resampled to an encoder's input; tissue masks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import torch
from torch.utils.data import Dataset

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, library_id, microns_per_pixel
from spafoundation.io.slide import Slide, open_slide

# A pixel is tissue when it is coloured (stain) or dark; glass is bright and grey.
SATURATION_MIN = 0.08
DARK_MAX = 200


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image (any leading batch dims)."""
    rgb = rgb.astype(np.int16)
    hi = rgb.max(axis=-1)
    lo = rgb.min(axis=-1)
    saturation = (hi - lo) / np.maximum(hi, 1)
    return ((saturation > SATURATION_MIN) & (hi < 250)) | (hi < DARK_MAX)


def tissue_fraction(patches: np.ndarray) -> np.ndarray:
    """Share of tissue pixels per patch, for patches shaped (n, h, w, 3)."""
    return tissue_mask(patches).reshape(len(patches), -1).mean(axis=1)


def open_section_slide(adata: ad.AnnData) -> Slide:
    path = image_path(adata)
    if not path:
        raise InputError(None, f"uns['spatial']['{library_id(adata)}']['metadata']['image_path']",
                         "this section has no image")
    return open_slide(path, mpp=microns_per_pixel(adata))


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
        self.mpp = microns_per_pixel(adata)
        self.xy = np.asarray(adata.obsm["spatial"] if xy is None else xy, dtype=np.float64)
        self.size_um, self.out_px, self.transform = size_um, out_px, transform
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.xy)

    def __getitem__(self, i: int):
        if self._slide is None:
            self._slide = open_slide(self.path, mpp=self.mpp)
        x, y = self.xy[i]
        patch = self._slide.read_region((float(x), float(y)), self.size_um, self.out_px, mpp=self.mpp)
        tensor = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))
        return self.transform(tensor) if self.transform is not None else tensor

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_slide"] = None  # slide handles do not cross process boundaries
        return state
