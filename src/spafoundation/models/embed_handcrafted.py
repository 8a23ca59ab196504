"""Hand-crafted patch features per spot (``handcrafted.py``), computed in chunks and cached like encoder embeddings.

Chunks bound the memory (a Visium HD section has 10^5 spots: all their patches at once, converted to optical
density in float64, took 11 GB for 27k spots); the cache means the expression, tumour and clustering steps of one
run compute them once. An entry is ``<cache>/handcrafted/<key>.npz``, keyed by the slide file, pixel size, spot
coordinates, feature kind and version, and patch geometry; a damaged entry is recomputed.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, image_scale, library_id, microns_per_pixel
from spafoundation.io.patches import extract_patches, open_section_slide
from spafoundation.io.stain import section_stain
from spafoundation.models import handcrafted, nuclei
from spafoundation.models.cache import (
    cache_key,
    cache_root,
    coords_digest,
    load_npz,
    save_npz,
    slide_identity,
    stain_key,
)

log = logging.getLogger(__name__)
FUNCTIONS = {"mean_colour": handcrafted.mean_colour, "colour_texture": handcrafted.colour_texture_features,
             "nuclei": nuclei.nuclei_features}
MEASURES_SIZES = {"nuclei"}  # these take the patch's microns per pixel as well
CHUNK = 1024


def handcrafted_key(*, slide: dict, mpp: float, xy: np.ndarray, kind: str, patch_um: float, patch_px: int,
                    stain=None) -> str:
    return cache_key({"what": "handcrafted", "version": handcrafted.FEATURES_VERSION, "kind": kind, "slide": slide,
                      "mpp": round(float(mpp), 9), "coords": coords_digest(xy), "n": len(xy),
                      "patch_um": round(float(patch_um), 6), "patch_px": int(patch_px), **stain_key(stain)})


def _load(path, n: int) -> np.ndarray | None:
    z = load_npz(path, ("features",))
    if z is None:
        return None
    feats = z["features"]
    return feats if feats.ndim == 2 and len(feats) == n and np.isfinite(feats).all() else None


def handcrafted_features(adata: ad.AnnData, kind: str, patch_um: float, patch_px: int, *,
                         cache_dir=None, stain=None) -> np.ndarray:
    """(spots x d) float32 features ``kind`` ('mean_colour', 'colour_texture' or 'nuclei') of ``patch_um`` patches
    around each spot centre, resampled to ``patch_px``. ``cache_dir=False``: no cache. ``stain``: an ``io.stain.StainReference``
    the patches are normalised to first (as ``embed_adata``)."""
    def fn(patches):
        return FUNCTIONS[kind](patches, patch_um / patch_px) if kind in MEASURES_SIZES else FUNCTIONS[kind](patches)

    path = image_path(adata)
    if not path:
        raise InputError(None, f"uns['spatial']['{library_id(adata)}']", "section has no H&E image")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    entry = None
    if cache_dir is not False:
        slide = slide_identity(path, image_scale(adata))
        key = handcrafted_key(slide=slide, mpp=microns_per_pixel(adata), xy=xy, kind=kind, patch_um=patch_um,
                              patch_px=patch_px, stain=stain)
        entry = cache_root(cache_dir) / "handcrafted" / f"{key}.npz"
        hit = _load(entry, len(xy))
        if hit is not None:
            log.info("%s: %s features %s of %g um patches (cache hit)", library_id(adata), kind, hit.shape, patch_um)
            return hit
    normalise = section_stain(adata, stain) or (lambda patches: patches)
    slide = open_section_slide(adata)
    try:
        parts = [fn(normalise(extract_patches(adata, patch_um, patch_px, xy=xy[i:i + CHUNK], slide=slide)))
                 for i in range(0, len(xy), CHUNK)]
    finally:
        slide.close()
    if not parts:  # no spots: the right width all the same
        parts = [fn(np.zeros((1, patch_px, patch_px, 3), np.uint8))[:0]]
    feats = np.concatenate(parts).astype(np.float32)
    if entry is not None and len(feats):
        entry.parent.mkdir(parents=True, exist_ok=True)
        save_npz(entry, features=feats)
    log.info("%s: %s features %s of %g um patches (%s)", library_id(adata), kind, feats.shape, patch_um,
             "cache off" if entry is None else "cache miss")
    return feats
