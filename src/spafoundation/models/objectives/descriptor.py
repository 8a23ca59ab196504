"""Descriptor regression: the class token of an augmented view predicts hand-crafted colour and texture descriptors
of the same view before its stain, colour, resolution and blur augmentations (``models.handcrafted``: RGB and HED
statistics, haematoxylin and eosin histograms, gradient texture).

A self-supervised target like MaskFeat's HOG: no counts or labels, only the image. It asks the embedding to hold,
linearly, what the tissue is made of (nuclear and stromal stain, texture) whatever the lab's stain and scanner did
to it, the information that carries across patients on HER2ST, which pixel and HOG reconstruction leave to chance.
Targets are standardised by running statistics so that every descriptor weighs the same.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spafoundation.models.handcrafted import colour_texture_features

N_DESCRIPTORS = 42  # colour_texture_features' width


def view_descriptors(views: torch.Tensor) -> torch.Tensor:
    """(B, 42) float32 descriptors of float RGB views (B, 3, H, W) in [0, 1], on the views' device."""
    rgb = (views.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(colour_texture_features(np.ascontiguousarray(rgb))).to(views.device)


class DescriptorRegression(nn.Module):
    """A linear head from the class token to the standardised descriptors, and its MSE."""

    def __init__(self, width: int, n_descriptors: int = N_DESCRIPTORS, momentum: float = 0.01):
        super().__init__()
        self.head = nn.Linear(width, n_descriptors)
        self.momentum = float(momentum)
        self.register_buffer("mean", torch.zeros(n_descriptors))
        self.register_buffer("var", torch.ones(n_descriptors))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, targets: torch.Tensor) -> None:
        mean, var = targets.mean(0), targets.var(0, unbiased=False)
        if int(self.seen) == 0:  # the first batch sets the scale; later ones move it slowly
            self.mean.copy_(mean)
            self.var.copy_(var)
        else:
            self.mean.lerp_(mean, self.momentum)
            self.var.lerp_(var, self.momentum)
        self.seen += 1

    def forward(self, cls: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        descriptors = descriptors.float()
        if self.training:
            self._update(descriptors)
        target = (descriptors - self.mean) / (self.var + 1e-6).sqrt()
        return ((self.head(cls).float() - target) ** 2).mean()
