"""The AnnData layout every reader produces and every task consumes (scanpy/squidpy conventions).

- ``X``: raw integer counts, CSR (spots x genes); image-only sections have zero genes.
- ``var_names``: gene symbols.
- ``obs``: ``section``, ``patient``, ``array_row``, ``array_col`` (+ ``label`` / ``cluster_annotation`` when known).
- ``obsm['spatial']``: spot centres in full-resolution pixels, x = column, y = row (float64).
- ``uns['spatial'][library_id]``: ``images`` (``hires`` thumbnail), ``scalefactors`` (``tissue_hires_scalef``,
  ``spot_diameter_fullres``, ``microns_per_pixel``) and ``metadata`` (``image_path``, ``platform``,
  ``mpp_source``, spot geometry in microns; ``image_scale``, image px per full-resolution px, where the image is a
  downscaled copy such as Space Ranger's hires PNG: ``io/downscaled.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spafoundation.errors import InputError
from spafoundation.io.downscaled import open_image
from spafoundation.io.values import integer_counts

log = logging.getLogger(__name__)

HIRES_MAX_SIDE = 2000
FIRST_RING = 1.3
MPP_RANGE = (0.01, 100.0)  # um/px: from beyond a 100x objective to a coarse overview; outside it, a unit error  # neighbours within this factor of the nearest one count as the grid step


def library_id(adata: ad.AnnData) -> str:
    spatial = adata.uns.get("spatial", {})
    if len(spatial) != 1:
        raise InputError(None, "uns['spatial']", f"expected one library, found {len(spatial)}")
    return next(iter(spatial))


def spatial_meta(adata: ad.AnnData) -> dict:
    return adata.uns["spatial"][library_id(adata)]


def microns_per_pixel(adata: ad.AnnData) -> float:
    return float(spatial_meta(adata)["scalefactors"]["microns_per_pixel"])


def spot_diameter_fullres(adata: ad.AnnData) -> float:
    return float(spatial_meta(adata)["scalefactors"]["spot_diameter_fullres"])


def image_path(adata: ad.AnnData) -> str | None:
    path = spatial_meta(adata)["metadata"].get("image_path")
    return str(path) if path else None


def note_imageless(path, sections: list[str]) -> None:
    """One log line naming the sections ``imaged_only`` reading left out."""
    if sections:
        log.info("%s: left out %d section(s) without an H&E image: %s", path, len(sections), ", ".join(sections))


def without_thumbnail(adata: ad.AnnData) -> ad.AnnData:
    """A copy of ``adata`` as a reader gives it with ``with_images=False``: no hires thumbnail, its scale factors
    back at 1 (the image file is still named, so patches can be read)."""
    copy = adata.copy()
    for lib in copy.uns.get("spatial", {}).values():
        lib["images"] = {}
        lib["scalefactors"] = {**lib["scalefactors"], "tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0}
    return copy


def image_scale(adata: ad.AnnData) -> float:
    """Image px per full-resolution px of the section's image: 1 for the full-resolution H&E."""
    return float(spatial_meta(adata)["metadata"].get("image_scale", 1.0))


def validate_counts(X, path, field: str = "counts"):
    """Counts must be finite and non-negative; returns CSR with an integer dtype when values are integral (int32,
    or int64 for counts beyond int32's range: io/values.py)."""
    X = sp.csr_matrix(X)
    data = X.data
    if data.size and not np.all(np.isfinite(data)):
        raise InputError(path, field, f"{int((~np.isfinite(data)).sum())} NaN or infinite values")
    if data.size and data.min() < 0:
        raise InputError(path, field, f"negative counts (min {data.min()})")
    if data.size and is_integral(data):
        X = integer_counts(X, path, field)
    elif data.size:
        # kept (ambient-corrected counts are fractional), but normalised or log data would be normalised twice
        log.warning("%s: %s holds non-integer values (max %.3g): spafoundation expects raw counts, and "
                    "normalises them itself", path, field, float(data.max()))
    X.eliminate_zeros()
    return X


def is_integral(values) -> bool:
    values = values.data if sp.issparse(values) else np.asarray(values)
    return bool(np.all(np.equal(np.mod(values, 1), 0)))


def check_unique(ids: pd.Index | list, path, field: str) -> None:
    ids = pd.Index(ids)
    if ids.has_duplicates:
        dup = ids[ids.duplicated()].unique()[:5].tolist()
        raise InputError(path, field, f"duplicated ids: {dup}")


