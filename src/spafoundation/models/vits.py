"""SpaFoundation's ViTs (the authors' weights, random-init baselines, the checkpoints shipped with the package) and
model folders, registered by name (models/registry.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spafoundation.errors import InputError
from spafoundation.models.encoder import IDENTITY_MEAN, IDENTITY_STD, Encoder, create_vit
from spafoundation.models.hub import config_hash, safe_name
from spafoundation.models.registry import register_encoder
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
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS / "default"
DESCRIPTOR_CHECKPOINT = CHECKPOINTS / "descriptor"
OFFICIAL_WEIGHTS = {"spafoundation-vitb16": "spafoundation_1m_vitb16.pth"}
OVERRIDE_KEYS = {"timm_kwargs", "input_size", "target_mpp", "mean", "std", "pooling", "precision", "name", "seed"}


@dataclass(frozen=True)
class VitSpec:
    arch: str
    input_size: int
    target_mpp: float
    timm_kwargs: dict = field(default_factory=dict)
    mean: tuple = IDENTITY_MEAN
    std: tuple = IDENTITY_STD
    pooling: str = "cls"


# SpaFoundation (paper): ViT-B/16, 224 px, pixels in [0, 1] without mean/std, class token.
# The smaller sizes keep the same 112 um field of view; ViT-S/Ti run at 112 px and 1 um/px for CPU speed
# (ViT-S/16: ~55 img/s at 112 px vs ~10 at 224 px on 2 cores).
VITB16 = VitSpec("vit_base_patch16_224", 224, 0.5, {"qkv_bias": True})
VITS16 = VitSpec("vit_small_patch16_224", 112, 1.0, {"qkv_bias": True})
VITT16 = VitSpec("vit_tiny_patch16_224", 112, 1.0, {"qkv_bias": True})


@register_encoder("spafoundation-vitb16")
def spafoundation_vitb16(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-B/16 (paper architecture), 224 px at 0.5 um/px; the authors' weights (weights= or $SPAFOUNDATION_WEIGHTS)"""
    return _build_vit("spafoundation-vitb16", VITB16, weights, overrides, pretrained)


