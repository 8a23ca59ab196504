"""HEST-1k (Jaume et al. 2024) as downloaded from its Hugging Face dataset.

    st/<id>.h5ad          counts; obsm['spatial'] = spot centres in full-resolution pixels of wsis/<id>.tif
    wsis/<id>.tif         the full-resolution pyramidal H&E
    metadata/<id>.json    pixel_size_um_estimated / pixel_size_um_embedded, st_technology, spot_diameter,
                          inter_spot_dist, patient, ...

Pixel size: HEST's ``pixel_size_um_estimated`` (from the spot grid), else ``pixel_size_um_embedded`` (from the
TIFF tags), else ``mpp=``; without any of them the section is an InputError.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import build_anndata, check_unique, read_section_image, validate_counts
from spafoundation.io.values import positive_number

MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
# (spot diameter, pitch) in microns when the metadata does not say.
TECHNOLOGY_GEOMETRY = {"visium": (55.0, 100.0), "spatial transcriptomics": (100.0, 200.0)}
DEFAULT_GEOMETRY = (55.0, 100.0)


def list_sections(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "st").glob("*.h5ad"))


def read_metadata(root: Path, section: str) -> dict:
    path = root / "metadata" / f"{section}.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, "metadata", f"unreadable JSON ({e})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "metadata", "expected a JSON object")
    return meta


def find_wsi(root: Path, section: str) -> Path | None:
    hits = sorted((root / "wsis").glob(f"{section}.*"))
    return hits[0] if hits else None


def _positive(value) -> float | None:
    """A metadata value as a positive number, or None: HEST's pixel sizes are advisory, the next one is tried."""
    try:
        return positive_number(value, None, "")
    except InputError:
        return None


def read_hest_section(root: str | Path, section: str, *, mpp: float | None = None, with_images: bool = True):
    root = Path(root)
    st_path = root / "st" / f"{section}.h5ad"
    if not st_path.exists():
        raise InputError(st_path, "counts", "file not found")
    try:
        src = ad.read_h5ad(st_path)
    except Exception as e:
        raise InputError(st_path, "counts", f"unreadable .h5ad ({e})") from None
    if "spatial" not in src.obsm:
        raise InputError(st_path, "obsm['spatial']", "missing spot coordinates")
    check_unique(src.obs_names, st_path, "barcode")
    X = validate_counts(src.X, st_path, "X")
    xy = np.asarray(src.obsm["spatial"], dtype=np.float64)[:, :2]

    meta = read_metadata(root, section)
    meta_path = root / "metadata" / f"{section}.json"
    mpp_value, mpp_source = None, ""
    if mpp is not None:
        mpp_value, mpp_source = float(mpp), "given"
    else:
        for key in MPP_KEYS:
            if _positive(meta.get(key)):
                mpp_value, mpp_source = _positive(meta[key]), f"HEST metadata {key}"
                break
    if mpp_value is None:
        raise InputError(meta_path, "pixel_size_um_estimated", "unknown pixel size: not in the HEST metadata")

    technology = str(meta.get("st_technology", "")).lower()
    default_diameter, default_pitch = TECHNOLOGY_GEOMETRY.get(technology, DEFAULT_GEOMETRY)
    diameter = _positive(meta.get("spot_diameter")) or default_diameter
    pitch = _positive(meta.get("inter_spot_dist")) or default_pitch

    wsi = find_wsi(root, section)
    hires, scalef, image_size = None, 1.0, []
    if wsi is not None:
        hires, scalef, image_size = read_section_image(
            wsi, xy, mpp_value, st_path, "obsm['spatial']", with_image=with_images
        )
    patient = meta.get("patient") or section
    n = src.n_obs
    obs = pd.DataFrame(
        {
            "section": section,
            "patient": str(patient),
            "array_row": src.obs["array_row"].to_numpy() if "array_row" in src.obs else np.full(n, -1),
            "array_col": src.obs["array_col"].to_numpy() if "array_col" in src.obs else np.full(n, -1),
        }
    )
    return build_anndata(
        counts=X,
        genes=ad.utils.make_index_unique(pd.Index(src.var_names.astype(str))),
        spot_ids=[f"{section}_{b}" for b in src.obs_names],
        xy=xy,
        obs=obs,
        library=section,
        mpp=mpp_value,
        mpp_source=mpp_source,
        spot_diameter_um=diameter,
        platform=f"hest:{technology or 'unknown'}",
        image_path=str(wsi) if wsi else None,
        hires=hires,
        hires_scalef=scalef,
        extra_meta={"spot_pitch_um": pitch, "counts_path": str(st_path), "image_size": image_size},
    )


def read_hest(
    path: str | Path, sections: list[str] | None = None, *, mpp: float | None = None, with_images: bool = True
) -> dict[str, ad.AnnData]:
    """Read HEST sections (all under ``st/`` by default), one AnnData each keyed by HEST id."""
    root = Path(path)
    available = list_sections(root)
    if not available:
        raise InputError(root / "st", "counts", "no .h5ad files")
    wanted = available if sections is None else list(sections)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise InputError(root / "st", "section", f"unknown section(s) {unknown}; available: {available}")
    return {s: read_hest_section(root, s, mpp=mpp, with_images=with_images) for s in wanted}
