"""A SpatialData zarr store as a dataset: one section per region of spots that a table of counts annotates.

What is taken from the store, per section:

- the spots: a shapes element, circles (Visium, spafoundation) or squares (Visium HD bins: spatialdata-io's
  ``{dataset}_square_016um``; ``bin_um`` picks the bin size or sums k x k bins of one as io/visium_hd.py does,
  default 16 um), each with a row of the table; spot ids are prefixed with the section, as every reader's;
- the counts: the table that annotates those shapes (``uns['spatialdata_attrs']``: region, region_key,
  instance_key); tables spafoundation wrote with results (``uns['spafoundation_table']`` other than ``spots``)
  and tables of non-integer values are not counts and are passed over;
- the H&E: the finest image element in a coordinate system the shapes are in; spot centres and diameters are
  mapped into its pixels through the two transformations, and that image is read in place (``io/slide_zarr.py``);
- the pixel size: ``mpp=``, else ``scalefactors['microns_per_pixel']`` of the table's ``uns['spatial']``
  (spafoundation, Visium HD), else the bin size over the bin side (Visium HD), else the 55 um spot over its
  diameter when the store is Visium's (spatialdata-io's reader made it, or the table has Space Ranger's metadata or
  its in_tissue, array_row and array_col columns).

A section is named by the table's ``obs['section']`` when it has one value there (stores spafoundation wrote),
else by the region (Visium HD: less its ``_square_XXXum``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import build_anndata, check_unique, read_section_image, validate_counts
from spafoundation.io.cell_bins import (
    CELL_MAX_UM,
    DEFAULT_BIN_UM,
    ONLY_BINS_AND_CELLS,
    bin_cells,
    check_bin_um,
    spots_on_image,
)
from spafoundation.io.visium import SPOT_DIAMETER_UM as VISIUM_SPOT_DIAMETER_UM

log = logging.getLogger(__name__)

EXTRA_MISSING = "SpatialData stores need the optional extra: pip install 'spafoundation[spatialdata]'"
ELEMENT_KINDS = ("images", "labels", "points", "shapes", "tables")
HD_BINS = re.compile(r"_?square_(\d+)um$")
SPATIALDATA_IO_CELLS = ("cell_circles", "cell_boundaries")  # spatialdata-io's names of Xenium's and MERSCOPE's cells
# tables spafoundation writes beside the spots' (io/spatialdata_write.py); only "spots" holds a section's counts
TABLE_KIND_KEY = "spafoundation_table"
INSTANCE_COLUMN = "spatialdata_instance"  # obs: the instance id of the spot's shape in the store it was read from


def require_spatialdata(path=None, field: str = "data"):
    """The spatialdata module, or an InputError saying how to install it."""
    try:
        import spatialdata
    except ImportError:
        raise InputError(path, field, EXTRA_MISSING) from None
    return spatialdata


@contextlib.contextmanager
def quiet_ome_zarr():
    """ome-zarr logs every level of every image it opens at INFO, which the CLI shows: dozens of lines per store
    that say nothing to a user. Raised to WARNING for the duration only; zarr's notice about its next release too."""
    logger = logging.getLogger("ome_zarr")
    old = logger.level
    logger.setLevel(max(old, logging.WARNING))
    try:
        with warnings.catch_warnings():
            # zarr announces, once per array written, a default of its next release that changes nothing here
            warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
            yield
    finally:
        logger.setLevel(old)


def is_spatialdata_store(path: str | Path) -> bool:
    """A zarr group whose root attributes carry ``spatialdata_attrs``, or a ``.zarr`` folder of element groups."""
    path = Path(path)
    if not path.is_dir():
        return False
    for name, wrap in (("zarr.json", "attributes"), (".zattrs", None)):
        meta_file = path / name
        if meta_file.is_file():
            try:
                attrs = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                return False
            attrs = attrs.get(wrap, {}) if wrap else attrs
            if isinstance(attrs, dict) and "spatialdata_attrs" in attrs:
                return True
    return path.suffix == ".zarr" and any((path / kind).is_dir() for kind in ELEMENT_KINDS)


