import argparse
import json

import pytest
import torch

from spafoundation.errors import InputError
from spafoundation.models import build_encoder, create_vit
from spafoundation.models.weights import save_model_folder
from tests.conftest import TINY_KWARGS

OVR = {"timm_kwargs": TINY_KWARGS, "input_size": 32}


def _ibot_checkpoint(src: torch.nn.Module) -> dict:
    """The authors' layout (iBOT): module./backbone. prefixes, masked_embed, DINO and iBOT head weights."""
    state = {f"module.backbone.{k}": v.clone() for k, v in src.state_dict().items()}
    d = src.embed_dim
    state["module.backbone.masked_embed"] = torch.zeros(1, d)
    state["module.head.mlp.0.weight"] = torch.randn(64, d)
    state["module.head.last_layer.weight_g"] = torch.ones(100, 1)
    state["module.head.last_layer2.weight_v"] = torch.randn(100, 64)
    return {"state_dict": state, "epoch": 100, "args": argparse.Namespace(arch="vit_base", patch_size=16)}


@pytest.fixture
def src():
    torch.manual_seed(1)
    return create_vit("vit_base_patch16_224", 32, **TINY_KWARGS)


def _check_same(enc, src):
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), src.eval().forward_features(x)[:, 0])


def test_official_layout_loads(src, tmp_path):
    path = tmp_path / "spafoundation_1m_vitb16.pth"
    torch.save(_ibot_checkpoint(src), path)
    enc = build_encoder("spafoundation-vitb16", weights=path, overrides=OVR)
    _check_same(enc, src)
    assert enc.name == "spafoundation-vitb16" and enc.mean == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("wrap", ["bare", "teacher", "student", "model"])
def test_other_checkpoint_wrappings(src, tmp_path, wrap):
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "w.pth"
    torch.save(state if wrap == "bare" else {wrap: state}, path)
    _check_same(build_encoder("spafoundation-vitb16", weights=path, overrides=OVR), src)


def test_misshaped_key_names_file_and_key(src, tmp_path):
    ckpt = _ibot_checkpoint(src)
    ckpt["state_dict"]["module.backbone.pos_embed"] = torch.zeros(1, 17, 32)
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=r"mis-shaped keys: pos_embed \(1, 17, 32\)") as e:
        build_encoder("spafoundation-vitb16", weights=path, overrides=OVR)
    assert e.value.path == str(path)


def test_missing_key_names_it(src, tmp_path):
    ckpt = _ibot_checkpoint(src)
    del ckpt["state_dict"]["module.backbone.blocks.1.mlp.fc2.weight"]
    path = tmp_path / "missing.pth"
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=r"missing keys: blocks\.1\.mlp\.fc2\.weight"):
        build_encoder("spafoundation-vitb16", weights=path, overrides=OVR)


def test_wrong_architecture_and_junk_files(src, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_ibot_checkpoint(src), path)
    with pytest.raises(InputError, match=r"unexpected keys: blocks\.1"):  # 2-block checkpoint, 1-block model
        build_encoder("spafoundation-vitb16", weights=path, overrides={**OVR, "timm_kwargs": {**TINY_KWARGS,
                                                                                              "depth": 1}})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.pth"):
        build_encoder("spafoundation-vitb16", weights=junk, overrides=OVR)
    torch.save({"epoch": 3}, junk)
    with pytest.raises(InputError, match="no state dict"):
        build_encoder("spafoundation-vitb16", weights=junk, overrides=OVR)
    with pytest.raises(InputError, match="file not found"):
        build_encoder("spafoundation-vitb16", weights=tmp_path / "nope.pth", overrides=OVR)


def test_model_folder_round_trip(tmp_path):
    enc = build_encoder("random-vits16", overrides={**OVR, "pooling": "cls+mean", "name": "my-model"})
    folder = save_model_folder(enc, tmp_path / "m", training={"epochs": 3}, model_card="# my model\n")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == "spafoundation-encoder" and cfg["version"] == 1
    assert cfg["arch"] == "vit_small_patch16_224" and cfg["timm_kwargs"]["depth"] == 2
    assert cfg["input_size"] == 32 and cfg["pooling"] == "cls+mean" and cfg["training"] == {"epochs": 3}
    assert (folder / "MODEL_CARD.md").exists() and not list(tmp_path.glob(".m.*"))
    back = build_encoder(folder)
    assert (back.name, back.embed_dim, back.patch_um, back.mean) == ("my-model", 64, enc.patch_um, enc.mean)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(back(x), enc(x))
    assert back.identity.startswith("folder:my-model@")
    # also accepted as weights= of a registered name
    torch.testing.assert_close(build_encoder("spafoundation-vits16", weights=folder)(x), enc(x))
    # overwriting keeps a valid folder; a different model gives a different identity (the cache key)
    save_model_folder(build_encoder("random-vits16", overrides={**OVR, "seed": 5}), folder)
    assert build_encoder(folder).identity != back.identity


@pytest.mark.parametrize(("field", "value"), [("pooling", "max"), ("precision", "int4"), ("input_size", 0),
                                              ("target_mpp", "fine")])
def test_model_folder_config_values_are_checked(tiny_folder, field, value):
    cfg_path = tiny_folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=field) as err:
        build_encoder(tiny_folder)
    assert "config.json" in str(err.value)


def test_bad_model_folders(tmp_path, tiny_folder):
    (tiny_folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        build_encoder(tiny_folder)
    (tiny_folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        build_encoder(tiny_folder)
    (tiny_folder / "config.json").write_text(json.dumps({"format": "spafoundation-encoder", "version": 9,
                                                         "arch": "x", "input_size": 1}))
    with pytest.raises(InputError, match="newer"):
        build_encoder(tiny_folder)
