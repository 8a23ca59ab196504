"""10x Visium HD, from a Space Ranger ``outs/`` folder: square bins instead of round spots.

    outs/binned_outputs/square_016um/           one folder per bin size (Space Ranger writes 002, 008 and 016 um)
        filtered_feature_bc_matrix.h5           counts of the bins under tissue (or the filtered_feature_bc_matrix/ folder)
        spatial/tissue_positions.parquet        barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres
        spatial/scalefactors_json.json          microns_per_pixel, bin_size_um, spot_diameter_fullres (the bin side)
        spatial/tissue_hires_image.png          thumbnail (``images['hires']``)
    full-resolution H&E                         ``image=`` or any .tif/.tiff/.btf/.svs/.jpg in the sample folder or outs/

``bin_um`` picks the spot size: a bin size Space Ranger wrote is read as is; a multiple of one (say 48 um from the
16 um bins) sums the k x k bins of each block of the bin array into one spot centred at its bins' mean position,
which is how a 2 um or 8 um array is brought to a size where each spot holds enough counts. Default: the 16 um bins
(or the coarsest level present). Giving a ``square_<N>um`` folder itself reads that level.

Each spot's ``spot_diameter_fullres`` is the bin side (what Space Ranger writes), so footprint-based steps see a
circle inscribed in the square bin. Pixel size: ``mpp=``, else ``microns_per_pixel`` from the scale factors, else
the bin side over ``spot_diameter_fullres``, else fitted to the bin array (one array step = one bin side).
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import estimate_mpp_from_pitch
from spafoundation.io.cell_bins import membership
from spafoundation.io.values import positive_number
from spafoundation.io.visium import (
    SampleFiles,
    choose_image,
    outs_dir,
    read_scalefactors,
    read_spots_under_tissue,
    spaceranger_anndata,
)

DEFAULT_BIN_UM = 16.0
BIN_FOLDER = re.compile(r"^square_(\d+(?:\.\d+)?)um$")


def is_bin_folder(path: Path) -> bool:
    """One bin level of a Visium HD run: counts plus spatial/tissue_positions.parquet."""
    return (path / "spatial" / "tissue_positions.parquet").exists() and (
        (path / "filtered_feature_bc_matrix.h5").exists() or (path / "filtered_feature_bc_matrix").is_dir())


def bin_levels(path: Path) -> dict[float, Path]:
    """{bin side in um: folder} of a Visium HD sample (its ``outs/binned_outputs/square_<N>um`` folders), or of a
    single bin folder given directly; empty when ``path`` is neither."""
    if is_bin_folder(path):
        return {_level_um(path): path}
    binned = outs_dir(path) / "binned_outputs"
    if not binned.is_dir():
        return {}
    return {_level_um(d): d for d in sorted(binned.iterdir()) if d.is_dir() and is_bin_folder(d)}


def is_visium_hd(path: Path) -> bool:
    return bool(bin_levels(path))


def _level_um(folder: Path) -> float:
    m = BIN_FOLDER.match(folder.name)
    if m:
        return float(m.group(1))
    size = read_scalefactors(folder / "spatial" / "scalefactors_json.json").get("bin_size_um")
    if not size:
        raise InputError(folder / "spatial" / "scalefactors_json.json", "bin_size_um",
                         "a bin folder not named square_<N>um needs its bin size here")
    return positive_number(size, folder / "spatial" / "scalefactors_json.json", "bin_size_um")


def _positive(scalefactors: dict, key: str, path: Path) -> float:
    return positive_number(scalefactors[key], path, key)


def sample_root(folder: Path) -> Path:
    """The sample folder above a bin folder (``<sample>/outs/binned_outputs/square_<N>um``), else the folder."""
    if folder.parent.name != "binned_outputs":
        return folder
    outs = folder.parent.parent
    return outs.parent if outs.name == "outs" else outs


def choose_level(levels: dict[float, Path], bin_um: float | None, path: Path) -> tuple[float, int]:
    """(bin level to read, k: how many of its bins make one spot side) for the requested spot size."""
    if bin_um is None:
        level = DEFAULT_BIN_UM if DEFAULT_BIN_UM in levels else max(levels)
        return level, 1
    bin_um = float(bin_um)
    fits = [lv for lv in levels if bin_um >= lv and abs(bin_um / lv - round(bin_um / lv)) < 1e-6]
    if bin_um <= 0 or not fits:
        available = ", ".join(f"{lv:g}" for lv in sorted(levels))
        raise InputError(path, "bin_um", f"{bin_um:g} um is not a multiple of a bin size of this run ({available} um)")
    level = max(fits)  # the coarsest level that divides it: fewest bins to read and sum
    return level, round(bin_um / level)


def aggregate_bins(X: sp.csr_matrix, pos: pd.DataFrame, k: int, level_um: float) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """Sum the bins of each k x k block of the bin array; the block's centre is its bins' mean position, its array
    position the block index, its barcode Space Ranger's pattern for that bin size."""
    rows = pos["array_row"].to_numpy(np.int64) // k
    cols = pos["array_col"].to_numpy(np.int64) // k
    onehot, uniq = membership(pd.MultiIndex.from_arrays([rows, cols]), sort=False)
    counts = onehot @ X
    n_bins = np.asarray(onehot.sum(axis=1)).ravel()
    xy = (onehot @ pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)) / n_bins[:, None]
    r, c = uniq.get_level_values(0).to_numpy(), uniq.get_level_values(1).to_numpy()
    size = f"{level_um * k:g}".replace(".", "_").zfill(3)
    out = pd.DataFrame({"in_tissue": 1, "array_row": r, "array_col": c, "pxl_row_in_fullres": xy[:, 1],
                        "pxl_col_in_fullres": xy[:, 0], "n_bins": n_bins.astype(np.int64)},
                       index=[f"s_{size}um_{a:05d}_{b:05d}-1" for a, b in zip(r, c, strict=True)])
    return sp.csr_matrix(counts, dtype=X.dtype), out


