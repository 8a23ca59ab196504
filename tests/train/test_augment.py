"""The augmentations draw on the CPU generator and apply the draws where the tiles are: the same views on a GPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from spafoundation.train.augment import dihedral, gaussian_blur, ibot_views, low_resolution, mae_views

CFG = {"n_local": 2, "hed_sigma": 0.05, "hed_bias": 0.02, "blur_p": 0.5, "brightness": 0.2, "contrast": 0.2,
       "saturation": 0.1}


def test_dihedral_gives_each_image_its_own_flip_and_rotation():
    x = torch.rand(40, 3, 9, 9)
    out = dihedral(x, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the same draws, in the same order, applied image by image
    k = torch.randint(0, 4, (len(x),), generator=gen)
    flip = torch.rand(len(x), generator=gen) < 0.5
    for i in range(len(x)):
        img = x[i].flip(-1) if flip[i] else x[i]
        assert torch.equal(out[i], torch.rot90(img, int(k[i]), dims=(-2, -1)))
    assert len({int(v) for v in k}) == 4 and 0 < int(flip.sum()) < len(x)  # every branch was exercised


def test_views_are_reproducible_from_the_seed():
    tiles = (torch.rand(6, 3, 40, 40) * 255).to(torch.uint8)
    a = ibot_views(tiles, 32, torch.Generator().manual_seed(1), CFG, (0.0,) * 3, (1.0,) * 3)
    b = ibot_views(tiles, 32, torch.Generator().manual_seed(1), CFG, (0.0,) * 3, (1.0,) * 3)
    c = ibot_views(tiles, 32, torch.Generator().manual_seed(2), CFG, (0.0,) * 3, (1.0,) * 3)
    assert all(torch.equal(a[k], b[k]) for k in ("globals", "locals", "masks"))
    assert not torch.equal(a["globals"], c["globals"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_views_match_cpu_views():
    tiles = (torch.rand(8, 3, 40, 40) * 255).to(torch.uint8)
    cpu = mae_views(tiles, 32, torch.Generator().manual_seed(3), CFG, (0.1,) * 3, (0.9,) * 3)["images"]
    gpu = mae_views(tiles.cuda(), 32, torch.Generator().manual_seed(3), CFG, (0.1,) * 3, (0.9,) * 3)["images"]
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)


def test_low_resolution_holds_the_detail_of_a_coarser_scan():
    x = torch.zeros(12, 3, 32, 32)
    x[..., ::2, :] = 1.0  # stripes one pixel wide: detail only a full-resolution scan holds
    out = low_resolution(x, torch.Generator().manual_seed(4), p=0.5, max_factor=4.0)
    gen = torch.Generator().manual_seed(4)  # the same draws, applied image by image
    chosen = torch.rand(len(x), generator=gen) < 0.5
    factors = torch.exp(torch.rand(len(x), generator=gen) * math.log(4.0))
    assert 0 < int(chosen.sum()) < len(x)
    for i in range(len(x)):
        if not chosen[i]:
            assert torch.equal(out[i], x[i])
            continue
        side = round(32 / float(factors[i]))
        small = F.interpolate(x[i : i + 1], size=(side, side), mode="bilinear", antialias=True)
        assert torch.allclose(out[i], F.interpolate(small, size=(32, 32), mode="bilinear")[0].clamp(0, 1))
        if side < 32:  # any real downscale blurs the stripes towards their mean
            assert float(out[i].std()) < 0.8 * float(x[i].std())
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02)  # the stain is kept


def test_low_resolution_switched_off_draws_nothing():
    x = torch.rand(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(7)
    assert low_resolution(x, gen, p=0.0) is x
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(7)))


def test_blur_sigma_sets_the_strongest_blur():
    x = torch.zeros(16, 3, 33, 33)
    x[..., 16, 16] = 1.0
    weak = gaussian_blur(x, torch.Generator().manual_seed(2), p=1.0, max_sigma=0.5)
    strong = gaussian_blur(x, torch.Generator().manual_seed(2), p=1.0, max_sigma=3.0)
    peak_weak, peak_strong = weak[:, 0, 16, 16], strong[:, 0, 16, 16]  # the same draws: sigma 0.1 + u * (max - 0.1)
    assert bool((peak_strong <= peak_weak + 1e-6).all())
    assert float(peak_strong.mean()) < 0.5 * float(peak_weak.mean())  # a wider blur spreads the point further


def test_clean_target_is_the_view_before_its_stain_and_blur():
    tiles = (torch.rand(6, 3, 40, 40) * 255).to(torch.uint8)
    plain = mae_views(tiles, 32, torch.Generator().manual_seed(4), CFG, (0.0,) * 3, (1.0,) * 3)
    clean = mae_views(tiles, 32, torch.Generator().manual_seed(4), {**CFG, "clean_target": 1}, (0.0,) * 3, (1.0,) * 3)
    assert "targets" not in plain and torch.equal(plain["images"], clean["images"])  # the same draws either way
    # the same crop and orientation, without the photometric draws: what the view was before stain and blur
    no_photometric = {"hed_sigma": 0, "hed_bias": 0, "brightness": 0, "contrast": 0, "saturation": 0, "blur_p": 0}
    geometric = mae_views(tiles, 32, torch.Generator().manual_seed(4), no_photometric, (0.0,) * 3, (1.0,) * 3)
    torch.testing.assert_close(clean["targets"], geometric["images"])
    assert (clean["targets"] - clean["images"]).abs().mean() > 0.01