def read_spatialdata(path: str | Path, sections: list[str] | None = None, *, mpp: float | None = None,
                     bin_um: float | None = None, with_images: bool = True) -> dict[str, ad.AnnData]:
    """One AnnData per section of a SpatialData store (see the module docstring), keyed by section."""
    path = Path(path)
    sd = require_spatialdata(path)
    try:
        with quiet_ome_zarr():
            sdata = sd.read_zarr(path)
    except Exception as e:
        raise InputError(path, "data", f"unreadable SpatialData store ({type(e).__name__}: {e})") from None
    regions = spot_regions(sdata, path, bin_um)
    if not sdata.images:
        raise InputError(path, "images", "the store has no image element: spafoundation needs the H&E")
    out: dict[str, ad.AnnData] = {}
    for region, (table_name, table, k) in regions.items():
        adata = _read_section(sdata, path, region, table_name, table, mpp, with_images, k, bin_um)
        name = adata.obs["section"].iloc[0] if adata.n_obs else region
        if name in out:
            raise InputError(path, f"tables/{table_name}", f"two regions hold section {name}")
        out[name] = adata
    if sections is not None:
        unknown = [s for s in sections if s not in out]
        if unknown:
            raise InputError(path, "section", f"unknown section(s) {unknown}; available: {sorted(out)}")
        out = {s: out[s] for s in sections}
    return out


def _is_counts(table: ad.AnnData) -> bool:
    from spafoundation.io.anndata_spec import is_integral

    kind = table.uns.get(TABLE_KIND_KEY)
    if kind is not None:
        return kind == "spots"
    return table.n_vars == 0 or is_integral(table.X)


def spot_regions(sdata, path: Path, bin_um: float | None) -> dict[str, tuple[str, ad.AnnData, int]]:
    """{shapes element: (table name, table, k)} of the spot regions that a table of counts annotates; k: how many
    bins make one spot side (Visium HD: ``bin_um`` a multiple of a bin size in the store, as io/visium_hd.py), 0
    for a region of other shapes (spots, or cells that ``bin_um`` sums into squares: ``_read_section``)."""
    from spatialdata.models import get_table_keys

    from spafoundation.io.visium_hd import choose_level

    found: dict[str, tuple[str, ad.AnnData, int]] = {}
    bins: dict[str, dict[float, str]] = {}  # Visium HD: sample -> bin size -> region
    for table_name, table in sdata.tables.items():
        if "spatialdata_attrs" not in table.uns or not _is_counts(table):
            continue
        region, _, _ = get_table_keys(table)
        for r in [region] if isinstance(region, str) else list(region):
            if r not in sdata.shapes:
                continue  # labels (segmentation masks) and points are no spots
            if r in found:
                raise InputError(path, f"shapes/{r}", f"annotated by two tables of counts ({found[r][0]}, "
                                 f"{table_name})")
            found[r] = (table_name, table, 0)
            m = HD_BINS.search(r)
            if m:
                bins.setdefault(r[: m.start()], {})[float(m.group(1))] = r
    for sizes in bins.values():
        level, k = choose_level(sizes, bin_um, path)
        for size, region in sizes.items():
            if size != level:
                found.pop(region)
        found[sizes[level]] = (*found[sizes[level]][:2], k)
    if not found:
        raise InputError(path, "tables", "no table of counts annotates a shapes element of spots (a table's "
                         "uns['spatialdata_attrs'] names its region)")
    return found


