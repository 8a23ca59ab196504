"""Per-spot feature matrices for the expression, tumour and clustering heads.

A feature recipe is a small dict (JSON-serialisable, saved with every model):
``{"source": "encoder" | "mean_colour" | "colour_texture" | "nuclei" | several joined by "+", "tta": bool,
"context": float, "neighbours_um": float}``.
- ``encoder``: the encoder's embedding of the spot patch (cached on disk by ``embed_adata``);
- ``mean_colour`` / ``colour_texture``: hand-crafted colour, stain and texture statistics of the same patch
  (cached too, ``embed_handcrafted.py``); ``nuclei``: nuclear count, size and darkness (models/nuclei.py), at
  1 um/px and at the spot's field of view only; sources joined by ``+`` are concatenated;
- ``context`` > 1: concatenates the features of a patch ``context`` times wider, resampled to the same input size;
- ``neighbours_um`` > 0: concatenates the mean feature of the spots within that radius (tissue context that a
  single patch does not see);
- ``standardize``: ``"section"`` z-scores every feature over the spots of the section it was computed on, so a
  section's stain, scanner and resolution offsets are removed before any head sees it (the head then learns from
  differences between spots of one section, which is also what per-section Pearson scores); ``"none"`` keeps the
  raw values (models saved before this option existed);
- ``stain_norm``: ``"macenko"`` or ``"reinhard"`` normalises every patch's stain to ``stain_reference`` (a
  ``StainReference.to_dict()``; a fitted model stores the one fitted on its training sections, and None means the
  built-in reference, ``io/stain.py``) before any source sees it; ``"none"`` (default) reads the patches as scanned.
"""

from __future__ import annotations

import copy
import itertools
import logging

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from spafoundation.io.anndata_spec import library_id, microns_per_pixel
from spafoundation.io.stain import METHODS as STAIN_METHODS
from spafoundation.io.stain import StainReference, builtin_reference

log = logging.getLogger(__name__)
SOURCES = ("encoder", "mean_colour", "colour_texture", "nuclei")
SPOT_ONLY = {"nuclei"}  # sources read at the spot's field of view only (a wider one costs 4x and added nothing)
HANDCRAFTED_PATCH_PX = 64  # colour statistics do not need the encoder's resolution
HANDCRAFTED_PATCH_UM = 112.0  # the field of view of every registered encoder (and of the HEST benchmark)
DEFAULT_RECIPE = {"source": "encoder", "tta": False, "context": 1.0, "neighbours_um": 0.0, "standardize": "none",
                  "stain_norm": "none", "stain_reference": None}
STANDARDIZE = ("none", "section")
MIN_SECTION_SPOTS = 30  # fewer spots than this give unstable per-section statistics: a warning says so


def make_recipe(**kwargs) -> dict:
    unknown = set(kwargs) - set(DEFAULT_RECIPE)
    if unknown:
        raise ValueError(f"unknown feature options {sorted(unknown)}")
    recipe = {**DEFAULT_RECIPE, **{k: v for k, v in kwargs.items() if v is not None}}
    if not recipe["source"] or any(s not in SOURCES for s in str(recipe["source"]).split("+")):
        raise ValueError(f"feature source must be one of {SOURCES} or several joined by '+', "
                         f"got {recipe['source']!r}")
    if float(recipe["context"]) < 1:
        raise ValueError("context must be >= 1 (a multiple of the spot patch)")
    if recipe["standardize"] not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {STANDARDIZE}, got {recipe['standardize']!r}")
    if recipe["stain_norm"] not in STAIN_METHODS:
        raise ValueError(f"stain_norm must be one of {STAIN_METHODS}, got {recipe['stain_norm']!r}")
    reference = recipe_stain(recipe)
    if reference is not None and reference.method != recipe["stain_norm"]:
        raise ValueError(f"stain_reference is a {reference.method} reference, but stain_norm is "
                         f"{recipe['stain_norm']!r}")
    return recipe


