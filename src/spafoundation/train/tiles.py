"""Tissue tiles for pre-training: random squares of ``tile_um`` microns on tissue, resampled to ``tile_px``.

Centres are drawn from the tissue mask of each slide's thumbnail with a seeded generator, so every process of a
distributed run (and a resumed run) builds the same bank; tiles are then held in memory as uint8 (a bank of 20k
tiles of 140 px is 1.2 GB), which keeps the data loader out of the way of a CPU-bound training step."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, library_id, microns_per_pixel
from spafoundation.io.patches import extract_patches, open_section_slide, tissue_fraction, tissue_mask

log = logging.getLogger(__name__)
MIN_TISSUE = 0.5


def tile_centres(adata: ad.AnnData, n: int, tile_um: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` random centres (full-resolution px) whose thumbnail pixel is tissue, away from the border."""
    with open_section_slide(adata) as slide:
        thumb, scale = slide.thumbnail(1000)
        w, h = slide.width, slide.height
    half = tile_um / microns_per_pixel(adata) / 2
    ys, xs = np.nonzero(tissue_mask(thumb))
    cx, cy = (xs + 0.5) / scale, (ys + 0.5) / scale
    inside = (cx > half) & (cx < w - half) & (cy > half) & (cy < h - half)
    cx, cy = cx[inside], cy[inside]
    if len(cx) == 0:
        raise InputError(image_path(adata), "image", "no tissue found to sample pre-training tiles from")
    pick = rng.integers(0, len(cx), size=n)
    jitter = rng.uniform(-0.5, 0.5, size=(n, 2)) / scale
    return np.stack([cx[pick], cy[pick]], axis=1) + jitter


def build_tile_bank(sections: Sequence[ad.AnnData], n_tiles: int, tile_um: float, tile_px: int, seed: int = 0,
                    min_tissue: float = MIN_TISSUE) -> np.ndarray:
    """uint8 (n_tiles, tile_px, tile_px, 3) tiles on tissue, spread evenly over the imaged sections."""
    imaged = [a for a in sections if image_path(a)]
    if not imaged:
        raise InputError(None, "image", "no section has an image to pre-train on")
    rng = np.random.default_rng(seed)
    per = -(-n_tiles // len(imaged))
    banks = []
    for a in imaged:
        got, tries = [], 0
        while sum(len(g) for g in got) < per and tries < 5:
            xy = tile_centres(a, int(per * 1.5) + 8, tile_um, rng)
            tiles = extract_patches(a, tile_um, tile_px, xy=xy)
            got.append(tiles[tissue_fraction(tiles) >= min_tissue])
            tries += 1
        tiles = np.concatenate(got)[:per]
        log.info("%s: %d tiles of %g um", library_id(a), len(tiles), tile_um)
        banks.append(tiles)
    bank = np.concatenate(banks)
    order = rng.permutation(len(bank))[:n_tiles]
    return np.ascontiguousarray(bank[order])


def batch_indices(n_items: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Tile indices of this rank's share of global batch ``step``: epochs are seeded permutations, so any step
    can be recomputed from its number alone (exact resume, no sampler state)."""
    global_bs = batch_size * world
    per_epoch = max(1, n_items // global_bs)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    batch = perm[pos * global_bs:(pos + 1) * global_bs]
    return batch[rank * batch_size:(rank + 1) * batch_size]
