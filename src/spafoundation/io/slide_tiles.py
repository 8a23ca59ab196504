"""A dense grid of square tiles over a whole slide's tissue, streamed in blocks with bounded memory.

The grid has pitch ``tile_um`` microns; a tile is kept when its tissue share on the thumbnail's tissue mask is at
least ``min_tissue``, so background costs neither reading nor encoding. Tiles are read block by block (``block``
x ``block`` tiles as one region from the pyramid level that fits the target resolution): one region decode per
block instead of one per tile, which matters for JPEG-tiled slides where a tile read decodes up to four TIFF
tiles. Memory is one block per DataLoader worker and prefetched batch, whatever the slide size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from spafoundation.errors import InputError
from spafoundation.io.patches import THUMB_SIDE, thumbnail_tissue_mask, window_fraction
from spafoundation.io.slide import Slide, open_slide


@dataclass
class TileGrid:
    """Tiles kept on a slide: centres in full-resolution px (x, y), their grid (row, col) and tissue share."""

    xy: np.ndarray
    row_col: np.ndarray
    tissue: np.ndarray
    tile_px: float  # side of a tile in full-resolution px
    mpp: float
    width: int
    height: int
    thumbnail: np.ndarray
    thumbnail_scale: float

    def __len__(self) -> int:
        return len(self.xy)


def tissue_tile_grid(slide: Slide, tile_um: float, *, mpp: float | None = None, min_tissue: float = 0.25) -> TileGrid:
    """Tiles of ``tile_um`` microns covering the slide; those with at least ``min_tissue`` tissue are kept.
    Cell (row, col) is centred at ((col + 0.5) * tile_px, (row + 0.5) * tile_px)."""
    if tile_um <= 0:
        raise InputError(slide.path, "tile_um", f"must be positive, got {tile_um}")
    mpp = slide.resolve_mpp(mpp)
    thumb, scale = slide.thumbnail(THUMB_SIDE)
    mask = thumbnail_tissue_mask(thumb)
    tile_px = tile_um / mpp
    n_cols, n_rows = int(slide.width // tile_px), int(slide.height // tile_px)
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij"))
    xy = np.stack([(cols + 0.5) * tile_px, (rows + 0.5) * tile_px], axis=1)
    share = window_fraction(mask, xy[:, 0] * scale, xy[:, 1] * scale, max(0.5, tile_px * scale / 2))
    keep = share >= min_tissue
    return TileGrid(xy=xy[keep], row_col=np.stack([rows, cols], axis=1)[keep], tissue=share[keep],
                    tile_px=tile_px, mpp=mpp, width=slide.width, height=slide.height, thumbnail=thumb,
                    thumbnail_scale=scale)


def _blocks(row_col: np.ndarray, block: int) -> list[np.ndarray]:
    """Indices of the kept tiles grouped by ``block`` x ``block`` cell, in row-major block order."""
    keys = (row_col[:, 0] // block) * (int(row_col[:, 1].max(initial=0)) // block + 1) + row_col[:, 1] // block
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    return np.split(order, bounds) if len(order) else []


class TileBlocks(IterableDataset):
    """Yields ``(indices, tiles)`` per block of the grid: int64 indices into the grid and uint8 (n, 3, px, px)
    tiles. Blocks are dealt round-robin to DataLoader workers; each worker opens its own slide handle."""

    def __init__(self, path, grid: TileGrid, out_px: int, *, block: int = 8):
        self.path, self.mpp = str(path), grid.mpp
        self.grid_xy, self.tile_px, self.out_px = grid.xy, grid.tile_px, int(out_px)
        self.row_col = grid.row_col
        self.blocks = _blocks(grid.row_col, max(1, int(block)))

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        with open_slide(self.path, mpp=self.mpp) as slide:
            for b in range(worker, len(self.blocks), n_workers):
                idx = self.blocks[b]
                yield torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(self._read_block(slide, idx))

    def _read_block(self, slide: Slide, idx: np.ndarray) -> np.ndarray:
        level = slide.best_level(self.tile_px / self.out_px)
        ds = slide.level_downsamples[level]
        rc = self.row_col[idx]
        side = self.tile_px / ds  # tile side in level px
        r0, c0 = rc.min(axis=0)
        r1, c1 = rc.max(axis=0) + 1
        x0, y0 = int(np.floor(c0 * side)), int(np.floor(r0 * side))
        x1, y1 = int(np.ceil(c1 * side)), int(np.ceil(r1 * side))
        region = slide.read_level_region(level, x0, y0, x1 - x0, y1 - y0)
        out = np.empty((len(idx), 3, self.out_px, self.out_px), dtype=np.uint8)
        n = max(1, round(side))
        for k, (r, c) in enumerate(rc):
            tx, ty = round(c * side) - x0, round(r * side) - y0
            tile = region[ty : ty + n, tx : tx + n]
            if tile.shape[:2] != (n, n):  # last row/column of the region: pad with glass
                tile = np.pad(tile, ((0, n - tile.shape[0]), (0, n - tile.shape[1]), (0, 0)), constant_values=255)
            if n != self.out_px:
                tile = np.asarray(Image.fromarray(tile).resize((self.out_px, self.out_px), Image.BILINEAR))
            out[k] = tile.transpose(2, 0, 1)
        return out
