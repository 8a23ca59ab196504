"""Spot embeddings: patches of ``encoder.patch_um`` around each spot -> encoder -> ``obsm['X_<name>']``."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from tqdm.auto import tqdm

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, image_scale, library_id, microns_per_pixel
from spafoundation.io.patches import (
    extract_patches,
    open_section_slide,
    patch_off_slide,
    section_off_slide,
    tissue_fraction,
)
from spafoundation.io.stain import section_stain
from spafoundation.models.cache import EmbeddingCache, cache_root, embedding_key, slide_identity
from spafoundation.models.encoder import Encoder

log = logging.getLogger(__name__)
UNS_KEY = "spafoundation_embeddings"
MIN_TISSUE = 0.1  # spots whose patch has less tissue than this are flagged (obs['low_tissue'])


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of an NCHW batch (the dihedral group of the square)."""
    views = []
    for flipped in (x, x.flip(-1)):
        for k in range(4):
            views.append(torch.rot90(flipped, k, dims=(-2, -1)))
    return views


@torch.inference_mode()
def embed_patches(encoder: Encoder, patches: np.ndarray, *, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Embeddings (n, embed_dim) float32 of uint8 (n, h, w, 3) patches; ``tta`` averages the 8 dihedral views."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    encoder.eval()
    out = np.empty((len(patches), encoder.embed_dim), dtype=np.float32)
    for start in range(0, len(patches), batch_size):
        x = encoder.preprocess(patches[start : start + batch_size])
        if tta:
            emb = torch.stack([encoder(v) for v in dihedral_views(x)]).mean(0)
        else:
            emb = encoder(x)
        out[start : start + len(x)] = emb.float().cpu().numpy()
    return out


def embed_adata(
    adata: ad.AnnData,
    encoder: Encoder,
    *,
    cache_dir=None,
    tta: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    key: str | None = None,
    stain=None,
    view: str = "",
) -> np.ndarray:
    """One embedding per spot, stored in ``adata.obsm[key or 'X_<encoder.name>']`` and returned.

    ``stain``: an ``io.stain.StainReference`` the patches are normalised to before the encoder sees them (the
    section's own stain estimated over a sample of its spots, ``io.stain.section_stain``); None: the patches as read.

    Patches of ``encoder.patch_um`` microns around each spot centre are resampled to ``encoder.input_size`` px.
    Results are cached on disk (``cache_dir``, ``$SPAFOUNDATION_CACHE`` or ``~/.cache/spafoundation``;
    ``cache_dir=False`` disables the cache) and a run that was killed resumes from the last complete chunk.
    Also sets ``obs['tissue_fraction']`` (share of tissue pixels in the patch; glass masked to black and a picture
    pasted onto the image are none, as on the slide's tissue mask) and ``obs['low_tissue']``, unless ``view`` names
    another view than the spot's own patch (a wider field of view, ``tasks/spot_features.context_encoder``): those
    columns stay the spot patch's, and the progress bar names the view.
    """
    key = key or f"X_{encoder.name}"
    section = library_id(adata)
    path = image_path(adata)
    if not path:
        raise InputError(None, f"uns['spatial']['{section}']", "section has no H&E image to embed")
    if "spatial" not in adata.obsm:
        raise InputError(None, "obsm['spatial']", f"section {section} has no spot coordinates")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise InputError(None, "obsm['spatial']", f"section {section}: expected finite (n, 2) spot centres")
    mpp = microns_per_pixel(adata)
    n = len(xy)

    cache = None
    if cache_dir is not False:
        slide = slide_identity(path, image_scale(adata))
        meta = {"section": section, "slide": slide, "encoder": encoder.identity, "patch_um": encoder.patch_um,
                "input_size": encoder.input_size, "tta": tta, "n_spots": n,
                **({} if stain is None else {"stain": stain.to_dict()})}
        k = embedding_key(slide=slide, mpp=mpp, xy=xy, encoder=encoder.identity, patch_um=encoder.patch_um,
                          input_size=encoder.input_size, tta=tta, stain=stain)
        cache = EmbeddingCache(cache_root(cache_dir), k, n, meta)

    hit = cache.load() if cache is not None else None
    if hit is not None:
        (emb, tf), n_cached, status = hit, n, "hit"
    else:
        emb, tf, n_cached = _compute(adata, encoder, xy, cache, tta, batch_size, progress,
                                     f"{section} ({view})" if view else section, section_stain(adata, stain))
        status = "off" if cache is None else "partial" if n_cached else "miss"
    adata.obsm[key] = emb
    if not view:
        adata.obs["tissue_fraction"] = tf.astype(np.float32)
        adata.obs["low_tissue"] = tf < MIN_TISSUE
        if "grid" not in adata.uns and "superres" not in adata.uns:  # spots, not tiles laid over the tissue
            warn_if_spots_off_tissue(section, path, adata.obs["low_tissue"].to_numpy())
    record = {"encoder": encoder.name, "identity": encoder.identity, "patch_um": float(encoder.patch_um),
              "input_size": int(encoder.input_size), "tta": bool(tta), "cache": status,
              "n_from_cache": int(n_cached), "stain_norm": "none" if stain is None else stain.record()}
    adata.uns.setdefault(UNS_KEY, {})[key] = record
    log.info("%s: %s %s (%d spots, cache %s)", section, key, emb.shape, n, status)
    return emb


OFF_TISSUE_SHARE = 0.10  # HER2ST's six imaged sections: 0%; flipped or transposed: 0-52%, 11 of 18 cases above
_WARNED_OFF_TISSUE: set[tuple[str, str]] = set()


def warn_if_spots_off_tissue(section: str, image: str, low: np.ndarray) -> None:
    """One warning per section and image when more than ``OFF_TISSUE_SHARE`` of its spots' patches hold (almost) no
    tissue: measured spots lie under tissue, so the coordinates most likely do not match this image (flipped,
    turned, at another scale, or another section's image), the most common failure with spatial data."""
    share = float(np.mean(low)) if len(low) else 0.0
    if share <= OFF_TISSUE_SHARE or (section, image) in _WARNED_OFF_TISSUE:
        return
    _WARNED_OFF_TISSUE.add((section, image))
    log.warning("%s: %d of %d spots (%.0f%%) have almost no tissue in their patch of %s: measured spots lie under "
                "tissue, so check that the spot coordinates belong to this image (not flipped, turned, at another "
                "scale or of another section); obs['low_tissue'] marks them", section, int(np.sum(low)), len(low),
                100 * share, Path(image).name)


def _compute(adata, encoder, xy, cache, tta, batch_size, progress, section, normalise=None):
    """Embed every chunk not already in the cache; returns (embeddings, tissue_fraction, n taken from cache)."""
    n = len(xy)
    work = cache if cache is not None else EmbeddingCache("", "", n)
    emb = np.empty((n, encoder.embed_dim), dtype=np.float32)
    tf = np.empty(n, dtype=np.float64)
    todo = []
    n_cached = 0
    for i in range(work.n_chunks):
        part = cache.load_chunk(i) if cache is not None else None
        s = work.chunk_slice(i)
        if part is not None and part[0].shape[1] == encoder.embed_dim:
            emb[s], tf[s] = part
            n_cached += s.stop - s.start
        else:
            todo.append(i)
    bar = tqdm(total=n, initial=n_cached, disable=not progress, unit="spot", desc=f"embed {section}")
    slide = open_section_slide(adata) if todo else None
    try:
        off = section_off_slide(slide) if slide is not None else None
        size_px = encoder.patch_um / microns_per_pixel(adata)
        for i in todo:
            s = work.chunk_slice(i)
            patches = extract_patches(adata, encoder.patch_um, encoder.input_size, xy=xy[s], slide=slide)
            # of the patch as scanned: normalisation must not move the tissue flag
            tf[s] = tissue_fraction(patches, None if off is None else
                                    patch_off_slide(off, xy[s], size_px, encoder.input_size))
            if normalise is not None:
                patches = normalise(patches)
            for start in range(0, len(patches), batch_size):
                block = patches[start : start + batch_size]
                emb[s.start + start : s.start + start + len(block)] = embed_patches(
                    encoder, block, batch_size=batch_size, tta=tta)
                bar.update(len(block))
            if cache is not None:
                cache.save_chunk(i, emb[s], tf[s])
    finally:
        bar.close()
        if slide is not None:
            slide.close()
    if cache is not None:
        cache.finalize(emb, tf)
    return emb, tf, n_cached
