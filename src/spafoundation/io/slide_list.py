"""The slides of a cohort: one image, a folder of images (searched recursively), or a CSV/TSV manifest with a
``path`` column and optional ``slide_id`` and ``mpp`` columns (paths relative to the manifest)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from spafoundation.errors import InputError
from spafoundation.io.slide import OPENSLIDE_ONLY_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES

SLIDE_SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES | OPENSLIDE_ONLY_SUFFIXES
MANIFEST_SUFFIXES = {".csv", ".tsv"}


@dataclass(frozen=True)
class SlideEntry:
    slide_id: str
    path: Path
    mpp: float | None = None


def _from_manifest(path: Path, default_mpp: float | None) -> list[SlideEntry]:
    try:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except Exception as e:
        raise InputError(path, "manifest", f"unreadable table ({e})") from None
    if "path" not in table.columns:
        raise InputError(path, "path", f"manifest needs a 'path' column (found {list(table.columns)})")
    entries = []
    for i, row in table.iterrows():
        if pd.isna(row["path"]) or not str(row["path"]).strip():
            raise InputError(path, f"path (row {i + 2})", "empty path")
        p = Path(str(row["path"]))
        p = p if p.is_absolute() else path.parent / p
        mpp = row.get("mpp", None)
        if mpp is not None and not pd.isna(mpp):
            try:
                mpp = float(mpp)
            except ValueError:
                raise InputError(path, f"mpp (row {i + 2})", f"not a number: {mpp!r}") from None
            if not mpp > 0:
                raise InputError(path, f"mpp (row {i + 2})", f"must be positive, got {mpp}")
        else:
            mpp = default_mpp
        sid = row.get("slide_id", None)
        sid = str(sid) if sid is not None and not pd.isna(sid) else p.stem
        entries.append(SlideEntry(sid, p, mpp))
    return entries


def list_slides(source: str | os.PathLike, mpp: float | None = None) -> list[SlideEntry]:
    """Slides in ``source``; ``mpp`` fills in the pixel size where a manifest row does not give one (an image's
    own metadata still wins over nothing). Ids must be unique: they name the output files."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "slides", "file or folder not found")
    suffix = source.suffix.lower()
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        entries = [SlideEntry(p.stem, p, mpp) for p in paths]
    elif suffix in MANIFEST_SUFFIXES:
        entries = _from_manifest(source, mpp)
    elif suffix in SLIDE_SUFFIXES:
        entries = [SlideEntry(source.stem, source, mpp)]
    else:
        raise InputError(source, "slides", f"expected an image, a folder of images or a .csv/.tsv manifest, "
                         f"got '{suffix or source.name}'")
    if not entries:
        raise InputError(source, "slides", f"no slide images found (looked for {', '.join(sorted(SLIDE_SUFFIXES))})")
    seen: dict[str, Path] = {}
    for e in entries:
        if e.slide_id in seen:
            raise InputError(source, "slide_id", f"'{e.slide_id}' names two slides: {seen[e.slide_id]} and {e.path}")
        seen[e.slide_id] = e.path
    return entries
