"""The pre-training loop: exact resume, data parallel over torchrun, the final model folder, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io.patches import tissue_fraction
from spafoundation.train.pretrain import Pretrainer, pretrain
from spafoundation.train.tiles import TileDataset, batch_indices
from tests.conftest import TINY
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


def test_cli_resume_continues_exactly(run_dir, tmp_path, her2st_root):
    """``spafoundation pretrain --resume`` after an interruption: same losses, and the checkpoint holds the
    optimiser, schedule, RNG states and the sampler's position."""
    cfg = tiny_config("mae", steps=14)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    other = tmp_path / "interrupted"
    other.mkdir()
    for f in run_dir.glob("tiles_*.npy"):
        (other / f.name).write_bytes(f.read_bytes())
    base = ["pretrain", str(her2st_root), "--config", str(cfg_file), "--quiet"]
    assert main([*base, "--out", str(run_dir)]) == 0
    Pretrainer(cfg, her2st_root, other, progress=False).run(stop_after=10)
    state = torch.load(other / "checkpoint.pt", weights_only=False)
    assert state["step"] == 10 and state["data"]["step"] == 10
    assert state["scheduler"]["last_step"] == 9 and len(state["rng"]) == 1
    assert {"torch", "numpy", "python"} <= set(state["rng"][0]) and state["optimizer"]["state"]
    assert main([*base, "--out", str(other), "--resume"]) == 0
    straight, resumed = (json.loads((d / "history.json").read_text()) for d in (run_dir, other))
    assert len(straight) == len(resumed) == 14
    assert [h["loss"] for h in resumed] == [h["loss"] for h in straight]
    # a resume under another config is refused
    assert main([*base, "--out", str(other), "--resume", "--set", "optim.lr=0.5"]) == 2


def test_tile_dataset_deterministic_on_tissue(her2st_c2):
    kw = {"n_tiles": 12, "tile_px": 32, "mpp": 3.5}
    a = TileDataset([her2st_c2], seed=3, preload=True, **kw)
    b = TileDataset([her2st_c2], seed=3, **kw)  # streamed from the slide on access
    c = TileDataset([her2st_c2], seed=4, preload=True, **kw)
    assert a.array.shape == (12, 32, 32, 3) and a.array.dtype == np.uint8 and a.tile_um == pytest.approx(112)
    np.testing.assert_array_equal(a.array, np.stack([b[i] for i in range(len(b))]))
    assert not np.array_equal(a.array, c.array)
    assert tissue_fraction(a.array).mean() > 0.5


def test_batch_indices_shard_global_batches():
    shards = [batch_indices(100, 8, 5, seed=1, rank=r, world=3) for r in range(3)]
    assert all(len(s) == 8 for s in shards) and len(np.unique(np.concatenate(shards))) == 24
    np.testing.assert_array_equal(np.concatenate(shards), batch_indices(100, 24, 5, seed=1))
    epoch = np.concatenate([batch_indices(96, 8, s, seed=0) for s in range(12)])
    assert sorted(epoch) == list(range(96))  # one epoch visits every tile once
    with pytest.raises(InputError):
        batch_indices(10, 8, 0, seed=0, world=2)


def test_final_folder_loads_as_encoder(run_dir, her2st_root):
    from spafoundation.models.registry import build_encoder

    final = pretrain(her2st_root, run_dir, tiny_config("mae", steps=3), name="tiny-mae", progress=False)
    enc = build_encoder(str(final))
    assert enc.name == "tiny-mae" and enc.config["training"]["steps"] == 3
    assert (run_dir / "history.csv").read_text().count("\n") == 4
    x = enc.preprocess(np.zeros((2, enc.input_size, enc.input_size, 3), np.uint8))
    assert enc(x).shape == (2, enc.embed_dim)


def test_ibot_continues_from_a_model_folder(run_dir, her2st_root):
    # the GPU recipe starts iBOT from the shipped MAE encoder: a random-init ViT leaves the teacher uniform
    from spafoundation.models.registry import build_encoder

    final = pretrain(her2st_root, run_dir, tiny_config("mae", steps=2), name="tiny-mae", progress=False)
    cfg = tiny_config("ibot", steps=1)
    cfg["model"]["encoder"] = str(final)
    objective = Pretrainer(cfg, her2st_root, run_dir, progress=False).objective  # the same tile bank; writes nothing
    saved = build_encoder(str(final)).model.state_dict()
    random_init = build_encoder("random-vitt16", overrides=TINY).model.state_dict()
    assert not torch.equal(saved["patch_embed.proj.weight"], random_init["patch_embed.proj.weight"])
    for net in (objective.backbone, objective.teacher["backbone"]):
        state = net.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_a_stalled_objective_is_reported_once(run_dir, her2st_root, caplog):
    trainer = Pretrainer(tiny_config("ibot", steps=25), her2st_root, run_dir, progress=False)
    seen = []
    trainer.objective.stalled = lambda history: seen.append(history[-1]["step"]) or "the teacher is uniform"
    with caplog.at_level("WARNING", logger="spafoundation.train.pretrain"):
        trainer.run()
    assert seen == [10]  # checked at log steps (log_every 10) until it says so, then no more
    assert caplog.text.count("the teacher is uniform") == 1


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "port"), [("mae", 29533), ("ibot", 29534)])
def test_torchrun_two_processes_end_with_identical_weights(objective, port, run_dir, her2st_root):
    cfg = tiny_config(objective, steps=4)
    (run_dir / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPAFOUNDATION_DUMP_RANK_STATE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
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


def test_cli_bad_config_exits_2(tmp_path, her2st_root, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    assert main(["pretrain", str(her2st_root), "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert main(["pretrain", str(her2st_root), "--out", str(tmp_path / "run"), "--set", "nonsense"]) == 2
    assert main(["pretrain", str(her2st_root), "--out", str(tmp_path / "run"), "--set", "colour=1"]) == 2
    assert main(["pretrain", str(her2st_root), "--out", str(tmp_path / "run"), "--set", "objective.name=ibot",
                 "--set", "augment.clean_target=1"]) == 2
    assert "augment.clean_target: only mae and maskfeat take their targets from a clean view, not ibot" in capsys.readouterr().err
    # a setting of the objective out of its range: the objective's own message, under the config's name
    for setting, says in (("mask_ratio=2", "mask_ratio must be in (0, 1)"),
                          ("descriptor_weight=-1", "descriptor_weight must be >= 0")):
        run = tmp_path / "run_params"
        assert main(["pretrain", str(her2st_root), "--out", str(run), "--set", f"objective.params.{setting}"]) == 2
        assert f"objective.params: {says}" in capsys.readouterr().err
        assert not run.exists() or not any(run.iterdir())