def _xy_matrix(transformation) -> np.ndarray:
    """The 3x3 affine matrix of a transformation on (x, y)."""
    return np.asarray(transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


def shape_to_image(shape_to, image_to) -> np.ndarray:
    """The 3x3 affine matrix from shape coordinates to image pixels, from their transformations into one
    coordinate system."""
    return np.linalg.inv(_xy_matrix(image_to)) @ _xy_matrix(shape_to)


def _image_for(sdata, path: Path, region: str) -> tuple[str, np.ndarray]:
    """The finest H&E (``is_brightfield``) sharing a coordinate system with ``region``'s shapes, and the affine
    matrix from shape coordinates to that image's pixels. Fluorescence images (Xenium's DAPI morphology image, an
    IF stain), often finer than the H&E beside them, are never taken for it."""
    from spatialdata.transformations import get_transformation

    shape_to = get_transformation(sdata.shapes[region], get_all=True)
    best, passed_over = None, []
    for name, image in sdata.images.items():
        image_to = get_transformation(image, get_all=True)
        shared = set(shape_to) & set(image_to)
        if shared and not is_brightfield(image):
            passed_over.append(f"{name} ({_channels_text(image)})")
            continue
        for cs in shared:
            to_cs = _xy_matrix(image_to[cs])
            pixel_area = abs(np.linalg.det(to_cs[:2, :2]))  # area of one image pixel in the coordinate system
            if best is None or pixel_area < best[0]:
                best = (pixel_area, name, shape_to_image(shape_to[cs], image_to[cs]))
    if best is None and passed_over:
        raise InputError(path, f"shapes/{region}", "no H&E (an RGB image) in the spots' coordinate system, only "
                         f"fluorescence: {', '.join(passed_over)}")
    if best is None:
        raise InputError(path, f"shapes/{region}", f"no transformation to an image: its coordinate systems "
                         f"({', '.join(shape_to)}) hold none of the images ({', '.join(sdata.images)})")
    return best[1], best[2]


def _first_scale(image):
    """The full-resolution DataArray of an image element (a multiscale DataTree, or one DataArray)."""
    if hasattr(image, "children"):
        first = next(iter(image.children.values()))
        return next(iter(first.ds.data_vars.values()))
    return image


def _channels(image) -> list[str]:
    from spatialdata.models import get_channel_names

    return [str(c) for c in get_channel_names(image)]


def _channels_text(image) -> str:
    names = _channels(image)
    return f"{len(names)} channel{'s' if len(names) > 1 else ''}: {', '.join(names[:5])}"


def is_brightfield(image) -> bool:
    """Whether an image element is an H&E: 3 channels (RGB), or 4 of 8 bits or named r, g, b, a (RGBA). One channel
    (DAPI, a grey scan) or several of another kind is fluorescence."""
    names = [n.lower() for n in _channels(image)]
    if len(names) == 3:
        return True
    return len(names) == 4 and (names[:3] == ["r", "g", "b"] or _first_scale(image).dtype == np.uint8)


def _spot_geometry(shapes, path: Path, region: str) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, 2) and diameters (n,) of circles, or of squares (the side), in shape coordinates."""
    geom = shapes.geometry
    kinds = set(geom.geom_type)
    if kinds == {"Point"}:
        if "radius" not in shapes:
            raise InputError(path, f"shapes/{region}", "points without a radius are no spots")
        return np.stack([geom.x.to_numpy(), geom.y.to_numpy()], axis=1), 2 * shapes["radius"].to_numpy(float)
    if kinds <= {"Polygon", "MultiPolygon"}:
        centre = geom.centroid
        return np.stack([centre.x.to_numpy(), centre.y.to_numpy()], axis=1), np.sqrt(geom.area.to_numpy())
    raise InputError(path, f"shapes/{region}", f"spots must be circles or squares, found {sorted(kinds)}")


def _table_rows(shapes, table: ad.AnnData, path: Path, table_name: str, region: str) -> tuple[ad.AnnData,
                                                                                              np.ndarray]:
    """The table's rows of ``region`` and, per row, the position of its spot in ``shapes``; every spot must have
    exactly one row."""
    from spatialdata.models import get_table_keys

    _, region_key, instance_key = get_table_keys(table)
    rows = table[table.obs[region_key].astype(str).to_numpy() == region]
    ids = pd.Index(rows.obs[instance_key].to_numpy())
    check_unique(ids, path, f"tables/{table_name}: obs['{instance_key}']")
    where = shapes.index.get_indexer(ids)
    if (where < 0).any():
        bad = ids[where < 0][:5].tolist()
        raise InputError(path, f"tables/{table_name}", f"{int((where < 0).sum())} rows name no spot of "
                         f"shapes/{region} (first: {bad})")
    if len(ids) < len(shapes):
        missing = shapes.index[~shapes.index.isin(ids)][:5].tolist()
        raise InputError(path, f"shapes/{region}", f"{len(shapes) - len(ids)} spots have no row in tables/"
                         f"{table_name} (first: {missing})")
    return rows, where


def _written_without_image(table: ad.AnnData, names: list[str]) -> bool:
    """Whether spafoundation wrote this table for a section that had no H&E (expression-only, e.g. clustered on
    its counts): such a section is read back without an image, while a store that lost its image is an error."""
    meta = _library(table, names).get("metadata") or {}
    return TABLE_KIND_KEY in table.uns and "image_path" in meta and not meta["image_path"]


def _library(table: ad.AnnData, names: list[str]) -> dict:
    """The table's ``uns['spatial']`` entry of the section, found under one of ``names``, else the only entry."""
    spatial = table.uns.get("spatial")
    if not isinstance(spatial, dict) or not spatial:
        return {}
    lib = next((spatial[n] for n in names if n in spatial), None)
    if lib is None and len(spatial) == 1:
        lib = next(iter(spatial.values()))
    return lib if isinstance(lib, dict) else {}