def read_visium_hd(
    path: str | Path,
    image: str | Path | None = None,
    mpp: float | None = None,
    *,
    bin_um: float | None = None,
    image_scale: float | None = None,
    section: str | None = None,
    patient: str | None = None,
    with_images: bool = True,
) -> ad.AnnData:
    """One Visium HD section as spots of ``bin_um`` (see the module docstring). ``section`` defaults to the sample
    folder's name."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "data", "not found")
    levels = bin_levels(path)
    if not levels:
        raise InputError(path, "binned_outputs", "no Visium HD bin folder (square_<N>um with counts and "
                         "spatial/tissue_positions.parquet)")
    level, k = choose_level(levels, bin_um, path)
    folder = levels[level]
    root = sample_root(folder) if path == folder else path
    section = section or (root.parent.name if root.name == "outs" else root.name)
    files = SampleFiles(root, folder, folder / "spatial")

    X, genes, pos, counts_path, pos_path = read_spots_under_tissue(files)
    pos = pos.assign(n_bins=1)
    if k > 1:
        X, pos = aggregate_bins(X, pos, k, level)
    spot_um = level * k

    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    scalefactors = read_scalefactors(files.scalefactors)
    scale_path = files.scalefactors
    if mpp is not None:
        mpp_value, mpp_source = float(mpp), "given"
    elif scalefactors.get("microns_per_pixel") is not None:
        mpp_value = _positive(scalefactors, "microns_per_pixel", scale_path)
        mpp_source = "microns_per_pixel (scalefactors_json.json)"
    elif scalefactors.get("spot_diameter_fullres") is not None:
        mpp_value = level / _positive(scalefactors, "spot_diameter_fullres", scale_path)
        mpp_source = f"from the {level:g} um bin side (scalefactors_json.json)"
    else:
        mpp_value = estimate_mpp_from_pitch(pos[["array_row", "array_col"]].to_numpy(), xy, spot_um, pos_path)
        mpp_source = f"estimated from the {spot_um:g} um bin array"

    return spaceranger_anndata(
        X, genes, pos, xy, section=section, patient=patient,
        image=choose_image(image, image_scale, files, scalefactors), files=files,
        scalefactors=scalefactors, mpp=mpp_value, mpp_source=mpp_source, pos_path=pos_path, with_images=with_images,
        spot_diameter_um=spot_um, platform="visium_hd",
        extra_obs={"n_bins": pos["n_bins"].to_numpy(dtype=np.int64)},
        extra_meta={"spot_pitch_um": spot_um, "bin_size_um": spot_um, "bins_read_um": level,
                    "bin_levels_um": sorted(levels), "spot_shape": "square", "counts_path": str(counts_path)},
    )
