"""Tiny pre-training configurations on real tiles of C2 (one shared tile bank per test session)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import TINY

TINY_TILES = 96


def tiny_config(objective: str, steps: int = 30, objective_params: dict | None = None, **optim) -> dict:
    from spafoundation.train.pretrain import load_config

    params = {"ibot": {"out_dim": 64, "patch_out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32},
              "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}.get(objective, {})
    cfg = load_config(None, [f"objective.name={objective}", f"optim.steps={steps}", "optim.batch_size=8",
                             "optim.warmup_steps=3", "optim.lr=1e-3", "checkpoint_every=10", "log_every=10",
                             f"data.n_tiles={TINY_TILES}", "data.sections=[C2]"])
    cfg["model"]["overrides"] = TINY
    cfg["objective"]["params"] = {**params, **(objective_params or {})}
    cfg["augment"] = {"n_local": 2}
    cfg["optim"].update(optim)
    return cfg


@pytest.fixture(scope="session")
def tile_bank_dir(tmp_path_factory, her2st_root):
    """A run folder holding the tiny tile bank, built once; tests copy it into their own run folders."""
    from spafoundation.train.pretrain import Pretrainer

    d = tmp_path_factory.mktemp("tiles")
    Pretrainer(tiny_config("mae"), her2st_root, d, progress=False)
    return d


@pytest.fixture
def run_dir(tmp_path, tile_bank_dir):
    d = tmp_path / "run"
    d.mkdir()
    for f in tile_bank_dir.glob("tiles_*.npy"):
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: several OpenMP threads spin against each other (and against other
    processes) and make a 20 ms step take a second."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
