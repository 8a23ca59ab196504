"""10x Visium, from a Space Ranger ``outs/`` folder.

    outs/filtered_feature_bc_matrix.h5          counts (10x HDF5: matrix/{data,indices,indptr,shape,barcodes,features})
      or outs/filtered_feature_bc_matrix/       matrix.mtx(.gz), barcodes.tsv(.gz), features.tsv(.gz) / genes.tsv
    outs/spatial/tissue_positions.csv           barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres
      or outs/spatial/tissue_positions.parquet  the same table as Parquet
      or outs/spatial/tissue_positions_list.csv the same columns without a header (Space Ranger < 2.0)
    outs/spatial/scalefactors_json.json         spot_diameter_fullres, tissue_hires_scalef
    outs/spatial/tissue_hires_image.png         thumbnail (used as ``images['hires']``)
    full-resolution H&E                         ``image=`` or any .tif/.tiff/.btf/.svs/.jpg in the folder or outs/

Without a full-resolution H&E (most public deposits ship only ``spatial/``), the section's image is the hires PNG
at ``tissue_hires_scalef`` (``io/downscaled.py``); a given image is read at ``image_scale=``, else at the factor
Space Ranger recorded for it when it is one of its own images, else as full-resolution.

A cohort is a folder of such sample folders (``read_visium_cohort``): one section per subfolder, named by it;
Visium HD samples (``visium_hd.py``) may sit among them.

Pixel size: ``mpp=`` if given, else the 55 um spot diameter over ``spot_diameter_fullres``, else estimated from
the 100 um centre-to-centre pitch; ``metadata['mpp_source']`` says which.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from PIL import Image

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import (
    build_anndata,
    check_unique,
    estimate_mpp_from_pitch,
    read_section_image,
    validate_counts,
)
from spafoundation.io.downscaled import SPACERANGER_SCALEFACTORS, check_scale, warn_if_downscaled
from spafoundation.io.slide import OPENSLIDE_ONLY_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES
from spafoundation.io.unpack import gunzipped

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
# array_col advances by 2 between neighbouring spots of one row of the hexagonal grid: half a pitch per step.
ARRAY_COL_STEP_UM = SPOT_PITCH_UM / 2
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
GENE_EXPRESSION = "Gene Expression"
# Space Ranger's own images in spatial/ are thumbnails, never the full-resolution slide.
SPACERANGER_IMAGES = {
    "tissue_hires_image",
    "tissue_lowres_image",
    "aligned_fiducials",
    "detected_tissue_image",
    "aligned_tissue_image",
    "cytassist_image",
}


def outs_dir(path: Path) -> Path:
    return path / "outs" if (path / "outs").is_dir() else path


@dataclass(frozen=True)
class SampleFiles:
    """Where one Space Ranger sample's files are. A Space Ranger folder: counts in ``counts_dir``
    (``filtered_feature_bc_matrix.h5`` or the ``filtered_feature_bc_matrix/`` folder), the rest in ``spatial``,
    each by Space Ranger's name or that name gzipped. A GEO deposit (visium_geo.py): one folder of renamed files,
    ``named`` by the Space Ranger name each stands for (the three matrix files too), and the full-resolution images
    named with the sample's prefix in ``images``. ``root``: the sample, searched for the full-resolution H&E."""

    root: Path
    counts_dir: Path
    spatial: Path
    named: dict[str, Path] | None = None
    images: tuple[Path, ...] = ()

    @classmethod
    def of_sample(cls, path: Path) -> SampleFiles:
        outs = outs_dir(path)
        return cls(path, outs, outs / "spatial")

    @property
    def flat(self) -> bool:
        return self.named is not None

    def find(self, folder: Path, name: str) -> Path:
        """The file standing for Space Ranger's ``name`` (it may not exist): ``folder/name``, or ``name.gz`` where
        only that exists."""
        if self.named is not None:
            return self.named.get(name, self.root / name)
        gz = folder / f"{name}.gz"
        return gz if not (folder / name).exists() and gz.exists() else folder / name

    def spatial_file(self, name: str) -> Path:
        return self.find(self.spatial, name)

    @property
    def scalefactors(self) -> Path:
        return self.spatial_file("scalefactors_json.json")


def is_visium_sample(path: Path) -> bool:
    """A Space Ranger sample: the folder or its ``outs/`` holds the filtered count matrix (Visium) or bin folders
    (Visium HD)."""
    from spafoundation.io.visium_hd import is_visium_hd

    outs = outs_dir(path)
    return ((outs / "filtered_feature_bc_matrix.h5").exists() or (outs / "filtered_feature_bc_matrix").is_dir()
            or is_visium_hd(path))


