"""Self-supervised pre-training objectives, one per file, behind one interface.

``build_objective(name, backbone, cfg)`` returns an ``nn.Module`` with ``backbone`` (the timm VisionTransformer it
trains; the encoder saved after training is that backbone alone), ``forward(batch) -> (loss, logs)`` on the batch
its views in ``train.augment`` produced, ``after_step(step, total_steps=None)``, run once after every optimiser
step (the iBOT teacher's moving average), and an optional ``before_optimizer_step(step)`` that may edit gradients.
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
