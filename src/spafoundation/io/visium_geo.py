"""10x Visium as GEO deposits it, and as 10x's public datasets download (``<name>_filtered_feature_bc_matrix.h5``,
``<name>_spatial.tar.gz``, ``<name>_image.tif``): one folder of flat files, each sample's named
``<prefix><Space Ranger name>[.gz]``.

    GSM5924030_ffpe_c_2_filtered_feature_bc_matrix.h5      counts, or the three files
    GSM5924030_ffpe_c_2_matrix.mtx.gz                        of the matrix folder (barcodes.tsv, features.tsv or
                                                             genes.tsv), each name possibly after
                                                             ``filtered_feature_bc_matrix_`` / ``raw_feature_bc_matrix_``
    GSM5924030_ffpe_c_2_tissue_positions_list.csv.gz       spot positions (or tissue_positions.csv)
    GSM5924030_ffpe_c_2_scalefactors_json.json.gz          scale factors; spatial files may follow ``spatial_``
    GSM5924030_ffpe_c_2_tissue_hires_image.png.gz          Space Ranger's hires thumbnail (and the lowres one)
    GSM5924030_ffpe_c_2_spatial.tar.gz                     or the spatial/ folder packed, in place of the four
    GSM5924030_ffpe_c_2_<anything>.tif|.jpg|...             the full-resolution H&E, where one was deposited

A sample is a prefix with counts and positions. Its section is the prefix less its trailing separator and GEO
accession (``GSM5924030_``): ``ffpe_c_2``; the accession where nothing else is left; the folder's name for files
without a prefix. Files are read where they are, gzipped or not, except a gzipped image that becomes the section's
(patches are read from an image file by region) and the spatial files of a ``spatial.tar.gz``: those are unpacked
once to the cache folder (io/unpack.py). Without a full-resolution H&E (most deposits), the image is the hires PNG
read at ``tissue_hires_scalef``, as from a Space Ranger folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad

from spafoundation.errors import InputError
from spafoundation.io.slide import OPENSLIDE_ONLY_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES
from spafoundation.io.unpack import untarred
from spafoundation.io.visium import SPACERANGER_IMAGES, SampleFiles, read_visium

COUNTS = ("filtered_feature_bc_matrix.h5", "matrix.mtx")
POSITIONS = ("tissue_positions.csv", "tissue_positions_list.csv")
SPATIAL_NAMES = (*POSITIONS, "scalefactors_json.json", "tissue_hires_image.png", "tissue_lowres_image.png")
SAMPLE_FILE = re.compile(
    r"^(?P<prefix>.*?)(?P<group>(?:filtered|raw)_feature_bc_matrix[._-]|spatial[._-])?"
    r"(?P<name>filtered_feature_bc_matrix\.h5|matrix\.mtx|barcodes\.tsv|features\.tsv|genes\.tsv"
    r"|tissue_positions(?:_list)?\.csv|scalefactors_json\.json|tissue_(?:hires|lowres)_image\.png)(?:\.gz)?$"
)
SPATIAL_TAR = re.compile(r"^(?P<prefix>.*?)spatial\.(?:tar|tar\.gz|tgz)$")
ACCESSION = re.compile(r"^GSM\d+[._-]")
IMAGE_SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES | OPENSLIDE_ONLY_SUFFIXES


def named_files(entries: list[Path]) -> dict[str, dict[str, Path]]:
    """{prefix: {Space Ranger name: file}} of the files among ``entries`` named as a GEO Visium deposit names them."""
    best: dict[tuple[str, str], tuple[bool, Path]] = {}
    for path in entries:
        m = SAMPLE_FILE.match(path.name)
        if m is None:
            if tar := SPATIAL_TAR.match(path.name):
                best[(tar["prefix"], "spatial.tar")] = (False, path)
            continue
        raw = (m["group"] or "").startswith("raw_")  # a filtered matrix file wins over the raw one
        key = (m["prefix"], m["name"])
        if key not in best or raw < best[key][0]:
            best[key] = (raw, path)
    named: dict[str, dict[str, Path]] = {}
    for (prefix, name), (_, path) in best.items():
        named.setdefault(prefix, {})[name] = path
    return named


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def geo_samples(folder: Path) -> dict[str, SampleFiles]:
    """{section: its files} of the GEO Visium samples in ``folder``; {} where it holds none. A prefix with only part
    of a sample (positions without counts, or counts without positions) is an InputError naming what is missing."""
    entries = _files(folder)
    samples = {}
    for prefix, files in named_files(entries).items():
        has_counts = any(n in files for n in COUNTS)
        if not has_counts and not any(n in files for n in (*POSITIONS, "spatial.tar")):
            continue
        if has_counts and "spatial.tar" in files:
            archive = files.pop("spatial.tar")
            files = {**unpacked_spatial(archive), **files}  # files beside the archive win
        has_positions = any(n in files for n in POSITIONS)
        if not (has_counts and has_positions):
            missing = "counts (filtered_feature_bc_matrix.h5 or matrix.mtx)" if not has_counts else \
                "spot positions (tissue_positions_list.csv or tissue_positions.csv, or a spatial.tar.gz holding one)"
            raise InputError(folder, "files", f"sample {prefix or folder.name!r} has no {missing}: "
                             f"expected {prefix}<Space Ranger file name>[.gz] beside its other files")
        images = tuple(p for p in entries if p.name.startswith(prefix) and not SAMPLE_FILE.match(p.name)
                       and Path(_ungzipped_name(p)).suffix.lower() in IMAGE_SUFFIXES
                       and not _thumbnail(Path(_ungzipped_name(p)[len(prefix):]).stem))
        section = section_name(prefix, folder)
        if section in samples:
            raise InputError(folder, "files", f"two samples would both be section {section!r}: rename one")
        samples[section] = SampleFiles(folder, folder, folder, named=files, images=images)
    return samples


def unpacked_spatial(archive: Path) -> dict[str, Path]:
    """{Space Ranger name: file} of the spatial files in a sample's ``spatial.tar.gz``, unpacked once to the cache
    folder (io/unpack.py)."""
    def spatial(name: str) -> bool:
        m = SAMPLE_FILE.match(name)
        return bool(m) and not m["prefix"] and m["name"] in SPATIAL_NAMES

    return {SAMPLE_FILE.match(p.name)["name"]: p for p in untarred(archive, spatial, "spatial")}


def _ungzipped_name(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def _thumbnail(stem: str) -> bool:
    return re.sub(r"^spatial[._-]", "", stem) in SPACERANGER_IMAGES


def section_name(prefix: str, folder: Path) -> str:
    key = prefix.rstrip("._-")
    if not key:
        return folder.name
    return ACCESSION.sub("", key) or key


def is_visium_geo(path: Path) -> bool:
    """Counts and spot positions named as GEO names them, of one sample or not (reading names what is missing)."""
    names = {n for files in named_files(_files(path)).values() for n in files}
    return bool(names & set(COUNTS)) and bool(names & {*POSITIONS, "spatial.tar"})


def is_one_geo_sample(path: Path) -> bool:
    """A folder of one sample's GEO-named files (a 10x download in its own folder), not a Space Ranger folder: in a
    cohort folder it is one sample, named by the folder."""
    if (path / "outs").is_dir() or (path / "spatial").is_dir():
        return False
    complete = [files for files in named_files(_files(path)).values()
                if set(files) & set(COUNTS) and set(files) & {*POSITIONS, "spatial.tar"}]
    return len(complete) == 1


def read_visium_geo(path: str | Path, sections: list[str] | None = None, *, image=None, image_scale=None,
                    **kwargs) -> dict[str, ad.AnnData]:
    """The GEO Visium samples of ``path`` (only the requested ``sections`` are read). ``image``/``image_scale``:
    the H&E of a folder of one sample, as for a Space Ranger folder."""
    path = Path(path)
    samples = geo_samples(path)
    if (image is not None or image_scale is not None) and len(samples) > 1:
        raise InputError(path, "image", "this folder holds several samples; --image (and --image-scale) are for "
                         "a folder of one: name each sample's H&E with its prefix beside its files")
    from spafoundation.io.readers import select_sections

    return {name: read_visium(path, image=image, image_scale=image_scale, section=name, files=files, **kwargs)
            for name, files in select_sections(samples, sections, path).items()}
