"""Masked feature prediction (MaskFeat, Wei et al. 2022): mask a share of the patch tokens, run the encoder on the
whole grid with a learned mask token in their place, and regress each masked patch's histograms of oriented
gradients (HOG) from its output token.

Why on H&E: MAE reconstructs pixels, so much of what it learns is colour, which is what differs between labs. A
HOG histogram normalised per patch and channel keeps the shape of edges (nuclei, membranes, fibres) and drops their
contrast, so a stain that is stronger or weaker leaves the target nearly unchanged while the input still varies
under the stain augmentations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spafoundation.models.objectives.vit_tokens import (
    grid_pos_embed,
    n_prefix,
    patch_size,
    patch_tokens,
    run_with_prefix,
)


def hog_targets(images: torch.Tensor, patch: int, cell: int = 8, bins: int = 9) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C * (patch / cell)^2 * bins): per patch, row-major as the ViT sees it, the unsigned
    gradient-orientation histograms of its cells, magnitude-weighted with linear interpolation between the two
    nearest of ``bins`` orientations, L2-normalised per patch and channel (so invariant to each channel's contrast)."""
    if patch % cell:
        raise ValueError(f"the patch ({patch} px) must be a whole number of cells ({cell} px)")
    b, c, h, w = images.shape
    x = F.pad(images.float(), (1, 1, 1, 1), mode="replicate")
    gx = x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2]
    gy = x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1]
    magnitude = torch.sqrt(gx * gx + gy * gy)
    position = torch.remainder(torch.atan2(gy, gx), math.pi) / math.pi * bins  # [0, bins)
    low = torch.floor(position)
    upper_weight = position - low
    low = low.long() % bins
    votes = torch.zeros(b, c, bins, h, w, dtype=magnitude.dtype, device=images.device)
    votes.scatter_add_(2, low[:, :, None], (magnitude * (1 - upper_weight))[:, :, None])
    votes.scatter_add_(2, ((low + 1) % bins)[:, :, None], (magnitude * upper_weight)[:, :, None])
    cells = F.avg_pool2d(votes.reshape(b, c * bins, h, w), cell)  # (B, C*bins, H/cell, W/cell)
    k = patch // cell
    gh, gw = h // patch, w // patch
    cells = cells.reshape(b, c, bins, gh, k, gw, k)
    per_patch = cells.permute(0, 3, 5, 1, 4, 6, 2).reshape(b, gh * gw, c, k * k * bins)
    per_patch = per_patch / (per_patch.norm(dim=-1, keepdim=True) + 1e-6)
    return per_patch.reshape(b, gh * gw, c * k * k * bins)


class MaskFeatObjective(nn.Module):
    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.4, hog_cell: int = 8, hog_bins: int = 9):
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError("mask_ratio must be in (0, 1)")
        p = patch_size(backbone)
        if p % int(hog_cell):
            raise ValueError(f"hog_cell must divide the patch size ({p} px), got {hog_cell}")
        self.backbone, self.mask_ratio = backbone, float(mask_ratio)
        self.hog_cell, self.hog_bins = int(hog_cell), int(hog_bins)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.to_hog = nn.Linear(backbone.embed_dim, 3 * (p // self.hog_cell) ** 2 * self.hog_bins)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def encode_masked(self, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Output patch tokens (B, N, D) of the whole grid with the ``masked`` (B, N) tokens replaced."""
        vit = self.backbone
        tokens = patch_tokens(vit, images)
        tokens = torch.where(masked[..., None], self.mask_token.to(tokens.dtype), tokens)
        return run_with_prefix(vit, tokens + grid_pos_embed(vit, tokens.shape[1]))[:, n_prefix(vit):]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["images"]
        b, n = len(images), self.backbone.patch_embed.num_patches
        n_mask = min(n - 1, max(1, round(n * self.mask_ratio)))
        order = torch.rand(b, n, device=images.device).argsort(dim=1)
        masked = torch.zeros(b, n, dtype=torch.bool, device=images.device).scatter(1, order[:, :n_mask], True)
        pred = self.to_hog(self.encode_masked(images, masked))
        with torch.no_grad():
            target = hog_targets(batch.get("targets", images), patch_size(self.backbone), self.hog_cell,
                                 self.hog_bins)
        per_patch = ((pred.float() - target) ** 2).mean(-1)
        loss = (per_patch * masked).sum() / masked.sum()
        return loss, {"loss": float(loss.detach())}

    def after_step(self, step: int, total_steps: int | None = None) -> None:
        """Nothing to update outside the optimiser (no teacher)."""