def visium_samples(path: Path) -> list[Path]:
    """The sample folders of a 10x cohort: the subfolders of ``path`` that are Space Ranger samples, hold one
    sample's files as GEO or 10x's downloads name them (visium_geo.py), or are Xenium output folders (xenium.py)."""
    from spafoundation.io.visium_geo import is_one_geo_sample
    from spafoundation.io.xenium import is_xenium

    return sorted(d for d in path.iterdir() if d.is_dir() and d.name != "outs"
                  and (is_visium_sample(d) or is_one_geo_sample(d) or is_xenium(d)))


def read_visium_cohort(path: str | Path, sections: list[str] | None = None, *, image=None, image_scale=None,
                       **kwargs) -> dict[str, ad.AnnData]:
    """A folder of Space Ranger samples (or of folders of one sample's GEO-named files, e.g. 10x downloads, or of
    Xenium output folders), one section per subfolder (named by it, a Xenium folder less 10x's ``_outs``); each
    sample's full-resolution image is found in its own folder. Only the requested sections are read."""
    path = Path(path)
    if image is not None or image_scale is not None:
        raise InputError(path, "image", "a cohort folder finds each sample's image in its own folder; "
                         "give --image (and --image-scale) with one sample folder")
    from spafoundation.io.readers import select_sections
    from spafoundation.io.xenium import is_xenium, section_name

    samples = select_sections({section_name(d) if is_xenium(d) else d.name: d for d in visium_samples(path)},
                              sections, path)
    return {name: read_visium_sample(folder, section=name, **kwargs) for name, folder in samples.items()}


def read_visium_sample(path: Path, *, bin_um: float | None = None, **kwargs) -> ad.AnnData:
    """One Space Ranger sample, Visium or Visium HD (``bin_um``: the HD spot size; an error for round spots), a
    folder of one sample's GEO-named files, or a Xenium output folder (``bin_um``: the squares cells are summed
    into)."""
    from spafoundation.io.visium_geo import geo_samples, is_one_geo_sample
    from spafoundation.io.visium_hd import is_visium_hd, read_visium_hd
    from spafoundation.io.xenium import is_xenium, read_xenium

    if is_xenium(path):
        return read_xenium(path, bin_um=bin_um, **kwargs)
    if is_visium_hd(path):
        return read_visium_hd(path, bin_um=bin_um, **kwargs)
    if bin_um is not None:
        from spafoundation.io.cell_bins import ONLY_BINS_AND_CELLS

        raise InputError(path, "bin_um", f"{ONLY_BINS_AND_CELLS}; this is a Visium sample")
    if is_one_geo_sample(path):
        (files,) = geo_samples(path).values()
        return read_visium(path, files=files, **kwargs)
    return read_visium(path, **kwargs)


