"""An .h5ad written by spafoundation (or by scanpy/squidpy with ``uns['spatial']``), split into sections.

Sections come from ``obs['section']``, else ``obs['library_id']`` (squidpy), else the single library in
``uns['spatial']``. Each section keeps only its own ``uns['spatial']`` entry. Files from scanpy's
``read_visium`` lack ``microns_per_pixel``: it is taken from the 55 um Visium spot diameter when the metadata
says Space Ranger made it, else given by ``mpp=``, else the file is an InputError (unknown pixel size).
Counts: X, unless X is normalised (not integral) and ``layers['counts']`` or ``.raw`` holds integer counts.
The full-resolution H&E: ``image=`` (a file of one section; ``image_scale=`` for a downscaled copy), else the
stored ``metadata['image_path']`` (at its stored ``image_scale``), else the ``metadata['source_image_path']`` that
scanpy's and squidpy's ``read_visium(source_image_path=...)`` record, else the finest image array the file keeps in
``images`` ('hires', then 'lowres'), read at its scale factor as a downscaled copy (io/uns_image.py).
``adopt_section`` does the same for an AnnData in memory (what ``sf.tl`` is given).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import check_unique, is_integral, read_section_image, validate_counts
from spafoundation.io.downscaled import check_scale, warn_if_downscaled
from spafoundation.io.values import positive_number
from spafoundation.io.visium import SPOT_DIAMETER_UM as VISIUM_SPOT_DIAMETER_UM

log = logging.getLogger(__name__)

SECTION_COLUMNS = ("section", "library_id")


def _section_column(adata: ad.AnnData) -> str | None:
    return next((c for c in SECTION_COLUMNS if c in adata.obs), None)


def _complete_library(lib: dict, path: Path | None, section: str, mpp: float | None,
                      hint: str = "give mpp", holder: str = "the .h5ad") -> dict:
    """Fill in the scalefactors/metadata keys of our layout that a scanpy-written file (``holder``) may lack."""
    lib = {k: (dict(v) if isinstance(v, dict) else v) for k, v in lib.items()}
    lib.setdefault("images", {})
    scale = lib.setdefault("scalefactors", {})
    meta = lib.setdefault("metadata", {})
    field = f"uns['spatial']['{section}']['scalefactors']['microns_per_pixel']"
    if mpp is not None:
        scale["microns_per_pixel"], meta["mpp_source"] = float(mpp), "given"
    elif "microns_per_pixel" not in scale:
        from_spaceranger = "software_version" in meta or "chemistry_description" in meta
        if not (from_spaceranger and scale.get("spot_diameter_fullres")):
            raise InputError(path, field, f"unknown pixel size: {hint}")
        diameter_field = f"uns['spatial']['{section}']['scalefactors']['spot_diameter_fullres']"
        scale["microns_per_pixel"] = VISIUM_SPOT_DIAMETER_UM / positive_number(scale["spot_diameter_fullres"], path,
                                                                               diameter_field)
        meta["mpp_source"] = f"from the {VISIUM_SPOT_DIAMETER_UM:.0f} um Visium spot diameter"
        meta.setdefault("platform", "visium")
        meta.setdefault("spot_diameter_um", VISIUM_SPOT_DIAMETER_UM)
    mpp_value = positive_number(scale["microns_per_pixel"], path, field)
    scale["microns_per_pixel"] = mpp_value
    if "spot_diameter_fullres" in scale:
        scale["spot_diameter_fullres"] = positive_number(
            scale["spot_diameter_fullres"], path, f"uns['spatial']['{section}']['scalefactors']['spot_diameter_fullres']")
    if "spot_diameter_um" in meta:
        meta["spot_diameter_um"] = positive_number(meta["spot_diameter_um"], path,
                                                   f"uns['spatial']['{section}']['metadata']['spot_diameter_um']")
    meta.setdefault("spot_diameter_um", float(scale.get("spot_diameter_fullres", 0)) * mpp_value)
    scale.setdefault("spot_diameter_fullres", float(meta["spot_diameter_um"]) / mpp_value)
    scale.setdefault("tissue_hires_scalef", 1.0)
    meta.setdefault("platform", "unknown")
    meta.setdefault("image_path", "")
    meta.setdefault("mpp_source", f"stored in {holder}")
    return lib


def _attach_image(lib: dict, xy: np.ndarray, path: Path, section: str, image, with_images: bool,
                  image_scale: float | None = None) -> None:
    """Point ``lib`` at the section's H&E (see the module docstring), checked as the readers check theirs
    (readable, every spot on it). A ``source_image_path`` that does not exist (a file from another machine) is
    warned about and passed over. An image array of the library's own (io/uns_image.py) that does not cover the
    spots (a thumbnail of another crop) leaves the section without an image, with a warning: its counts stay
    usable."""
    meta = lib["metadata"]
    source, from_arrays = "given", False
    if image is None and not meta.get("image_path"):
        stored = meta.get("source_image_path")
        if stored and Path(str(stored)).exists():
            image, source = Path(str(stored)), "source_image_path"
        else:
            if stored:
                log.warning("%s: section %s: source_image_path %s not found (give the full-resolution H&E with "
                            "--image)", path or "AnnData", section, stored)
            from spafoundation.io.uns_image import uns_image

            image, image_scale, source = uns_image(lib, section, path) or (None, None, None)
            from_arrays = True
    if image is None:
        return
    own_thumbnail = with_images and not from_arrays and "hires" not in lib["images"]
    scale = 1.0 if image_scale is None else check_scale(image_scale, image, "image_scale")
    mpp = float(lib["scalefactors"]["microns_per_pixel"])
    try:
        hires, scalef, size = read_section_image(image, xy, mpp, path, "obsm['spatial']", with_image=own_thumbnail,
                                                 scale=scale)
    except InputError as e:
        if not from_arrays:
            raise
        log.warning("%s: section %s: %s does not fit the spots (%s); the section has no H&E image (give it with "
                    "--image)", path or "AnnData", section, source, e.message)
        return
    warn_if_downscaled(section, image, mpp, scale, source)
    meta["image_path"], meta["image_size"] = str(Path(image).resolve()), size
    meta["image_scale"], meta["image_source"] = scale, source
    if own_thumbnail:
        lib["images"]["hires"] = hires
        lib["scalefactors"]["tissue_hires_scalef"] = scalef


def adopt_section(adata: ad.AnnData, section: str) -> None:
    """Complete in place the library of a section made by scanpy or squidpy (``sc.read_visium``, ``sq.read.visium``)
    as the .h5ad reader completes a file's: the pixel size from the Visium spot diameter where Space Ranger made it,
    the H&E from ``source_image_path``, else from the image arrays it holds. A library that has both
    ``microns_per_pixel`` and ``metadata['image_path']`` (what spafoundation's readers make) is left as it is."""
    lib = adata.uns["spatial"][section]
    if "microns_per_pixel" in (lib.get("scalefactors") or {}) and "image_path" in (lib.get("metadata") or {}):
        return
    if "spatial" not in adata.obsm:
        raise InputError(None, "obsm['spatial']", f"section {section} has no spot coordinates")
    field = f"uns['spatial']['{section}']['scalefactors']['microns_per_pixel']"
    completed = _complete_library(lib, None, section, None, hint=f"set {field} (microns per full-resolution pixel)",
                                  holder="the AnnData's uns")
    _attach_image(completed, np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2], None, section, None,
                  with_images=False)
    lib.update(completed)  # the caller's own dict: every later call, and the caller, see the completed library


