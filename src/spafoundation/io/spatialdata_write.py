"""Results as one SpatialData zarr store, opened as it is by napari-spatialdata and spatialdata-plot.

Per section ``S`` (names made safe for SpatialData: letters, digits, ``_ . -``), all in coordinate system ``S``,
whose unit is one pixel of the section's full-resolution H&E:

- ``images/S_he``: the H&E, multiscale (halved until it fits ``OVERVIEW_SIDE``), read from the source slide
  ``chunk_px`` x ``chunk_px`` at a time as the store is written, never whole (a JPEG, which cannot be read by
  region, is decoded once as everywhere else);
- ``shapes/S_spots`` + ``tables/S_spots_table``: the measured spots as circles of their real diameter, the table
  holding the counts (X, as read) and the spot annotations (tumour probability, marker score, spatial domain...);
  this table makes the store a dataset again (``io/spatialdata.py`` reads it back);
- ``tables/S_expression``: predicted expression (log-normalised) of the same spots;
- ``shapes/S_superpixels`` + ``tables/S_superpixels_table``: super-resolution expression, one square per superpixel;
- ``shapes/S_<grid>`` + ``tables/S_<grid>_table``: a tissue grid (tumour probability, domains), one square per tile.

Every table carries ``uns['spafoundation_table']`` (what it holds) and ``uns['spatial']`` as the AnnData it came
from, without the thumbnail (the H&E is in the store).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import (
    image_path,
    library_id,
    microns_per_pixel,
    spatial_meta,
    spot_diameter_fullres,
)
from spafoundation.io.spatialdata import INSTANCE_COLUMN, TABLE_KIND_KEY, quiet_ome_zarr, require_spatialdata
from spafoundation.utils.atomic import atomic_dir

CHUNK_PX = 1024
OVERVIEW_SIDE = 1024  # the coarsest level's longer side is at most this
REGION_KEY, INSTANCE_KEY = "region", "instance_id"
# obs columns of a task's spots that annotate the measured spots (commands/tumor.py, commands/cluster.py)
SPOT_ANNOTATIONS = ("tumor_probability", "tumor_marker_score", "tumor_label", "spatial_domain")


def element_name(text: str) -> str:
    """``text`` with every character SpatialData refuses in a name replaced by ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))
    return name if name and name[0] not in ".-_" else f"s{name}"


