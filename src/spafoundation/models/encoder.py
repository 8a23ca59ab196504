"""The Encoder module: a timm backbone plus its preprocessing, pooling and physical patch geometry."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from spafoundation.errors import InputError
from spafoundation.utils.precision import CHOICES

IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("cls", "mean", "cls+mean")  # mean: of the patch tokens
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def create_vit(arch: str, img_size: int, **timm_kwargs) -> nn.Module:
    """A timm ViT without classifier (``num_classes=0``, class-token pooling), randomly initialised.

    ``arch`` is a timm model name (``vit_base_patch16_224``); ``timm_kwargs`` override its defaults, so a tiny
    test model is ``create_vit("vit_tiny_patch16_224", 32, depth=1, embed_dim=32, num_heads=2)``.
    """
    kwargs = {"num_classes": 0, "global_pool": "token", **timm_kwargs}
    if isinstance(kwargs.get("mlp_layer"), str):  # JSON configs name timm layers, e.g. "SwiGLUPacked"
        from timm import layers as timm_layers

        layer = getattr(timm_layers, kwargs["mlp_layer"], None)
        if layer is None:
            raise ValueError(f"unknown timm mlp_layer {kwargs['mlp_layer']!r}")
        kwargs["mlp_layer"] = layer
    return timm.create_model(arch, pretrained=False, img_size=img_size, **kwargs)


def _num_prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


class Encoder(nn.Module):
    """An image encoder with the fields of the Encoder contract (docs/architecture.md).

    As timm's models: ``forward_features`` takes a float NCHW tensor that went through ``preprocess`` and returns
    every token, ``forward_head`` pools them into the embedding (B, embed_dim), and ``forward`` is both;
    ``forward_tokens`` returns the patch tokens (B, n_patch_tokens, D) without prefix tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        input_size: int,
        mean: Sequence[float] = IDENTITY_MEAN,
        std: Sequence[float] = IDENTITY_STD,
        target_mpp: float = 0.5,
        pooling: str = "cls",
        precision: str = "fp32",
        identity: str | None = None,
        config: dict | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if precision not in CHOICES:
            raise ValueError(f"precision must be one of {CHOICES}, got {precision!r}")
        self.model = model
        self.name = name
        self.input_size = int(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.target_mpp = float(target_mpp)
        self.pooling = pooling
        self.precision = precision
        self.identity = identity or name  # name + weights hash: the cache key of this encoder's outputs
        self.config = dict(config or {})  # what a model folder needs to rebuild it (models/weights.py)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.width = int(getattr(model, "embed_dim", None) or model.num_features)
        self.embed_dim = self.width * (2 if pooling == "cls+mean" else 1)
        self.num_prefix_tokens = _num_prefix_tokens(model)

    @property
    def patch_um(self) -> float:
        return self.input_size * self.target_mpp

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def preprocess(self, images) -> torch.Tensor:
        """uint8 NHWC ndarray (or HWC) / uint8 NCHW tensor -> float NCHW on the encoder's device, in [0, 1],
        normalised by ``mean``/``std`` and resized to ``input_size`` when it differs."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected uint8 (n, h, w, 3) images, got shape {images.shape}")
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        elif isinstance(images, torch.Tensor):
            x = images[None] if images.ndim == 3 else images
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected (n, 3, h, w) images, got shape {tuple(x.shape)}")
        else:
            raise TypeError(f"expected a numpy array or a torch tensor, got {type(images).__name__}")
        x = x.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self._mean) / self._std

    def _autocast(self):
        if self.precision not in ("bf16", "fp16") or self.device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every output token of the backbone, float32 (B, num_prefix_tokens + n_patch_tokens, width); a CNN's
        feature map (B, C, H, W) comes back as tokens (B, H * W, C)."""
        with self._autocast():
            feats = self.model.forward_features(x)
        if feats.ndim == 4:  # CNN feature map (B, C, H, W) -> tokens, no prefix
            feats = feats.flatten(2).transpose(1, 2)
        return feats.float()

    def split_tokens(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class embedding (B, width), patch tokens (B, n_patch_tokens, width)) of ``forward_features``' output;
        without a class token the class embedding is the mean patch token."""
        patch = features[:, self.num_prefix_tokens :]
        cls = features[:, 0] if self.num_prefix_tokens else patch.mean(dim=1)
        return cls, patch

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The pooled embedding (B, embed_dim) of ``forward_features``' output, by ``pooling``."""
        cls, patch = self.split_tokens(features)
        if self.pooling == "mean":
            return patch.mean(dim=1)
        if self.pooling == "cls":
            return cls
        return torch.cat([cls, patch.mean(dim=1)], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens (B, n_patch_tokens, width), without prefix tokens."""
        return self.split_tokens(self.forward_features(x))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled embedding (B, embed_dim) of preprocessed images."""
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, input_size={self.input_size}, target_mpp={self.target_mpp}, "
                f"patch_um={self.patch_um:g}, embed_dim={self.embed_dim}, pooling={self.pooling!r}")


def quantize_int8(encoder: Encoder) -> Encoder:
    """Dynamic int8 quantisation of every Linear layer (int8 weights, activations quantised per batch), in place.

    Attention and MLP matmuls are most of a ViT's FLOPs, so this is the CPU fast path: 1.3x (ViT-Ti/16, 112 px)
    to 2.1x (ViT-B/16, 224 px) the fp32 img/s on this machine, embeddings within cosine 0.998 of fp32 and the
    same downstream Pearson (bench/cpu_fast_path.py). Inference only; the outputs differ from fp32, so the cache
    identity changes too."""
    if encoder.identity.endswith("+int8"):
        return encoder
    if encoder.device.type != "cpu":
        raise InputError(None, "precision", f"int8 runs on CPU, not {encoder.device.type}; use bf16 or fp16 there")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao, still shipped
        encoder.model = torch.ao.quantization.quantize_dynamic(encoder.model, {nn.Linear}, dtype=torch.qint8)
    encoder.precision = "int8"
    encoder.identity = f"{encoder.identity}+int8"
    return encoder
