"""Write outputs under a temporary name and rename, so a crash never leaves a half-written file or folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def check_output_file(path: str | os.PathLike, suffix: str | None = None) -> None:
    """An InputError unless ``path`` can be written as a file (with ``suffix``, when given): an existing folder
    cannot be replaced by a file."""
    from spafoundation.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(path, "--out", f"is a folder; give a file name in it{f' ending in {suffix}' if suffix else ''}")
    if suffix and path.suffix != suffix:
        raise InputError(path, "--out", f"the output is written as {suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure remove it."""
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# Left in every folder atomic_dir writes: only such a folder (or an empty one) is ever replaced as a whole.
OUTPUT_MARKER = ".spafoundation-output"


def check_output_dir(path: str | os.PathLike) -> None:
    """An InputError unless ``path`` may be written as a whole: absent, an empty folder, or a folder spafoundation
    wrote (it holds ``OUTPUT_MARKER``). Commands call it before their work, ``atomic_dir`` again before replacing:
    a user's folder given as ``--out`` is never deleted."""
    from spafoundation.errors import InputError

    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError(path, "--out", "exists and is not a folder")
    if any(True for _ in path.iterdir()) and not (path / OUTPUT_MARKER).exists():
        raise InputError(path, "--out", "this folder holds files spafoundation did not write, and an output folder "
                         "is replaced as a whole: give a new or empty folder")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on failure it is removed.
    ``path`` must pass ``check_output_dir``."""
    path = Path(path).resolve()  # '.' and 'x/..' have no name to put the temporary folder beside
    check_output_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text("written by spafoundation: rewriting this output replaces the folder\n")
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_h5ad(adata, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
