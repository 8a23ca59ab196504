"""Write outputs under a temporary name and rename, so a crash never leaves a half-written file or folder.

A temporary name carries its writer's process id and machine (``.<name>.<pid>h<host>-<random>.tmp``): one whose
process is gone (killed, the machine rebooted) is removed by the next write of the same output on that machine
(another machine's process cannot be asked about, so its temporaries are left alone). Outputs get the permissions
the umask allows, as any file the user creates (a temporary file starts as 0600)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_TMP_PID = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)h(?P<host>[0-9a-f]{6})-[^.]*\.tmp$")
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders of earlier writes of ``path`` whose process has ended; returns
    them."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for p in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            m = _TMP_PID.match(p.name)
            if (m and m["name"] == path.name and m["host"] == _HOST and int(m["pid"]) != os.getpid()
                    and not _pid_alive(int(m["pid"]))):
                _remove(p)
                removed.append(p)
    return removed


def _remove(p: Path) -> None:
    """A file, link or folder, gone (a link is removed, never followed)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


# Before temporaries carried their writer's pid: '.<name>.<8 random characters>.tmp', never cleaned up.
_TMP_UNNAMED = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporaries_under(folder: str | os.PathLike, *, unnamed: bool = False) -> list[Path]:
    """Every temporary file or folder under ``folder`` whose writing process has ended (a run folder swept before
    a rerun, whatever outputs it goes on to rewrite). ``unnamed``: those an earlier version left, which name no
    process, too (for a folder locked by the caller, so none of them is being written)."""
    removed: list[Path] = []
    for p in sorted(Path(folder).rglob(".*.tmp")):
        if any(r in p.parents for r in removed) or p in removed:
            continue
        m = _TMP_PID.match(p.name)
        if m:
            removed += [q for q in remove_stale_temporaries(p.with_name(m["name"])) if q not in removed]
        elif unnamed and _TMP_UNNAMED.match(p.name):
            _remove(p)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}h{_HOST}-"


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
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# Left in every folder atomic_dir writes, listing the entries it wrote: only such a folder (or an empty one) is
# rewritten, and a rewrite keeps every entry the listing does not name (a user's notes put in the folder).
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
        raise InputError(path, "--out", "this folder holds files spafoundation did not write: give a new or empty "
                         "folder (a folder spafoundation wrote is rewritten, keeping files put in it since)")


def written_entries(folder: Path) -> set[str] | None:
    """The entries spafoundation wrote in ``folder`` (its marker's listing); None for a marker without one (written
    before markers listed them)."""
    try:
        listing = json.loads((folder / OUTPUT_MARKER).read_text()).get("written")
    except (OSError, ValueError, AttributeError):
        return None
    return set(listing) if isinstance(listing, list) else None


def _write_marker(folder: Path, entries: list[str]) -> None:
    text = json.dumps({"note": "written by spafoundation: rewriting this output replaces these entries and keeps "
                               "any other", "written": sorted(entries)}) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(folder / OUTPUT_MARKER), suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, folder / OUTPUT_MARKER)


def _split_entries(old: Path, new_entries: set[str]) -> tuple[list[Path], list[Path]]:
    """(spafoundation's earlier entries, the user's entries) of the output folder ``old``. A marker without a
    listing (an earlier version's): what the new output replaces counts as ours, everything else as the user's
    (better an old output left over than a user's file lost). A user's file where the new output would go is an
    InputError: nothing is replaced."""
    from spafoundation.errors import InputError

    listed = written_entries(old)
    ours, users = [], []
    for p in old.iterdir():
        if p.name == OUTPUT_MARKER:
            continue
        if p.name in (new_entries if listed is None else listed):
            ours.append(p)
        elif p.name in new_entries:
            raise InputError(p, "--out", "this output would replace a file spafoundation did not write; move it")
        else:
            users.append(p)
    return ours, users


def _replace_entries(path: Path, tmp: Path, ours: list[Path], entries: list[str]) -> None:
    """Swap spafoundation's entries of ``path`` for those of ``tmp`` one by one, never moving the user's. The
    marker lists old and new entries until the swap is over, so a crash half-way leaves no entry of ours that a
    rewrite would take for the user's."""
    _write_marker(path, [p.name for p in ours] + entries)
    trash = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        for p in ours:
            os.replace(p, trash / p.name)
        for name in entries:
            os.replace(tmp / name, path / name)
        _write_marker(path, entries)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; on success its entries replace those spafoundation wrote in
    ``path`` (the user's entries stay where they are), on failure it is removed. A folder of no user's entries is
    replaced as a whole, in one rename. ``path`` must pass ``check_output_dir``."""
    path = Path(path).resolve()  # '.' and 'x/..' have no name to put the temporary folder beside
    check_output_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        entries = sorted(p.name for p in tmp.iterdir())
        _write_marker(tmp, entries)
        ours, users = _split_entries(path, set(entries)) if path.exists() else ([], [])
        if users:
            _replace_entries(path, tmp, ours, entries)
        elif path.exists():
            backup = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
            os.replace(path, backup / "old")
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