def raw_counts(adata: ad.AnnData) -> tuple[ad.AnnData, str]:
    """The AnnData with raw counts in X, and where they came from. A scanpy-processed file keeps normalised or
    log values in X and the counts in ``layers['counts']`` or ``.raw``: those are taken when X is not integral
    and they are."""
    if adata.n_vars == 0 or is_integral(adata.X):
        return adata, "X"
    if "counts" in adata.layers and is_integral(adata.layers["counts"]):
        out = adata.copy()
        out.X = out.layers["counts"]
        return out, "layers['counts']"
    if adata.raw is not None and is_integral(adata.raw.X):
        out = ad.AnnData(adata.raw.X, obs=adata.obs, var=adata.raw.var, obsm=adata.obsm, uns=adata.uns)
        return out, "raw.X"
    return adata, "X"


def read_spafoundation_h5ad(
    path: str | Path, *, mpp: float | None = None, with_images: bool = True, image: str | Path | None = None,
    image_scale: float | None = None,
) -> dict[str, ad.AnnData]:
    """One AnnData per section of an .h5ad, keyed by section (library) id."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "data", "not found")
    try:
        with warnings.catch_warnings():  # repeated names are checked below, with an error that names the file
            warnings.filterwarnings("ignore", message=r"(Variable|Observation) names are not unique")
            adata = ad.read_h5ad(path)
    except Exception as e:
        raise InputError(path, "data", f"unreadable .h5ad ({e})") from None
    if "spatial" not in adata.obsm:
        raise InputError(path, "obsm['spatial']", "missing spot coordinates (full-resolution pixels)")
    try:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, "obsm['spatial']", "spot centres that are not numbers") from None
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy[:, :2]).all():
        raise InputError(path, "obsm['spatial']", "expected finite (n, 2) spot centres")
    check_unique(adata.obs_names, path, "obs_names")
    adata, counts_field = raw_counts(adata)
    check_unique(adata.var_names, path, "var_names")  # a gene twice: which column would it be fitted on?
    spatial = dict(adata.uns.get("spatial", {}))
    libraries = list(spatial)
    col = _section_column(adata)
    if col is not None:
        groups = {
            str(s): np.flatnonzero(adata.obs[col].astype(str).to_numpy() == str(s))
            for s in adata.obs[col].astype(str).unique()
        }
    elif len(libraries) == 1:
        groups = {libraries[0]: np.arange(adata.n_obs)}
    else:
        raise InputError(
            path,
            "obs['section']",
            f"cannot tell sections apart ({len(libraries)} libraries in "
            "uns['spatial'] and no obs['section'] or obs['library_id'])",
        )
    missing = [s for s in groups if s not in spatial]
    if missing:
        raise InputError(path, "uns['spatial']", f"no entry for section(s) {missing}")
    if image is not None and len(groups) > 1:
        raise InputError(path, "image", f"--image gives the image of one section; this file has {len(groups)}")

    out = {}
    for section, rows in groups.items():
        part = adata[rows].copy()
        part.X = validate_counts(part.X, path, counts_field)
        part.obs["section"] = section
        if "patient" not in part.obs:
            part.obs["patient"] = section
        lib = _complete_library(spatial[section], path, section, mpp)
        _attach_image(lib, xy[rows, :2], path, section, image, with_images, image_scale)
        if not with_images:
            lib["images"] = {}
        part.uns["spatial"] = {section: lib}
        out[section] = part
    return out
