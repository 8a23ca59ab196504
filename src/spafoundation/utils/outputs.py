"""The rule every command's output follows, checked in one place (cli.main) before the command's work:

- an output never replaces an input: it is not an input file, not inside a dataset folder being read (a Space
  Ranger folder would otherwise gain a second candidate image), and a folder output does not contain an input;
- one writer per output: a lock beside ``--out`` refuses a second command writing there at the same time;
- the folder it goes into must be writable (a read-only or missing permission fails now, not after the work).

Keeping a user's files in a rerun output folder and removing stale temporaries is utils/atomic.py's part."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from spafoundation.errors import EnvironmentProblem, InputError

# Arguments that name something written, or read and written (an embedding cache): never counted as inputs.
NOT_INPUTS = ("out", "cache_dir", "argv", "func", "command", "benchmark")
# Inputs a run folder may hold: `run --config RUN/config.yaml --out RUN` reruns from the config that run wrote.
MAY_BE_INSIDE_OUT = ("config",)


def _resolved(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def input_paths(args) -> dict[str, Path]:
    """{argument: resolved path} of the command's arguments that name an existing file or folder."""
    found = {}
    for key, value in vars(args).items():
        if key in NOT_INPUTS or "sections" in key or not isinstance(value, str) or not value or "\n" in value:
            continue
        with contextlib.suppress(OSError, ValueError):
            if Path(value).expanduser().exists():
                found[key] = _resolved(value)
    return found


def check_output_not_input(out, inputs: dict[str, Path]) -> None:
    """An InputError when writing ``out`` could replace or disturb one of ``inputs``."""
    target = _resolved(out)
    for key, path in inputs.items():
        flag = f"--{key.replace('_', '-')}"
        if target == path:
            raise InputError(out, "--out", f"is the input given as {flag}: an output never replaces an input")
        if path.is_dir() and path in target.parents:
            raise InputError(out, "--out", f"is inside the dataset folder {path} ({flag}), which is read, not "
                             "written: give a path outside it")
        if key not in MAY_BE_INSIDE_OUT and target in path.parents:
            raise InputError(out, "--out", f"holds the input {path} ({flag}): an output never replaces an input")


def check_writable(out) -> None:
    """An EnvironmentProblem when ``out`` cannot be created or replaced: the nearest existing folder on its path is
    read-only or not ours to write."""
    target = _resolved(out)
    folder = target if target.is_dir() else target.parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EnvironmentProblem(folder, "cannot write in this folder (read-only or permission denied)")


class OutputLock:
    """An exclusive lock on ``.<name>.lock`` beside ``out`` for as long as one command writes it; a second command
    is refused at once. The lock file goes when released (it is checked to be the file locked, so a removal racing
    with a new lock is harmless)."""

    def __init__(self, out):
        self.out = _resolved(out)
        self.path = self.out.with_name(f".{self.out.name}.lock")
        self._fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    owner = _read_owner(self.path)
                    raise EnvironmentProblem(self.out, f"another spafoundation command{owner} is writing this "
                                             "output; wait for it or give another --out") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # released and removed by its last holder between our open and lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _read_owner(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (process {int(path.read_text().strip())})"
    return ""


@contextlib.contextmanager
def claim_output(args):
    """cli.main's check of a command's ``--out`` (when it has one): not an input, writable, and locked while the
    command runs."""
    if hasattr(args, "cache_dir") and not getattr(args, "no_cache", False):
        from spafoundation.models.cache import cache_root

        cache_root(args.cache_dir)  # a file given as the cache folder fails here, not after the first section
    out = getattr(args, "out", None)
    if not out:
        yield
        return
    check_output_not_input(out, input_paths(args))
    check_writable(out)
    if int(os.environ.get("RANK", "0") or 0) != 0:  # torchrun: the ranks of one command share --out; rank 0 locks it
        yield
        return
    with OutputLock(out):
        yield
