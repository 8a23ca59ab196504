"""Masked autoencoder (He et al. 2022): encode the visible 25% of patches, reconstruct the pixels of the rest.

Cheaper than iBOT (one view, a quarter of the tokens through the encoder) and it keeps colour and texture, which
expression regression uses; the loss is the MSE on per-patch normalised pixels of the masked patches. With
``descriptor_weight`` > 0 the class token of the whole view also regresses the clean view's colour and texture
descriptors (``descriptor.py``), at the cost of a second, unmasked pass through the encoder."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from spafoundation.models.objectives.descriptor import DescriptorRegression
from spafoundation.models.objectives.vit_tokens import (
    grid_pos_embed,
    n_prefix,
    patch_size,
    patch_tokens,
    run_with_prefix,
)


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), row-major patches as the ViT sees them."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class MAEObjective(nn.Module):
    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = True,
                 descriptor_weight: float = 0.0):
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError("mask_ratio must be in (0, 1)")
        if not descriptor_weight >= 0:
            raise ValueError("descriptor_weight must be >= 0")
        self.descriptor_weight = float(descriptor_weight)
        self.descriptor = DescriptorRegression(backbone.embed_dim) if self.descriptor_weight else None
        self.backbone, self.mask_ratio, self.norm_pix_loss = backbone, float(mask_ratio), bool(norm_pix_loss)
        n = backbone.patch_embed.num_patches
        p = patch_size(backbone)
        self.to_decoder = nn.Linear(backbone.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n, decoder_dim))
        self.decoder = nn.ModuleList(Block(decoder_dim, decoder_heads, qkv_bias=True) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.to_pixels = nn.Linear(decoder_dim, p * p * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def encode_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        tokens = patch_tokens(vit, images)
        tokens = tokens + grid_pos_embed(vit, tokens.shape[1])
        return run_with_prefix(vit, torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1])))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["images"]
        b = len(images)
        n = self.decoder_pos.shape[1]
        n_keep = max(1, round(n * (1 - self.mask_ratio)))
        order = torch.rand(b, n, device=images.device).argsort(dim=1)
        keep = order[:, :n_keep]
        latent = self.encode_visible(images, keep)[:, n_prefix(self.backbone):]
        dec = self.mask_token.expand(b, n, -1).clone()
        dec = dec.scatter(1, keep[..., None].expand(-1, -1, dec.shape[-1]), self.to_decoder(latent))
        dec = dec + self.decoder_pos
        for blk in self.decoder:
            dec = blk(dec)
        pred = self.to_pixels(self.decoder_norm(dec))
        target = patchify(batch.get("targets", images), patch_size(self.backbone))
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(b, n, device=images.device).scatter(1, keep, 0.0)
        per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
        loss = (per_patch * masked).sum() / masked.sum()
        if self.descriptor is None:
            return loss, {"loss": float(loss.detach())}
        if "descriptors" not in batch:
            raise ValueError("descriptor_weight > 0 needs the views' descriptors (augment.mae_views(descriptors=True))")
        cls = self.backbone.forward_features(images)[:, 0]  # the pooled embedding the encoder is used with
        described = self.descriptor(cls, batch["descriptors"])
        logs = {"pixel_loss": float(loss.detach()), "descriptor_loss": float(described.detach())}
        loss = loss + self.descriptor_weight * described
        return loss, {"loss": float(loss.detach()), **logs}

    @property
    def wants_descriptors(self) -> bool:
        return self.descriptor is not None

    def after_step(self, step: int, total_steps: int | None = None) -> None:
        """Nothing to update outside the optimiser (no teacher)."""
