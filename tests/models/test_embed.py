import numpy as np
import pytest
import torch

from spafoundation.errors import InputError
from spafoundation.io import read_dataset
from spafoundation.io.patches import tissue_fraction
from spafoundation.models import build_encoder, embed_adata
from spafoundation.models import cache as cache_mod
from spafoundation.models.embed import UNS_KEY, embed_patches
from tests.conftest import TINY


def _count_forwards(encoder):
    calls = []
    encoder.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return calls


def test_embed_writes_obsm_and_second_call_is_a_cache_hit(c2_16, tiny_encoder, tmp_path):
    calls = _count_forwards(tiny_encoder)
    emb = embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, batch_size=8, progress=False)
    assert emb.shape == (16, 32) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert c2_16.obsm["X_random-vitt16"] is emb and sum(calls) == 16
    assert np.unique(emb.round(5), axis=0).shape[0] == 16  # distinct patches, distinct embeddings
    tf = c2_16.obs["tissue_fraction"].to_numpy()
    assert ((tf >= 0) & (tf <= 1)).all() and tf.mean() > 0.5  # C2 spots sit on tissue
    assert c2_16.uns[UNS_KEY]["X_random-vitt16"]["cache"] == "miss"

    again = c2_16.copy()
    del again.obsm["X_random-vitt16"]
    emb2 = embed_adata(again, tiny_encoder, cache_dir=tmp_path, progress=False)
    assert sum(calls) == 16, "second call must not run the encoder"
    np.testing.assert_array_equal(emb2, emb)
    assert again.uns[UNS_KEY]["X_random-vitt16"] == {**c2_16.uns[UNS_KEY]["X_random-vitt16"], "cache": "hit",
                                                     "n_from_cache": 16}
    # the embeddings match a direct computation on the same patches (no cache involved)
    from spafoundation.io import extract_patches

    patches = extract_patches(c2_16, tiny_encoder.patch_um, tiny_encoder.input_size)
    np.testing.assert_allclose(embed_patches(tiny_encoder, patches), emb, rtol=1e-5, atol=1e-5)
    # a plain scan is all slide: the tissue share is the colour rule's, pixel for pixel
    np.testing.assert_array_equal(tf, tissue_fraction(patches).astype(np.float32))


def test_black_glass_is_flagged_low_tissue(her2st_root, tiny_encoder):
    """A1's glass is blacked out: patches there are dark, yet no tissue; its spots are on tissue."""
    a1 = read_dataset(her2st_root, ["A1"], with_images=False)["A1"][:6].copy()
    xy = a1.obsm["spatial"].astype(np.float64)
    xy[4:] = [[1000.0, 7000.0], [300.0, 300.0]]  # corners of the frame, blacked out
    a1.obsm["spatial"] = xy
    embed_adata(a1, tiny_encoder, cache_dir=False, progress=False)
    assert a1.obs["low_tissue"].tolist() == [False] * 4 + [True] * 2
    assert (a1.obs["tissue_fraction"].to_numpy()[:4] > 0.9).all()


def test_cache_key_changes_with_what_matters(c2_16, tiny_encoder, tmp_path):
    calls = _count_forwards(tiny_encoder)
    embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, progress=False)
    moved = c2_16.copy()
    moved.obsm["spatial"] = moved.obsm["spatial"] + 5.0
    embed_adata(moved, tiny_encoder, cache_dir=tmp_path, progress=False)
    assert sum(calls) == 32, "other coordinates: a miss"
    other = build_encoder("random-vitt16", overrides={**TINY, "seed": 3})
    embed_adata(c2_16, other, cache_dir=tmp_path, progress=False, key="X_other")
    assert c2_16.uns[UNS_KEY]["X_other"]["cache"] == "miss" and "X_other" in c2_16.obsm
    assert len(list((tmp_path / "embeddings").iterdir())) == 3


def test_killed_run_resumes_from_complete_chunks(c2_16, tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "CHUNK", 8)
    reference = embed_adata(c2_16.copy(), tiny_encoder, cache_dir=False, progress=False)

    calls = _count_forwards(tiny_encoder)

    def die_on_second_chunk(module, inputs):
        if len(calls) == 1:
            raise KeyboardInterrupt

    handle = tiny_encoder.register_forward_pre_hook(die_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, batch_size=8, progress=False)
    handle.remove()
    entry = next((tmp_path / "embeddings").iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["chunk_000000.npz"]  # no temp files, no partial entry

    emb = embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, batch_size=8, progress=False)
    rec = c2_16.uns[UNS_KEY]["X_random-vitt16"]
    assert rec["cache"] == "partial" and rec["n_from_cache"] == 8 and calls == [8, 8]
    np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in entry.iterdir()) == ["embeddings.npz", "meta.json"]


