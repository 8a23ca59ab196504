"""Self-supervised pre-training objectives, one per file, behind one interface.

``build_objective(name, backbone, cfg)`` returns an ``nn.Module`` whose ``forward(batch) -> (loss, logs)`` takes the
batch its ``augment`` produced, and whose ``after_step(step, total_steps)`` runs once per optimiser step (the iBOT
teacher's moving average). ``backbone`` is a timm VisionTransformer; the encoder saved after training is that
backbone alone.
"""

from __future__ import annotations

from torch import nn


def build_objective(name: str, backbone: nn.Module, cfg: dict | None = None) -> nn.Module:
    cfg = dict(cfg or {})
    if name == "mae":
        from spafoundation.models.objectives.mae import MAEObjective

        return MAEObjective(backbone, **cfg)
    if name == "ibot":
        from spafoundation.models.objectives.ibot import IBOTObjective

        return IBOTObjective(backbone, **cfg)
    raise ValueError(f"unknown pre-training objective {name!r}; choose 'ibot' or 'mae'")


OBJECTIVES = ("ibot", "mae")
