"""Running a timm VisionTransformer on token sets it was not written for: masked or subsampled patches."""

from __future__ import annotations

import torch
from torch import nn


def patch_tokens(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch embeddings (B, N, D) before position embedding."""
    x = vit.patch_embed(images)
    return x.flatten(1, 2) if x.ndim == 4 else x  # timm may return NHWC with dynamic image size


def add_positions(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Prefix tokens + position embeddings, as timm's ``_pos_embed`` does for the full grid."""
    return vit._pos_embed(tokens)


def run_blocks(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = vit.norm_pre(x) if hasattr(vit, "norm_pre") else x
    for blk in vit.blocks:
        x = blk(x)
    return vit.norm(x)


def n_prefix(vit: nn.Module) -> int:
    return int(getattr(vit, "num_prefix_tokens", 1))


def patch_size(vit: nn.Module) -> int:
    ps = vit.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def grid_pos_embed(vit: nn.Module, n_tokens: int) -> torch.Tensor:
    """Position embeddings of the patch grid (1, N, D), without the prefix positions."""
    pe = vit.pos_embed
    if getattr(vit, "no_embed_class", False):
        return pe[:, :n_tokens]
    return pe[:, n_prefix(vit):n_prefix(vit) + n_tokens]


def run_with_prefix(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The blocks over the class token (with its position, as timm adds it) followed by ``tokens`` (B, N', D),
    patch tokens that already hold their own positions: any subset of the grid, or the grid with some replaced."""
    prefix = []
    if getattr(vit, "cls_token", None) is not None:
        cls = vit.cls_token if getattr(vit, "no_embed_class", False) else vit.cls_token + vit.pos_embed[:, :1]
        prefix.append(cls.expand(len(tokens), -1, -1))
    return run_blocks(vit, torch.cat([*prefix, tokens], dim=1))