def _pixel_size(sdata, table: ad.AnnData, path: Path, region: str, section: str, mpp, diameter_px: float,
                shape_to_pixels: float) -> tuple[float, str, str]:
    """(microns per image pixel, where it came from, platform)."""
    lib = _library(table, [section, region])
    meta = lib.get("metadata") or {}
    stored = (lib.get("scalefactors") or {}).get("microns_per_pixel")
    reader = sdata.attrs.get("spatialdata_io_reader") if hasattr(sdata, "attrs") else None
    platform = str(meta.get("platform") or reader or "spatialdata")
    bins = HD_BINS.search(region)
    if mpp is not None:
        return float(mpp), "given", platform
    if stored:  # per pixel of the frame the spots are in
        return float(stored) / shape_to_pixels, "stored in the table's uns['spatial']", platform
    if bins:
        return float(bins.group(1)) / diameter_px, "from the Visium HD bin size", "visium_hd"
    if reader == "xenium":  # spatialdata-io keeps Xenium's cells in microns, scaled to the morphology's pixels
        return 1.0 / shape_to_pixels, "Xenium's cells in microns (spatialdata-io's reader)", "xenium"
    # spatialdata-io's provenance (lost when stores are concatenated), Space Ranger's metadata or its spot columns
    spaceranger = {"in_tissue", "array_row", "array_col"} <= set(table.obs.columns)
    if reader == "visium" or "software_version" in meta or "chemistry_description" in meta or spaceranger:
        return (VISIUM_SPOT_DIAMETER_UM / diameter_px,
                f"from the {VISIUM_SPOT_DIAMETER_UM:.0f} um Visium spot diameter", "visium")
    raise InputError(path, "microns_per_pixel", "unknown pixel size: give --mpp")


