"""Shared fixtures. Real data comes from ../shared/data/her2st beside the project folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
HER2ST = Path(os.environ.get("SPAFOUNDATION_HER2ST", REPO.parent / "shared" / "data" / "her2st"))
# Patient C's full-resolution sections; A1 (patient A) has an image too, a low-resolution copy (its README).
IMAGED_SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Embedding, superpixel and feature caches of the tests go to a folder of this session, not the user's
    ~/.cache/spafoundation (a test that passes cache_dir explicitly still uses its own)."""
    root = tmp_path_factory.mktemp("spafoundation-cache")
    old = os.environ.get("SPAFOUNDATION_CACHE")
    os.environ["SPAFOUNDATION_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SPAFOUNDATION_CACHE", None)
    else:
        os.environ["SPAFOUNDATION_CACHE"] = old


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    if not (HER2ST / "ST-cnts").is_dir():
        raise FileNotFoundError(f"real data missing at {HER2ST} (set SPAFOUNDATION_HER2ST)")
    return HER2ST


@pytest.fixture(scope="session")
def her2st_c2(her2st_root):
    """Section C2 (image + counts), loaded once per test session."""
    from spafoundation.io import read_dataset

    return read_dataset(her2st_root, ["C2"])["C2"]


@pytest.fixture(scope="session")
def her2st_imaged(her2st_root):
    """Patient C's five imaged sections C2-C6 without thumbnails (faster); images are still located."""
    from spafoundation.io import read_dataset

    return read_dataset(her2st_root, IMAGED_SECTIONS, with_images=False)


# Tiny ViT configurations: same code paths and key names as the real encoders, milliseconds on a CPU.
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


@pytest.fixture(scope="session")
def c2_small(her2st_c2, tmp_path_factory):
    """C2 counts (first 300 genes), coordinates and a 1/4-scale tiled TIFF of its H&E (tests/io/layouts.py)."""
    from tests.io.layouts import C2Small

    return C2Small(her2st_c2, tmp_path_factory.mktemp("c2_small"))


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run first: spread over workers (``make test`` runs ``pytest -n``), the longest do not
    start last and leave one worker running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
