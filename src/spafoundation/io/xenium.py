"""A 10x Xenium output folder with its post-Xenium H&E, as one section of spots.

What is read (the folder is the one holding ``experiment.xenium``, or its parent ``outs/``):

- ``experiment.xenium``: ``pixel_size``, microns per pixel of the morphology image, the frame the H&E is aligned to;
- ``cell_feature_matrix.h5`` (else the ``cell_feature_matrix/`` folder): counts per cell, Gene Expression only
  (the control probes and codewords left out);
- ``cells.parquet`` (else ``cells.csv.gz`` / ``cells.csv``): each cell's centroid in microns;
- the H&E: ``--image``, else the one ``*he_image.ome.tif`` in the folder, else ``<section>_he_image.ome.tif``
  beside the folder (as 10x's public datasets download: ``<dataset>_outs`` and ``<dataset>_he_image.ome.tif``),
  and its alignment ``<image name less .ome.tif>alignment.csv`` beside it (Xenium Explorer's
  3 x 3 matrix from H&E pixels to morphology pixels, a rotation and scale as the slide was scanned). Without an
  alignment file the H&E is taken to be in the morphology frame already (as spatialdata-io does), with a warning.

Cells are summed into square spots of ``bin_um`` (io/cell_bins.py, default 55 um); spots whose centre falls off the
H&E are left out with a warning. The H&E's pixel size is the morphology's times the alignment's scale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import build_anndata, check_unique, read_section_image, validate_counts
from spafoundation.io.cell_bins import DEFAULT_BIN_UM, bin_cells, check_bin_um, spots_on_image

log = logging.getLogger(__name__)

SPECS = "experiment.xenium"
HE_SUFFIX = "he_image.ome.tif"


def xenium_root(path: Path) -> Path | None:
    """The folder holding ``experiment.xenium``: ``path`` or its ``outs/``; None when neither is."""
    for folder in (path, path / "outs"):
        if (folder / SPECS).is_file():
            return folder
    return None


def is_xenium(path: Path) -> bool:
    return path.is_dir() and xenium_root(path) is not None


def section_name(path: Path) -> str:
    """The folder's name (its parent's for ``outs``), less a trailing ``_outs`` (10x's download names)."""
    name = path.parent.name if path.name == "outs" else path.name
    return name[: -len("_outs")] if name.endswith("_outs") and len(name) > 5 else name


def read_pixel_size(root: Path) -> float:
    from spafoundation.io.values import positive_number

    specs_path = root / SPECS
    try:
        specs = json.loads(specs_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(specs_path, "experiment.xenium", f"not readable JSON ({e})") from None
    if not isinstance(specs, dict) or "pixel_size" not in specs:
        raise InputError(specs_path, "pixel_size", "missing: the morphology image's microns per pixel")
    return positive_number(specs["pixel_size"], specs_path, "pixel_size")


def read_cell_counts(root: Path):
    """(cells x genes counts, cell ids, genes, the file read)."""
    from spafoundation.io.visium import SampleFiles, read_10x_h5, read_10x_mtx

    h5 = root / "cell_feature_matrix.h5"
    if h5.exists():
        return (*read_10x_h5(h5), h5)
    folder = root / "cell_feature_matrix"
    if folder.is_dir():
        return (*read_10x_mtx(SampleFiles(root, folder, folder), folder), folder)
    raise InputError(h5, "counts", "file not found (nor the cell_feature_matrix/ folder)")


def read_centroids(root: Path) -> tuple[pd.Index, np.ndarray, Path]:
    """(cell ids, centroids in microns (x, y), the file read)."""
    for name in ("cells.parquet", "cells.csv.gz", "cells.csv"):
        path = root / name
        if not path.exists():
            continue
        try:
            table = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
        except Exception as e:  # pyarrow and pandas raise many kinds on a damaged file
            raise InputError(path, "cells", f"unreadable ({e})") from None
        missing = [c for c in ("cell_id", "x_centroid", "y_centroid") if c not in table.columns]
        if missing:
            raise InputError(path, ", ".join(missing), "missing column(s) of the cells table")
        ids = table["cell_id"].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))
        xy = table[["x_centroid", "y_centroid"]].to_numpy(np.float64)
        if not np.isfinite(xy).all():
            raise InputError(path, "x_centroid/y_centroid", "non-finite cell centroids")
        return pd.Index(ids), xy, path
    raise InputError(root / "cells.parquet", "cells", "file not found (nor cells.csv.gz)")


def find_he_image(root: Path, section: str) -> Path | None:
    """The one ``*he_image.ome.tif`` in the folder, else ``<section>_he_image.ome.tif`` beside it (10x's downloads
    name the outputs ``<dataset>_outs`` and the H&E ``<dataset>_he_image.ome.tif``, side by side)."""
    found = sorted(p for p in root.iterdir() if p.name.endswith(HE_SUFFIX))
    if len(found) > 1:
        raise InputError(root, "image", f"{len(found)} H&E images ({', '.join(p.name for p in found)}): give one "
                         "with --image")
    if found:
        return found[0]
    beside = [folder / f"{section}_{HE_SUFFIX}" for folder in dict.fromkeys((root.parent, root.parent.parent))]
    return next((p for p in beside if p.is_file()), None)


def alignment_file(image: Path) -> Path:
    """Xenium Explorer's name for ``image``'s alignment: ``X_he_image.ome.tif`` -> ``X_he_imagealignment.csv``."""
    stem = image.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return image.with_name(f"{stem}alignment.csv")


