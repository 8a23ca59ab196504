"""The Encoder interface over every registered name, as timm tests every model: tiny widths, random weights."""

import numpy as np
import pytest
import torch

from spafoundation.models import Encoder, build_encoder, list_encoders
from spafoundation.models.registry import register_encoder

TINY_WIDTH = {"depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.mark.parametrize("name", sorted(list_encoders()))
def test_every_registered_name_builds_and_follows_the_interface(name):
    enc = build_encoder(name, pretrained=False, overrides={"timm_kwargs": TINY_WIDTH, "input_size": 32})
    assert isinstance(enc, Encoder) and not enc.training and list_encoders()[name]
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    x = enc.preprocess(images)
    assert x.shape == (2, 3, 32, 32)
    with torch.inference_mode():
        feats = enc.forward_features(x)
        pooled = enc(x)
    n_patches = enc.model.patch_embed.num_patches
    assert feats.shape == (2, enc.num_prefix_tokens + n_patches, enc.width) and feats.dtype == torch.float32
    assert pooled.shape == (2, enc.embed_dim) and torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, enc.forward_head(feats))
    cls, patch = enc.split_tokens(feats)
    torch.testing.assert_close(enc.forward_tokens(x), patch)
    torch.testing.assert_close(cls, feats[:, 0])
    assert enc.patch_um == pytest.approx(32 * enc.target_mpp)


def test_names_are_matched_without_case_and_listed_as_registered():
    names = list_encoders()
    assert "hf-hub:MahmoodLab/UNI" in names and "random-vitt16" in names
    a = build_encoder("hf-hub:mahmoodlab/uni", pretrained=False, overrides={"timm_kwargs": TINY_WIDTH,
                                                                             "input_size": 32})
    assert a.name == "uni"


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_encoder("random-vitt16")(lambda weights=None, overrides=None, pretrained=True: None)


def test_pretrained_false_gives_a_distinct_identity_from_the_weights():
    shipped = build_encoder("spafoundation-default")
    untrained = build_encoder("spafoundation-default", pretrained=False)
    assert shipped.identity != untrained.identity
    assert not torch.equal(shipped.model.patch_embed.proj.weight, untrained.model.patch_embed.proj.weight)
