"""Fitted task models as folders: ``config.json`` (with a ``format`` tag) + one ``.npz`` of arrays, written
atomically and read back with errors that name the file and the field."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_dir

CONFIG_FILE = "config.json"


def fitted_on(training: dict, encoder_ref: dict | None) -> str:
    """'encoder NAME, fitted on C2, C3 (1234 spots)': what a model's repr says about its training."""
    sections = training.get("sections")
    where = f"fitted on {', '.join(map(str, sections))}" if sections else "training sections not recorded"
    spots = f" ({training['n_spots']} spots)" if training.get("n_spots") else ""
    return f"encoder {(encoder_ref or {}).get('name', 'none')}, {where}{spots}"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def write_model_folder(folder, cfg: dict, arrays_file: str, arrays: dict[str, np.ndarray], extra=None) -> Path:
    """Write ``cfg`` and ``arrays``; ``extra(tmp_folder)`` may add files (an embedded encoder) before the swap."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "--out", "exists and is not a folder")
    with atomic_dir(folder) as tmp:
        if extra is not None:
            extra(tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=_json_default) + "\n")
        np.savez(tmp / arrays_file, **arrays)
    return folder


def read_model_folder(folder, fmt: str, arrays_file: str, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, arrays) of a folder whose config says ``format: fmt``."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(cfg_path, "model", f"no {what} model in this folder (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(cfg_path, "config.json", f"unreadable ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        got = cfg.get("format") if isinstance(cfg, dict) else None
        raise InputError(cfg_path, "format", f"expected {fmt!r}, got {got!r}")
    try:
        with np.load(folder / arrays_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a truncated or damaged file
        raise InputError(folder / arrays_file, arrays_file, f"unreadable ({e})") from None
    return cfg, arrays
