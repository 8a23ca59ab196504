"""Checkpoints: the authors' iBOT/DINO ``.pth`` files and spafoundation model folders.

Model folder (docs/architecture.md): ``config.json`` + ``model.safetensors`` (+ optional ``MODEL_CARD.md``);
the safetensors keys are timm VisionTransformer state-dict keys.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_dir

FOLDER_FORMAT = "spafoundation-encoder"
FOLDER_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
# Keys the authors' checkpoints carry that a backbone does not use: the iBOT mask token and the projection heads.
DROP_EXACT = {"masked_embed", "mask_token"}
DROP_PREFIXES = ("head.", "head_dense.", "ibot_head.", "dino_head.", "fc.", "classifier.")
STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
NESTED_KEYS = ("state_dict", "teacher", "student", "model", "model_state_dict")
SAFE_GLOBALS = [argparse.Namespace]
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, n_chars: int = 16) -> str:
    """Content hash of a file (memoised by path, size and mtime, so a 1 GB checkpoint is read once)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASH_CACHE[memo] = h.hexdigest()
    return _HASH_CACHE[memo][:n_chars]


def read_torch_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``; a file that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights", "file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise InputError(path, "weights", f"unreadable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # iBOT/DINO checkpoints also pickle their argparse.Namespace; allow exactly that, nothing else
    except Exception as e:
        raise InputError(path, "weights", f"unreadable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            path, "weights",
            f"cannot load with torch.load(weights_only=True) ({type(e).__name__}: {str(e)[:200]}); "
            "it is not a plain state-dict checkpoint",
        ) from None


def extract_state_dict(obj, path=None) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: a bare state dict or one under state_dict/teacher/student/model."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return extract_state_dict(obj[key], path)
    found = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise InputError(path, "state_dict", f"no state dict found (top-level keys: {found}); expected a bare "
                     f"state dict or one under {', '.join(NESTED_KEYS)}")


def clean_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip ``module.``/``backbone.`` prefixes, drop the mask token and head weights. Returns (kept, dropped)."""
    kept, dropped = {}, []
    for key, value in state.items():
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        if name in DROP_EXACT or name.startswith(DROP_PREFIXES):
            dropped.append(key)
            continue
        kept[name] = value
    return kept, dropped


def _short(keys, n=8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], path=None) -> None:
    """Load ``state`` into ``model`` strictly; an InputError names every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped keys: {_short(shapes, 4)}")
    if problems:
        raise InputError(path, "state_dict", "checkpoint does not match the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_official_checkpoint(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load an iBOT/DINO-style checkpoint (``spafoundation_1m_vitb16.pth``) into a timm ViT.
    Returns the keys that were dropped (mask token, heads)."""
    state = extract_state_dict(read_torch_checkpoint(path), path)
    kept, dropped = clean_state_dict(state)
    load_backbone_state(model, kept, path)
    return dropped


# ---- model folders ---------------------------------------------------------------------------------------

def is_model_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def read_folder_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise InputError(folder, CONFIG_FILE, "not a model folder (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(cfg_path, None, f"invalid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FOLDER_FORMAT:
        raise InputError(cfg_path, "format", f"expected \"format\": \"{FOLDER_FORMAT}\"")
    if int(cfg.get("version", 0)) > FOLDER_VERSION:
        raise InputError(cfg_path, "version", f"version {cfg.get('version')} is newer than this spafoundation "
                         f"understands ({FOLDER_VERSION}); upgrade spafoundation")
    for field in ("arch", "input_size"):
        if field not in cfg:
            raise InputError(cfg_path, field, "missing")
    from spafoundation.models.encoder import POOLINGS
    from spafoundation.utils.precision import CHOICES

    choices = {"pooling": POOLINGS, "precision": CHOICES}
    for field, allowed in choices.items():
        if field in cfg and cfg[field] not in allowed:
            raise InputError(cfg_path, field, f"must be one of {', '.join(allowed)}, got {cfg[field]!r}")
    for field in ("input_size", "target_mpp"):
        value = cfg.get(field, 1)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise InputError(cfg_path, field, f"must be a positive number, got {value!r}")
    return cfg


def folder_hash(folder: str | os.PathLike) -> str:
    folder = Path(folder)
    h = hashlib.sha256()
    h.update((folder / CONFIG_FILE).read_bytes())
    h.update(file_sha256(folder / WEIGHTS_FILE, 64).encode())
    return h.hexdigest()[:16]


def load_folder_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(folder, WEIGHTS_FILE, "model folder has no weights file")
    try:
        return load_file(path)
    except Exception as e:
        raise InputError(path, None, f"unreadable safetensors file ({e})") from None


def encoder_config(encoder, training: dict | None = None, name: str | None = None) -> dict:
    """The config.json of a model folder for ``encoder``."""
    cfg = encoder.config
    if "arch" not in cfg:
        raise ValueError(f"encoder {encoder.name!r} has no timm arch recorded; it cannot be saved as a folder")
    return {
        "format": FOLDER_FORMAT,
        "version": FOLDER_VERSION,
        "arch": cfg["arch"],
        "timm_kwargs": dict(cfg.get("timm_kwargs", {})),
        "input_size": encoder.input_size,
        "mean": list(encoder.mean),
        "std": list(encoder.std),
        "target_mpp": encoder.target_mpp,
        "pooling": encoder.pooling,
        "name": name or encoder.name,
        "training": dict(training if training is not None else cfg.get("training", {})),
    }


def save_model_folder(encoder, folder: str | os.PathLike, *, training: dict | None = None,
                      model_card: str | None = None, name: str | None = None) -> Path:
    """Write ``encoder`` as a model folder, atomically (a crash leaves the previous folder intact).

    ``training`` (JSON-serialisable) records how it was made; ``name`` (default ``encoder.name``) becomes the
    name it loads under, hence its ``obsm['X_<name>']`` key."""
    from safetensors.torch import save_file

    cfg = encoder_config(encoder, training, name)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if model_card:
            (tmp / CARD_FILE).write_text(model_card)
    return folder
