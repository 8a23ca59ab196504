"""Legacy Spatial Transcriptomics (100 um spots on a 200 um grid), in two layouts.

The HER2ST release:

ST-cnts/<S>.tsv.gz                     counts, spots x genes, first column "<x>x<y>"
ST-spotfiles/<S>_selection.tsv         x y new_x new_y pixel_x pixel_y selected
ST-imgs/<patient>/<S>/*.jpg            full-resolution H&E (optional)
ST-pat/lbl/<S>_labeled_coordinates.tsv pathologist labels (optional)
ST-cluster/lbl/<S>-cluster-annotation.tsv.gz + ST-cluster/cluster_label_map.tsv (optional)

One folder of ST Pipeline / ST spot detector files, as GEO series of legacy ST (e.g. the cSCC series GSE144240)
ship them; a GEO sample prefix (``GSM<n>_``) is optional and, when present, ties a sample's files together:

[GSM<n>_]<S>_stdata.tsv[.gz]                 counts, as above
[GSM<n>_]spot_data-selection-<S>.tsv[.gz]    spot detector output, as above
[GSM<n>_]<S>.jpg|.tif|...                    full-resolution H&E (optional)

The section is <S>; its patient the part of <S> before the first underscore (P2_ST_rep1 -> P2).
"""

from __future__ import annotations

import gzip
import io
import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import (
    build_anndata,
    check_unique,
    estimate_mpp_from_pitch,
    note_imageless,
    read_section_image,
    validate_counts,
)
from spafoundation.io.slide import PIL_SUFFIXES, TIFF_SUFFIXES
from spafoundation.io.values import integer_column, numeric_column

log = logging.getLogger(__name__)

SPOT_PITCH_UM = 200.0
SPOT_DIAMETER_UM = 100.0
MIN_MATCHED_FRACTION = 0.5


FLAT_COUNTS = re.compile(r"^(?P<gsm>GSM\d+_)?(?P<name>.+?)_stdata\.tsv(\.gz)?$")
FLAT_SPOTS = re.compile(r"^(?P<gsm>GSM\d+_)?spot_data-selection-(?P<name>.+?)\.tsv(\.gz)?$")


def is_legacy_st(root: Path) -> bool:
    return (root / "ST-cnts").is_dir() and (root / "ST-spotfiles").is_dir()


def is_st_pipeline_folder(root: Path) -> bool:
    """A folder of ST Pipeline count files beside spot detector selections (see the module docstring)."""
    return root.is_dir() and any(FLAT_COUNTS.match(p.name) for p in root.iterdir()) and any(
        FLAT_SPOTS.match(p.name) for p in root.iterdir())


def st_pipeline_samples(root: Path) -> dict[str, tuple[Path, Path, Path | None]]:
    """{section: (counts, spot selection, image or None)} of an ST Pipeline folder. A sample's files share its GEO
    prefix when they have one, else its name; a counts file without a selection file is an InputError."""
    files = sorted(p for p in root.iterdir() if p.is_file())
    spots = {(m["gsm"] or "", m["name"]): p for p in files if (m := FLAT_SPOTS.match(p.name))}
    images = [p for p in files if p.suffix.lower() in PIL_SUFFIXES | TIFF_SUFFIXES]
    out = {}
    for p in files:
        m = FLAT_COUNTS.match(p.name)
        if not m:
            continue
        gsm, name = m["gsm"] or "", m["name"]
        sel = spots.get((gsm, name)) or next((q for (g, _), q in spots.items() if gsm and g == gsm), None)
        if sel is None:
            raise InputError(p, "spot coordinates", f"no spot_data-selection file for section {name} beside it")
        stems = {f"{gsm}{name}", name}
        image = next((q for q in images if q.stem in stems), None)
        if name in out:
            raise InputError(p, "section", f"two count files for section {name}")
        out[name] = (p, sel, image)
    return out


def list_sections(root: Path) -> list[str]:
    names = {p.name.split(".")[0] for p in (root / "ST-cnts").glob("*.tsv*")}
    return sorted(names)


def find_image(root: Path, section: str) -> Path | None:
    """The section's H&E in ST-imgs/<patient>/<section>/; several candidates are an InputError naming them, so
    the wrong one is never used."""
    hits = sorted(
        p
        for p in (root / "ST-imgs").glob(f"*/{section}/*")
        if p.suffix.lower() in PIL_SUFFIXES | TIFF_SUFFIXES
    )
    if len(hits) > 1:
        raise InputError(hits[0].parent, "image", f"{len(hits)} candidate images for section {section} "
                         f"({', '.join(p.name for p in hits)}): keep one in this folder")
    return hits[0] if hits else None


def _text(raw: bytes, path: Path, field: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, field, f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); save the "
                         "file as UTF-8") from None


