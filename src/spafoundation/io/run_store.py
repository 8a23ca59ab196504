"""``spafoundation run --format spatialdata``: the run's results gathered from its steps' files into one store.

The steps keep writing their .h5ad files (the report reads them); this reads them back, splits the multi-section
ones by ``obs['section']`` and writes ``DIR/spafoundation.zarr`` (``io/spatialdata_write.py``): the H&E, the spots
with tumour probability and domains, predicted expression, superpixels and the tumour and domain grids.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from spafoundation.io.anndata_spec import image_path, microns_per_pixel
from spafoundation.io.spatialdata_write import annotate_spots, write_spatialdata
from spafoundation.run_folder import RunFolder


def _by_section(path: Path, spots: dict[str, ad.AnnData]) -> dict[str, ad.AnnData]:
    """An .h5ad a step wrote, one AnnData per section of ``spots`` it holds ({} when the step did not run)."""
    if not path.exists():
        return {}
    adata = ad.read_h5ad(path)
    sections = adata.obs["section"].astype(str).to_numpy()
    return {n: adata[sections == n].copy() for n in spots if (sections == n).any()}


def _grids(path: Path, spots: dict[str, ad.AnnData]) -> dict[str, ad.AnnData]:
    """A step's tissue grid per section; concatenating sections kept only the ``uns['grid']`` keys they share, so
    each section's pixel size is set again from its spots."""
    grids = _by_section(path, spots)
    for n, grid in grids.items():
        grid.uns["grid"] = {**dict(grid.uns.get("grid", {})), "mpp": microns_per_pixel(spots[n]), "section": n}
        grid.uns["spatial"] = {n: spots[n].uns["spatial"][n]}
    return grids


def write_run_store(out: Path, data: dict[str, ad.AnnData]) -> Path:
    """``out/spafoundation.zarr`` from the step outputs of the run folder ``out``; ``data``: the run's sections."""
    folder = RunFolder(out)
    spots = {n: a for n, a in data.items() if image_path(a)}
    predicted = _by_section(folder.predicted, spots)
    expression = {n: p[spots[n].obs_names].copy() for n, p in predicted.items()
                  if set(spots[n].obs_names) <= set(p.obs_names)}
    superres = {n: ad.read_h5ad(folder.superres_section(n)) for n in spots if folder.superres_section(n).exists()}
    annotated = annotate_spots(spots, _by_section(folder.spots(folder.tumor), spots),
                               _by_section(folder.spots(folder.clusters), spots))
    grids = {"tumor_grid": _grids(folder.grid(folder.tumor), spots),
             "domain_grid": _grids(folder.grid(folder.clusters), spots)}
    return write_spatialdata(folder.spatialdata, annotated, expression=expression, superres=superres,
                             grids={k: v for k, v in grids.items() if v})