def check_section_id(name: str, path, field: str = "section") -> None:
    """Section ids name output files (``<section>_maps.png``): one that is not a plain file name is refused."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InputError(path, field, f"section id {name!r} cannot name a file: give it another id (without '/')")


def check_inside(xy: np.ndarray, width: int, height: int, path, field: str = "spot coordinates",
                 image=None) -> None:
    """An InputError naming the coordinates' file and field unless every spot centre lies on the image (``image``:
    its path, named in the message)."""
    if not np.all(np.isfinite(xy)):
        raise InputError(path, field, "non-finite spot coordinates")
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        # spots spread far past the image: most likely a downscaled copy (Space Ranger's hires or lowres PNG, an
        # export) given for the full-resolution H&E the coordinates refer to
        scale = max(float(xy[:, 0].max()) / max(width, 1), float(xy[:, 1].max()) / max(height, 1))
        hint = (f"; the spots reach {scale:.1f}x the image's size: spot coordinates are full-resolution pixels, "
                "and this looks like a downscaled copy of the H&E (give its scale, image px per full-resolution px, "
                "with --image-scale or image_scale: in a manifest)" if scale > 1.5 else "")
        raise InputError(
            path,
            field,
            f"{int(outside.sum())} spot centres fall outside the {width}x{height} px image"
            f"{f' {Path(image).name}' if image else ''} (first: x={xy[i, 0]:.1f}, y={xy[i, 1]:.1f}){hint}",
        )


def read_section_image(
    image, xy: np.ndarray, mpp: float, coords_path, coords_field: str, *, with_image: bool = True,
    scale: float = 1.0,
) -> tuple[np.ndarray | None, float, list[int]]:
    """Open a section's image, check it is readable and that every spot centre lies on it (``scale``: image px per
    full-resolution px, for a downscaled copy; the spots are checked against the full-resolution frame).

    Returns (hires thumbnail or None, its scale factor, the image file's [width, height]). ``with_image=False``
    skips the thumbnail but still checks the file, so ``spafoundation info`` reports a truncated image."""
    if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:  # 1e-9 um/px would make each patch a 1e11 px read
        raise InputError(image, "microns_per_pixel", f"{mpp:.3g} um/px is not an H&E image's pixel size (expected "
                         f"{MPP_RANGE[0]:g} to {MPP_RANGE[1]:g}); check the mpp, pitch_um or scale factors it came from")
    with open_image(image, mpp=mpp, scale=scale) as slide:
        check_inside(xy, slide.width, slide.height, coords_path, coords_field, image)
        size = [int(slide.level_shapes[0][1]), int(slide.level_shapes[0][0])]  # the file's own pixels
        if not with_image:
            slide.verify()
            return None, 1.0, size
        hires, scalef = slide.thumbnail(HIRES_MAX_SIDE)
        return hires, scalef, size


def estimate_mpp_from_neighbours(xy: np.ndarray, pitch_um: float, path) -> float:
    """Microns per pixel from the distances between neighbouring spot centres (= the pitch).

    The nearest neighbour alone is biased short on jittered grids (it is a minimum), so take the median of
    every distance in the first ring: up to 6 neighbours within 1.3x the median nearest distance."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        raise InputError(path, "microns_per_pixel", "unknown pixel size and too few spots to estimate it")
    dist, _ = cKDTree(xy).query(xy, k=min(7, len(xy)))
    dist = dist[:, 1:]
    nearest = float(np.median(dist[:, 0]))
    if not np.isfinite(nearest) or nearest <= 0:
        raise InputError(path, "microns_per_pixel", "unknown pixel size: spot centres coincide")
    return pitch_um / float(np.median(dist[dist < FIRST_RING * nearest]))


def estimate_mpp_from_pitch(array_rc: np.ndarray, xy: np.ndarray, pitch_um: float, path) -> float:
    """Microns per pixel from the spot grid: fit pixel position against array index (pitch = one array step)."""
    steps = []
    for axis_arr, axis_px in ((1, 0), (0, 1)):  # array_col ~ x, array_row ~ y
        a = array_rc[:, axis_arr].astype(float)
        if np.ptp(a) == 0:
            continue
        slope = np.polyfit(a, xy[:, axis_px], 1)[0]
        steps.append(abs(slope))
    if not steps or not np.all(np.isfinite(steps)) or min(steps) <= 0:
        raise InputError(
            path, "microns_per_pixel", "unknown pixel size and the spot grid is too small to estimate it"
        )
    return pitch_um / float(np.mean(steps))


def build_anndata(
    *,
    counts,
    genes,
    spot_ids,
    xy: np.ndarray,
    obs: pd.DataFrame,
    library: str,
    mpp: float,
    mpp_source: str,
    spot_diameter_um: float,
    platform: str,
    image_path: str | None,
    hires: np.ndarray | None = None,
    hires_scalef: float = 1.0,
    extra_meta: dict | None = None,
) -> ad.AnnData:
    obs = obs.copy()
    obs.index = pd.Index([str(s) for s in spot_ids], name=None)
    if counts is None:
        X = sp.csr_matrix((len(obs), 0), dtype=np.int32)
        var = pd.DataFrame(index=pd.Index([], dtype=str))
    else:
        X = counts
        var = pd.DataFrame(index=pd.Index([str(g) for g in genes]))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    images = {} if hires is None else {"hires": hires}
    adata.uns["spatial"] = {
        library: {
            "images": images,
            "scalefactors": {
                "tissue_hires_scalef": float(hires_scalef),
                "tissue_lowres_scalef": float(hires_scalef),
                "spot_diameter_fullres": float(spot_diameter_um / mpp),
                "microns_per_pixel": float(mpp),
            },
            "metadata": {
                "platform": platform,
                "image_path": image_path or "",
                "mpp_source": mpp_source,
                "spot_diameter_um": float(spot_diameter_um),
                **(extra_meta or {}),
            },
        }
    }
    return adata
