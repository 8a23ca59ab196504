"""What a result was computed from: the size and modification time of every input file, so a rerun can tell a
result still valid from one whose inputs have changed since (``spafoundation run`` redoes such a step)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


def _entries(path: Path, exclude: tuple[Path, ...]):
    if any(path == e or e in path.parents for e in exclude):
        return
    if path.is_dir():
        for root, dirs, files in os.walk(path, followlinks=True):
            root = Path(root)
            dirs[:] = sorted(d for d in dirs if not any(root / d == e for e in exclude))
            for f in sorted(files):
                yield root / f
    elif path.exists():
        yield path


def fingerprint(paths, exclude=()) -> dict[str, str]:
    """{resolved path: digest of its files' names, sizes and modification times} of each of ``paths`` that
    exists (a folder: every file under it, except under ``exclude``)."""
    exclude = tuple(Path(os.path.abspath(e)).resolve() for e in exclude)
    out = {}
    for p in paths:
        p = Path(os.path.abspath(Path(p).expanduser()))
        with contextlib.suppress(OSError):
            p = p.resolve()
        if str(p) in out or not p.exists():
            continue
        h = hashlib.sha256()
        for f in _entries(p, exclude):
            with contextlib.suppress(OSError):
                st = f.stat()
                h.update(f"{f.relative_to(p) if f != p else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        out[str(p)] = h.hexdigest()[:16]
    return out


def changed(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The paths whose fingerprint differs (or that appeared or went) between ``before`` and ``now``."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