def fit_recipe_stain(recipe: dict, sections) -> dict:
    """``recipe`` with its stain reference fitted over tissue patches of ``sections`` (AnnData; the training
    sections of a model, or every section a shared space is made of), where it normalises stain and has none yet."""
    if recipe.get("stain_norm", "none") == "none" or recipe.get("stain_reference") is not None:
        return recipe
    from spafoundation.io.stain import fit_reference_on_sections

    return {**recipe, "stain_reference": fit_reference_on_sections(list(sections), recipe["stain_norm"]).to_dict()}


def recipe_stain(recipe: dict, path=None) -> StainReference | None:
    """The ``StainReference`` a recipe normalises patches to (its own, else the built-in one), None for ``none``;
    an InputError naming ``path`` (a model's config.json) when the stored reference is not one."""
    method = recipe.get("stain_norm", "none")
    if method == "none":
        return None
    stored = recipe.get("stain_reference")
    if stored is None:
        return builtin_reference(method)
    return StainReference.from_dict(stored, path, "recipe.stain_reference")


def standardize_section(feats: np.ndarray, section: str = "section", reference: np.ndarray | None = None) -> np.ndarray:
    """Each feature z-scored over the rows (spots) of one section, or with the mean and sd of ``reference`` (the
    section's spots, for other locations on it such as a tissue grid); a constant feature becomes 0."""
    feats = np.asarray(feats, dtype=np.float64)
    ref = feats if reference is None else np.asarray(reference, dtype=np.float64)
    if len(ref) < MIN_SECTION_SPOTS:
        log.warning("%s: %d spot(s) to standardise features over (per-section statistics want >= %d); "
                    "predictions may be unstable", section, len(ref), MIN_SECTION_SPOTS)
    sd = ref.std(axis=0)
    return ((feats - ref.mean(axis=0)) / np.where(sd > 1e-12, sd, np.inf)).astype(np.float32)


def context_encoder(encoder, factor: float):
    """The same network looking at a ``factor`` times wider field of view (resampled to its input size)."""
    wide = copy.copy(encoder)  # shallow: shares the weights, so no extra memory
    object.__setattr__(wide, "target_mpp", encoder.target_mpp * factor)
    object.__setattr__(wide, "identity", f"{encoder.identity}|context{factor:g}")
    return wide


def neighbour_mean(xy_um: np.ndarray, feats: np.ndarray, radius_um: float, chunk: int = 1024) -> np.ndarray:
    """Mean of ``feats`` over the spots within ``radius_um`` of each spot (itself included).

    Chunks of ``chunk`` spots at a time: on dense arrays (Visium HD bins) a radius holds thousands of spots, and all
    neighbour lists at once took 21 GB for 108k bins."""
    tree = cKDTree(xy_um)
    values = np.asarray(feats, dtype=np.float64)
    out = np.empty(feats.shape, dtype=feats.dtype)
    for start in range(0, len(xy_um), chunk):
        nb = tree.query_ball_point(xy_um[start:start + chunk], r=radius_um)
        counts = np.fromiter(map(len, nb), np.int64, len(nb))
        cols = np.fromiter(itertools.chain.from_iterable(nb), np.int64, int(counts.sum()))
        rows = np.repeat(np.arange(len(nb)), counts)
        member = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(nb), len(xy_um)))
        out[start:start + chunk] = (member @ values) / counts[:, None]
    return out


