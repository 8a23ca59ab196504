"""Self-supervised pre-training objectives, one per file, behind one interface.

``build_objective(name, backbone, cfg)`` returns an ``nn.Module`` with ``backbone`` (the timm VisionTransformer it
trains; the encoder saved after training is that backbone alone), ``forward(batch) -> (loss, logs)`` on the batch
its views in ``train.augment`` produced, ``after_step(step, total_steps=None)``, run once after every optimiser
step (the iBOT teacher's moving average), an optional ``before_optimizer_step(step)`` that may edit gradients, and
an optional ``stalled(history) -> str | None`` that the trainer asks at log steps and prints once when it answers.
"""

from __future__ import annotations

from torch import nn


def objective_class(name: str) -> type[nn.Module]:
    if name == "mae":
        from spafoundation.models.objectives.mae import MAEObjective

        return MAEObjective
    if name == "ibot":
        from spafoundation.models.objectives.ibot import IBOTObjective

        return IBOTObjective
    if name == "maskfeat":
        from spafoundation.models.objectives.maskfeat import MaskFeatObjective

        return MaskFeatObjective
    if name == "simclr":
        from spafoundation.models.objectives.simclr import SimCLRObjective

        return SimCLRObjective
    raise ValueError(f"unknown pre-training objective {name!r}; choose one of {', '.join(OBJECTIVES)}")


def objective_params(name: str) -> tuple[str, ...]:
    """The settings an objective takes (``objective.params`` of a pre-training config): its keyword arguments."""
    import inspect

    return tuple(p for p in inspect.signature(objective_class(name)).parameters if p != "backbone")


def build_objective(name: str, backbone: nn.Module, cfg: dict | None = None) -> nn.Module:
    return objective_class(name)(backbone, **dict(cfg or {}))


OBJECTIVES = ("ibot", "mae", "maskfeat", "simclr")
SINGLE_VIEW = ("mae", "maskfeat")  # one augmented view per tile (train.augment.mae_views), targets may be clean
