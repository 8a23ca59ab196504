"""Any spot-based dataset described by a YAML (or JSON) manifest.

Schema (paths are relative to the manifest's folder; top-level ``mpp``, ``pitch_um``, ``spot_diameter_um``,
``platform`` and ``patient`` are defaults for every section)::

    platform: visium              # free text, stored in metadata (default "generic")
    spot_diameter_um: 55          # spot diameter in microns (default 55)
    sections:
      - id: S1                    # section / library id (required, unique)
        patient: P1               # default: the section id
        image: S1.tif             # full-resolution H&E (optional: expression-only section)
        image_scale: 0.25         # image px per full-resolution px, when the image is a downscaled copy (default 1)
        spots: S1_spots.csv       # required: columns id,x,y (full-resolution px, x = column) [,array_row,array_col]
        counts: S1_counts.tsv     # optional: .csv/.tsv(.gz) spots x genes, first column = spot id
                                  #   or S1.h5ad (obs_names = spot ids)
                                  #   or {mtx: m.mtx, barcodes: barcodes.tsv, features: features.tsv}
                                  #      (genes x spots as 10x writes it, or spots x genes)
        mpp: 0.5                  # microns per pixel; else estimated from pitch_um
        pitch_um: 100             # centre-to-centre spot distance, used only when mpp is absent

Without ``mpp`` or ``pitch_um`` the pixel size is what the image records (OME-XML, Aperio, OpenSlide, plausible
resolution tags); without that either, the section is an InputError; so is a key outside this schema (a misspelt
one would otherwise be ignored). Every spot id in the counts must be in the spots table; spots without counts are
dropped. ``read_spots_table``: an H&E and a table of its spots, without a manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import (
    build_anndata,
    check_unique,
    estimate_mpp_from_neighbours,
    estimate_mpp_from_pitch,
    read_section_image,
    validate_counts,
)
from spafoundation.io.downscaled import check_scale, warn_if_downscaled
from spafoundation.io.visium import read_text_rows

MANIFEST_NAMES = ("spafoundation.yaml", "manifest.yaml")
DEFAULT_SPOT_DIAMETER_UM = 55.0
SECTION_DEFAULTS = ("mpp", "pitch_um", "spot_diameter_um", "platform", "patient")
SECTION_KEYS = ("id", "image", "image_scale", "spots", "counts", *SECTION_DEFAULTS)


def load_manifest(path: Path) -> tuple[dict, Path]:
    if path.is_dir():
        found = [path / n for n in MANIFEST_NAMES if (path / n).exists()]
        if not found:
            raise InputError(path, "manifest", f"no {' or '.join(MANIFEST_NAMES)} in this folder")
        path = found[0]
    if not path.exists():
        raise InputError(path, "manifest", "file not found")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            manifest = json.loads(text)
        else:
            import yaml

            manifest = yaml.safe_load(text)
    except Exception as e:
        raise InputError(path, "manifest", f"unreadable ({e})") from None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("sections"), list)
        or not manifest["sections"]
    ):
        raise InputError(path, "sections", "the manifest needs a non-empty 'sections' list")
    _check_known(manifest, ("sections", *SECTION_DEFAULTS), path, "")
    return manifest, path


def _check_known(entry: dict, known: tuple, path: Path, where: str) -> None:
    """A misspelt key (``imgae:``) would otherwise be ignored and change the result silently."""
    unknown = [str(k) for k in entry if k not in known]
    if unknown:
        raise InputError(path, f"{where}{unknown[0]}", f"unknown key (known: {', '.join(known)})")


def image_mpp(image: Path) -> float | None:
    """The pixel size an image records itself (OME-XML, an Aperio description, OpenSlide's property, plausible
    resolution tags), or None."""
    from spafoundation.io.slide import open_slide

    with open_slide(image) as slide:
        return getattr(slide, "mpp", None)


def _resolve(base: Path, value, manifest_path: Path, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(manifest_path, field, "expected a file path")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise InputError(p, field, "file not found")
    return p


def read_spots(path: Path) -> pd.DataFrame:
    try:
        spots = pd.read_csv(path, sep=None, engine="python")
    except Exception as e:
        raise InputError(path, "spots", f"unreadable table ({e})") from None
    missing = [c for c in ("id", "x", "y") if c not in spots.columns]
    if missing:
        raise InputError(path, "/".join(missing), "missing column(s)")
    spots["id"] = spots["id"].astype(str)
    check_unique(spots["id"], path, "id")
    xy = spots[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    if xy.isna().any().any():
        raise InputError(path, "x/y", "non-numeric or missing coordinates")
    return spots.set_index("id")


def read_counts_table(path: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    sep = "," if ".csv" in path.suffixes else "\t"
    try:
        df = pd.read_csv(path, sep=sep, index_col=0)
    except Exception as e:
        raise InputError(path, "counts", f"unreadable table ({e})") from None
    try:
        values = df.to_numpy(dtype=np.float64)
    except ValueError as e:
        raise InputError(path, "counts", f"non-numeric values ({e})") from None
    if np.isnan(values).any():
        raise InputError(path, "counts", f"{int(np.isnan(values).sum())} NaN or empty values")
    return sp.csr_matrix(values), df.index.astype(str).tolist(), df.columns.astype(str).tolist()


def read_counts_mtx(
    spec: dict, base: Path, manifest_path: Path
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    mtx = _resolve(base, spec.get("mtx"), manifest_path, "counts.mtx")
    barcodes = [
        r[0] for r in read_text_rows(_resolve(base, spec.get("barcodes"), manifest_path, "counts.barcodes"))
    ]
    feats = read_text_rows(_resolve(base, spec.get("features"), manifest_path, "counts.features"))
    genes = [r[1] if len(r) > 1 else r[0] for r in feats]
    try:
        X = sp.csr_matrix(scipy.io.mmread(mtx))
    except (OSError, ValueError, EOFError) as e:
        raise InputError(mtx, "counts", f"unreadable Matrix Market file ({e})") from None
    if X.shape == (len(genes), len(barcodes)):
        X = X.T.tocsr()
    elif X.shape != (len(barcodes), len(genes)):
        raise InputError(
            mtx,
            "counts",
            f"matrix is {X.shape} but there are {len(barcodes)} barcodes and {len(genes)} features",
        )
    return X, barcodes, genes


def read_counts_h5ad(path: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    try:
        src = ad.read_h5ad(path)
    except Exception as e:
        raise InputError(path, "counts", f"unreadable .h5ad ({e})") from None
    from spafoundation.io.h5ad import raw_counts

    src = raw_counts(src)[0]  # a scanpy-processed file: its counts, not its normalised X
    return sp.csr_matrix(src.X), src.obs_names.astype(str).tolist(), src.var_names.astype(str).tolist()


def read_counts(value, base: Path, manifest_path: Path):
    """(counts, spot ids, genes, path) from any of the manifest's count formats."""
    if isinstance(value, dict):
        X, ids, genes = read_counts_mtx(value, base, manifest_path)
        return X, ids, genes, base / value["mtx"]
    path = _resolve(base, value, manifest_path, "counts")
    if path.suffix.lower() == ".h5ad":
        return (*read_counts_h5ad(path), path)
    return (*read_counts_table(path), path)