def _sum_bins(counts, obs: pd.DataFrame, xy: np.ndarray, k: int, bin_um: float, path: Path, table_name: str):
    """Visium HD bins summed k x k into spots (io/visium_hd.py ``aggregate_bins``): (counts, obs, centres, ids)."""
    from spafoundation.io.visium_hd import aggregate_bins

    if not {"array_row", "array_col"} <= set(obs.columns):
        raise InputError(path, f"tables/{table_name}", "bins without array_row and array_col cannot be summed into "
                         "larger spots: give a bin size the store has")
    pos = pd.DataFrame({"array_row": obs["array_row"].to_numpy(), "array_col": obs["array_col"].to_numpy(),
                        "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]})
    counts, pos = aggregate_bins(sp.csr_matrix(counts), pos, k, bin_um)
    centres = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    return counts, pos[["in_tissue", "array_row", "array_col", "n_bins"]], centres, list(pos.index)


def _read_section(sdata, path: Path, region: str, table_name: str, table: ad.AnnData, mpp,
                  with_images: bool, k: int = 0, bin_um: float | None = None) -> ad.AnnData:
    """One section of ``region``'s spots; ``k``: Visium HD bins summed k x k (``spot_regions``), 0 for other
    shapes, which are spots, or cells (narrower than ``CELL_MAX_UM``) summed into squares of ``bin_um``."""
    from spatialdata.models import get_table_keys

    shapes = sdata.shapes[region]
    rows, where = _table_rows(shapes, table, path, table_name, region)
    centres, diameters = _spot_geometry(shapes, path, region)
    _, region_key, instance_key = get_table_keys(table)
    obs = rows.obs.drop(columns=[c for c in (region_key, instance_key) if c in rows.obs])
    named = obs["section"].astype(str).unique() if "section" in obs else []
    section = str(named[0]) if len(named) == 1 else HD_BINS.sub("", region)
    try:
        image_name, to_pixels = _image_for(sdata, path, region)
    except InputError:
        if not _written_without_image(table, [section, region]):
            raise
        image_name, to_pixels = None, np.eye(3)  # spafoundation wrote its spots in full-resolution pixels
    centres = centres[where]
    xy = centres @ to_pixels[:2, :2].T + to_pixels[:2, 2]
    scale = float(np.sqrt(abs(np.linalg.det(to_pixels[:2, :2]))))  # image px per shape unit
    diameter_px = float(np.median(diameters)) * scale
    mpp_px, mpp_source, platform = _pixel_size(sdata, rows, path, region, section, mpp, diameter_px, scale)
    if scale < 2 / 3 and platform != "xenium":  # a store with Space Ranger's hires PNG and no full-resolution image
        # (Xenium's cells are in microns, not in the pixels of a finer image)
        log.warning("%s: %s: the finest image sharing the spots' coordinate system (%s) is %.1fx coarser than "
                    "their frame: patches will be blurred", path, region, image_name, 1 / scale)
    image_dir = path / "images" / image_name if image_name else None
    counts = validate_counts(rows.X, path, f"tables/{table_name}: X") if rows.n_vars else None
    check_unique(rows.obs_names, path, f"tables/{table_name}: obs_names")
    ids = list(rows.obs_names)
    # spots narrower than a Visium spot are cells, unless they were spots already (spafoundation wrote them: summed
    # squares or Visium HD bins; or the table's metadata says Visium HD)
    cells = (k == 0 and diameter_px * mpp_px < CELL_MAX_UM and TABLE_KIND_KEY not in table.uns
             and platform != "visium_hd")
    if cells and not named and region in SPATIALDATA_IO_CELLS:
        section = path.name.removesuffix(".zarr")  # the region's name is the same in every such store
    extra: dict = {}
    if bin_um is not None and k == 0 and not cells:
        raise InputError(path, "bin_um", f"shapes/{region} are spots of {diameter_px * mpp_px:.0f} um: "
                         f"{ONLY_BINS_AND_CELLS}")
    if k > 1:
        level_um = diameter_px * mpp_px
        counts, obs, xy, ids = _sum_bins(counts, obs, xy, k, level_um, path, table_name)
        diameter_px *= k
        extra["bins_summed"] = k
    elif cells:
        bin_um = check_bin_um(DEFAULT_BIN_UM if bin_um is None else bin_um, path)
        unit_um = mpp_px * scale  # microns per shape unit: the squares are laid in the cells' own frame
        counts = counts if counts is not None else sp.csr_matrix((len(rows), 0), dtype=np.int32)
        counts, obs, squares, ids = bin_cells(counts, centres * unit_um, bin_um)
        xy = squares / unit_um @ to_pixels[:2, :2].T + to_pixels[:2, 2]
        if image_dir is not None:
            from spafoundation.io.slide import open_slide

            with open_slide(image_dir) as slide:
                size = (slide.width, slide.height)
            counts, obs, xy, ids = spots_on_image(size, image_name, xy, counts, obs, ids, path)
        extra.update(cells=len(rows), bin_um=bin_um)
        diameter_px = bin_um / mpp_px
    else:  # which shape each spot is: results go back onto it (io/spatialdata_write.add_to_spatialdata)
        obs[INSTANCE_COLUMN] = shapes.index[where].to_numpy()
    hires, scalef, size = None, 1.0, None
    if image_dir is not None:
        hires, scalef, size = read_section_image(image_dir, xy, mpp_px, path, f"shapes/{region}",
                                                 with_image=with_images)
    obs["section"] = section
    if "patient" not in obs:
        obs["patient"] = section
    # spot ids unique across sections, as every reader makes them (a store spafoundation wrote has them already)
    ids = [i if i.startswith(f"{section}_") else f"{section}_{i}" for i in ids]
    return build_anndata(counts=counts, genes=list(rows.var_names), spot_ids=ids, xy=xy, obs=obs,
                         library=section, mpp=mpp_px, mpp_source=mpp_source,
                         spot_diameter_um=diameter_px * mpp_px, platform=platform,
                         image_path=str(image_dir) if image_dir else None,
                         hires=hires, hires_scalef=scalef,
                         extra_meta={"image_size": size, "spatialdata_region": region,
                                     "spatialdata_image": image_name, "spatialdata_table": table_name, **extra})
