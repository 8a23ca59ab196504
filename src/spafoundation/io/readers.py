"""Format detection and one entry point: ``read_dataset(path) -> {section: AnnData}``."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad

from spafoundation.errors import InputError
from spafoundation.io import legacy_st

FORMATS = ("legacy_st", "st_pipeline", "visium", "visium_hd", "visium_cohort", "hest", "generic", "h5ad",
           "spots_table", "spatialdata")
# read_dataset's options a user sets for a whole dataset (command line, run config); None = not given
DATA_OPTIONS = ("bin_um", "image", "image_scale", "mpp")


def data_options(values) -> dict:
    """``read_dataset``'s keyword arguments from ``values``: a mapping (a run config) or an object with attributes
    (parsed command-line arguments)."""
    get = values.get if isinstance(values, dict) else lambda k: getattr(values, k, None)
    return {k: get(k) for k in DATA_OPTIONS}


def missing_reason(path: Path) -> str:
    """Why ``path`` cannot be opened although it may be named right: a link that loops or leads nowhere."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "a symbolic link that loops back on itself"
        except OSError as e:
            if "loop" in str(e).lower() or getattr(e, "errno", None) == 40:
                return "a symbolic link that loops back on itself"
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    return "not found"


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "data", missing_reason(path))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".h5ad":
            return "h5ad"
        if suffix in (".yaml", ".yml", ".json"):
            return "generic"
        if suffix in (".csv", ".tsv"):
            return "spots_table"
        raise InputError(
            path, "data", f"unsupported format '{suffix}': give a folder, an .h5ad, a generic manifest or a .csv "
            "of spots with --image"
        )
    from spafoundation.io.spatialdata import is_spatialdata_store

    if is_spatialdata_store(path):
        return "spatialdata"
    if legacy_st.is_legacy_st(path):
        return "legacy_st"
    if legacy_st.is_st_pipeline_folder(path):
        return "st_pipeline"
    if (path / "st").is_dir() and ((path / "wsis").is_dir() or (path / "metadata").is_dir()):
        return "hest"
    from spafoundation.io.visium import is_visium_sample, outs_dir, visium_samples
    from spafoundation.io.visium_geo import is_visium_geo
    from spafoundation.io.visium_hd import is_visium_hd
    from spafoundation.io.xenium import is_xenium

    if is_xenium(path):
        return "xenium"

    manifest = (path / "spafoundation.yaml").exists() or (path / "manifest.yaml").exists()
    if is_visium_geo(path) and not manifest and not (outs_dir(path) / "spatial").is_dir():
        return "visium_geo"  # flat files, even with Space Ranger's own names
    if is_visium_hd(path):
        return "visium_hd"
    if is_visium_sample(path):
        return "visium"
    if manifest:
        return "generic"
    if visium_samples(path):
        return "visium_cohort"
    raise InputError(
        path,
        "data",
        "unsupported format: expected a legacy ST folder (ST-cnts/, or *_stdata.tsv beside "
        "spot_data-selection-*.tsv), Space Ranger outs/ of Visium or Visium HD "
        "(or a folder of Space Ranger samples, or of their files as GEO holds them), a Xenium output folder "
        "(experiment.xenium), a HEST folder "
        "(st/, wsis/, metadata/), a SpatialData store (.zarr), a generic manifest (.yaml) or an .h5ad",
    )


def read_dataset(path: str | Path, sections: list[str] | None = None, *, bin_um: float | None = None,
                 image: str | Path | None = None, image_scale: float | None = None, imaged_only: bool = False,
                 **kwargs) -> dict[str, ad.AnnData]:
    """Read any supported layout into one AnnData per section, keyed by section (library) id. ``bin_um``: the spot
    size of Visium HD data (``visium_hd.py``); an InputError for any other format. ``image``: the full-resolution
    H&E of a dataset of one section whose image is not with it (a Space Ranger sample, an .h5ad of one library);
    formats that name each section's image (legacy ST, HEST, a manifest, a cohort) are an InputError.
    ``image_scale``: image px per full-resolution px of ``image`` when it is a downscaled copy (io/downscaled.py);
    a Space Ranger sample without a full-resolution H&E is read from its hires PNG without it. ``imaged_only``: the
    sections without an H&E image are left out, and named in one log line; the folder layouts that keep counts and
    images apart (legacy ST, ST Pipeline) skip their count tables unread (HER2ST: 2 s for its 6 imaged sections
    against 13 s for all 36, bench/read_speed.py).

    Section ids name output files (``<section>_maps.png``), so one that is not a plain file name is refused here,
    before any work."""
    from spafoundation.io.anndata_spec import check_section_id

    fmt = detect_format(path)
    if imaged_only and fmt in ("legacy_st", "st_pipeline"):
        kwargs["imaged_only"] = True  # they leave out the imageless sections before reading them
    data = _read_format(path, fmt, sections, bin_um=bin_um, image=image, image_scale=image_scale, **kwargs)
    if imaged_only and not kwargs.get("imaged_only"):
        data = drop_imageless(data, path)
    for name in data:
        check_section_id(name, path)
    return data