def read_generic_section(
    entry: dict,
    defaults: dict,
    base: Path,
    manifest_path: Path,
    *,
    mpp: float | None = None,
    with_images: bool = True,
):
    if not isinstance(entry, dict) or not entry.get("id"):
        raise InputError(manifest_path, "sections[].id", "every section needs an id")
    section = str(entry["id"])
    _check_known(entry, SECTION_KEYS, manifest_path, f"sections[{section}].")
    opt = {k: entry.get(k, defaults.get(k)) for k in SECTION_DEFAULTS}
    spots_path = _resolve(base, entry.get("spots"), manifest_path, f"sections[{section}].spots")
    spots = read_spots(spots_path)

    if entry.get("counts") is not None:
        X, ids, genes, counts_path = read_counts(entry["counts"], base, manifest_path)
        if len(ids) == 0 or len(genes) == 0:
            raise InputError(counts_path, "spot id" if len(ids) == 0 else "gene",
                             f"the counts table has {len(ids)} spots and {len(genes)} genes")
        check_unique(ids, counts_path, "spot id")
        check_unique(genes, counts_path, "gene")
        X = validate_counts(X, counts_path)
        unknown = [i for i in ids if i not in spots.index]
        if unknown:
            raise InputError(
                counts_path,
                "spot id",
                f"{len(unknown)} of {len(ids)} spot ids are not in {spots_path.name} (first: {unknown[0]!r})",
            )
        spots = spots.loc[ids]
    else:
        X, genes, counts_path = None, [], None

    xy = spots[["x", "y"]].to_numpy(dtype=np.float64)
    has_grid = {"array_row", "array_col"} <= set(spots.columns)
    image = entry.get("image")
    image = _resolve(base, image, manifest_path, f"sections[{section}].image") if image else None
    scale = 1.0
    if entry.get("image_scale") is not None:
        if image is None:
            raise InputError(manifest_path, f"sections[{section}].image_scale", "is the scale of an image: give image")
        scale = check_scale(entry["image_scale"], manifest_path, f"sections[{section}].image_scale")
    if mpp is not None:
        mpp, mpp_source = float(mpp), "given"
    elif opt["mpp"] is not None:
        try:
            mpp = float(opt["mpp"])
        except (TypeError, ValueError):
            mpp = float("nan")
        if not (np.isfinite(mpp) and mpp > 0):
            raise InputError(
                manifest_path, f"sections[{section}].mpp", f"not a positive number: {opt['mpp']!r}"
            )
        mpp_source = "given in the manifest"
    elif opt["pitch_um"] is not None:
        pitch = float(opt["pitch_um"])
        if has_grid:
            mpp = estimate_mpp_from_pitch(spots[["array_row", "array_col"]].to_numpy(), xy, pitch, spots_path)
        else:
            mpp = estimate_mpp_from_neighbours(xy, pitch, spots_path)
        mpp_source = f"estimated from the {pitch:g} um spot pitch"
    elif image is not None and (mpp := image_mpp(image)) is not None:
        mpp *= scale  # the copy's pixels are 1 / scale full-resolution pixels wide
        mpp_source = "the image's metadata"
    else:
        raise InputError(manifest_path, f"sections[{section}].mpp", "unknown pixel size: give mpp or pitch_um, or "
                         f"--mpp ({'the image records none' if image else 'no image to read it from'})")

    hires, scalef, image_size = None, 1.0, []
    if image is not None:
        hires, scalef, image_size = read_section_image(
            image, xy, mpp, spots_path, "x/y", with_image=with_images, scale=scale
        )
        warn_if_downscaled(section, image, mpp, scale, "read at its image_scale")

    n = len(spots)
    obs = pd.DataFrame(
        {
            "section": section,
            "patient": str(opt["patient"] or section),
            "array_row": spots["array_row"].to_numpy() if has_grid else np.full(n, -1),
            "array_col": spots["array_col"].to_numpy() if has_grid else np.full(n, -1),
        }
    )
    return build_anndata(
        counts=X,
        genes=genes,
        spot_ids=[f"{section}_{i}" for i in spots.index],
        xy=xy,
        obs=obs,
        library=section,
        mpp=mpp,
        mpp_source=mpp_source,
        spot_diameter_um=float(opt["spot_diameter_um"] or DEFAULT_SPOT_DIAMETER_UM),
        platform=str(opt["platform"] or "generic"),
        image_path=str(image) if image else None,
        hires=hires,
        hires_scalef=scalef,
        extra_meta={
            "image_size": image_size,
            "counts_path": str(counts_path or ""),
            **({"image_scale": scale, "image_source": "given"} if image is not None else {}),
            **({"spot_pitch_um": float(opt["pitch_um"])} if opt["pitch_um"] is not None else {}),
        },
    )