@register_encoder("spafoundation-vits16")
def spafoundation_vits16(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-S/16, 112 px at 1.0 um/px (CPU-friendly); weights= an iBOT checkpoint or model folder"""
    return _build_vit("spafoundation-vits16", VITS16, weights, overrides, pretrained)


@register_encoder("spafoundation-vitt16")
def spafoundation_vitt16(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-Ti/16, 112 px at 1.0 um/px (CPU-friendly); weights= an iBOT checkpoint or model folder"""
    return _build_vit("spafoundation-vitt16", VITT16, weights, overrides, pretrained)


@register_encoder("random-vitb16")
def random_vitb16(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-B/16, 224 px at 0.5 um/px; random init (seed 0), a baseline"""
    return _build_vit("random-vitb16", VITB16, weights, overrides, pretrained=False)


@register_encoder("random-vits16")
def random_vits16(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-S/16, 112 px at 1.0 um/px; random init (seed 0), a baseline"""
    return _build_vit("random-vits16", VITS16, weights, overrides, pretrained=False)


@register_encoder("random-vitt16")
def random_vitt16(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-Ti/16, 112 px at 1.0 um/px; random init (seed 0), a baseline"""
    return _build_vit("random-vitt16", VITT16, weights, overrides, pretrained=False)


@register_encoder("spafoundation-default")
def spafoundation_default(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-Ti/16 shipped with the package, the pipelines' encoder (models/checkpoints/default/MODEL_CARD.md)"""
    return _shipped("spafoundation-default", DEFAULT_CHECKPOINT, weights, overrides, pretrained)


@register_encoder("spafoundation-descriptor")
def spafoundation_descriptor(weights=None, overrides=None, pretrained=True) -> Encoder:
    """ViT-Ti/16 shipped for the embedding alone, pre-trained on both HER2ST patients
    (models/checkpoints/descriptor/MODEL_CARD.md)"""
    return _shipped("spafoundation-descriptor", DESCRIPTOR_CHECKPOINT, weights, overrides, pretrained)


def _shipped(name: str, folder: Path, weights, overrides, pretrained) -> Encoder:
    if not is_model_folder(folder):
        raise InputError(folder, name, f"the {name} checkpoint is not shipped in this installation; use "
                         "spafoundation-vitb16 with the authors' weights, a model folder, or random-vits16")
    if weights:
        raise InputError(weights, "weights", f"{name} carries its own weights")
    return build_folder(folder, overrides, pretrained)


def _split_overrides(spec: VitSpec, overrides: dict | None) -> tuple[dict, dict]:
    """(model config, encoder fields) after applying ``overrides`` (keys: OVERRIDE_KEYS)."""
    o = dict(overrides or {})
    unknown = set(o) - OVERRIDE_KEYS
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


def _build_vit(name: str, spec: VitSpec, weights, overrides: dict | None, pretrained: bool) -> Encoder:
    """``random-*`` names (and any name with ``pretrained=False``): the architecture at seed ``overrides['seed']``;
    ``spafoundation-*``: loaded from ``weights``, the authors' file, or a model folder."""
    cfg, fields = _split_overrides(spec, overrides)
    seed = int((overrides or {}).get("seed", RANDOM_SEED))
    enc_name = (overrides or {}).get("name", name)
    if not pretrained:
        if weights:
            hint = f"use {name.replace('random-', 'spafoundation-')}" if name.startswith("random-") else \
                "leave pretrained=True"
            raise InputError(weights, "weights", f"{name} is randomly initialised here; {hint} to load weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_vit(cfg["arch"], fields["input_size"], **cfg["timm_kwargs"])
        identity = f"{name}@seed{seed}-{config_hash({**cfg, **fields})}"
        cfg["training"] = {"init": "random", "seed": seed}
        return Encoder(model, name=safe_name(enc_name), identity=identity, config=cfg, **fields)
    if weights is None:
        weights = _find_official(name)
    if weights is None:
        size = name.split("-", 1)[1]
        hint = (f"download {OFFICIAL_WEIGHTS[name]} from github.com/NingZhangCSUBio/SpaFoundation and pass "
                f"--weights PATH (or put it in $SPAFOUNDATION_WEIGHTS)") if name in OFFICIAL_WEIGHTS else (
                "the authors published only ViT-B/16 weights; pass weights= an iBOT-layout checkpoint, "
                f"a model folder, or use random-{size} as a baseline")
        raise InputError(None, "weights", f"{name} needs weights: {hint}")
    weights = Path(weights)
    if is_model_folder(weights):
        return build_folder(weights, overrides)
    model = create_vit(cfg["arch"], fields["input_size"], **cfg["timm_kwargs"])
    load_official_checkpoint(model, weights)
    identity = f"{name}@{file_sha256(weights)}-{config_hash({**cfg, **fields})}"
    cfg["training"] = {"source": str(weights.name)}
    return Encoder(model, name=safe_name(enc_name), identity=identity, config=cfg, **fields)


def build_folder(folder: str | os.PathLike, overrides: dict | None = None, pretrained: bool = True) -> Encoder:
    """A model folder (config.json + model.safetensors, models/weights.py) as an Encoder; ``pretrained=False``:
    its architecture with random weights."""
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
    if pretrained:
        load_backbone_state(model, load_folder_state(folder), folder / "model.safetensors")
        identity = f"folder:{cfg.get('name') or folder.name}@{folder_hash(folder)}"
    else:
        identity = (f"folder:{cfg.get('name') or folder.name}@untrained-"
                    f"{config_hash({'arch': cfg['arch'], 'timm_kwargs': kwargs, 'input_size': input_size})}")
    return Encoder(
        model,
        name=safe_name(o.get("name", cfg.get("name") or folder.name)),
        input_size=input_size,
        mean=tuple(o.get("mean", cfg.get("mean", IDENTITY_MEAN))),
        std=tuple(o.get("std", cfg.get("std", IDENTITY_STD))),
        target_mpp=float(o.get("target_mpp", cfg.get("target_mpp", 0.5))),
        pooling=o.get("pooling", cfg.get("pooling", "cls")),
        precision=o.get("precision", cfg.get("precision", "fp32")),
        identity=identity,
        config={"arch": cfg["arch"], "timm_kwargs": kwargs, "training": cfg.get("training", {})},
    )
