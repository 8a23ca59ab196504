"""iBOT (Zhou et al. 2022), the SpaFoundation objective: self-distillation with an EMA teacher on the class token
(DINO loss across global and local crops) plus masked image modelling on patch tokens (the student sees masked
global crops and predicts the teacher's patch-token distributions at the masked positions).

Batch layout (``train.augment.ibot_views``): ``globals`` (2, B, 3, G, G), ``locals`` (L, B, 3, l, l) or None,
``masks`` (2, B, N) bool, True where the student's patch token is replaced by the learnable ``masked_embed``."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from spafoundation.models.objectives.dino_head import DINOHead
from spafoundation.models.objectives.vit_tokens import n_prefix, patch_tokens, run_blocks


class IBOTObjective(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int = 4096, patch_out_dim: int = 4096, hidden_dim: int = 1024,
                 bottleneck_dim: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_steps: int = 0, center_momentum: float = 0.9,
                 momentum_teacher: float = 0.996, lambda_patch: float = 1.0, freeze_prototypes_steps: int = 0,
                 total_steps: int = 100_000):
        super().__init__()
        d = backbone.embed_dim
        self.backbone = backbone
        self.masked_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.head = DINOHead(d, out_dim, hidden_dim, bottleneck_dim)
        self.patch_head = DINOHead(d, patch_out_dim, hidden_dim, bottleneck_dim)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": copy.deepcopy(self.head),
                                      "patch_head": copy.deepcopy(self.patch_head)})
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        for m in self.teacher.modules():  # the teacher gives targets: no stochastic depth or dropout (as in DINO)
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
            elif isinstance(m, nn.Dropout):
                m.p = 0.0
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, 1, patch_out_dim))
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp, self.warmup_teacher_steps = warmup_teacher_temp, warmup_teacher_steps
        self.center_momentum, self.momentum_teacher, self.lambda_patch = center_momentum, momentum_teacher, lambda_patch
        # DINO's stabiliser: the prototypes stay fixed for the first steps, while the rest of the student settles
        self.freeze_prototypes_steps = int(freeze_prototypes_steps)
        self.total_steps = int(total_steps)  # the teacher momentum's cosine; the trainer passes its own
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # saved with the state: exact resume

    # -- networks ----------------------------------------------------------------------------------------------
    @staticmethod
    def _tokens(vit: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None,
                masked_embed: torch.Tensor | None = None) -> torch.Tensor:
        x = patch_tokens(vit, images)
        if mask is not None:
            x = torch.where(mask[..., None], masked_embed.to(x.dtype), x)
        b = len(x)
        side = math.isqrt(x.shape[1])
        if getattr(vit, "dynamic_img_size", False):
            x = x.reshape(b, side, side, -1)  # timm's dynamic path interpolates positions from the NHWC grid
        return run_blocks(vit, vit._pos_embed(x))

    def _teacher_temp(self) -> float:
        step = int(self.steps_done)
        if step < self.warmup_teacher_steps:
            f = step / max(1, self.warmup_teacher_steps)
            return self.warmup_teacher_temp + f * (self.teacher_temp - self.warmup_teacher_temp)
        return self.teacher_temp

    # -- loss --------------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        globals_, locals_, masks = batch["globals"], batch.get("locals"), batch["masks"]
        n_glob, b = globals_.shape[:2]
        k = n_prefix(self.backbone)
        t_temp = self._teacher_temp()
        with torch.no_grad():
            t_tok = self._tokens(self.teacher["backbone"], globals_.flatten(0, 1))
            t_cls = self.teacher["head"](t_tok[:, 0])
            t_patch = self.teacher["patch_head"](t_tok[:, k:])
            t_cls_p = F.softmax((t_cls - self.center) / t_temp, dim=-1).view(n_glob, b, -1)
            t_patch_p = F.softmax((t_patch - self.patch_center) / t_temp, dim=-1).view(n_glob, b, *t_patch.shape[1:])
        s_tok = self._tokens(self.backbone, globals_.flatten(0, 1), masks.flatten(0, 1), self.masked_embed)
        s_cls = [self.head(s_tok[:, 0]).view(n_glob, b, -1)]
        s_patch = self.patch_head(s_tok[:, k:]).view(n_glob, b, *t_patch.shape[1:])
        if locals_ is not None and len(locals_):
            l_tok = self._tokens(self.backbone, locals_.flatten(0, 1))
            s_cls.append(self.head(l_tok[:, 0]).view(len(locals_), b, -1))
        s_cls = torch.cat(s_cls)
        # DINO: every student crop against every teacher global crop of another view
        dino, pairs = 0.0, 0
        for ti in range(n_glob):
            for si in range(len(s_cls)):
                if si == ti:
                    continue
                dino = dino + torch.sum(-t_cls_p[ti] * F.log_softmax(s_cls[si] / self.student_temp, dim=-1),
                                        dim=-1).mean()
                pairs += 1
        dino = dino / max(1, pairs)
        # iBOT: masked patch tokens of each global crop against the teacher's tokens of the same crop
        m = masks.float()
        ce = torch.sum(-t_patch_p * F.log_softmax(s_patch / self.student_temp, dim=-1), dim=-1)
        ibot = ((ce * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1.0)).mean()
        loss = dino + self.lambda_patch * ibot
        self._update_centers(t_cls, t_patch)
        return loss, {"loss": float(loss.detach()), "dino": float(dino.detach()), "ibot": float(ibot.detach())}

    def stalled(self, history: list[dict], window: int = 50, after: int = 100) -> str | None:
        """A warning when nothing is being distilled: over the last ``window`` steps, once ``after`` steps are done,
        the DINO term averages within 0.5% of ln(out_dim), the cross-entropy of a uniform teacher. From random
        weights a ViT maps every tile to nearly the same class token; once the centre has caught up the teacher is
        uniform and stays so (three CPU runs on HER2ST tiles, MODEL_CARD.md of the shipped encoder)."""
        recent = [h["dino"] for h in history[-window:] if "dino" in h]
        if len(recent) < window or history[-1]["step"] < after:
            return None
        uniform, mean = math.log(self.center.shape[1]), sum(recent) / len(recent)
        if mean < 0.995 * uniform:
            return None
        return (f"iBOT is not learning: the DINO term has averaged {mean:.3f} over the last "
                f"{window} steps, at ln(out_dim) = {uniform:.3f}, the loss of a uniform teacher. A randomly "
                "initialised ViT gives every tile nearly the same class token; start from a pre-trained encoder "
                "(model.encoder: spafoundation-default or a model folder)")

    @torch.no_grad()
    def _update_centers(self, t_cls: torch.Tensor, t_patch: torch.Tensor) -> None:
        cls_mean, patch_mean = t_cls.mean(0, keepdim=True), t_patch.mean(dim=(0, 1), keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ws = torch.distributed.get_world_size()
            torch.distributed.all_reduce(cls_mean)
            torch.distributed.all_reduce(patch_mean)
            cls_mean, patch_mean = cls_mean / ws, patch_mean / ws
        m = self.center_momentum
        self.center.mul_(m).add_(cls_mean, alpha=1 - m)
        self.patch_center.mul_(m).add_(patch_mean, alpha=1 - m)

    def before_optimizer_step(self, step: int) -> None:
        """DINO's stabiliser: the prototypes stay fixed for the first ``freeze_prototypes_steps`` steps (their
        gradients are dropped after the backward pass, so data-parallel runs still see every parameter used)."""
        if step < self.freeze_prototypes_steps:
            self.head.prototypes.grad = None
            self.patch_head.prototypes.grad = None

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int | None = None) -> None:
        """EMA teacher, momentum rising from ``momentum_teacher`` to 1 on a cosine over ``total_steps``
        (default: the ``total_steps`` the objective was built with)."""
        total = int(total_steps or self.total_steps)
        self.steps_done.fill_(step + 1)
        mom = 1 - (1 - self.momentum_teacher) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2
        for name, student in (("backbone", self.backbone), ("head", self.head), ("patch_head", self.patch_head)):
            for ps, pt in zip(student.parameters(), self.teacher[name].parameters(), strict=True):
                pt.mul_(mom).add_(ps.detach(), alpha=1 - mom)
