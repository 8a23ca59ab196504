"""``sf.read``: any supported dataset as one AnnData per section."""

from __future__ import annotations

import os


def read(path: str | os.PathLike, sections=None, *, bin_um: float | None = None, image: str | os.PathLike | None = None,
         mpp: float | None = None, with_images: bool = True, imaged_only: bool = False):
    """Read a spatial transcriptomics dataset with its H&E images, whatever its layout.

    Parameters
    ----------
    path
        A legacy ST folder (HER2ST), ST Pipeline files, a Space Ranger sample (Visium, Visium HD) or a folder of
        them, a Xenium output folder with its H&E, a HEST-1k folder, a manifest (``.yaml``/``.json``), an ``.h5ad``, a SpatialData store (or a
        ``SpatialData`` object read from or written to one: its store is read), or a ``.csv`` of spots with
        ``image``. The layout is detected (README, "Input formats").
    sections
        Section ids to read (a list, or one id); default all.
    bin_um
        Visium HD: spot size in microns (a bin size Space Ranger wrote, or a multiple that sums k x k bins).
        Xenium (cells, from its folder or a SpatialData store): the side of the squares the cells are summed
        into, default 55 um.
    image
        The full-resolution H&E of a dataset of one section whose image is not with it.
    mpp
        Microns per pixel of the images, over what the data says.
    with_images
        Load the ``hires`` thumbnail into ``uns['spatial'][section]['images']`` (for plotting); the full-resolution
        image is always read lazily from ``metadata['image_path']``.
    imaged_only
        Leave out the sections without an H&E image (a cohort whose counts outnumber its images, as HER2ST's 36
        sections with 6 images); where counts and images are kept apart (legacy ST, ST Pipeline files) their
        counts are never read.

    Returns
    -------
    dict[str, AnnData]
        Section id -> AnnData with raw counts in ``X``, ``obsm['spatial']`` (full-resolution pixels),
        ``uns['spatial'][section]`` (images, scale factors, ``microns_per_pixel``), ``obs['section']`` and
        ``obs['patient']``. Every ``sf.tl`` function takes this mapping as is; ``anndata.concat(list(d.values()),
        uns_merge="unique")`` gives the one-AnnData form (``library_key="section"``).
    """
    from spafoundation.io.readers import read_dataset

    if _is_spatialdata(path):
        path = _store_of(path)
    if isinstance(sections, str):
        sections = [sections]
    options = {"with_images": with_images, **({"mpp": mpp} if mpp is not None else {})}
    return read_dataset(path, list(sections) if sections is not None else None, bin_um=bin_um, image=image,
                        imaged_only=imaged_only, **options)


def _is_spatialdata(data) -> bool:
    """A SpatialData object, told by its type (spatialdata is an optional extra: never imported here)."""
    return any(t.__name__ == "SpatialData" and t.__module__.startswith("spatialdata") for t in type(data).__mro__)


def _store_of(sdata) -> str:
    """The zarr store a SpatialData object was read from or written to, read like any store (images region by
    region, in place). One held only in memory, or with elements its store lacks, is an InputError saying to
    write it first: the reader would not see what is not on disk."""
    from spafoundation.errors import InputError

    if not sdata.is_backed() or sdata.path is None:
        raise InputError(None, "data", "a SpatialData object held only in memory: write it to a store first "
                         "(sdata.write('sample.zarr')) and read that")
    unwritten = sorted(set(sdata.elements_paths_in_memory()) - set(sdata.elements_paths_on_disk()))
    if unwritten:
        raise InputError(sdata.path, "data", f"{len(unwritten)} element(s) of the SpatialData object are not in its "
                         f"store: {', '.join(unwritten[:5])} (sdata.write_element(name) writes one)")
    return str(sdata.path)
