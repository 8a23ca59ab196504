"""The pre-training loop: exact resume, data parallel over torchrun, the final model folder, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from spafoundation.cli import main
from spafoundation.train.pretrain import Pretrainer, pretrain
from tests.train.conftest import tiny_config


@pytest.mark.parametrize("objective", ["mae", "ibot"])
def test_resume_equals_uninterrupted(objective, run_dir, tmp_path, her2st_root):
    cfg = tiny_config(objective, steps=20)
    straight = Pretrainer(cfg, her2st_root, run_dir, progress=False).run()
    other = tmp_path / "interrupted"
    other.mkdir()
    for f in run_dir.glob("tiles_*.npy"):
        (other / f.name).write_bytes(f.read_bytes())
    Pretrainer(cfg, her2st_root, other, progress=False).run(stop_after=10)  # checkpoint at step 10, then "killed"
    resumed = Pretrainer(cfg, her2st_root, other, progress=False)
    assert resumed.resume() and resumed.step == 10
    history = resumed.run()
    assert [h["loss"] for h in history] == [h["loss"] for h in straight]


def test_final_folder_loads_as_encoder(run_dir, her2st_root):
    from spafoundation.models.registry import build_encoder

    final = pretrain(her2st_root, run_dir, tiny_config("mae", steps=3), name="tiny-mae", progress=False)
    enc = build_encoder(str(final))
    assert enc.name == "tiny-mae" and enc.config["training"]["steps"] == 3
    assert (run_dir / "history.csv").read_text().count("\n") == 4
    x = enc.preprocess(np.zeros((2, enc.input_size, enc.input_size, 3), np.uint8))
    assert enc(x).shape == (2, enc.embed_dim)


def test_torchrun_two_processes_end_with_identical_weights(run_dir, her2st_root):
    cfg = tiny_config("mae", steps=4)
    (run_dir / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPAFOUNDATION_DUMP_RANK_STATE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "spafoundation", "pretrain", str(her2st_root), "--config", str(run_dir / "cfg.yaml"),
           "--out", str(run_dir), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [torch.load(run_dir / f"rank{r}_state.pt") for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)
    # and the weights did move: the ranks agree because they all-reduce gradients, not because nothing trained
    init = Pretrainer(cfg, her2st_root, run_dir, progress=False).objective.backbone.state_dict()
    assert any(not torch.equal(init[k], states[0][k]) for k in init)


def test_cli_bad_config_exits_2(tmp_path, her2st_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    assert main(["pretrain", str(her2st_root), "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert main(["pretrain", str(her2st_root), "--out", str(tmp_path / "run"), "--set", "nonsense"]) == 2
    assert main(["pretrain", str(her2st_root), "--out", str(tmp_path / "run"), "--set", "colour=1"]) == 2