def lazy_image(path: str | Path, chunk_px: int = CHUNK_PX):
    """The slide at ``path`` as a (c, y, x) uint8 dask array whose every chunk reads its own region when
    computed."""
    import dask.array as da

    from spafoundation.io.slide import PILSlide, open_slide

    with open_slide(path) as slide:
        height, width = slide.height, slide.width
        # A JPEG or PNG cannot be read by region: its first read decodes it whole into io/slide.py's cache. Reads
        # one at a time, so that two threads do not both decode it; region-readable slides read in parallel.
        one_at_a_time = threading.Lock() if isinstance(slide, PILSlide) else contextlib.nullcontext()

    def read_chunk(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        with one_at_a_time, open_slide(path) as slide:
            return slide.read_level_region(0, x0, y0, x1 - x0, y1 - y0).transpose(2, 0, 1)

    chunks = da.core.normalize_chunks((3, chunk_px, chunk_px), shape=(3, height, width))
    return da.map_blocks(read_chunk, dtype=np.uint8, chunks=chunks, meta=np.empty((0, 0, 0), np.uint8))


def _image_element(path: str, cs: str, chunk_px: int):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    data = lazy_image(path, chunk_px)
    levels = max(0, math.ceil(math.log2(max(data.shape[1:]) / OVERVIEW_SIDE)))
    return Image2DModel.parse(data, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                              scale_factors=[2] * levels or None, chunks=(3, chunk_px, chunk_px),
                              transformations={cs: Identity()})


def _table(adata: ad.AnnData, region: str, kind: str, instances: np.ndarray | None = None) -> ad.AnnData:
    """``adata`` as a SpatialData table annotating ``region`` row by row: row ``i`` the shape of instance id
    ``instances[i]`` (default ``i``)."""
    from spatialdata.models import TableModel

    table = adata.copy()
    table.obs[REGION_KEY] = pd.Categorical([region] * table.n_obs)
    table.obs[INSTANCE_KEY] = np.arange(table.n_obs) if instances is None else instances
    if "spatial" in table.uns:
        table.uns["spatial"] = {lib: {k: v for k, v in meta.items() if k != "images"}
                                for lib, meta in table.uns["spatial"].items()}
    table.uns[TABLE_KIND_KEY] = kind
    table.uns.pop("spatialdata_attrs", None)
    return TableModel.parse(table, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY)


def _circles(adata: ad.AnnData, cs: str):
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    radius = np.full(adata.n_obs, spot_diameter_fullres(adata) / 2)
    return ShapesModel.parse(np.asarray(adata.obsm["spatial"], float), geometry=0, radius=radius,
                             index=np.arange(adata.n_obs), transformations={cs: Identity()})


def _squares(adata: ad.AnnData, side_px: float, cs: str):
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    x, y = np.asarray(adata.obsm["spatial"], float).T
    half = side_px / 2
    frame = gpd.GeoDataFrame(geometry=shapely.box(x - half, y - half, x + half, y + half),
                             index=np.arange(adata.n_obs))
    return ShapesModel.parse(frame, transformations={cs: Identity()})


def _grid_side_px(grid: ad.AnnData) -> float:
    """Side of a tile in full-resolution pixels: a tissue grid's ``uns['grid']`` or superpixels' ``uns['superres']``."""
    if "grid" in grid.uns:
        return float(grid.uns["grid"]["step_um"]) / float(grid.uns["grid"]["mpp"])
    return float(grid.uns["superres"]["step_um"]) / microns_per_pixel(grid)


def write_spatialdata(path: str | Path, spots: dict[str, ad.AnnData], *,
                      expression: dict[str, ad.AnnData] | None = None,
                      superres: dict[str, ad.AnnData] | None = None,
                      grids: dict[str, dict[str, ad.AnnData]] | None = None,
                      chunk_px: int = CHUNK_PX) -> Path:
    """Write one SpatialData store at ``path`` (replaced whole, under a temporary name until complete).

    ``spots``: {section: its spots as read, counts in X, annotations in obs}; ``expression``: {section: predicted
    expression of those spots}; ``superres``: {section: superpixels (``tasks.superres.superres_adata``)};
    ``grids``: {grid name, e.g. ``tumor_grid``: {section: tiles with ``uns['grid']``}}."""
    path = Path(path)
    sd = require_spatialdata(path, "--format")
    elements: dict[str, dict] = {"images": {}, "shapes": {}, "tables": {}}
    names = pd.Series([element_name(n) for n in spots], index=list(spots))
    if names.duplicated().any():
        clash = names[names.duplicated(keep=False)].index.tolist()
        raise InputError(None, "section", f"sections {clash} have the same name in a SpatialData store")
    for section, adata in spots.items():
        s = names[section]
        if library_id(adata) != section:
            raise InputError(None, f"uns['spatial']['{library_id(adata)}']", f"section {section} is named "
                             f"{library_id(adata)} in its own metadata")
        if image_path(adata):
            elements["images"][f"{s}_he"] = _image_element(image_path(adata), s, chunk_px)
        summed = {"bin_um", "bins_summed"} & set(spatial_meta(adata)["metadata"])  # squares of cells or bins
        elements["shapes"][f"{s}_spots"] = (_squares(adata, spot_diameter_fullres(adata), s) if summed
                                            else _circles(adata, s))
        elements["tables"][f"{s}_spots_table"] = _table(adata, f"{s}_spots", "spots")
        if expression and section in expression:
            pred = expression[section]
            if list(pred.obs_names) != list(adata.obs_names):
                raise InputError(None, f"expression['{section}']", "predicted spots differ from the section's")
            elements["tables"][f"{s}_expression"] = _table(pred, f"{s}_spots", "expression")
        if superres and section in superres:
            spa = superres[section]
            elements["shapes"][f"{s}_superpixels"] = _squares(spa, _grid_side_px(spa), s)
            elements["tables"][f"{s}_superpixels_table"] = _table(spa, f"{s}_superpixels", "superpixels")
        for grid_name, per_section in (grids or {}).items():
            if section in per_section:
                grid, g = per_section[section], element_name(grid_name)
                elements["shapes"][f"{s}_{g}"] = _squares(grid, _grid_side_px(grid), s)
                elements["tables"][f"{s}_{g}_table"] = _table(grid, f"{s}_{g}", g)
    sdata = sd.SpatialData(**elements)
    with atomic_dir(path) as tmp, quiet_ome_zarr():
        tmp.rmdir()  # SpatialData writes only a new store or over a zarr store, not into an empty folder
        sdata.write(tmp)
    return path


def annotate_spots(spots: dict[str, ad.AnnData], *results: dict[str, ad.AnnData]) -> dict[str, ad.AnnData]:
    """Copies of ``spots`` with the ``SPOT_ANNOTATIONS`` columns of each result ({section: spots AnnData}) matched by
    spot id; a spot a result lacks gets NaN (or a missing category)."""
    out = {}
    for section, adata in spots.items():
        adata = adata.copy()
        for result in results:
            if section not in result:
                continue
            obs = result[section].obs
            for col in SPOT_ANNOTATIONS:
                if col in obs:
                    adata.obs[col] = obs[col].reindex(adata.obs_names)
        out[section] = adata
    return out


def add_to_spatialdata(sdata, *, expression=None, spots=None, overwrite: bool = False) -> list[str]:
    """Put the results of sections read from ``sdata`` (``sf.read(sdata)``) into that SpatialData object, on its
    own spots, for spatialdata-plot and napari-spatialdata.

    ``expression``: predictions (``sf.tl.predict_expression``; a mapping of section -> AnnData, or one AnnData) ->
    one table per section, ``<section>_expression``, annotating the section's shapes element row by row.
    ``spots``: the sections with their annotations (``sf.tl.tumor_score``, ``sf.tl.spatial_domains``) -> those
    columns (tumour probability and label, marker score, spatial domain) set on the rows of the table the counts were
    read from; its other rows get NaN. A section whose spots were summed (cells into squares, Visium HD bins k x k)
    has no shapes of its own in ``sdata``: they are added, ``<section>_squares`` in the frame and coordinate systems
    of the shapes summed, and its annotations go into a table of their own, ``<section>_squares_table``, with the
    summed counts (replaced by the next call, as the counts table's columns are). Any other existing element is
    replaced only with ``overwrite``. Returns the names of the elements added or changed: in memory only until
    written (``sdata.write_element(name)``, ``overwrite=True`` for a changed one)."""
    from spafoundation._sections import LIBRARY_KEY, Sections

    require_spatialdata(None, "sdata")
    from spatialdata.models import get_table_keys

    changed: list[str] = []

    def add(kind: str, name: str, element) -> None:
        if name in getattr(sdata, kind) and not overwrite and name not in changed:
            raise InputError(None, f"{kind}/{name}", "already in the SpatialData object: overwrite=True replaces it")
        getattr(sdata, kind)[name] = element
        if name not in changed:
            changed.append(name)

    def spots_of(section: str, part: ad.AnnData) -> tuple[str, np.ndarray]:
        if not _summed(part):
            return _spots_of(sdata, section, part)
        name = f"{element_name(section)}_squares"
        ids = np.asarray(part.obs_names)
        held = sdata.shapes.get(name)
        if held is None or not np.array_equal(np.asarray(held.index), ids):  # else added by an earlier call
            add("shapes", name, _summed_squares(sdata, section, part))
        return name, ids

    for section, pred in (Sections(expression, LIBRARY_KEY).by_name if expression is not None else {}).items():
        region, instances = spots_of(section, pred)
        add("tables", f"{element_name(section)}_expression", _table(pred, region, "expression", instances))
    for section, part in (Sections(spots, LIBRARY_KEY).by_name if spots is not None else {}).items():
        region, instances = spots_of(section, part)
        columns = [c for c in SPOT_ANNOTATIONS if c in part.obs]
        if not columns:
            continue
        if _summed(part):  # the counts were read from the cells' (bins') table: these rows are not in it
            name = f"{region}_table"
            held = sdata.tables.get(name)
            if held is not None and held.uns.get(TABLE_KIND_KEY) == "squares":
                del sdata.tables[name]  # its own annotations table, updated as the counts table's columns are
            add("tables", name, _table(part, region, "squares", instances))
            continue
        name = spatial_meta(part)["metadata"]["spatialdata_table"]
        table = sdata.tables[name]
        _, region_key, instance_key = get_table_keys(table)
        key = pd.MultiIndex.from_arrays([table.obs[region_key].astype(str), table.obs[instance_key]])
        rows = key.get_indexer(pd.MultiIndex.from_arrays([np.full(len(instances), region), instances]))
        if (rows < 0).any():
            raise InputError(None, f"tables/{name}", f"{int((rows < 0).sum())} spots of section {section} have no "
                             "row in the table their counts were read from")
        for col in columns:
            values = part.obs[col]
            filled = pd.Series(pd.NA if isinstance(values.dtype, pd.CategoricalDtype) else np.nan,
                               index=table.obs_names, dtype=values.dtype)
            filled.iloc[rows] = values.to_numpy()
            table.obs[col] = filled
        if name not in changed:
            changed.append(name)
    return changed


def _summed(part: ad.AnnData) -> bool:
    """Whether the section was read from a store with its spots summed from smaller shapes (cells, HD bins)."""
    meta = spatial_meta(part)["metadata"]
    return meta.get("spatialdata_region") is not None and ("bin_um" in meta or "bins_summed" in meta)


def _summed_squares(sdata, section: str, part: ad.AnnData):
    """The squares of a section's summed spots (index: spot ids), in the frame of the shapes they were summed from
    and with those shapes' transformations, so that they lie on the cells in every coordinate system."""
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    from spafoundation.io.spatialdata import shape_to_image

    meta = spatial_meta(part)["metadata"]
    region, image = meta["spatialdata_region"], meta.get("spatialdata_image")
    if region not in sdata.shapes or image not in sdata.images:
        raise InputError(None, f"shapes/{region}", f"section {section} was read from shapes/{region} on "
                         f"images/{image}, which this SpatialData object does not hold")
    shape_to = get_transformation(sdata.shapes[region], get_all=True)
    if "bins_summed" in meta:  # Visium HD: each spot's square is the extent of the bins it sums (an edge block's
        # bins may not fill it), found again from the bins' array positions
        boxes = _block_bounds(sdata, section, part, region, int(meta["bins_summed"]))
    else:  # cells: the square of the grid they were summed into, centred on the spot
        image_to = get_transformation(sdata.images[image], get_all=True)
        cs = next(c for c in shape_to if c in image_to)
        back = np.linalg.inv(shape_to_image(shape_to[cs], image_to[cs]))
        xy = np.asarray(part.obsm["spatial"], float) @ back[:2, :2].T + back[:2, 2]
        half = spot_diameter_fullres(part) * math.sqrt(abs(np.linalg.det(back[:2, :2]))) / 2
        boxes = np.c_[xy - half, xy + half]
    frame = gpd.GeoDataFrame(geometry=shapely.box(*boxes.T), index=np.asarray(part.obs_names))
    return ShapesModel.parse(frame, transformations=dict(shape_to))


def _block_bounds(sdata, section: str, part: ad.AnnData, region: str, k: int) -> np.ndarray:
    """(spots, 4) bounds (x0, y0, x1, y1), in the bins' frame, of the bins each k x k block of ``part`` sums:
    ``io/visium_hd.aggregate_bins`` gives a block the array position (bin row // k, bin column // k)."""
    from spatialdata.models import get_table_keys

    table = sdata.tables[spatial_meta(part)["metadata"]["spatialdata_table"]]
    _, region_key, instance_key = get_table_keys(table)
    obs = table.obs[table.obs[region_key].astype(str).to_numpy() == region]
    shapes = sdata.shapes[region]
    bounds = shapes.geometry.bounds.to_numpy()[shapes.index.get_indexer(obs[instance_key].to_numpy())]
    blocks = pd.MultiIndex.from_arrays([obs["array_row"].to_numpy() // k, obs["array_col"].to_numpy() // k])
    frame = pd.DataFrame(bounds, columns=["x0", "y0", "x1", "y1"], index=blocks)
    grouped = frame.groupby(level=[0, 1]).agg({"x0": "min", "y0": "min", "x1": "max", "y1": "max"})
    wanted = pd.MultiIndex.from_arrays([part.obs["array_row"].to_numpy(), part.obs["array_col"].to_numpy()])
    at = grouped.index.get_indexer(wanted)
    if (at < 0).any():
        raise InputError(None, f"shapes/{region}", f"{int((at < 0).sum())} spots of section {section} sum no bin of "
                         "this SpatialData object")
    return grouped.to_numpy()[at]


def _spots_of(sdata, section: str, part: ad.AnnData) -> tuple[str, np.ndarray]:
    """(the shapes element ``part``'s spots are, each spot's instance id there), checked against ``sdata``."""
    meta = spatial_meta(part)["metadata"]
    region = meta.get("spatialdata_region")
    if region is None or INSTANCE_COLUMN not in part.obs:
        raise InputError(None, f"section {section}", "not read from a SpatialData store (sf.read(sdata)): its "
                         "results have no shapes to go on")
    if region not in sdata.shapes:
        raise InputError(None, f"shapes/{region}", f"section {section} was read from shapes/{region}, which this "
                         "SpatialData object does not hold")
    instances = part.obs[INSTANCE_COLUMN].to_numpy()
    if (sdata.shapes[region].index.get_indexer(instances) < 0).any():
        raise InputError(None, f"shapes/{region}", f"spots of section {section} are not shapes of this element")
    return region, instances
