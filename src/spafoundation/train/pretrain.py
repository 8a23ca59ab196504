"""Self-supervised pre-training of a ViT encoder (iBOT or MAE) on tissue tiles, over one or many processes.

Run as ``spafoundation pretrain DATA --config cfg.yaml --out RUN`` (one process) or under ``torchrun`` (data
parallel: gloo on CPU, NCCL on GPU; each rank takes its share of every global batch). Every random draw of step
``s`` (tile order, crops, augmentations, masks) is seeded from ``(seed, s, rank)``, and the learning rate is a
function of ``s``, so a run resumed from a checkpoint continues with exactly the losses of an uninterrupted one.

The run folder holds ``config.yaml``, ``checkpoint.pt`` (atomic, every ``checkpoint_every`` steps),
``history.csv`` and ``history.json`` (step, loss and its terms, lr, img/s) and, at the end, ``final/``: the
backbone as a model folder that ``build_encoder(RUN/final)`` loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_path
from spafoundation.utils.config import FREE, check_keys, load_yaml_config, merge_config
from spafoundation.utils.distributed import current_world

log = logging.getLogger(__name__)

# tile sampling (3: Otsu tissue mask; 4: glass masked to black is none; 5: nor a picture pasted onto such an image),
# in the bank's cache key
TILES_VERSION = 5
DEFAULT_CONFIG: dict = {
    "seed": 0,
    "model": {"encoder": "random-vitt16", "overrides": {}},
    "objective": {"name": "mae", "params": {}},
    "data": {"sections": None, "n_tiles": 4000, "tile_scale": 1.25, "min_tissue": 0.5},
    "augment": {},
    "optim": {"steps": 100, "batch_size": 32, "lr": 1.5e-4, "min_lr": 1e-6, "warmup_steps": 10,
              "weight_decay": 0.05, "clip_grad": 3.0, "betas": [0.9, 0.95]},
    "checkpoint_every": 50,
    "log_every": 10,
}


# -- configuration --------------------------------------------------------------------------------------------
def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """The pre-training config: defaults, then the YAML file, then ``--set key=value`` overrides; a key that none
    of them knows (``optim.stepz``) or a value of the wrong type (``optim.steps=abc``) is an InputError naming it."""
    from spafoundation.models.objectives import OBJECTIVES, SINGLE_VIEW, objective_params
    from spafoundation.models.vits import OVERRIDE_KEYS
    from spafoundation.train.augment import OPTIONS, check_options
    from spafoundation.utils.config_types import check_value_types

    sections = {"model.overrides": OVERRIDE_KEYS, "model.overrides.timm_kwargs": FREE, "augment": OPTIONS,
                "objective.params": FREE}
    cfg = load_yaml_config(DEFAULT_CONFIG, path, overrides, sections)
    check_value_types(cfg, DEFAULT_CONFIG, path)
    check_options(cfg["augment"], path)
    for key in ("steps", "batch_size"):
        if cfg["optim"][key] < 1:
            raise InputError(path, f"optim.{key}", f"must be >= 1, got {cfg['optim'][key]!r}")
    name = cfg["objective"]["name"]
    if name not in OBJECTIVES:
        raise InputError(path, "objective.name", f"unknown objective {name!r}; choose {', '.join(OBJECTIVES)}")
    check_keys(cfg["objective"]["params"] or {}, {}, {"objective.params": objective_params(name)}, path=path,
               where="objective.params.")
    if cfg["augment"].get("clean_target") and name not in SINGLE_VIEW:
        raise InputError(path, "augment.clean_target",
                         f"only {' and '.join(SINGLE_VIEW)} take their targets from a clean view, not {name}")
    return cfg


# -- distributed ----------------------------------------------------------------------------------------------
def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: gloo on CPU, NCCL when each rank has a GPU."""
    w = current_world()
    world, rank = w.size, w.rank
    if torch.cuda.is_available():
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def lr_at(step: int, o: dict) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr`` at ``steps``."""
    if step < o["warmup_steps"]:
        return o["lr"] * (step + 1) / o["warmup_steps"]
    t = (step - o["warmup_steps"]) / max(1, o["steps"] - o["warmup_steps"])
    return o["min_lr"] + (o["lr"] - o["min_lr"]) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class WarmupCosine:
    """The learning-rate schedule as an object with a state (``lr_at`` of the step: resuming needs only the step,
    which the state records so that a checkpoint is checked against the schedule it was written with)."""

    def __init__(self, optimizer: torch.optim.Optimizer, o: dict):
        self.optimizer = optimizer
        self.params = {k: o[k] for k in ("lr", "min_lr", "warmup_steps", "steps")}
        self.last_step = -1

    def step_to(self, step: int) -> float:
        lr = lr_at(step, self.params)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"kind": "warmup_cosine", **self.params, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def normalise_config(cfg: dict) -> dict:
    """A config with every default filled in, for comparing a run's config with a checkpoint's."""
    return merge_config(DEFAULT_CONFIG, cfg)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, tokens and position embeddings (1-d or named as such)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim <= 1 or name.endswith((".bias", "cls_token", "pos_embed", "mask_token", "masked_embed",
                                             "decoder_pos", "reg_token"))
        (no_decay if flat else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_seed(*parts: int) -> int:
    """A seed from integers, identical in every process (unlike ``hash`` of strings)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] % (2**63))


