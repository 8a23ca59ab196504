"""Full fine-tuning for expression, as the SpaFoundation authors did: LayerNorm + Linear on the encoder's pooled
(class-token) output, the whole encoder trainable, MSE, Adam at a small learning rate, flips and 90 degree
rotations of the spot patches. GPU-oriented (a ViT-B/16 at 224 px); tiny configurations run on CPU in tests.

Targets are standardised per gene for the loss and mapped back at prediction, so genes of every expression level
weigh the same in the MSE."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
DEFAULTS = {"epochs": 20, "lr": 1e-5, "batch_size": 64, "seed": 0, "weight_decay": 0.0}


class LinearProbe(nn.Module):
    """LayerNorm + Linear, the authors' head; also what ``FineTunedHead`` applies to cached embeddings."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def _random_dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if float(torch.rand(1, generator=gen)) < 0.5 else x


def finetune_encoder(encoder, patches: np.ndarray, targets: np.ndarray, params: dict | None = None,
                     progress: bool = False):
    """Fine-tune a copy of ``encoder`` with a LayerNorm+Linear head on uint8 patches (n, h, w, 3) to ``targets``
    (n, genes). Returns (tuned encoder, head module, y_mean, y_std, loss per epoch)."""
    p = {**DEFAULTS, **(params or {})}
    tuned = copy.deepcopy(encoder)
    device = tuned.device
    y_mean, y_std = targets.mean(0), targets.std(0) + 1e-6
    y = torch.tensor((targets - y_mean) / y_std, dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(p["seed"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(p["seed"]))
        head = LinearProbe(tuned.embed_dim, targets.shape[1]).to(device)
        opt = torch.optim.Adam(list(tuned.parameters()) + list(head.parameters()), lr=p["lr"],
                               weight_decay=p["weight_decay"])
        losses = []
        for epoch in range(int(p["epochs"])):
            tuned.train()
            head.train()
            order = torch.randperm(len(patches), generator=gen)
            total = 0.0
            for b in order.split(int(p["batch_size"])):
                idx = np.sort(b.numpy())
                x = _random_dihedral(tuned.preprocess(patches[idx]), gen)
                loss = nn.functional.mse_loss(head(tuned(x)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(patches))
            if progress:
                log.info("fine-tune epoch %d/%d: mse %.4f", epoch + 1, p["epochs"], losses[-1])
    tuned.eval()
    head.eval()
    return tuned, head, y_mean, y_std, losses
