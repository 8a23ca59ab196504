"""Tiny ViT configurations: same code paths and key names as the real encoders, milliseconds on a CPU."""

from __future__ import annotations

import pytest

TINY_KWARGS = {"depth": 2, "embed_dim": 32, "num_heads": 2}
# 32 px at 3.5 um/px = 112 um, the real encoders' field of view, at a fraction of the cost.
TINY = {"timm_kwargs": TINY_KWARGS, "input_size": 32, "target_mpp": 3.5}


@pytest.fixture
def tiny_encoder():
    from spafoundation.models import build_encoder

    return build_encoder("random-vitt16", overrides=TINY)


@pytest.fixture
def tiny_folder(tmp_path, tiny_encoder):
    from spafoundation.models.weights import save_model_folder

    return save_model_folder(tiny_encoder, tmp_path / "tiny-model", training={"note": "test"}, name="tiny-model")


@pytest.fixture
def c2_16(her2st_c2):
    """16 spots of C2, a private copy (the session fixture stays untouched)."""
    return her2st_c2[:16].copy()