def spot_features(adata: ad.AnnData, recipe: dict, encoder=None, *, xy: np.ndarray | None = None,
                  cache_dir=None, progress: bool = False, with_blocks: bool = False,
                  standardize_with: ad.AnnData | None = None):
    """Feature matrix (spots x d) of one section under ``recipe``. ``xy`` (full-res px) overrides the spot centres.

    ``standardize_with``: the section whose spots give the per-section statistics (recipe ``standardize:
    section``) when ``adata`` holds other locations on it (a tissue grid: a coarse one has too few points).

    ``with_blocks``: also return the width of each concatenated block (source x field of view x neighbourhood), so
    a head can give every block the same weight whatever its width."""
    recipe = make_recipe(**recipe)
    if xy is not None:
        adata = locations_adata(adata, xy)
    sources = str(recipe["source"]).split("+")
    if "encoder" in sources and encoder is None:
        raise ValueError("the 'encoder' feature source needs an encoder")
    stain = recipe_stain(recipe)
    parts = [_source_features(adata, src, encoder, f, bool(recipe["tta"]), cache_dir, progress, stain)
             for src, f in _source_views(recipe)]
    feats = np.concatenate(parts, axis=1)
    blocks = [p.shape[1] for p in parts]
    radius = float(recipe["neighbours_um"])
    if radius > 0:
        xy_um = np.asarray(adata.obsm["spatial"], dtype=np.float64) * microns_per_pixel(adata)
        feats = np.concatenate([feats, neighbour_mean(xy_um, feats, radius)], axis=1)
        blocks = blocks * 2
    if recipe["standardize"] == "section":
        reference = None if standardize_with is None else spot_features(
            standardize_with, {**recipe, "standardize": "none"}, encoder, cache_dir=cache_dir, progress=progress)
        feats = standardize_section(feats, library_id(adata), reference)
    feats = feats.astype(np.float32)
    return (feats, blocks) if with_blocks else feats


def block_labels(recipe: dict) -> list[str]:
    """The name of each feature block of ``recipe``, in the order ``spot_features`` concatenates them: every source
    at every field of view (``colour_texture``, ``encoder@x2``), then, with a neighbourhood, the same names behind
    ``neighbours:``."""
    recipe = make_recipe(**recipe)
    labels = [src if f == 1 else f"{src}@x{f:g}" for src, f in _source_views(recipe)]
    return labels + [f"neighbours:{name}" for name in labels] if float(recipe["neighbours_um"]) > 0 else labels


def _source_views(recipe: dict) -> list[tuple[str, float]]:
    """(source, field-of-view factor) of every block before the neighbourhood, in order."""
    factors = [1.0] + ([float(recipe["context"])] if float(recipe["context"]) > 1 else [])
    return [(src, f) for src in str(recipe["source"]).split("+") for f in factors
            if f == 1 or src not in SPOT_ONLY]


def needs_encoder(recipe: dict) -> bool:
    return "encoder" in str(recipe["source"]).split("+")


def _source_features(adata, source: str, encoder, factor: float, tta: bool, cache_dir, progress,
                     stain=None) -> np.ndarray:
    """One source's features of patches ``factor`` times the base field of view around each centre."""
    if source == "encoder":
        from spafoundation.models.embed import embed_adata

        if factor == 1:
            return embed_adata(adata, encoder, cache_dir=cache_dir, tta=tta, progress=progress, stain=stain)
        return embed_adata(adata, context_encoder(encoder, factor), cache_dir=cache_dir, tta=tta, progress=progress,
                           key=f"X_{encoder.name}_context{factor:g}", stain=stain, view=f"x{factor:g} field of view")
    from spafoundation.models.embed_handcrafted import handcrafted_features

    size_um = (encoder.patch_um if encoder is not None else HANDCRAFTED_PATCH_UM) * factor
    if source == "nuclei":  # sizes in microns need the detail of nuclei, not 64 px
        from spafoundation.models.nuclei import UM_PER_PX

        return handcrafted_features(adata, source, size_um, round(size_um / UM_PER_PX), cache_dir=cache_dir,
                                    stain=stain)
    return handcrafted_features(adata, source, size_um, HANDCRAFTED_PATCH_PX, cache_dir=cache_dir, stain=stain)


def locations_adata(section: ad.AnnData, xy: np.ndarray) -> ad.AnnData:
    """An AnnData of arbitrary centres (full-res px) on ``section``'s image, with no counts: what prediction needs."""
    import pandas as pd

    xy = np.asarray(xy, dtype=np.float64)
    lib = next(iter(section.uns["spatial"]))
    obs = pd.DataFrame(index=[f"{lib}_loc{i}" for i in range(len(xy))])
    obs["section"] = lib
    out = ad.AnnData(np.zeros((len(xy), 0), dtype=np.float32), obs=obs)
    out.obsm["spatial"] = xy
    out.uns["spatial"] = section.uns["spatial"]
    return out
