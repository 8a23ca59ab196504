"""Whole-slide embeddings: every tissue tile of a slide through an encoder, streamed, into an AnnData.

The result follows the reader layout (io/anndata_spec.py) with one observation per tile and no genes, so
``sc.pl.spatial`` draws it on the slide thumbnail and every task that takes spot embeddings takes tiles too.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import build_anndata
from spafoundation.io.slide import open_slide
from spafoundation.io.slide_tiles import TileBlocks, tissue_tile_grid
from spafoundation.models.embed import UNS_KEY
from spafoundation.models.encoder import Encoder

log = logging.getLogger(__name__)
MIN_TISSUE = 0.25


def default_workers() -> int:
    """Reader processes: one per spare core, at most 4 (decoding is cheap next to the encoder)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def embed_slide(
    path: str | os.PathLike,
    encoder: Encoder,
    *,
    mpp: float | None = None,
    slide_id: str | None = None,
    min_tissue: float = MIN_TISSUE,
    batch_size: int = 64,
    num_workers: int | None = None,
    block: int = 8,
    progress: bool = True,
) -> ad.AnnData:
    """Embed a tile grid of ``encoder.patch_um`` microns over the slide's tissue.

    Returns an AnnData (tiles x 0 genes): ``obsm['spatial']`` tile centres (full-resolution px),
    ``obsm['X_<encoder>']`` embeddings, ``obs`` grid ``array_row``/``array_col`` and ``tissue_fraction``."""
    if batch_size < 1:
        raise InputError(None, "--batch-size", "must be >= 1")
    path = Path(path)
    slide_id = slide_id or path.stem
    t0 = time.perf_counter()
    with open_slide(path, mpp=mpp) as slide:
        mpp_source = "given" if mpp else "metadata" if slide.mpp else None
        if mpp_source is None:
            raise InputError(path, "microns_per_pixel", "unknown pixel size: give it (--mpp or a manifest column)")
        grid = tissue_tile_grid(slide, encoder.patch_um, mpp=mpp, min_tissue=min_tissue)
    if not len(grid):
        raise InputError(path, "image", f"no {encoder.patch_um:g} um tile with {min_tissue:.0%} tissue")
    workers = default_workers() if num_workers is None else int(num_workers)
    loader = DataLoader(TileBlocks(path, grid, encoder.input_size, block=block), batch_size=None,
                        num_workers=workers, pin_memory=encoder.device.type == "cuda",
                        prefetch_factor=2 if workers else None)
    emb = np.empty((len(grid), encoder.embed_dim), dtype=np.float32)
    encoder.eval()
    bar = tqdm(total=len(grid), disable=not progress, unit="tile", desc=f"embed {slide_id}")
    pending_idx, pending = [], []

    def flush(final: bool) -> None:
        idx, tiles = torch.cat(pending_idx), torch.cat(pending)
        stop = len(idx) if final else len(idx) - len(idx) % batch_size
        with torch.inference_mode():
            for s in range(0, stop, batch_size):
                e = min(stop, s + batch_size)
                emb[idx[s:e].numpy()] = encoder(encoder.preprocess(tiles[s:e])).float().cpu().numpy()
                bar.update(e - s)
        pending_idx[:], pending[:] = [idx[stop:]], [tiles[stop:]]

    try:
        for idx, tiles in loader:
            pending_idx.append(idx)
            pending.append(tiles)
            if sum(len(i) for i in pending_idx) >= batch_size:
                flush(final=False)
        if pending_idx:
            flush(final=True)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    obs = pd.DataFrame({"section": slide_id, "patient": "", "array_row": grid.row_col[:, 0],
                        "array_col": grid.row_col[:, 1], "tissue_fraction": grid.tissue.astype(np.float32)})
    adata = build_anndata(
        counts=None, genes=[], spot_ids=[f"{slide_id}_{r}x{c}" for r, c in grid.row_col], xy=grid.xy, obs=obs,
        library=slide_id, mpp=grid.mpp, mpp_source=mpp_source, spot_diameter_um=encoder.patch_um,
        platform="tiles", image_path=str(path.resolve()), hires=grid.thumbnail, hires_scalef=grid.thumbnail_scale,
        extra_meta={"tile_um": float(encoder.patch_um), "min_tissue": float(min_tissue),
                    "slide_size": [int(grid.width), int(grid.height)]},
    )
    key = f"X_{encoder.name}"
    adata.obsm[key] = emb
    adata.uns[UNS_KEY] = {key: {"encoder": encoder.name, "identity": encoder.identity,
                                "patch_um": float(encoder.patch_um), "input_size": int(encoder.input_size),
                                "tta": False, "n_tiles": len(grid), "seconds": round(seconds, 2),
                                "num_workers": workers}}
    log.info("%s: %d tissue tiles of %g um in %.1f s", slide_id, len(grid), encoder.patch_um, seconds)
    return adata