def read_alignment(path: Path) -> np.ndarray:
    """The 3 x 3 affine matrix (H&E pixels -> morphology pixels, on x, y) of an alignment CSV."""
    try:
        matrix = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as e:
        raise InputError(path, "alignment", f"not a CSV of numbers ({e})") from None
    if matrix.shape == (2, 3):
        matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
    if matrix.shape != (3, 3) or not np.allclose(matrix[2], [0.0, 0.0, 1.0]) or not np.isfinite(matrix).all():
        raise InputError(path, "alignment", f"expected a 3 x 3 affine matrix (last row 0, 0, 1), found shape "
                         f"{matrix.shape}")
    if abs(np.linalg.det(matrix[:2, :2])) < 1e-9:
        raise InputError(path, "alignment", "a degenerate matrix (determinant 0): it maps the image onto a line")
    return matrix


def warn_if_scan_disagrees(image: Path, own: float | None, aligned_mpp: float, alignment: Path | None) -> None:
    """One warning when the scan's own pixel size (``own``: OME-XML, TIFF resolution) and the one the alignment
    gives differ by more than 15%: an alignment to another frame (microns rather than morphology pixels) or to
    another image."""
    if own and not 1 / 1.15 <= aligned_mpp / own <= 1.15:
        log.warning("%s: its metadata says %.4g um/px, but %s places it at %.4g um/px; the alignment is used (a "
                    "matrix to another frame than the morphology image's pixels would misplace every spot; --mpp "
                    "overrides)", image, own, alignment.name if alignment else "the morphology frame", aligned_mpp)


def read_xenium(path: str | Path, image: str | Path | None = None, mpp: float | None = None, *,
                bin_um: float | None = None, image_scale: float | None = None, section: str | None = None,
                patient: str | None = None, with_images: bool = True) -> ad.AnnData:
    """One Xenium section, its cells summed into spots of ``bin_um`` microns (see the module docstring). ``mpp``:
    the H&E's microns per pixel, over what the alignment gives."""
    path = Path(path)
    root = xenium_root(path)
    if root is None:
        raise InputError(path / SPECS, "data", "not found: not a Xenium output folder")
    if image_scale is not None:
        raise InputError(path, "image_scale", "a Xenium H&E is placed by its alignment file, not by a scale")
    bin_um = check_bin_um(DEFAULT_BIN_UM if bin_um is None else bin_um, path)
    section = section or section_name(path)
    pixel_size = read_pixel_size(root)
    counts, barcodes, genes, counts_path = read_cell_counts(root)
    ids, xy_um, cells_path = read_centroids(root)
    check_unique(ids, cells_path, "cell_id")
    where = ids.get_indexer(barcodes)
    if (where < 0).any():
        bad = [b for b, w in zip(barcodes, where) if w < 0][:5]
        raise InputError(cells_path, "cell_id", f"{int((where < 0).sum())} cells of {counts_path.name} have no "
                         f"centroid here (first: {bad})")
    counts = validate_counts(counts, counts_path, "counts")
    spots, obs, centres_um, spot_ids = bin_cells(counts, xy_um[where], bin_um)

    he = Path(image) if image is not None else find_he_image(root, section_name(path))
    if he is None:
        raise InputError(root, "image", f"no H&E: put the post-Xenium H&E (*{HE_SUFFIX}) and its alignment CSV in "
                         "the folder, or give it with --image")
    if not he.exists():
        raise InputError(he, "image", "file not found")
    aligned = alignment_file(he)
    if aligned.exists():
        to_morphology = read_alignment(aligned)
    else:
        log.warning("%s: no alignment %s beside the H&E: taken to be in the morphology image's frame already "
                    "(%g um/px)", he, aligned.name, pixel_size)
        to_morphology, aligned = np.eye(3), None
    to_he = np.linalg.inv(to_morphology)
    xy = centres_um / pixel_size @ to_he[:2, :2].T + to_he[:2, 2]
    aligned_mpp = pixel_size * float(np.sqrt(abs(np.linalg.det(to_morphology[:2, :2]))))
    he_mpp = float(mpp) if mpp is not None else aligned_mpp
    mpp_source = "given" if mpp is not None else (
        f"experiment.xenium pixel_size x the alignment's scale ({aligned.name})" if aligned else
        "experiment.xenium pixel_size")
    from spafoundation.io.slide import open_slide

    with open_slide(he) as slide:
        size, own_mpp = (slide.width, slide.height), slide.mpp
    if mpp is None:
        warn_if_scan_disagrees(he, own_mpp, aligned_mpp, aligned)
    spots, obs, xy, spot_ids = spots_on_image(size, he.name, xy, spots, obs, spot_ids, aligned or cells_path)
    hires, scalef, image_size = read_section_image(he, xy, he_mpp, aligned or cells_path, "spot centres",
                                                   with_image=with_images)
    obs.insert(0, "patient", patient or section)
    obs.insert(0, "section", section)
    return build_anndata(
        counts=spots, genes=genes, spot_ids=[f"{section}_{s}" for s in spot_ids], xy=xy, obs=obs, library=section,
        mpp=he_mpp, mpp_source=mpp_source, spot_diameter_um=bin_um, platform="xenium", image_path=str(he),
        hires=hires, hires_scalef=scalef,
        extra_meta={"image_size": image_size, "bin_um": bin_um, "cells": len(barcodes),
                    "xenium_pixel_size_um": pixel_size, "alignment": str(aligned) if aligned else "",
                    "counts_path": str(counts_path)},
    )

