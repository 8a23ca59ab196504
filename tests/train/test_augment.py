"""The augmentations draw on the CPU generator and apply the draws where the tiles are: the same views on a GPU."""

import pytest
import torch

from spafoundation.train.augment import dihedral, ibot_views, mae_views

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
