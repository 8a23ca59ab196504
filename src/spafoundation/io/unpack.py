"""Packed inputs unpacked once into the cache folder: a gzipped image (GEO gzips every supplementary file, and
patches are read from an image file by region) and the members of a tar archive (a Visium sample's
``spatial.tar.gz``). The folder is named by the packed file's path, size and modification time, so a second read
finds it and a changed file is unpacked again."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from spafoundation.errors import InputError

FOLDER = "unpacked"


def _folder(packed: Path) -> Path:
    from spafoundation.models.cache import cache_root

    stat = packed.stat()
    key = f"{packed.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return cache_root() / FOLDER / hashlib.sha256(key).hexdigest()[:24]


def gunzipped(path: Path, field: str) -> Path:
    """The file inside ``path`` (``name.gz`` -> ``name``), streamed to the cache once; ``path`` itself when it is
    not gzipped."""
    from spafoundation.utils.atomic import atomic_path

    if path.suffix != ".gz":
        return path
    if not path.exists():
        raise InputError(path, field, "file not found")
    out = _folder(path) / path.stem
    if not out.exists():
        try:
            with gzip.open(path, "rb") as src, atomic_path(out) as tmp, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(path, field, f"unreadable gzip file ({e})") from None
    return out


def untarred(archive: Path, keep: Callable[[str], bool], field: str) -> list[Path]:
    """The archive's files whose names ``keep`` accepts, by name only (whatever folder the archive holds them in),
    unpacked to the cache once."""
    from spafoundation.utils.atomic import atomic_path

    folder = _folder(archive)
    complete = folder / ".complete"
    if not complete.exists():
        try:
            with tarfile.open(archive) as tar:
                for member in tar:
                    name = Path(member.name).name
                    if member.isfile() and keep(name):
                        with atomic_path(folder / name) as tmp:
                            tmp.write_bytes(tar.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise InputError(archive, field, f"unreadable archive ({e})") from None
        folder.mkdir(parents=True, exist_ok=True)
        complete.touch()
    return sorted(p for p in folder.iterdir() if p.name != ".complete")
