"""Contrastive view matching (SimCLR's NT-Xent, Chen et al. 2020): two views of each tile, each with its own crop,
stain, colour, resolution and blur, are pulled together and pushed away from the views of every other tile in the
batch, through a small projection head on the encoder's class token.

Why on H&E: the augmentations are what differs between labs (stain, scanner, focus, resolution), so matching the
two views asks the class token to keep what the tissue is and drop how it was stained and scanned. Unlike DINO's
self-distillation, a constant embedding is not a minimum it can settle in: every other tile in the batch is a
negative, so one output for all tiles scores chance, ln(2B - 1) (logged as ``loss_vs_chance``; a run that sits at
1.0 has stalled there, e.g. with too high a learning rate)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of (2, B, D) embeddings: each of the 2B views must pick its partner (the other view of its tile)
    among the 2B - 1 others, by cosine similarity over ``temperature``; the mean cross-entropy."""
    two, b = z.shape[:2]
    if two != 2:
        raise ValueError(f"expected two views per tile, got {two}")
    z = F.normalize(z.float().reshape(2 * b, -1), dim=-1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(2 * b, device=z.device).roll(b)
    return F.cross_entropy(logits, partner)


class SimCLRObjective(nn.Module):
    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone, self.temperature = backbone, float(temperature)
        self.head = nn.Sequential(nn.Linear(backbone.embed_dim, hidden_dim), nn.GELU(),
                                  nn.Linear(hidden_dim, proj_dim))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        views = batch["globals"]  # (2, B, 3, H, W), train.augment.pair_views
        pooled = self.backbone.forward_head(self.backbone.forward_features(views.flatten(0, 1)), pre_logits=True)
        z = self.head(pooled).view(*views.shape[:2], -1)
        loss = nt_xent(z, self.temperature)
        chance = math.log(2 * views.shape[1] - 1)  # a constant embedding's loss
        return loss, {"loss": float(loss.detach()), "loss_vs_chance": float(loss.detach()) / chance}

    def after_step(self, step: int, total_steps: int | None = None) -> None:
        """Nothing to update outside the optimiser (no teacher)."""
