"""Third-party encoders: ``timm:<name>`` and ``hf-hub:<repo>`` (UNI, Phikon, H-optimus-0 registered by name, and
any timm model on the hub).

Weights come from a local file (``weights=``) or the local Hugging Face cache; with ``HF_HUB_OFFLINE=1`` (or no
network) nothing is downloaded and a model that is not cached raises an InputError that names the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import torch

from spafoundation.errors import InputError
from spafoundation.models.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, create_vit
from spafoundation.models.registry import register_encoder
from spafoundation.models.weights import (
    clean_state_dict,
    extract_state_dict,
    file_sha256,
    load_backbone_state,
    read_torch_checkpoint,
)


@dataclass(frozen=True)
class HubSpec:
    """A histology encoder published on the Hugging Face hub, with its authors' documented settings."""

    name: str
    arch: str
    timm_kwargs: dict
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    target_mpp: float = 0.5
    precision: str = "fp32"  # on GPU; CPU always runs fp32
    key_format: str = "timm"  # "timm" or "hf-vit" (transformers ViTModel keys)
    files: tuple = ("model.safetensors", "pytorch_model.bin")
    notes: str = ""
    extra: dict = field(default_factory=dict)


# UNI (Chen et al., Nat Med 2024): ViT-L/16 DINOv2, 224 px at 20x (~0.5 um/px), ImageNet normalisation.
UNI = HubSpec(
    name="uni",
    arch="vit_large_patch16_224",
    timm_kwargs={"patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
    precision="fp16",
    files=("pytorch_model.bin", "model.safetensors"),
)
# Phikon (Filiot et al. 2023): iBOT ViT-B/16 on TCGA at 20x, published as a transformers ViTModel.
PHIKON = HubSpec(
    name="phikon",
    arch="vit_base_patch16_224",
    timm_kwargs={},
    key_format="hf-vit",
    files=("model.safetensors", "pytorch_model.bin"),
)
# H-optimus-0 (Bioptimus 2024): ViT-g/14 with 4 registers, SwiGLU MLP, 224 px at 0.5 um/px, own mean/std.
H_OPTIMUS_0 = HubSpec(
    name="h-optimus-0",
    arch="vit_giant_patch14_reg4_dinov2",
    timm_kwargs={"init_values": 1e-5, "mlp_ratio": 5.33334, "mlp_layer": "SwiGLUPacked", "act_layer": "silu",
                 "reg_tokens": 4, "no_embed_class": True, "dynamic_img_size": False},
    mean=(0.707223, 0.578729, 0.703617),
    std=(0.211883, 0.230117, 0.177517),
    precision="fp16",
)


@register_encoder("hf-hub:MahmoodLab/UNI")
def uni(weights=None, overrides=None, pretrained=True) -> Encoder:
    """UNI ViT-L/16 (gated; local Hugging Face cache)"""
    return build_hub_spec("MahmoodLab/UNI", UNI, weights, overrides, pretrained)


@register_encoder("hf-hub:owkin/phikon")
def phikon(weights=None, overrides=None, pretrained=True) -> Encoder:
    """Phikon ViT-B/16 (local Hugging Face cache)"""
    return build_hub_spec("owkin/phikon", PHIKON, weights, overrides, pretrained)


@register_encoder("hf-hub:bioptimus/H-optimus-0")
def h_optimus_0(weights=None, overrides=None, pretrained=True) -> Encoder:
    """H-optimus-0 ViT-g/14 (local Hugging Face cache)"""
    return build_hub_spec("bioptimus/H-optimus-0", H_OPTIMUS_0, weights, overrides, pretrained)


def safe_name(name: str) -> str:
    """A name usable in ``obsm['X_<name>']`` and file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "encoder"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def cached_hub_file(repo: str, filenames) -> str | None:
    """Path of the first of ``filenames`` present in the local hub cache, else None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    for fname in filenames:
        path = try_to_load_from_cache(repo_id=repo, filename=fname)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def fetch_hub_file(repo: str, filenames) -> str:
    path = cached_hub_file(repo, filenames)
    if path:
        return path
    if not _offline():
        from huggingface_hub import hf_hub_download

        for fname in filenames:
            try:
                return hf_hub_download(repo_id=repo, filename=fname)
            except Exception as e:  # gated repo, no network, missing file: try the next name, then report
                last = e
        raise InputError(None, f"hf-hub:{repo}", f"could not download weights ({type(last).__name__}: "
                         f"{str(last)[:200]}); gated models need `huggingface-cli login` and accepted terms")
    raise InputError(None, f"hf-hub:{repo}", f"weights not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                     f"set; download once with network access (huggingface-cli download {repo}) or pass weights=")


def hf_vit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert transformers ``ViTModel`` keys (Phikon) to timm VisionTransformer keys (q, k, v fused into qkv)."""
    state = {k.removeprefix("vit."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    per_layer = {
        "attention.output.dense": "attn.proj",
        "layernorm_before": "norm1",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    pat = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        m = pat.match(key)
        if not m:
            continue  # pooler, mask token: not part of the backbone
        i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
        if mod.startswith("attention.attention."):
            qkv.setdefault((i, kind), {})[mod.rsplit(".", 1)[-1]] = value
        elif mod in per_layer:
            out[f"blocks.{i}.{per_layer[mod]}.{kind}"] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise KeyError(f"layer {i} attention {kind}: has {sorted(parts)}, needs query/key/value")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def _load_state_file(model, path: str, key_format: str, label: str) -> None:
    state = extract_state_dict(read_torch_checkpoint(path), path)
    if key_format == "hf-vit":
        try:
            state = hf_vit_to_timm(state)
        except KeyError as e:
            raise InputError(path, "state_dict", f"not a transformers ViT checkpoint ({e})") from None
    state, _ = clean_state_dict(state)
    load_backbone_state(model, state, path or label)


def config_hash(cfg: dict) -> str:
    """A short digest of an architecture config, part of an encoder's identity."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_hub_spec(repo: str, spec: HubSpec, weights=None, overrides: dict | None = None,
                   pretrained: bool = True) -> Encoder:
    """A hub encoder of known architecture: weights from ``weights=`` or the local hub cache (``pretrained=False``:
    none, random weights)."""
    overrides = dict(overrides or {})
    kwargs = {**spec.timm_kwargs, **overrides.pop("timm_kwargs", {})}
    input_size = int(overrides.pop("input_size", spec.input_size))
    # the weights are found before the network is built: H-optimus-0's 1.1B parameters take half a minute and
    # several GB to initialise, which a user without its weights should not wait for to be told so
    path = (str(weights) if weights else fetch_hub_file(repo, spec.files)) if pretrained else None
    model = create_vit(spec.arch, input_size, **kwargs)
    cfg = {"arch": spec.arch, "timm_kwargs": kwargs, "source": f"hf-hub:{repo}"}
    if pretrained:
        _load_state_file(model, path, spec.key_format, f"hf-hub:{repo}")
        identity = f"hf-hub:{repo}@{file_sha256(path)}-{config_hash(cfg)}"
    else:
        identity = f"hf-hub:{repo}@untrained-{config_hash({**cfg, 'input_size': input_size})}"
    return Encoder(
        model,
        name=overrides.pop("name", spec.name),
        input_size=input_size,
        mean=overrides.pop("mean", spec.mean),
        std=overrides.pop("std", spec.std),
        target_mpp=overrides.pop("target_mpp", spec.target_mpp),
        pooling=overrides.pop("pooling", "cls"),
        precision=overrides.pop("precision", spec.precision),
        identity=identity,
        config=cfg,
    )


def build_timm_hub(repo: str, weights, overrides: dict) -> Encoder:
    """Any other timm model on the hub: its config.json must be in the local cache (or downloadable)."""
    import timm

    if weights:
        raise InputError(weights, "weights", f"hf-hub:{repo} is not a known encoder; use timm:<arch> with weights=")
    cfg_path = fetch_hub_file(repo, ("config.json",))
    fetch_hub_file(repo, ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
    kwargs = overrides.pop("timm_kwargs", {})
    try:
        model = timm.create_model(f"hf-hub:{repo}", pretrained=True, num_classes=0, **kwargs)
    except Exception as e:
        raise InputError(None, f"hf-hub:{repo}", f"timm cannot build it ({type(e).__name__}: {str(e)[:200]})") from None
    return _wrap_timm(model, repo.split("/")[-1], f"hf-hub:{repo}@{file_sha256(cfg_path)}", overrides)


def _wrap_timm(model, name: str, identity: str, overrides: dict) -> Encoder:
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    size = pcfg.get("input_size", (3, 224, 224))[-1]
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size:  # the built model's own size wins (an img_size override changes it)
        size = img_size[0] if isinstance(img_size, tuple | list) else img_size
    cfg = {"arch": pcfg.get("architecture") or name, "timm_kwargs": {}}
    if isinstance(getattr(model, "global_pool", None), str) and model.global_pool:
        cfg["timm_kwargs"]["global_pool"] = model.global_pool
    input_size = int(overrides.pop("input_size", size))
    return Encoder(
        model,
        name=safe_name(overrides.pop("name", name)),
        input_size=input_size,
        mean=overrides.pop("mean", tuple(pcfg.get("mean", IMAGENET_MEAN))),
        std=overrides.pop("std", tuple(pcfg.get("std", IMAGENET_STD))),
        target_mpp=overrides.pop("target_mpp", 0.5),
        pooling=overrides.pop("pooling", "cls"),
        precision=overrides.pop("precision", "fp32"),
        identity=identity,
        config=cfg,
    )


def build_timm(arch: str, weights=None, overrides: dict | None = None) -> Encoder:
    """``timm:<arch>``: the architecture from timm, weights from ``weights=`` or timm's pretrained loading
    through the local hub cache."""
    import timm

    overrides = dict(overrides or {})
    if arch not in timm.list_models(pretrained=False) and arch.split(".")[0] not in timm.list_models():
        raise InputError(None, "encoder", f"timm has no model named {arch!r}")
    kwargs = {"num_classes": 0, **overrides.pop("timm_kwargs", {})}
    if weights:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        _load_state_file(model, str(weights), "timm", f"timm:{arch}")
        identity = f"timm:{arch}@{file_sha256(weights)}"
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        hub_id = (model.pretrained_cfg or {}).get("hf_hub_id")
        if not hub_id:
            raise InputError(None, f"timm:{arch}", "no local weights: pass weights=PATH (this timm model has no "
                             "Hugging Face hub weights to take from the local cache)")
        files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        if _offline() and not cached_hub_file(hub_id, files):
            raise InputError(None, f"timm:{arch}", f"pretrained weights ({hub_id}) are not in the local Hugging "
                             "Face cache and HF_HUB_OFFLINE is set; pass weights=PATH")
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:
            raise InputError(None, f"timm:{arch}", f"cannot load pretrained weights from {hub_id} "
                             f"({type(e).__name__}: {str(e)[:200]}); pass weights=PATH") from None
        identity = f"timm:{arch}@{hub_id}"
    return _wrap_timm(model, arch, identity, overrides)
