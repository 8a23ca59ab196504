"""Tissue tiles for pre-training: random squares of ``tile_um`` microns on tissue, resampled to ``tile_px``.

``TileDataset`` draws tile centres on the tissue of every imaged section with a seeded generator, so every
process of a distributed run (and a resumed run) holds the same tiles in the same order. Tiles are read from the
slides on access (``preload=False``) or all at once into an in-memory uint8 array (``preload=True``, a bank of
20k tiles of 140 px is 1.2 GB), which keeps reading and resampling out of the way of a CPU-bound training step;
both modes give the same pixels. ``batch_indices`` is the sampler: it shards every global batch by rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import torch
from torch.utils.data import Dataset

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, image_scale, library_id, microns_per_pixel
from spafoundation.io.downscaled import open_image
from spafoundation.io.patches import section_tissue, window_fraction
from spafoundation.io.slide import Slide

log = logging.getLogger(__name__)
MIN_TISSUE = 0.5


def tile_centres(adata: ad.AnnData, n: int, tile_um: float, rng: np.random.Generator,
                 min_tissue: float = MIN_TISSUE) -> np.ndarray:
    """``n`` random centres (full-resolution px) of tiles inside the slide whose tissue share, measured on the
    thumbnail's tissue mask, is at least ``min_tissue``."""
    mask, scale, w, h = section_tissue(adata)
    half = tile_um / microns_per_pixel(adata) / 2
    ys, xs = np.nonzero(mask)
    cx, cy = (xs + 0.5) / scale, (ys + 0.5) / scale
    inside = (cx > half) & (cx < w - half) & (cy > half) & (cy < h - half)
    frac = window_fraction(mask, xs + 0.5, ys + 0.5, half * scale)
    keep = inside & (frac >= min_tissue)
    cx, cy = cx[keep], cy[keep]
    if len(cx) == 0:
        raise InputError(image_path(adata), "image", f"no {tile_um:g} um tile with {min_tissue:.0%} tissue found "
                         "to sample pre-training tiles from")
    pick = rng.integers(0, len(cx), size=n)
    jitter = rng.uniform(-0.5, 0.5, size=(n, 2)) / scale
    return np.stack([cx[pick], cy[pick]], axis=1) + jitter


class TileDataset(Dataset):
    """``n_tiles`` uint8 (tile_px, tile_px, 3) tiles on tissue, spread evenly over the imaged sections.

    ``data``: a dataset path (folder, manifest, .h5ad; read with ``read_dataset``), or AnnData sections (a dict or
    a list). The physical size is ``tile_um`` microns, or ``tile_px * mpp``. Deterministic given ``seed``.
    ``dataset[i]`` is an HWC uint8 array; ``dataset.array`` the whole bank (read now if not preloaded).
    """

    def __init__(self, data, *, n_tiles: int, tile_px: int, tile_um: float | None = None, mpp: float | None = None,
                 sections: Sequence[str] | None = None, seed: int = 0, min_tissue: float = MIN_TISSUE,
                 preload: bool = False):
        if (tile_um is None) == (mpp is None):
            raise ValueError("give exactly one of tile_um and mpp")
        self.tile_px = int(tile_px)
        self.tile_um = float(tile_um if tile_um is not None else tile_px * mpp)
        if isinstance(data, (str, os.PathLike)):
            from spafoundation.io.readers import read_dataset

            data = read_dataset(data, list(sections) if sections else None, with_images=False)
        adatas = list(data.values()) if isinstance(data, Mapping) else list(data)
        imaged = [a for a in adatas if image_path(a)]
        if not imaged:
            raise InputError(None, "image", "no section has an image to pre-train on")
        if n_tiles < 1:
            raise ValueError("n_tiles must be positive")
        self.sources = [(str(image_path(a)), microns_per_pixel(a), library_id(a), image_scale(a)) for a in imaged]
        rng = np.random.default_rng(seed)
        per = -(-int(n_tiles) // len(imaged))
        rows = []
        for k, a in enumerate(imaged):
            xy = tile_centres(a, per, self.tile_um, rng, min_tissue)
            rows.append(np.column_stack([np.full(per, k, dtype=np.float64), xy]))
        index = np.concatenate(rows)
        self.index = index[rng.permutation(len(index))[:n_tiles]]  # (n, 3): source, x, y
        self._slides: dict[int, Slide] = {}
        self._array: np.ndarray | None = None
        if preload:
            self._array = self._read_all()

    def __len__(self) -> int:
        return len(self.index)

    def _slide(self, k: int) -> Slide:
        if k not in self._slides:
            path, mpp, _, scale = self.sources[k]
            self._slides[k] = open_image(path, mpp=mpp, scale=scale)
        return self._slides[k]

    def _read(self, i: int) -> np.ndarray:
        k, x, y = self.index[i]
        k = int(k)
        return self._slide(k).read_region((float(x), float(y)), self.tile_um, self.tile_px, mpp=self.sources[k][1])

    def _read_all(self) -> np.ndarray:
        out = np.empty((len(self), self.tile_px, self.tile_px, 3), dtype=np.uint8)
        for k, (_, _, name, _) in enumerate(self.sources):  # one slide open at a time: memory stays bounded
            rows = np.nonzero(self.index[:, 0] == k)[0]
            for i in rows:
                out[i] = self._read(i)
            self.close()
            log.info("%s: %d tiles of %g um", name, len(rows), self.tile_um)
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        if self._array is not None:
            return self._array[i]
        return self._read(int(i))

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._read_all()
        return self._array

    def close(self) -> None:
        for s in self._slides.values():
            s.close()
        self._slides.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_slides"] = {}  # slide handles do not cross process boundaries
        return state


def build_tile_bank(sections: Sequence[ad.AnnData], n_tiles: int, tile_um: float, tile_px: int, seed: int = 0,
                    min_tissue: float = MIN_TISSUE) -> np.ndarray:
    """uint8 (n_tiles, tile_px, tile_px, 3): the preloaded ``TileDataset``."""
    return TileDataset(sections, n_tiles=n_tiles, tile_px=tile_px, tile_um=tile_um, seed=seed,
                       min_tissue=min_tissue, preload=True).array


def batch_indices(n_items: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Tile indices of this rank's share of global batch ``step`` (a DistributedSampler without state): epochs
    are seeded permutations cut into global batches of ``batch_size * world``, rank r takes the r-th slice, so
    any step can be recomputed from its number alone (exact resume) and ranks never see the same tile."""
    global_bs = batch_size * world
    if n_items < global_bs:
        raise InputError(None, "data.n_tiles", f"{n_items} tiles are fewer than one global batch ({global_bs})")
    per_epoch = n_items // global_bs
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    batch = perm[pos * global_bs:(pos + 1) * global_bs]
    return batch[rank * batch_size:(rank + 1) * batch_size]


def data_position(n_items: int, batch_size: int, step: int, world: int = 1) -> dict:
    """Where the sampler stands before global batch ``step``: epoch and batch within the epoch."""
    per_epoch = max(1, n_items // (batch_size * world))
    epoch, pos = divmod(step, per_epoch)
    return {"step": int(step), "epoch": int(epoch), "batch_in_epoch": int(pos), "batches_per_epoch": int(per_epoch)}


def as_tensor(tiles: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255
