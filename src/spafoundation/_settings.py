"""``sf.settings``: the choices that hold for every call of a session (device, encoder precision, cache folder,
threads, progress bars), in one visible object instead of module globals; scanpy's ``sc.settings`` is the model."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from spafoundation.utils.precision import CHOICES

AUTO = "auto"
DEFAULTS = {"device": "cpu", "precision": AUTO, "cache_dir": None, "n_threads": None, "progress": True,
            "verbosity": "warning"}
# scanpy's numbers (0 errors ... 3 hints) or names
VERBOSITY = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
VERBOSITY_NUMBERS = dict(enumerate(VERBOSITY))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a notebook's, pytest's), not the one at setup."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def apply_verbosity(name: str) -> None:
    """The ``spafoundation`` loggers' level; below warning, a handler of their own where nothing would print the
    records (Python prints only warnings without one: a notebook, a script without ``logging.basicConfig``). The
    default, "warning", leaves the level to the application's logging (the CLI's ``-v``, pytest's caplog)."""
    package = logging.getLogger("spafoundation")
    package.setLevel(logging.NOTSET if name == "warning" else VERBOSITY[name])
    ours = [h for h in package.handlers if isinstance(h, _StderrHandler)]
    if VERBOSITY[name] >= logging.WARNING:
        for handler in ours:
            package.removeHandler(handler)
    elif not ours and not logging.getLogger().handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)


class Settings:
    """Session-wide settings of spafoundation.

    Attributes
    ----------
    device
        Torch device that encoders are built on (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``). Default ``"cpu"``.
    precision
        Encoder precision: ``"auto"`` (default: dynamic int8 Linear layers on CPU where torch has a quantised
        engine, 1.5x to 2x faster with downstream Pearson within 0.001 of fp32, BENCHMARKS.md; elsewhere the
        encoder's own), or one of ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``. A fitted model rebuilds its
        encoder at the precision it was fitted with unless this is set to something other than ``"auto"``.
        The CLI's ``--precision`` sets it for one command.
    cache_dir
        Folder of the embedding and feature caches; None (default): ``$SPAFOUNDATION_CACHE``, else
        ``~/.cache/spafoundation``; False: no cache.
    n_threads
        CPU threads of torch (``torch.set_num_threads``); None (default): torch's own choice.
    progress
        Progress bars in ``sf.tl`` functions. Default True.
    verbosity
        What the functions log: ``"error"``, ``"warning"`` (default: image shift, spots off tissue, downscaled
        images...), ``"info"`` (each step: features, cache hits, chosen weights) or ``"debug"``; or scanpy's
        numbers 0-3.

    Examples
    --------
    >>> import spafoundation as sf
    >>> sf.settings.precision = "fp32"
    >>> with sf.settings.override(device="cuda", precision="bf16"):
    ...     pass  # encoders built here run on the GPU in bf16
    """

    def __init__(self):
        # the defaults, set without the checks of __setattr__ (which import torch: `import spafoundation` must not)
        for name, value in DEFAULTS.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value) -> None:
        if name not in DEFAULTS:
            raise AttributeError(f"sf.settings has no setting {name!r}")
        if name == "precision" and value not in (AUTO, *CHOICES):
            raise ValueError(f"precision must be one of {(AUTO, *CHOICES)}, got {value!r}")
        if name == "device":
            import torch

            value = str(torch.device(value))  # an unknown device name fails here, not in the middle of a call
        if name == "cache_dir" and value not in (None, False):
            value = Path(os.fspath(value)).expanduser()
        if name == "n_threads" and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"n_threads must be a whole number >= 1 or None, got {value!r}")
            import torch

            torch.set_num_threads(value)
        if name == "progress":
            value = bool(value)
        if name == "verbosity":
            value = VERBOSITY_NUMBERS.get(value, value) if isinstance(value, int) else str(value).lower()
            if value not in VERBOSITY:
                raise ValueError(f"verbosity must be one of {list(VERBOSITY)} or 0-3, got {value!r}")
            apply_verbosity(value)
        object.__setattr__(self, name, value)

    @contextlib.contextmanager
    def override(self, **changes):
        """Change settings inside a ``with`` block only; the old values come back after it, also on error."""
        old = {k: getattr(self, k) for k in changes}
        threads = None
        if "n_threads" in changes:
            import torch

            threads = torch.get_num_threads()  # torch's own count, where n_threads was None
        try:
            for k, v in changes.items():
                setattr(self, k, v)
            yield self
        finally:
            for k, v in old.items():
                object.__setattr__(self, k, v)
            if "verbosity" in old:
                apply_verbosity(old["verbosity"])
            if threads is not None:
                torch.set_num_threads(threads)

    def chosen_precision(self) -> str | None:
        """The precision the user chose, None for ``"auto"``."""
        return None if self.precision == AUTO else self.precision

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in DEFAULTS)
        return f"Settings({fields})"


settings = Settings()
