"""``build_encoder(name_or_path, weights=None, device="cpu")``: every encoder by name, as in timm's registry."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spafoundation.errors import InputError
from spafoundation.models.encoder import IDENTITY_MEAN, IDENTITY_STD, Encoder, create_vit, quantize_int8
from spafoundation.models.hub import build_hf_hub, build_timm, safe_name
from spafoundation.models.weights import (
    file_sha256,
    folder_hash,
    is_model_folder,
    load_backbone_state,
    load_folder_state,
    load_official_checkpoint,
    read_folder_config,
)

RANDOM_SEED = 0
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"
OFFICIAL_WEIGHTS = {"spafoundation-vitb16": "spafoundation_1m_vitb16.pth"}


@dataclass(frozen=True)
class VitSpec:
    arch: str
    input_size: int
    target_mpp: float
    timm_kwargs: dict = field(default_factory=dict)
    mean: tuple = IDENTITY_MEAN
    std: tuple = IDENTITY_STD
    pooling: str = "cls"
    description: str = ""


# SpaFoundation (paper): ViT-B/16, 224 px, pixels in [0, 1] without mean/std, class token.
# The smaller sizes keep the same 112 um field of view; ViT-S/Ti run at 112 px and 1 um/px for CPU speed
# (ViT-S/16: ~55 img/s at 112 px vs ~10 at 224 px on 2 cores).
VITS: dict[str, VitSpec] = {
    "vitb16": VitSpec("vit_base_patch16_224", 224, 0.5, {"qkv_bias": True},
                      description="ViT-B/16 (paper architecture), 224 px at 0.5 um/px"),
    "vits16": VitSpec("vit_small_patch16_224", 112, 1.0, {"qkv_bias": True},
                      description="ViT-S/16, 112 px at 1.0 um/px (CPU-friendly)"),
    "vitt16": VitSpec("vit_tiny_patch16_224", 112, 1.0, {"qkv_bias": True},
                      description="ViT-Ti/16, 112 px at 1.0 um/px (CPU-friendly)"),
}


def list_encoders() -> dict[str, str]:
    """Registered names and a one-line description each (the patterns timm:/hf-hub:/folder are extra)."""
    names = {}
    for size, spec in VITS.items():
        names[f"spafoundation-{size}"] = f"{spec.description}; weights= an iBOT checkpoint or model folder"
        names[f"random-{size}"] = f"{spec.description}; random init (seed {RANDOM_SEED}), baseline"
    names["spafoundation-default"] = "the checkpoint shipped with the package"
    names["hf-hub:MahmoodLab/UNI"] = "UNI ViT-L/16 (gated; local Hugging Face cache)"
    names["hf-hub:owkin/phikon"] = "Phikon ViT-B/16 (local Hugging Face cache)"
    names["hf-hub:bioptimus/H-optimus-0"] = "H-optimus-0 ViT-g/14 (local Hugging Face cache)"
    return names


def _config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _split_overrides(spec: VitSpec, overrides: dict | None) -> tuple[dict, dict]:
    """(model config, encoder fields) after applying ``overrides`` (keys: timm_kwargs, input_size, target_mpp,
    mean, std, pooling, precision, name, seed)."""
    o = dict(overrides or {})
    unknown = set(o) - {"timm_kwargs", "input_size", "target_mpp", "mean", "std", "pooling", "precision",
                        "name", "seed"}
    if unknown:
        raise ValueError(f"unknown encoder overrides: {sorted(unknown)}")
    cfg = {"arch": spec.arch, "timm_kwargs": {**spec.timm_kwargs, **o.get("timm_kwargs", {})}}
    fields = {
        "input_size": int(o.get("input_size", spec.input_size)),
        "target_mpp": float(o.get("target_mpp", spec.target_mpp)),
        "mean": tuple(o.get("mean", spec.mean)),
        "std": tuple(o.get("std", spec.std)),
        "pooling": o.get("pooling", spec.pooling),
        "precision": o.get("precision", "fp32"),
    }
    return cfg, fields


def _find_official(name: str) -> Path | None:
    fname = OFFICIAL_WEIGHTS.get(name)
    if not fname:
        return None
    from spafoundation.models.cache import cache_root

    dirs = [os.environ.get("SPAFOUNDATION_WEIGHTS"), cache_root() / "weights"]
    for d in dirs:
        if d and (Path(d) / fname).is_file():
            return Path(d) / fname
    return None


def _build_vit(name: str, weights, overrides: dict | None) -> Encoder:
    kind, size = name.split("-", 1)
    spec = VITS[size]
    cfg, fields = _split_overrides(spec, overrides)
    seed = int((overrides or {}).get("seed", RANDOM_SEED))
    enc_name = (overrides or {}).get("name", name)
    if kind == "random":
        if weights:
            raise InputError(weights, "weights", f"{name} is randomly initialised; use spafoundation-{size} "
                             "to load weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_vit(cfg["arch"], fields["input_size"], **cfg["timm_kwargs"])
        identity = f"{name}@seed{seed}-{_config_hash({**cfg, **fields})}"
        cfg["training"] = {"init": "random", "seed": seed}
    else:
        if weights is None:
            weights = _find_official(name)
        if weights is None:
            hint = (f"download {OFFICIAL_WEIGHTS[name]} from github.com/NingZhangCSUBio/SpaFoundation and pass "
                    f"--weights PATH (or put it in $SPAFOUNDATION_WEIGHTS)") if name in OFFICIAL_WEIGHTS else (
                    "the authors published only ViT-B/16 weights; pass weights= an iBOT-layout checkpoint, "
                    f"a model folder, or use random-{size} as a baseline")
            raise InputError(None, "weights", f"{name} needs weights: {hint}")
        weights = Path(weights)
        if is_model_folder(weights):
            return _build_folder(weights, overrides)
        model = create_vit(cfg["arch"], fields["input_size"], **cfg["timm_kwargs"])
        load_official_checkpoint(model, weights)
        identity = f"{name}@{file_sha256(weights)}-{_config_hash({**cfg, **fields})}"
        cfg["training"] = {"source": str(weights.name)}
    return Encoder(model, name=safe_name(enc_name), identity=identity, config=cfg, **fields)


def _build_folder(folder: str | os.PathLike, overrides: dict | None = None) -> Encoder:
    folder = Path(folder)
    cfg = read_folder_config(folder)
    o = dict(overrides or {})
    kwargs = {**cfg.get("timm_kwargs", {}), **o.get("timm_kwargs", {})}
    input_size = int(o.get("input_size", cfg["input_size"]))
    try:
        model = create_vit(cfg["arch"], input_size, **kwargs)
    except Exception as e:
        raise InputError(folder / "config.json", "arch", f"timm cannot build {cfg['arch']!r} with "
                         f"{kwargs} ({type(e).__name__}: {e})") from None
    load_backbone_state(model, load_folder_state(folder), folder / "model.safetensors")
    return Encoder(
        model,
        name=safe_name(o.get("name", cfg.get("name") or folder.name)),
        input_size=input_size,
        mean=tuple(o.get("mean", cfg.get("mean", IDENTITY_MEAN))),
        std=tuple(o.get("std", cfg.get("std", IDENTITY_STD))),
        target_mpp=float(o.get("target_mpp", cfg.get("target_mpp", 0.5))),
        pooling=o.get("pooling", cfg.get("pooling", "cls")),
        precision=o.get("precision", cfg.get("precision", "fp32")),
        identity=f"folder:{cfg.get('name') or folder.name}@{folder_hash(folder)}",
        config={"arch": cfg["arch"], "timm_kwargs": kwargs, "training": cfg.get("training", {})},
    )


def build_encoder(name_or_path, weights=None, device="cpu", *, overrides: dict | None = None) -> Encoder:
    """Build an encoder in eval mode on ``device``.

    ``name_or_path``: a registered name (``list_encoders()``), ``timm:<arch>``, ``hf-hub:<repo>``, or a model
    folder. ``weights``: a checkpoint file (``.pth``/``.safetensors``) or model folder. ``overrides``: change
    the architecture or geometry (``{"timm_kwargs": {"depth": 2}, "input_size": 32}``), mainly for tests.
    """
    name = str(name_or_path)
    if name.startswith("timm:"):
        enc = build_timm(name[5:], weights, overrides)
    elif name.startswith("hf-hub:"):
        enc = build_hf_hub(name[7:], weights, overrides)
    elif name == "spafoundation-default":
        if not is_model_folder(DEFAULT_CHECKPOINT):
            raise InputError(DEFAULT_CHECKPOINT, "spafoundation-default",
                             "the default checkpoint is not shipped in this installation yet; use "
                             "spafoundation-vitb16 with the authors' weights, a model folder, or random-vits16")
        enc = _build_folder(DEFAULT_CHECKPOINT, overrides)
    elif name.split("-", 1)[0] in ("spafoundation", "random") and name.split("-", 1)[-1] in VITS:
        enc = _build_vit(name, weights, overrides)
    elif Path(name).exists():
        if not is_model_folder(name):
            raise InputError(name, "encoder", "not a model folder (needs config.json + model.safetensors); "
                             "for a checkpoint file use --encoder spafoundation-vitb16 --weights FILE")
        if weights:
            raise InputError(weights, "weights", "a model folder carries its own weights")
        enc = _build_folder(name, overrides)
    else:
        raise InputError(None, "encoder", f"unknown encoder {name!r}; known: {', '.join(list_encoders())}, "
                         "timm:<arch>, hf-hub:<repo> or a model folder")
    enc = enc.to(device).eval()
    return quantize_int8(enc) if enc.precision == "int8" else enc