def _read_table(path: Path, field: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A tab-separated table (plain or .gz) with at least ``columns``; unreadable, truncated or without one of them:
    an InputError naming it."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, EOFError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise InputError(path, field, f"unreadable or truncated table ({e})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(path, "/".join(missing), "missing column(s)")
    return table


def patient_of(section: str) -> str:
    m = re.match(r"([A-Za-z]+)", section)
    return m.group(1) if m else section


def read_counts_table(path: Path) -> tuple[pd.Index, pd.Index, np.ndarray]:
    """(spot ids, genes, dense float64 counts: exact to 2**53) of a spots x genes TSV whose first column is the
    spot id.

    Values go through numpy's float parser (~4x faster than pandas on these very wide tables; a separate integer
    parser for whole-number tables measured no faster, bench/read_speed.py), which also names what is wrong with a
    bad table."""
    if not path.exists():
        raise InputError(path, "counts", "file not found")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise InputError(path, "counts", f"unreadable file ({e})") from None
    lines = raw.rstrip(b"\n").replace(b"\r", b"").split(b"\n")
    header = _text(lines[0], path, "gene").split("\t")
    genes = pd.Index(header[1:] if header[0] == "" or len(header) > 1 else header)
    rows = [line.split(b"\t", 1) for line in lines[1:] if line]
    if len(genes) == 0 or not rows:
        raise InputError(path, "counts", "no spots or no gene columns")
    if any(len(r) != 2 for r in rows):
        raise InputError(path, "counts", "a row has no values")
    ids = pd.Index([_text(r[0], path, "spot id").strip('"') for r in rows])
    try:
        values = np.loadtxt(io.BytesIO(b"\n".join(r[1] for r in rows)), delimiter="\t", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise InputError(path, "counts", f"non-numeric or ragged values ({e})") from None
    if values.shape[1] != len(genes):
        raise InputError(path, "counts", f"{values.shape[1]} values per row but {len(genes)} gene names")
    check_unique(ids, path, "spot id")
    check_unique(genes, path, "gene")
    return ids, genes, values


def read_spot_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(path, "spot coordinates", "file not found")
    spots = _read_table(path, "spot coordinates", ("x", "y", "pixel_x", "pixel_y"))
    if "selected" in spots.columns:
        spots = spots[integer_column(spots["selected"].fillna(1), path, "selected", allowed=(0, 1)) == 1]
    x, y = (integer_column(spots[c], path, c) for c in ("x", "y"))
    spots = spots.assign(pixel_x=numeric_column(spots["pixel_x"], path, "pixel_x"),
                         pixel_y=numeric_column(spots["pixel_y"], path, "pixel_y"),
                         spot_id=[f"{i}x{j}" for i, j in zip(x, y)])
    check_unique(spots["spot_id"], path, "x/y")
    return spots.set_index("spot_id")


def _read_labels(root: Path, section: str, index: pd.Index) -> pd.Series | None:
    path = root / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv"
    if not path.exists():
        return None
    lbl = _read_table(path, "label", ("x", "y", "label"))
    lbl = lbl.dropna(subset=["x", "y"])
    ids = [f"{round(x)}x{round(y)}" for x, y in zip(numeric_column(lbl["x"], path, "x"),
                                                    numeric_column(lbl["y"], path, "y"))]
    s = pd.Series(lbl["label"].astype(str).values, index=ids)
    s = s[~s.index.duplicated()]
    return s.reindex(index)


def _read_clusters(root: Path, section: str, patient: str, index: pd.Index) -> pd.DataFrame | None:
    path = root / "ST-cluster" / "lbl" / f"{section}-cluster-annotation.tsv.gz"
    if not path.exists():
        return None
    cl = _read_table(path, "cluster", ("x", "y", "label"))
    ids = [f"{x}x{y}" for x, y in zip(integer_column(cl["x"], path, "x"), integer_column(cl["y"], path, "y"))]
    cluster = pd.Series(cl["label"].values, index=ids)
    cluster = cluster[~cluster.index.duplicated()].reindex(index)
    labels = cluster.dropna()
    integer_column(labels, path, "label")  # the cluster numbers
    out = pd.DataFrame({"cluster": cluster.astype("Int64").astype(str).replace("<NA>", np.nan)}, index=index)
    map_path = root / "ST-cluster" / "cluster_label_map.tsv"
    if map_path.exists():
        m = _read_table(map_path, "cluster annotation", ("patient", "cluster", "annotated_as"))
        m = m[m["patient"].astype(str) == patient]
        lookup = dict(zip(m["cluster"].astype(str), m["annotated_as"].astype(str)))
        out["cluster_annotation"] = out["cluster"].map(lookup)
    return out


def read_legacy_st_section(
    root: str | Path, section: str, *, with_image: bool = True, mpp: float | None = None
) -> ad.AnnData:
    """One section of the HER2ST layout, with its pathologist labels and cluster annotations where they exist."""
    root = Path(root)
    counts_path = root / "ST-cnts" / f"{section}.tsv.gz"
    if not counts_path.exists():
        alt = root / "ST-cnts" / f"{section}.tsv"
        counts_path = alt if alt.exists() else counts_path
    patient = patient_of(section)

    def annotations(ids: pd.Index) -> pd.DataFrame:
        obs = pd.DataFrame(index=ids)
        labels = _read_labels(root, section, ids)
        if labels is not None:
            obs["label"] = labels
        clusters = _read_clusters(root, section, patient, ids)
        return obs if clusters is None else obs.join(clusters)

    return read_st_section(section, patient, counts_path, root / "ST-spotfiles" / f"{section}_selection.tsv",
                           find_image(root, section), with_image=with_image, mpp=mpp, annotations=annotations)


def read_st_section(section: str, patient: str, counts_path: Path, spot_path: Path, image: Path | None, *,
                    with_image: bool = True, mpp: float | None = None, annotations=None) -> ad.AnnData:
    """A legacy ST section from its counts, spot selection and image files; ``annotations(ids)``: extra obs."""
    ids, genes, values = read_counts_table(counts_path)
    spots = read_spot_table(spot_path)

    matched = ids.isin(spots.index)
    if matched.mean() < MIN_MATCHED_FRACTION:
        raise InputError(
            spot_path,
            "spot id",
            f"only {int(matched.sum())} of {len(ids)} spot ids in {counts_path.name} have coordinates "
            f"(ids look like {ids[:2].tolist()} vs {spots.index[:2].tolist()})",
        )
    if not matched.all():
        log.warning("%s: %d spots without coordinates dropped", section, int((~matched).sum()))
    ids = ids[matched]
    spots = spots.loc[ids]
    X = validate_counts(sp.csr_matrix(values[matched]), counts_path)

    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    array_rc = spots[["y", "x"]].to_numpy(dtype=np.int64)
    if mpp is None:
        mpp_value = estimate_mpp_from_pitch(array_rc, xy, SPOT_PITCH_UM, spot_path)
        mpp_source = f"estimated from the {SPOT_PITCH_UM:.0f} um spot pitch"
    else:
        mpp_value, mpp_source = float(mpp), "given"

    obs = pd.DataFrame(
        {
            "section": section,
            "patient": patient,
            "array_row": array_rc[:, 0],
            "array_col": array_rc[:, 1],
        },
        index=ids,
    )
    if annotations is not None:
        obs = obs.join(annotations(ids))

    hires, scalef, image_size = None, 1.0, []
    if image is not None:
        hires, scalef, image_size = read_section_image(
            image, xy, mpp_value, spot_path, "pixel_x/pixel_y", with_image=with_image
        )

    return build_anndata(
        counts=X,
        genes=genes,
        spot_ids=[f"{section}_{i}" for i in ids],
        xy=xy,
        obs=obs,
        library=section,
        mpp=mpp_value,
        mpp_source=mpp_source,
        spot_diameter_um=SPOT_DIAMETER_UM,
        platform="legacy_st",
        image_path=str(image) if image else None,
        hires=hires,
        hires_scalef=scalef,
        extra_meta={
            "spot_pitch_um": SPOT_PITCH_UM,
            "counts_path": str(counts_path),
            "image_size": image_size,
        },
    )


def read_legacy_st(
    root: str | Path,
    sections: list[str] | None = None,
    *,
    with_images: bool = True,
    imaged_only: bool = False,
    mpp: float | None = None,
) -> dict[str, ad.AnnData]:
    """Read sections of a legacy-ST folder. Sections without an image load as expression-only, or are left out
    unread with ``imaged_only``.

    ``with_images=False`` skips the hires thumbnail (the image is still located and its size checked)."""
    root = Path(root)
    if not is_legacy_st(root):
        raise InputError(root, "ST-cnts/ST-spotfiles", "not a legacy ST folder")
    available = list_sections(root)
    wanted = available if sections is None else list(sections)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise InputError(root / "ST-cnts", "section", f"unknown section(s) {unknown}; available: {available}")
    if imaged_only:
        note_imageless(root, [s for s in wanted if find_image(root, s) is None])
        wanted = [s for s in wanted if find_image(root, s) is not None]
    return {s: read_legacy_st_section(root, s, with_image=with_images, mpp=mpp) for s in wanted}


def read_st_pipeline_folder(root: str | Path, sections: list[str] | None = None, *, with_images: bool = True,
                            imaged_only: bool = False, mpp: float | None = None) -> dict[str, ad.AnnData]:
    """Sections of a folder of ST Pipeline files (module docstring); sections without an image are counts-only, or
    left out unread with ``imaged_only``."""
    root = Path(root)
    samples = st_pipeline_samples(root)
    wanted = list(samples) if sections is None else list(sections)
    unknown = [s for s in wanted if s not in samples]
    if unknown:
        raise InputError(root, "section", f"unknown section(s) {unknown}; available: {sorted(samples)}")
    if imaged_only:
        note_imageless(root, [s for s in wanted if samples[s][2] is None])
        wanted = [s for s in wanted if samples[s][2] is not None]
    return {s: read_st_section(s, s.split("_", 1)[0], *samples[s], with_image=with_images, mpp=mpp) for s in wanted}