def read_generic_manifest(
    path: str | Path, *, mpp: float | None = None, with_images: bool = True
) -> dict[str, ad.AnnData]:
    """All sections of a manifest (a .yaml/.json file, or a folder holding spafoundation.yaml).

    ``mpp`` overrides the pixel size of every section."""
    manifest, manifest_path = load_manifest(Path(path))
    base = manifest_path.parent
    defaults = {k: manifest.get(k) for k in SECTION_DEFAULTS}
    ids = [str(e.get("id")) if isinstance(e, dict) else None for e in manifest["sections"]]
    check_unique(ids, manifest_path, "sections[].id")
    # keyed by the ids above: an entry without one raises in read_generic_section, naming the field
    return {i: read_generic_section(e, defaults, base, manifest_path, mpp=mpp, with_images=with_images)
            for i, e in zip(ids, manifest["sections"], strict=True)}


def read_spots_table(path: str | Path, *, image: str | Path | None = None, mpp: float | None = None,
                     image_scale: float | None = None, with_images: bool = True) -> dict[str, ad.AnnData]:
    """An H&E with a table of its spots (.csv/.tsv: columns id, x, y in the image's full-resolution pixels
    [, array_row, array_col]) and no counts: one section named by the table's file, for what needs only the image
    (predict-expression with a fitted model, embed, cluster, tumour with a model). The image is ``image``
    (``--image``, a downscaled copy at ``image_scale``); the pixel size ``mpp``, else the image's own metadata.
    Counts need a manifest."""
    path = Path(path)
    if image is None:
        raise InputError(path, "image", "a table of spots is read with its H&E: give --image")
    entry = {"id": path.stem, "spots": str(path.resolve()), "image": str(Path(image).resolve()),
             "image_scale": image_scale}
    return {path.stem: read_generic_section(entry, {}, path.parent, path, mpp=mpp, with_images=with_images)}