def _read_format(path, fmt, sections, *, bin_um, image, image_scale, **kwargs) -> dict[str, ad.AnnData]:
    if bin_um is not None and fmt not in ("visium_hd", "visium_cohort", "spatialdata", "xenium"):
        from spafoundation.io.cell_bins import ONLY_BINS_AND_CELLS

        raise InputError(path, "bin_um", f"{ONLY_BINS_AND_CELLS}; this is {fmt} data")
    if image is not None and fmt in ("legacy_st", "st_pipeline", "hest", "generic", "spatialdata"):
        raise InputError(path, "image", f"--image is for one Space Ranger sample or a one-library .h5ad; {fmt} "
                         "data finds each section's image itself")
    if image_scale is not None and image is None:
        raise InputError(path, "image_scale", "--image-scale is the scale of the image given with --image (a "
                         "manifest section gives it as image_scale:)")
    if image is not None:
        kwargs["image"] = image
    if image_scale is not None:
        kwargs["image_scale"] = image_scale
    if fmt == "visium_hd":
        from spafoundation.io.visium_hd import read_visium_hd

        adata = read_visium_hd(path, bin_um=bin_um, **kwargs)
        return select_sections({adata.obs["section"].iloc[0]: adata}, sections, path)
    if fmt == "visium_cohort":
        from spafoundation.io.visium import read_visium_cohort

        return read_visium_cohort(path, sections, bin_um=bin_um, **kwargs)
    if fmt == "visium_geo":
        from spafoundation.io.visium_geo import read_visium_geo

        return read_visium_geo(path, sections, **kwargs)
    if fmt == "xenium":
        from spafoundation.io.xenium import read_xenium

        adata = read_xenium(path, bin_um=bin_um, **kwargs)
        return select_sections({adata.obs["section"].iloc[0]: adata}, sections, path)
    if fmt == "legacy_st":
        return legacy_st.read_legacy_st(path, sections, **kwargs)
    if fmt == "st_pipeline":
        return legacy_st.read_st_pipeline_folder(path, sections, **kwargs)
    if fmt == "visium":
        from spafoundation.io.visium import read_visium

        adata = read_visium(path, **kwargs)
        return select_sections({adata.obs["section"].iloc[0]: adata}, sections, path)
    if fmt == "hest":
        from spafoundation.io.hest import read_hest

        return read_hest(path, sections, **kwargs)
    if fmt == "spatialdata":
        from spafoundation.io.spatialdata import read_spatialdata

        return read_spatialdata(path, sections, bin_um=bin_um, **kwargs)
    if fmt == "spots_table":
        from spafoundation.io.generic import read_spots_table

        return select_sections(read_spots_table(path, **kwargs), sections, path)
    if fmt == "generic":
        from spafoundation.io.generic import read_generic_manifest

        return select_sections(read_generic_manifest(path, **kwargs), sections, path)
    from spafoundation.io.h5ad import read_spafoundation_h5ad

    return select_sections(read_spafoundation_h5ad(path, **kwargs), sections, path)


def imageless_sections(path: str | Path) -> list[str]:
    """The sections of a folder layout that keeps counts and images apart (legacy ST, ST Pipeline) that have counts
    but no H&E image, found without reading them; other layouts: none (they would have to be read)."""
    fmt = detect_format(path)
    root = Path(path)
    if fmt == "legacy_st":
        return [s for s in legacy_st.list_sections(root) if legacy_st.find_image(root, s) is None]
    if fmt == "st_pipeline":
        return [s for s, (_, _, image) in legacy_st.st_pipeline_samples(root).items() if image is None]
    return []


def drop_imageless(data: dict[str, ad.AnnData], path) -> dict[str, ad.AnnData]:
    """``data`` without its sections that have no H&E image, those named in one log line."""
    from spafoundation.io.anndata_spec import image_path, note_imageless

    note_imageless(path, [n for n, a in data.items() if not image_path(a)])
    return {n: a for n, a in data.items() if image_path(a)}


def select_sections(data: dict, sections: list[str] | None, path) -> dict:
    """``sections`` of ``data`` (sections read, or the samples still to read) in that order (all for None); an
    InputError naming an unknown one."""
    if sections is None:
        return data
    unknown = [s for s in sections if s not in data]
    if unknown:
        raise InputError(path, "section", f"unknown section(s) {unknown}; available: {sorted(data)}")
    return {s: data[s] for s in sections}