def read_text_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            return [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(path, "counts", f"unreadable file ({e})") from None


def read_10x_h5(path: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """(spots x genes counts, barcodes, gene symbols) of a Space Ranger >= 3 HDF5 matrix, Gene Expression only."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            m = f["matrix"]
            n_genes, n_spots = (int(v) for v in m["shape"][()])
            # stored genes x barcodes in CSC, i.e. barcodes x genes in CSR
            X = sp.csr_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_spots, n_genes))
            barcodes = [b.decode() for b in m["barcodes"][()]]
            feats = m["features"]
            names = [b.decode() for b in feats["name"][()]]
            types = [b.decode() for b in feats["feature_type"][()]] if "feature_type" in feats else None
    except FileNotFoundError:
        raise InputError(path, "counts", "file not found") from None
    except (OSError, KeyError, ValueError) as e:
        raise InputError(path, "counts", f"not a readable 10x HDF5 matrix ({e})") from None
    if types is not None:
        keep = np.array([t == GENE_EXPRESSION for t in types])
        X, names = X[:, keep], [n for n, k in zip(names, keep) if k]
    return X, barcodes, names


def read_10x_mtx(files: SampleFiles, folder: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """The same from a ``filtered_feature_bc_matrix/`` folder (matrix.mtx is genes x barcodes), or from the three
    matrix files of a GEO deposit."""

    def find(*names: str) -> Path:
        for name in names:
            if (path := files.find(folder, name)).exists():
                return path
        raise InputError(files.find(folder, names[0]), "counts", "file not found")

    mtx = find("matrix.mtx")
    try:
        X = sp.csr_matrix(scipy.io.mmread(mtx).T)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(mtx, "counts", f"unreadable Matrix Market file ({e})") from None
    barcodes = [r[0] for r in read_text_rows(find("barcodes.tsv"))]
    feats = read_text_rows(find("features.tsv", "genes.tsv"))
    names = [r[1] if len(r) > 1 else r[0] for r in feats]
    if X.shape != (len(barcodes), len(names)):
        raise InputError(
            mtx,
            "counts",
            f"matrix is {X.shape[::-1]} but there are {len(names)} features and {len(barcodes)} barcodes",
        )
    types = [r[2] if len(r) > 2 else GENE_EXPRESSION for r in feats]
    keep = np.array([t == GENE_EXPRESSION for t in types])
    return X[:, keep], barcodes, [n for n, k in zip(names, keep) if k]


def read_counts(files: SampleFiles) -> tuple[sp.csr_matrix, list[str], list[str], Path]:
    h5 = files.find(files.counts_dir, "filtered_feature_bc_matrix.h5")
    if h5.exists():
        return (*read_10x_h5(h5), h5)
    if files.flat:
        mtx = files.find(files.counts_dir, "matrix.mtx")
        if mtx.exists():
            return (*read_10x_mtx(files, files.counts_dir), mtx)
        raise InputError(h5, "counts", "file not found (nor the matrix.mtx of the sample)")
    folder = files.counts_dir / "filtered_feature_bc_matrix"
    if folder.is_dir():
        return (*read_10x_mtx(files, folder), folder)
    raise InputError(h5, "counts", "file not found (nor a filtered_feature_bc_matrix/ folder)")


def read_positions(files: SampleFiles) -> tuple[pd.DataFrame, Path]:
    """Tissue positions indexed by barcode: tissue_positions.parquet (Visium HD), tissue_positions.csv, or the
    headerless tissue_positions_list.csv of Space Ranger < 2.0."""
    path, header = files.spatial_file("tissue_positions.parquet"), 0
    if not path.exists():
        path = files.spatial_file("tissue_positions.csv")
    if not path.exists():
        path, header = files.spatial_file("tissue_positions_list.csv"), None
    if not path.exists():
        raise InputError(files.spatial_file("tissue_positions.csv"), "spot coordinates", "file not found")
    try:
        pos = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, header=header)
    except Exception as e:
        raise InputError(path, "spot coordinates", f"unreadable table ({e})") from None
    if header is None and len(pos) and str(pos.iat[0, 0]) == "barcode":  # a list re-saved with Space Ranger 2's header
        pos = pos.iloc[1:].set_axis(pos.iloc[0].astype(str).tolist(), axis=1).reset_index(drop=True)
    elif header is None:
        if pos.shape[1] != len(POSITION_COLUMNS):
            raise InputError(
                path, "spot coordinates", f"expected {len(POSITION_COLUMNS)} columns, found {pos.shape[1]}"
            )
        pos.columns = POSITION_COLUMNS
    missing = [c for c in POSITION_COLUMNS if c not in pos.columns]
    if missing:
        raise InputError(path, "/".join(missing), "missing column(s)")
    pos["barcode"] = pos["barcode"].astype(str)
    check_unique(pos["barcode"], path, "barcode")
    from spafoundation.io.values import integer_column, numeric_column

    pos = pos.assign(in_tissue=integer_column(pos["in_tissue"], path, "in_tissue", allowed=(0, 1)),
                     **{c: integer_column(pos[c], path, c) for c in ("array_row", "array_col")},
                     **{c: numeric_column(pos[c], path, c) for c in ("pxl_row_in_fullres", "pxl_col_in_fullres")})
    return pos.set_index("barcode"), path


def read_spots_under_tissue(files: SampleFiles) -> tuple:
    """(counts, genes, positions, counts path, positions path) of the spots (or bins) under tissue: the sample's
    count matrix joined by barcode to its tissue positions."""
    X, barcodes, genes, counts_path = read_counts(files)
    check_unique(barcodes, counts_path, "barcode")
    X = validate_counts(X, counts_path)
    pos, pos_path = read_positions(files)
    missing = [b for b in barcodes if b not in pos.index]
    if missing:
        raise InputError(
            pos_path,
            "barcode",
            f"{len(missing)} of {len(barcodes)} count barcodes have no position (first: {missing[0]!r})",
        )
    pos = pos.loc[barcodes]
    in_tissue = pos["in_tissue"].to_numpy() == 1
    X, pos = sp.csr_matrix(X[in_tissue]), pos[in_tissue]
    if not len(pos):
        raise InputError(pos_path, "in_tissue", "no spot under tissue")
    return X, genes, pos, counts_path, pos_path


def read_bytes(path: Path, field: str) -> bytes:
    """The bytes of ``path``, gunzipped when it ends in .gz (GEO deposits gzip every file)."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError) as e:
        raise InputError(path, field, f"unreadable file ({e})") from None


def read_scalefactors(path: Path) -> dict:
    """``scalefactors_json.json`` (``path``, possibly gzipped), {} where there is none."""
    if not path.exists():
        return {}
    try:
        return json.loads(read_bytes(path, "scalefactors"))
    except ValueError as e:
        raise InputError(path, "scalefactors", f"unreadable JSON ({e})") from None


def read_png(path: Path, field: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(read_bytes(path, field))) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as e:
        raise InputError(path, field, f"unreadable image ({e})") from None


def spaceranger_hires(files: SampleFiles, scalefactors: dict) -> tuple[np.ndarray, float] | None:
    """Space Ranger's own thumbnail and its scale factor (what scanpy plots on), or None without them."""
    png = files.spatial_file("tissue_hires_image.png")
    if not (png.exists() and scalefactors.get("tissue_hires_scalef")):
        return None
    return read_png(png, "hires image"), float(scalefactors["tissue_hires_scalef"])


def unpacked(path: Path) -> str:
    """How a source is named where its image is the cache's unpacked copy of a gzipped file (io/unpack.py)."""
    return f", unpacked from {path.name}" if path.suffix == ".gz" else ""


def recorded_scale(image: Path, files: SampleFiles, scalefactors: dict) -> float | None:
    """The factor Space Ranger recorded for ``image`` when it is one of its own images of the sample, else None."""
    for name, key in SPACERANGER_SCALEFACTORS.items():
        own = files.spatial_file(f"{name}.png")
        if own.exists() and own.resolve() == image.resolve() and key in scalefactors:
            return check_scale(scalefactors[key], files.scalefactors, key)
    return None


def choose_image(given, image_scale: float | None, files: SampleFiles,
                 scalefactors: dict) -> tuple[Path | None, float, str]:
    """(the section's image, its scale in image px per full-resolution px, where it came from): the ``given`` one
    at ``image_scale``, else at the factor Space Ranger recorded for it (its hires or lowres PNG), else at 1; else
    the full-resolution H&E found with the sample; else Space Ranger's hires PNG at ``tissue_hires_scalef``.
    None: no image at all."""
    if given is not None:
        given = Path(given)
        if image_scale is not None:
            return given, check_scale(image_scale, given, "image_scale"), "given"
        recorded = recorded_scale(given, files, scalefactors)
        source = "given" if recorded is None else "given, scalefactors_json.json"
        return gunzipped(given, "image"), recorded or 1.0, source + unpacked(given)
    if image_scale is not None:
        raise InputError(files.root, "image_scale", "--image-scale is the scale of the image given with --image")
    found = find_fullres_image(files)
    if found is not None:
        return gunzipped(found, "image"), 1.0, "sample folder" + unpacked(found)
    hires = files.spatial_file("tissue_hires_image.png")
    if hires.exists() and scalefactors.get("tissue_hires_scalef") is not None:
        scale = check_scale(scalefactors["tissue_hires_scalef"], files.scalefactors, "tissue_hires_scalef")
        return gunzipped(hires, "image"), scale, "hires" + unpacked(hires)
    return None, 1.0, ""


def find_fullres_image(files: SampleFiles) -> Path | None:
    """The one image (not one of Space Ranger's thumbnails) in the sample folder, else in outs/, else in
    outs/spatial/; in a GEO folder, the one named with the sample's prefix. Several in the first place that has any:
    an InputError naming them (which one is the H&E is not ours to guess: a CytAssist capture or an IF image may sit
    beside it); the way out is ``--image``."""
    suffixes = PIL_SUFFIXES | TIFF_SUFFIXES | OPENSLIDE_ONLY_SUFFIXES
    if files.flat:
        places = [(files.root, sorted(files.images))]
    else:
        places = [(folder, sorted(p for p in folder.glob("*") if p.suffix.lower() in suffixes
                                  and p.stem not in SPACERANGER_IMAGES))
                  for folder in dict.fromkeys((files.root, outs_dir(files.root), outs_dir(files.root) / "spatial"))]
    for folder, hits in places:
        if len(hits) > 1:
            raise InputError(folder, "image", f"{len(hits)} candidate full-resolution images "
                             f"({', '.join(p.name for p in hits[:5])}{', ...' if len(hits) > 5 else ''}): "
                             "give the H&E with --image (or keep only it in the folder)")
        if hits:
            return hits[0]
    return None


def read_visium(
    path: str | Path,
    image: str | Path | None = None,
    mpp: float | None = None,
    *,
    image_scale: float | None = None,
    section: str | None = None,
    patient: str | None = None,
    with_images: bool = True,
    files: SampleFiles | None = None,
) -> ad.AnnData:
    """One Visium section. ``section`` defaults to the folder name (the one holding ``outs/``); ``image_scale``:
    image px per full-resolution px of a downscaled ``image``; ``files``: where the sample's files are, when not
    Space Ranger's folders under ``path`` (a GEO deposit)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "data", "not found")
    files = files or SampleFiles.of_sample(path)
    section = section or (path.parent.name if path.name == "outs" else path.name)

    X, genes, pos, counts_path, pos_path = read_spots_under_tissue(files)
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    scalefactors = read_scalefactors(files.scalefactors)
    if mpp is not None:
        mpp_value, mpp_source = float(mpp), "given"
    elif scalefactors.get("spot_diameter_fullres") is not None:
        from spafoundation.io.values import positive_number

        mpp_value = SPOT_DIAMETER_UM / positive_number(scalefactors["spot_diameter_fullres"], files.scalefactors,
                                                       "spot_diameter_fullres")
        mpp_source = f"from the {SPOT_DIAMETER_UM:.0f} um spot diameter (scalefactors_json.json)"
    else:
        cols = np.stack(
            [np.zeros(len(pos)), pos["array_col"].to_numpy()], axis=1
        )  # fit x against array_col only
        mpp_value = estimate_mpp_from_pitch(cols, xy, ARRAY_COL_STEP_UM, pos_path)
        mpp_source = f"estimated from the {SPOT_PITCH_UM:.0f} um spot pitch"

    return spaceranger_anndata(
        X, genes, pos, xy, section=section, patient=patient,
        image=choose_image(image, image_scale, files, scalefactors), files=files,
        scalefactors=scalefactors, mpp=mpp_value, mpp_source=mpp_source, pos_path=pos_path,
        with_images=with_images, spot_diameter_um=SPOT_DIAMETER_UM, platform="visium",
        extra_meta={"spot_pitch_um": SPOT_PITCH_UM, "counts_path": str(counts_path)},
    )


def spaceranger_anndata(X, genes, pos: pd.DataFrame, xy: np.ndarray, *, section: str, patient: str | None,
                        image: tuple[Path | None, float, str], files: SampleFiles, scalefactors: dict, mpp: float,
                        mpp_source: str, pos_path: Path, with_images: bool, spot_diameter_um: float, platform: str,
                        extra_obs: dict | None = None, extra_meta: dict | None = None) -> ad.AnnData:
    """The section AnnData of a Space Ranger run (Visium or Visium HD) from its spots under tissue: ``image``
    (``choose_image``'s) checked against the spots, Space Ranger's own thumbnail preferred for plotting."""
    image, image_scale, image_source = image
    hires, scalef, image_size = None, 1.0, []
    if image is not None:
        hires, scalef, image_size = read_section_image(
            image, xy, mpp, pos_path, "pxl_col_in_fullres/pxl_row_in_fullres", with_image=with_images,
            scale=image_scale,
        )
        warn_if_downscaled(section, image, mpp, image_scale, image_source)
        extra_meta = {**(extra_meta or {}), "image_scale": image_scale, "image_source": image_source}
    if with_images:
        hires, scalef = spaceranger_hires(files, scalefactors) or (hires, scalef)
    obs = pd.DataFrame(
        {
            "section": section,
            "patient": patient or section,
            "array_row": pos["array_row"].to_numpy(dtype=np.int64),
            "array_col": pos["array_col"].to_numpy(dtype=np.int64),
            **(extra_obs or {}),
        }
    )
    return build_anndata(
        counts=X,
        genes=ad.utils.make_index_unique(pd.Index(genes)),
        spot_ids=[f"{section}_{b}" for b in pos.index],
        xy=xy,
        obs=obs,
        library=section,
        mpp=mpp,
        mpp_source=mpp_source,
        spot_diameter_um=spot_diameter_um,
        platform=platform,
        image_path=str(image) if image else None,
        hires=hires,
        hires_scalef=scalef,
        extra_meta={**(extra_meta or {}), "image_size": image_size},
    )
