import numpy as np
import pytest
import torch

from spafoundation.errors import InputError
from spafoundation.models import Encoder, build_encoder, create_vit, list_encoders
from tests.conftest import TINY, TINY_KWARGS


@pytest.mark.parametrize("name,width", [("random-vitt16", 192), ("random-vits16", 384), ("random-vitb16", 768)])
def test_random_names_build_with_paper_widths(name, width):
    # depth 1 keeps it fast; widths, heads and patch size stay those of the registered architecture
    enc = build_encoder(name, overrides={"timm_kwargs": {"depth": 1}})
    assert isinstance(enc, Encoder) and not enc.training
    assert enc.embed_dim == width and enc.model.patch_embed.patch_size == (16, 16)
    assert enc.mean == (0.0, 0.0, 0.0) and enc.std == (1.0, 1.0, 1.0)  # pixels in [0, 1], as the authors
    assert enc.pooling == "cls" and enc.precision == "fp32"
    assert enc.patch_um == pytest.approx(112.0)


def test_vitb16_is_the_paper_geometry():
    enc = build_encoder("random-vitb16", overrides={"timm_kwargs": {"depth": 1}})
    assert (enc.input_size, enc.target_mpp) == (224, 0.5)
    assert enc.model.blocks[0].attn.num_heads == 12 and enc.model.blocks[0].attn.qkv.bias is not None


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_encoder("random-vitt16", overrides=TINY)
    after = torch.rand(1)
    b = build_encoder("random-vitt16", overrides=TINY)
    assert torch.equal(before, after)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    c = build_encoder("random-vitt16", overrides={**TINY, "seed": 1})
    assert not torch.equal(a.model.pos_embed, c.model.pos_embed)
    assert a.identity == b.identity != c.identity


def test_forward_shapes_and_pooling(tiny_encoder):
    x = torch.rand(3, 3, 32, 32)
    assert tiny_encoder(x).shape == (3, 32)
    assert tiny_encoder.forward_tokens(x).shape == (3, 4, 32)  # (32 / 16)^2 patch tokens, no class token
    both = build_encoder("random-vitt16", overrides={**TINY, "pooling": "cls+mean"})
    out = both(x)
    assert both.embed_dim == 64 and out.shape == (3, 64)
    torch.testing.assert_close(out[:, 32:], both.forward_tokens(x).mean(1))
    mean = build_encoder("random-vitt16", overrides={**TINY, "pooling": "mean"})
    assert mean.embed_dim == 32
    torch.testing.assert_close(mean(x), mean.forward_tokens(x).mean(1))


def test_preprocess_accepts_nhwc_array_and_nchw_tensor():
    enc = build_encoder("random-vitt16", overrides={**TINY, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a = enc.preprocess(img)
    b = enc.preprocess(torch.from_numpy(img).permute(0, 3, 1, 2))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, :, 0, 0], (torch.from_numpy(img[0, 0, 0]).float() / 255 - 0.5) / 0.25)
    assert enc.preprocess(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        enc.preprocess(img[..., :2])


def test_create_vit_is_a_headless_timm_vit():
    m = create_vit("vit_small_patch16_224", 32, **TINY_KWARGS)
    assert m.num_classes == 0 and m.global_pool == "token"
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 32)


@pytest.mark.parametrize("name", ["spafoundation-vitb16", "spafoundation-vits16"])
def test_spafoundation_names_need_weights(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SPAFOUNDATION_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("SPAFOUNDATION_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="needs weights"):
        build_encoder(name)


SHIPPED = {"spafoundation-default": "DEFAULT_CHECKPOINT", "spafoundation-descriptor": "DESCRIPTOR_CHECKPOINT"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_missing_is_a_clear_error(name, monkeypatch, tmp_path):
    import spafoundation.models.vits as vits

    monkeypatch.setattr(vits, SHIPPED[name], tmp_path / "missing")
    with pytest.raises(InputError, match=f"the {name} checkpoint is not shipped"):
        build_encoder(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_when_present_and_refuses_other_weights(name, monkeypatch, tiny_folder):
    import spafoundation.models.vits as vits

    monkeypatch.setattr(vits, SHIPPED[name], tiny_folder)
    assert build_encoder(name).embed_dim == 32
    with pytest.raises(InputError, match="carries its own weights"):
        build_encoder(name, weights=tiny_folder)


def test_both_shipped_checkpoints_are_in_the_package_and_differ():
    """The two model folders ship (11 MB each, float16) as the same ViT-Ti/16 with different weights, so
    their embeddings are cached apart."""
    default, descriptor = build_encoder("spafoundation-default"), build_encoder("spafoundation-descriptor")
    assert (default.name, descriptor.name) == ("spafoundation-default", "spafoundation-descriptor")
    assert (default.embed_dim, default.input_size, default.target_mpp) == (192, 112, 1.0)
    assert (descriptor.embed_dim, descriptor.input_size, descriptor.target_mpp) == (192, 112, 1.0)
    assert default.identity != descriptor.identity
    assert not torch.equal(default.model.patch_embed.proj.weight, descriptor.model.patch_embed.proj.weight)
    assert descriptor.model.patch_embed.proj.weight.dtype == torch.float32  # stored halved, loaded as float32


def test_unknown_names_and_paths():
    with pytest.raises(InputError, match="unknown encoder"):
        build_encoder("spafoundation-vitz99")
    with pytest.raises(InputError, match="not a model folder"):
        build_encoder(__file__)
    with pytest.raises(InputError, match="randomly initialised"):
        build_encoder("random-vitt16", weights=__file__)
    assert "random-vits16" in list_encoders()
