import pytest
import torch

from spafoundation.errors import InputError
from spafoundation.models import build_encoder, create_vit
from spafoundation.models.hub import H_OPTIMUS_0, UNI, hf_vit_to_timm
from tests.conftest import TINY_KWARGS


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("repo", ["MahmoodLab/UNI", "owkin/phikon", "bioptimus/H-optimus-0"])
def test_hub_encoder_offline_without_cache_names_the_repo(repo, empty_hf_cache):
    with pytest.raises(InputError, match=repo):
        build_encoder(f"hf-hub:{repo}")


def test_timm_name_offline_without_weights(empty_hf_cache):
    with pytest.raises(InputError, match="weights"):
        build_encoder("timm:vit_tiny_patch16_224")
    with pytest.raises(InputError, match="no model named"):
        build_encoder("timm:no_such_model_xyz")


def test_timm_name_with_local_weights(tmp_path):
    src = create_vit("vit_tiny_patch16_224", 32, **TINY_KWARGS)
    state = {**src.state_dict(), "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "w.pth")
    enc = build_encoder("timm:vit_tiny_patch16_224", weights=tmp_path / "w.pth",
                        overrides={"timm_kwargs": {**TINY_KWARGS, "img_size": 32}})
    assert enc.input_size == 32 and enc.mean == pytest.approx(enc.model.pretrained_cfg["mean"])  # timm's config
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), src.forward_features(x)[:, 0])


def test_documented_settings_of_the_zoo():
    uni, hopt = UNI, H_OPTIMUS_0
    assert uni.arch == "vit_large_patch16_224" and uni.timm_kwargs["init_values"] == 1e-5
    assert uni.timm_kwargs["dynamic_img_size"] is True
    assert hopt.timm_kwargs["reg_tokens"] == 4 and hopt.timm_kwargs["mlp_ratio"] == pytest.approx(5.33334)
    assert hopt.mean == (0.707223, 0.578729, 0.703617) and hopt.std == (0.211883, 0.230117, 0.177517)
    # the H-optimus-0 block structure builds (tiny widths): SwiGLU-packed MLP, 4 registers, no class embedding
    m = create_vit(hopt.arch, 28, **{**hopt.timm_kwargs, "embed_dim": 32, "depth": 1, "num_heads": 2})
    mlp = m.blocks[0].mlp  # timm's SwiGLUPacked is a GluMlp with SiLU and one packed fc1
    assert m.num_prefix_tokens == 5 and type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU)
    assert mlp.fc2.in_features * 2 == mlp.fc1.out_features
    with torch.device("meta"):  # the real widths, without allocating: fc1 8192 x 1536, fc2 1536 x 4096
        g = create_vit(hopt.arch, 224, **{**hopt.timm_kwargs, "depth": 1})
    assert tuple(g.blocks[0].mlp.fc1.weight.shape) == (8192, 1536)
    assert tuple(g.blocks[0].mlp.fc2.weight.shape) == (1536, 4096) and g.pos_embed.shape[1] == 256


def _timm_to_hf_vit(state):
    """The inverse mapping, written independently, to build a transformers-layout checkpoint."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"],
           "pooler.dense.weight": torch.zeros(4, 4)}
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        b, p = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{kind}"].chunk(3, dim=0)
            out[p + f"attention.attention.query.{kind}"] = q
            out[p + f"attention.attention.key.{kind}"] = k
            out[p + f"attention.attention.value.{kind}"] = v
            out[p + f"attention.output.dense.{kind}"] = state[b + f"attn.proj.{kind}"]
            out[p + f"layernorm_before.{kind}"] = state[b + f"norm1.{kind}"]
            out[p + f"layernorm_after.{kind}"] = state[b + f"norm2.{kind}"]
            out[p + f"intermediate.dense.{kind}"] = state[b + f"mlp.fc1.{kind}"]
            out[p + f"output.dense.{kind}"] = state[b + f"mlp.fc2.{kind}"]
    return out


def test_phikon_transformers_layout_loads_into_timm(tmp_path):
    from safetensors.torch import save_file

    src = create_vit("vit_base_patch16_224", 32, **TINY_KWARGS)
    save_file({k: v.contiguous() for k, v in _timm_to_hf_vit(src.state_dict()).items()},
              str(tmp_path / "model.safetensors"))
    enc = build_encoder("hf-hub:owkin/phikon", weights=tmp_path / "model.safetensors",
                        overrides={"timm_kwargs": TINY_KWARGS, "input_size": 32})
    assert enc.name == "phikon" and enc.mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), src.forward_features(x)[:, 0])
    assert set(hf_vit_to_timm(_timm_to_hf_vit(src.state_dict()))) == set(src.state_dict())