def test_corrupt_entry_is_recomputed(c2_16, tiny_encoder, tmp_path):
    emb = embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, progress=False)
    entry = next((tmp_path / "embeddings").iterdir())
    (entry / "embeddings.npz").write_bytes(b"PK\x03\x04 truncated")
    again = embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, progress=False)
    assert c2_16.uns[UNS_KEY]["X_random-vitt16"]["cache"] == "miss"
    np.testing.assert_allclose(again, emb, rtol=1e-5, atol=1e-5)


def test_tta_is_a_dihedral_invariant_embedding(c2_16, tiny_encoder, tmp_path):
    emb = embed_adata(c2_16, tiny_encoder, cache_dir=tmp_path, tta=True, progress=False)
    plain = embed_adata(c2_16.copy(), tiny_encoder, cache_dir=tmp_path, progress=False)
    assert emb.shape == (16, 32) and np.isfinite(emb).all() and not np.allclose(emb, plain)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    a = embed_patches(tiny_encoder, patches, tta=True)
    b = embed_patches(tiny_encoder, np.ascontiguousarray(np.rot90(patches, 1, axes=(1, 2))[:, :, ::-1]), tta=True)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(embed_patches(tiny_encoder, patches), a)


def test_section_without_image(c2_16, tiny_encoder):
    lib = c2_16.uns["spatial"]["C2"]
    lib["metadata"] = {**lib["metadata"], "image_path": ""}
    with pytest.raises(InputError, match="no H&E image"):
        embed_adata(c2_16, tiny_encoder, cache_dir=False, progress=False)


def test_inference_leaves_grad_mode_alone(tiny_encoder):
    embed_patches(tiny_encoder, np.zeros((1, 32, 32, 3), np.uint8))
    assert torch.is_grad_enabled()


def test_stain_normalised_embeddings_are_their_own_cache_entry(c2_16, tiny_encoder, tmp_path):
    """sf.tl.embed(stain_norm=...): the encoder sees the normalised patches, and a normalised embedding is never
    served from (or into) the entry of the patches as scanned."""
    import spafoundation as sf
    from spafoundation.io import extract_patches
    from spafoundation.io.stain import builtin_reference, section_stain

    with sf.settings.override(cache_dir=tmp_path, progress=False):
        raw = sf.tl.embed(c2_16, tiny_encoder, copy=True)
        normed = sf.tl.embed(c2_16, tiny_encoder, stain_norm="reinhard", copy=True)
        with pytest.raises(ValueError, match="stain_reference needs"):
            sf.tl.embed(c2_16, tiny_encoder, stain_reference=builtin_reference("macenko"))
    a, b = raw.obsm["X_random-vitt16"], normed.obsm["X_random-vitt16"]
    assert not np.allclose(a, b, atol=1e-4)
    record = normed.uns[UNS_KEY]["X_random-vitt16"]
    assert record["cache"] == "miss" and record["stain_norm"]["method"] == "reinhard"
    np.testing.assert_array_equal(normed.obs["tissue_fraction"], raw.obs["tissue_fraction"])
    patches = extract_patches(c2_16, tiny_encoder.patch_um, tiny_encoder.input_size)
    expected = embed_patches(tiny_encoder, section_stain(c2_16, builtin_reference("reinhard"))(patches))
    np.testing.assert_allclose(b, expected, rtol=1e-5, atol=1e-5)


def test_spots_off_tissue_warn_that_the_coordinates_may_not_fit_the_image(her2st_root, tiny_encoder, caplog):
    """C2's spots all lie on tissue; the same coordinates flipped top to bottom put half of them on glass, which is
    what a coordinate file of another orientation, scale or section looks like: one warning, once per section."""
    import logging

    from spafoundation.io.anndata_spec import image_path
    from spafoundation.io.slide import open_slide

    c2 = read_dataset(her2st_root, ["C2"], with_images=False)["C2"]
    with caplog.at_level(logging.WARNING):
        embed_adata(c2, tiny_encoder, cache_dir=False, progress=False)
    assert "almost no tissue" not in caplog.text
    with open_slide(image_path(c2)) as slide:
        height = slide.height
    flipped = c2.copy()
    flipped.obsm["spatial"] = np.c_[c2.obsm["spatial"][:, 0], height - 1 - c2.obsm["spatial"][:, 1]]
    with caplog.at_level(logging.WARNING):
        embed_adata(flipped, tiny_encoder, cache_dir=False, progress=False)
        embed_adata(flipped, tiny_encoder, cache_dir=False, progress=False)
    assert caplog.text.count("almost no tissue") == 1
    assert f"{int(flipped.obs['low_tissue'].sum())} of {c2.n_obs} spots" in caplog.text