# -- the run --------------------------------------------------------------------------------------------------
class Pretrainer:
    def __init__(self, cfg: dict, data_path, out_dir, *, progress: bool = True):
        from spafoundation.models.objectives import build_objective
        from spafoundation.models.registry import build_encoder

        self.cfg, self.out = normalise_config(cfg), Path(out_dir)
        cfg = self.cfg
        self.rank, self.world, self.device = init_distributed()
        self.progress = progress and self.rank == 0
        torch.manual_seed(cfg["seed"])
        m = cfg["model"]
        overrides = dict(m.get("overrides") or {})
        if cfg["objective"]["name"] == "ibot":  # local crops are smaller than the input: interpolate positions
            overrides["timm_kwargs"] = {**overrides.get("timm_kwargs", {}), "dynamic_img_size": True}
        self.encoder = build_encoder(m["encoder"], overrides={**overrides, "seed": cfg["seed"]})
        try:
            objective = build_objective(cfg["objective"]["name"], self.encoder.model, cfg["objective"].get("params"))
        except (ValueError, TypeError) as e:  # a setting out of range (mask_ratio=2): the objective says which
            raise InputError(None, "objective.params", str(e)) from None
        self.objective = objective.to(self.device)
        self.model = self.objective
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        o = cfg["optim"]
        self.optimizer = torch.optim.AdamW(param_groups(self.objective, o["weight_decay"]), lr=o["lr"],
                                           betas=tuple(o["betas"]))
        self.scheduler = WarmupCosine(self.optimizer, o)
        self.tiles = self._tiles(data_path)
        self.step, self.history = 0, []

    def _tiles(self, data_path) -> np.ndarray:
        """The tile bank (a preloaded ``TileDataset``), cached in the run folder: rank 0 builds it, the others
        wait and map it."""
        from spafoundation.train.tiles import TileDataset

        d, enc = self.cfg["data"], self.encoder
        tile_um = enc.patch_um * float(d["tile_scale"])
        tile_px = round(enc.input_size * float(d["tile_scale"]))
        key = json.dumps([TILES_VERSION, str(Path(data_path).resolve()), d.get("sections"), d["min_tissue"]])
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        path = self.out / f"tiles_{d['n_tiles']}_{tile_um:g}um_{tile_px}px_seed{self.cfg['seed']}_{digest}.npy"
        if self.rank == 0 and not path.exists():
            bank = TileDataset(data_path, n_tiles=int(d["n_tiles"]), tile_px=tile_px, tile_um=tile_um,
                               sections=d.get("sections"), seed=self.cfg["seed"],
                               min_tissue=float(d["min_tissue"]), preload=True).array
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, bank)
        if self.world > 1:
            torch.distributed.barrier()
        return np.load(path, mmap_mode="r")

    # -- checkpoints ----------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Everything a resumed run needs to continue exactly: weights (student, teacher, heads, centres),
        optimiser moments, schedule, step, the sampler's position and every rank's RNG states. (Each step
        reseeds its own draws from (seed, step, rank), so the RNG states are a belt to those braces.)"""
        from spafoundation.train.tiles import data_position

        rngs = [rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            torch.distributed.all_gather_object(rngs, rng_state())
        if self.rank != 0:
            return
        o = self.cfg["optim"]
        state = {"step": self.step, "objective": self.objective.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": rngs, "world_size": self.world,
                 "data": data_position(len(self.tiles), o["batch_size"], self.step, self.world),
                 "history": self.history, "config": self.cfg}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)
        self._write_history()

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as e:
            raise InputError(self.checkpoint_path, "checkpoint", f"unreadable ({e})") from None
        if normalise_config(state["config"]) != self.cfg:
            raise InputError(self.checkpoint_path, "config", "the checkpoint was written with another config; "
                             "resume with the run's own config.yaml")
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = int(state["step"]), list(state["history"])
        rngs = state.get("rng") or []
        if state.get("world_size", 1) == self.world and len(rngs) > self.rank:
            set_rng_state(rngs[self.rank])
        return True

    def _write_history(self) -> None:
        with atomic_path(self.out / "history.csv") as tmp:
            keys = sorted({k for h in self.history for k in h} - {"step"})
            lines = [",".join(["step", *keys])]
            lines += [",".join([str(h["step"]), *(f"{h.get(k, '')}" for k in keys)]) for h in self.history]
            Path(tmp).write_text("\n".join(lines) + "\n")
        with atomic_path(self.out / "history.json") as tmp:
            Path(tmp).write_text(json.dumps(self.history))

    # -- training -------------------------------------------------------------------------------------------
    def _batch(self, step: int) -> dict:
        from spafoundation.models.objectives.vit_tokens import patch_size
        from spafoundation.train import augment
        from spafoundation.train.tiles import as_tensor, batch_indices

        o, enc = self.cfg["optim"], self.encoder
        idx = batch_indices(len(self.tiles), o["batch_size"], step, self.cfg["seed"], self.rank, self.world)
        tiles = as_tensor(self.tiles[np.sort(idx)]).to(self.device, non_blocking=True)  # views cut on the GPU
        gen = torch.Generator().manual_seed(_step_seed(self.cfg["seed"], step, self.rank, 0))
        aug = self.cfg["augment"]
        if self.cfg["objective"]["name"] == "ibot":
            batch = augment.ibot_views(tiles, enc.input_size, gen, aug, enc.mean, enc.std,
                                       patch=patch_size(enc.model))
        elif self.cfg["objective"]["name"] == "simclr":
            batch = augment.pair_views(tiles, enc.input_size, gen, aug, enc.mean, enc.std)
        else:
            batch = augment.mae_views(tiles, enc.input_size, gen, aug, enc.mean, enc.std,
                                      descriptors=getattr(self.objective, "wants_descriptors", False))
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self, step: int) -> dict:
        o = self.cfg["optim"]
        batch = self._batch(step)
        torch.manual_seed(_step_seed(self.cfg["seed"], step, self.rank, 1))  # the objective's own draws (masks)
        lr = self.scheduler.step_to(step)
        self.objective.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss, logs = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hasattr(self.objective, "before_optimizer_step"):
            self.objective.before_optimizer_step(step)
        if o.get("clip_grad"):
            torch.nn.utils.clip_grad_norm_(self.objective.parameters(), o["clip_grad"])
        self.optimizer.step()
        self.objective.after_step(step, o["steps"])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}; lower optim.lr")
        if self.world > 1:  # report the mean loss over ranks
            t = torch.tensor([value], device=self.device)
            torch.distributed.all_reduce(t)
            logs["loss"] = float(t) / self.world
        return {**logs, "lr": lr}

    def run(self, stop_after: int | None = None) -> list[dict]:
        """Train to ``optim.steps`` (or ``stop_after`` steps, to simulate an interruption in tests)."""
        o = self.cfg["optim"]
        end = o["steps"] if stop_after is None else min(o["steps"], stop_after)
        t0, seen, first = time.perf_counter(), 0, self.step
        stalled = getattr(self.objective, "stalled", None) if self.rank == 0 else None
        while self.step < end:
            logs = self.train_step(self.step)
            seen += o["batch_size"] * self.world
            self.step += 1
            rate = seen / max(1e-9, time.perf_counter() - t0)
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in logs.items()},
                                 "img_per_s": round(rate, 2)})
            if self.step % self.cfg["checkpoint_every"] == 0 or self.step == o["steps"]:
                self.save_checkpoint()
            if stalled is not None and self.step % self.cfg["log_every"] == 0:
                warning = stalled(self.history)
                if warning:
                    log.warning(warning)
                    stalled = None  # once per run
            if self.progress and (self.step % self.cfg["log_every"] == 0 or self.step in (first + 1, end)):
                eta = (o["steps"] - self.step) * o["batch_size"] * self.world / max(rate, 1e-9)
                print(f"step {self.step}/{o['steps']}  loss {logs['loss']:.4f}  lr {logs['lr']:.2e}  "
                      f"{rate:.1f} img/s  eta {eta / 60:.1f} min", file=sys.stderr, flush=True)
        return self.history

    def save_final(self, name: str | None = None, model_card: str | None = None) -> Path:
        """The trained backbone as a model folder (rank 0); position interpolation is a training-time setting."""
        from spafoundation.models.registry import build_encoder
        from spafoundation.models.weights import save_model_folder

        m = self.cfg["model"]
        final = build_encoder(m["encoder"], overrides=dict(m.get("overrides") or {}))
        final.model.load_state_dict(self.encoder.model.state_dict())
        losses = [h["loss"] for h in self.history]
        training = {"objective": self.cfg["objective"], "steps": self.step, "data": self.cfg["data"],
                    "optim": self.cfg["optim"], "seed": self.cfg["seed"], "world_size": self.world,
                    "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
        out = self.out / "final"
        if self.rank == 0:
            save_model_folder(final, out, training=json.loads(json.dumps(training, default=str)),
                              model_card=model_card, name=name or f"pretrained-{self.cfg['objective']['name']}")
        return out


def pretrain(data_path, out_dir, cfg: dict, *, resume: bool = False, progress: bool = True,
             name: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.yaml"
    if resume and cfg_file.is_file():
        saved = yaml.safe_load(cfg_file.read_text())
        if normalise_config(saved) != normalise_config(cfg):
            raise InputError(cfg_file, "config", "differs from this run's config; resume with the same settings")
    trainer = Pretrainer(cfg, data_path, out, progress=progress)
    if trainer.rank == 0:
        with atomic_path(cfg_file) as tmp:
            Path(tmp).write_text(yaml.safe_dump(trainer.cfg, sort_keys=False))
    if resume and trainer.resume() and progress and trainer.rank == 0:
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    trainer.run()
    if os.environ.get("SPAFOUNDATION_DUMP_RANK_STATE"):  # tests: every rank's weights, to compare across ranks
        torch.save(trainer.objective.backbone.state_dict(), out / f"rank{trainer.rank}_state.pt")
    final = trainer.save_final(name)
    if trainer.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return final
