"""iBOT, MAE (with and without its descriptor term), MaskFeat and SimCLR losses fall on real tiles; the pieces they are made of behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spafoundation.models.handcrafted import colour_texture_features
from spafoundation.models.objectives.descriptor import DescriptorRegression, view_descriptors
from spafoundation.models.objectives.ibot import IBOTObjective
from spafoundation.models.objectives.mae import MAEObjective, patchify
from spafoundation.models.objectives.maskfeat import MaskFeatObjective, hog_targets
from spafoundation.models.objectives.simclr import nt_xent
from spafoundation.models.registry import build_encoder
from spafoundation.train.augment import block_masks, hed_jitter, ibot_views, mae_views, random_masks
from spafoundation.train.pretrain import Pretrainer, lr_at
from tests.conftest import TINY
from tests.train.conftest import tiny_config


# iBOT: with the teacher's centre held at zero, 30 steps measure distillation itself; with centring on, the
# loss first climbs towards log(K) as the centre moves (DINO's early dynamics), which says nothing in 30 steps.
@pytest.mark.parametrize(("objective", "params"), [("mae", {}), ("maskfeat", {}),
                                                   ("ibot", {"center_momentum": 1.0, "teacher_temp": 0.04})])
def test_loss_falls_over_30_steps(objective, params, run_dir, her2st_root):
    trainer = Pretrainer(tiny_config(objective, steps=30, objective_params=params), her2st_root, run_dir,
                         progress=False)
    history = trainer.run()
    losses = [h["loss"] for h in history]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    if objective == "ibot":  # both terms learn
        for term in ("dino", "ibot"):
            assert np.mean([h[term] for h in history[-5:]]) < np.mean([h[term] for h in history[:5]])


def test_ibot_teacher_is_a_moving_average(run_dir, her2st_root):
    trainer = Pretrainer(tiny_config("ibot", steps=2), her2st_root, run_dir, progress=False)
    obj = trainer.objective
    before = [p.clone() for p in obj.teacher["backbone"].parameters()]
    trainer.run()
    after = list(obj.teacher["backbone"].parameters())
    student = list(obj.backbone.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert any(moved) and not any(p.requires_grad for p in after)
    assert not all(torch.equal(a, s) for a, s in zip(after, student, strict=True))  # lags the student
    assert int(obj.steps_done) == 2
    assert obj.center.abs().sum() > 0  # centring is on by default


def test_ibot_teacher_has_no_stochastic_depth():
    # the recipes train with drop_path_rate > 0: the student drops residual branches, the teacher's targets must not
    tiny = {**TINY, "timm_kwargs": {**TINY["timm_kwargs"], "drop_path_rate": 0.5, "drop_rate": 0.5}}
    obj = IBOTObjective(build_encoder("random-vitt16", overrides=tiny).model, out_dim=16, patch_out_dim=16,
                        hidden_dim=16, bottleneck_dim=8).train()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher = [obj._tokens(obj.teacher["backbone"], x) for _ in range(2)]
        student = [obj._tokens(obj.backbone, x) for _ in range(2)]
    torch.testing.assert_close(teacher[0], teacher[1])
    assert not torch.allclose(student[0], student[1])


def test_ibot_stalled_says_so_at_a_uniform_teacher_only():
    obj = IBOTObjective(build_encoder("random-vitt16", overrides=TINY).model, out_dim=1024, patch_out_dim=16,
                        hidden_dim=16, bottleneck_dim=8)
    uniform = float(np.log(1024))

    def history(dino, steps=120):
        return [{"step": s + 1, "dino": dino} for s in range(steps)]

    assert "uniform teacher" in obj.stalled(history(uniform))
    assert "uniform teacher" in obj.stalled(history(uniform - 0.02))  # 6.91: stop 28's CPU runs from random weights
    assert obj.stalled(history(uniform - 0.13)) is None  # 6.80: the run from the MAE encoder at step 100
    assert obj.stalled(history(uniform, steps=99)) is None  # too early to tell: the centre is still moving
    assert obj.stalled([{"step": 200, "loss": 1.0}] * 60) is None  # no DINO term logged


def test_patchify_and_masks():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 4, 12)
    torch.testing.assert_close(p[0, 1].view(2, 2, 3)[..., 0], x[0, 0, :2, 2:])
    g = torch.Generator().manual_seed(0)
    m = block_masks(64, 7, g, ratio=(0.2, 0.4), prob=1.0)
    share = m.float().mean(1)
    assert m.shape == (64, 49) and (share > 0.1).all() and (share < 0.7).all()
    r = random_masks(64, 7, g, ratio=(0.2, 0.4), prob=0.5)
    masked = r.any(1)
    assert 10 < int(masked.sum()) < 54 and (r[masked].float().mean(1) >= 0.18).all()


def test_views_from_uint8_equal_views_from_float():
    tiles = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    cfg = {"n_local": 2, "mask_shape": "rand", "mask_prob": 1.0}
    a = ibot_views(tiles, 32, torch.Generator().manual_seed(1), cfg, (0.5,) * 3, (0.2,) * 3)
    b = ibot_views(tiles.float() / 255, 32, torch.Generator().manual_seed(1), cfg, (0.5,) * 3, (0.2,) * 3)
    assert a["globals"].shape == (2, 3, 3, 32, 32) and a["locals"].shape == (2, 3, 3, 16, 16)
    assert a["masks"].shape == (2, 3, 4) and a["masks"].any()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_hed_jitter_identity_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(hed_jitter(x, g, sigma=0.0, bias=0.0), x)
    y = hed_jitter(x, g, sigma=0.2, bias=0.05)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(x, y)


def test_lr_schedule():
    o = {"lr": 1.0, "min_lr": 0.0, "warmup_steps": 10, "steps": 110}
    assert lr_at(0, o) == pytest.approx(0.1) and lr_at(9, o) == pytest.approx(1.0)
    assert lr_at(60, o) == pytest.approx(0.5) and lr_at(110, o) == pytest.approx(0.0, abs=1e-9)


def test_hog_targets_follow_edges_and_ignore_contrast():
    # vertical stripes: the gradient runs along x (orientation 0: bin 0); horizontal ones along y (pi / 2, halfway
    # between bins 4 and 5 of 9: half of each vote to either)
    stripes = (torch.arange(32) // 4 % 2).float()
    vertical = stripes.view(1, 1, 1, 32).expand(1, 3, 32, 32).clone()
    horizontal = vertical.transpose(-1, -2).clone()
    for image, peaks in ((vertical, [0]), (horizontal, [4, 5])):
        hog = hog_targets(image, patch=16, cell=8, bins=9)
        assert hog.shape == (1, 4, 3 * 4 * 9)
        per_bin = hog.view(1, 4, 3, 4, 9).sum(dim=(0, 1, 2, 3))
        torch.testing.assert_close(per_bin[peaks], per_bin[peaks[0]].expand(len(peaks)))
        assert per_bin[peaks].sum() > 0.99 * per_bin.sum()
    # each channel's histograms are normalised per patch: a weaker or stronger stain (scale and offset per channel)
    # gives the same targets
    tissue = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    restained = tissue * torch.tensor([0.5, 1.5, 0.8]).view(1, 3, 1, 1) + 0.1
    torch.testing.assert_close(hog_targets(tissue, 16), hog_targets(restained, 16), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="whole number of cells"):
        hog_targets(tissue, 16, cell=6)


def test_maskfeat_loss_counts_masked_tokens_only():
    obj = MaskFeatObjective(build_encoder("random-vitt16", overrides=TINY).model, mask_ratio=0.5)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    loss, logs = obj({"images": x})
    assert torch.isfinite(loss) and logs["loss"] == pytest.approx(float(loss.detach()))
    # a target that differs only at unmasked tokens leaves the loss unchanged: recompute the same masks
    torch.manual_seed(0)
    order = torch.rand(3, 4).argsort(dim=1)
    masked = torch.zeros(3, 4, dtype=torch.bool).scatter(1, order[:, :2], True)
    pred = obj.to_hog(obj.encode_masked(x, masked))
    target = hog_targets(x, 16)
    expected = (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()
    torch.testing.assert_close(loss, expected)


def test_simclr_learns_to_match_views_on_real_tiles(run_dir, her2st_root):
    # a batch of 16 tiles is a noisy contrastive task: the check is that 30 steps leave a constant embedding's
    # loss, ln(2 * 16 - 1), behind (to about 0.87 of it), not a fixed rate of descent
    cfg = tiny_config("simclr", steps=30, objective_params={"hidden_dim": 32, "proj_dim": 16}, batch_size=16)
    history = Pretrainer(cfg, her2st_root, run_dir, progress=False).run()
    first, last = (np.mean([h["loss_vs_chance"] for h in part]) for part in (history[:5], history[-5:]))
    assert first > 0.97 and last < 0.93 * first


def test_nt_xent_rewards_matched_views_and_scores_a_constant_embedding_at_chance():
    b = 8
    distinct = torch.eye(b, 16)  # every tile its own direction, both views on it
    assert float(nt_xent(torch.stack([distinct, distinct]), temperature=0.1)) < 0.01
    constant = torch.ones(2, b, 16)
    assert float(nt_xent(constant, temperature=0.1)) == pytest.approx(np.log(2 * b - 1), rel=1e-5)
    swapped = torch.stack([distinct, distinct.roll(1, dims=0)])  # partners disagree
    assert float(nt_xent(swapped, temperature=0.1)) > np.log(2 * b - 1)


def test_mae_descriptor_term_learns_the_clean_views_descriptors(run_dir, her2st_root):
    cfg = tiny_config("mae", steps=30, objective_params={"descriptor_weight": 1.0, "norm_pix_loss": False})
    cfg["augment"].update({"hed_sigma": 0.1, "clean_target": 1})
    history = Pretrainer(cfg, her2st_root, run_dir, progress=False).run()
    for term in ("pixel_loss", "descriptor_loss"):
        first, last = (np.mean([h[term] for h in part]) for part in (history[:5], history[-5:]))
        assert last < 0.9 * first, term
    assert history[-1]["loss"] == pytest.approx(history[-1]["pixel_loss"] + history[-1]["descriptor_loss"], rel=1e-4)


def test_mae_views_describe_the_view_before_its_stain():
    tiles = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    cfg = {"hed_sigma": 0.3, "hed_bias": 0.05, "clean_target": 1}
    views = mae_views(tiles, 32, torch.Generator().manual_seed(0), cfg, (0.0,) * 3, (1.0,) * 3, descriptors=True)
    clean = (views["targets"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # identity normalisation
    np.testing.assert_allclose(views["descriptors"].numpy(), colour_texture_features(clean), rtol=1e-5, atol=1e-6)
    assert views["descriptors"].shape == (4, 42)
    assert not torch.allclose(view_descriptors(views["images"]), views["descriptors"])  # not the stained view's
    plain = mae_views(tiles, 32, torch.Generator().manual_seed(0), cfg, (0.0,) * 3, (1.0,) * 3)
    assert "descriptors" not in plain
    torch.testing.assert_close(plain["images"], views["images"])  # describing draws nothing


def test_descriptor_regression_standardises_targets_by_running_statistics():
    reg = DescriptorRegression(width=8, n_descriptors=3, momentum=0.5)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(64, 3, generator=gen) * torch.tensor([1.0, 10.0, 100.0]) + 5
    cls = torch.randn(64, 8, generator=gen)
    loss = reg(cls, targets)  # the first batch sets the statistics: each column standardised
    z = (targets - targets.mean(0)) / targets.std(0, unbiased=False)
    torch.testing.assert_close(loss, ((reg.head(cls) - z) ** 2).mean(), rtol=1e-4, atol=1e-5)
    reg(cls, targets + 2)  # later batches move them by the momentum
    torch.testing.assert_close(reg.mean, targets.mean(0) + 1)
    reg.eval()
    reg(cls, targets + 100)  # never in evaluation
    torch.testing.assert_close(reg.mean, targets.mean(0) + 1)
    assert int(reg.seen) == 2


def test_mae_descriptor_term_needs_the_descriptors():
    obj = MAEObjective(build_encoder("random-vitt16", overrides=TINY).model, decoder_dim=16, decoder_depth=1,
                       decoder_heads=2, descriptor_weight=0.5)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="descriptors"):
        obj({"images": x})
    loss, logs = obj({"images": x, "descriptors": torch.rand(2, 42)})
    assert float(loss) == pytest.approx(logs["pixel_loss"] + 0.5 * logs["descriptor_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="descriptor_weight"):
        MAEObjective(obj.backbone, descriptor_weight=-1)
