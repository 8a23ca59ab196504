"""Feature recipes: sources, context patches, neighbour means, block widths."""

from __future__ import annotations

import numpy as np
import pytest

from spafoundation.tasks.spot_features import (
    block_labels,
    locations_adata,
    make_recipe,
    neighbour_mean,
    spot_features,
    standardize_section,
)


def test_recipe_validation():
    assert make_recipe()["source"] == "encoder"
    assert make_recipe(source="encoder+colour_texture")["source"] == "encoder+colour_texture"
    for bad in ({"source": "pixels"}, {"context": 0.5}, {"colour": 1}):
        with pytest.raises(ValueError):
            make_recipe(**bad)


def test_neighbour_mean_radius():
    xy = np.array([[0.0, 0.0], [100.0, 0.0], [1000.0, 0.0]])
    f = np.array([[1.0], [3.0], [10.0]])
    np.testing.assert_allclose(neighbour_mean(xy, f, 150.0)[:, 0], [2.0, 2.0, 10.0])


def test_neighbour_mean_in_chunks_equals_every_ball():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, size=(300, 2))
    f = rng.normal(size=(300, 5)).astype(np.float32)
    expected = np.stack([f[np.hypot(*(xy - p).T) <= 60.0].mean(axis=0) for p in xy])
    got = neighbour_mean(xy, f, 60.0, chunk=7)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fused_features_blocks(her2st_c2, tiny_encoder, tmp_path):
    from spafoundation.models.embed import embed_adata
    from spafoundation.tasks.spot_features import context_encoder

    a = her2st_c2[:12].copy()
    spot_patch, wide = a.copy(), a.copy()
    embed_adata(spot_patch, tiny_encoder, cache_dir=tmp_path, progress=False)
    embed_adata(wide, context_encoder(tiny_encoder, 2.0), cache_dir=tmp_path, progress=False)
    assert not np.allclose(spot_patch.obs["tissue_fraction"], wide.obs["tissue_fraction"])  # edge spots here
    recipe = {"source": "encoder+colour_texture", "context": 2.0, "neighbours_um": 300.0}
    feats, blocks = spot_features(a, recipe, tiny_encoder, cache_dir=tmp_path, with_blocks=True)
    # the wider view leaves the spot patch's tissue fraction in obs (it overwrote it, in the user's AnnData too)
    np.testing.assert_array_equal(a.obs["tissue_fraction"], spot_patch.obs["tissue_fraction"])
    np.testing.assert_array_equal(a.obs["low_tissue"], spot_patch.obs["low_tissue"])
    d = tiny_encoder.embed_dim
    assert blocks[:4] == [d, d, blocks[2], blocks[2]] and blocks[4:] == blocks[:4]
    assert block_labels(recipe) == ["encoder", "encoder@x2", "colour_texture", "colour_texture@x2",
                                    "neighbours:encoder", "neighbours:encoder@x2", "neighbours:colour_texture",
                                    "neighbours:colour_texture@x2"]
    assert feats.shape == (12, sum(blocks)) and np.isfinite(feats).all()
    # the context block sees a wider field: it differs from the spot block
    assert not np.allclose(feats[:, :d], feats[:, d:2 * d])
    # arbitrary centres (no counts) give the same features at the same places
    again = spot_features(a, recipe, tiny_encoder, xy=np.asarray(a.obsm["spatial"]), cache_dir=tmp_path)
    np.testing.assert_allclose(again, feats, rtol=1e-5, atol=1e-5)
    loc = locations_adata(a, np.asarray(a.obsm["spatial"])[:3])
    assert loc.n_vars == 0 and loc.n_obs == 3 and loc.uns["spatial"] is a.uns["spatial"]


def test_nuclei_block_at_the_spot_field_of_view_only(her2st_c2, tiny_encoder, tmp_path):
    from spafoundation.models.nuclei import N_FEATURES

    a = her2st_c2[:6].copy()
    recipe = {"source": "colour_texture+nuclei", "context": 2.0, "neighbours_um": 300.0, "standardize": "section"}
    feats, blocks = spot_features(a, recipe, tiny_encoder, cache_dir=tmp_path, with_blocks=True)
    labels = block_labels(recipe)
    assert labels == ["colour_texture", "colour_texture@x2", "nuclei", "neighbours:colour_texture",
                      "neighbours:colour_texture@x2", "neighbours:nuclei"]
    assert len(blocks) == len(labels) and blocks[2] == N_FEATURES and feats.shape == (6, sum(blocks))
    assert np.isfinite(feats).all()


def test_encoder_source_needs_encoder(her2st_c2):
    with pytest.raises(ValueError, match="needs an encoder"):
        spot_features(her2st_c2[:2].copy(), {"source": "encoder"})


def test_per_section_standardisation(her2st_c2, tmp_path):
    a = her2st_c2[:40].copy()
    recipe = {"source": "colour_texture", "neighbours_um": 300.0}
    raw = spot_features(a, recipe, cache_dir=tmp_path)
    z = spot_features(a, {**recipe, "standardize": "section"}, cache_dir=tmp_path)
    assert make_recipe(**recipe)["standardize"] == "none"  # models saved before the option keep raw features
    varying = raw.std(axis=0) > 1e-6
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0)[varying], 1, rtol=1e-3)
    np.testing.assert_allclose(z, (raw - raw.mean(0)) / np.where(varying, raw.std(0), np.inf), rtol=1e-3, atol=1e-4)
    # a stain offset of the whole section (every feature shifted and scaled) leaves the standardised features as they are
    np.testing.assert_allclose(standardize_section(raw * 3.0 + 7.0), z, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="standardize"):
        make_recipe(standardize="slide")


def test_locations_are_standardised_with_their_sections_spots(her2st_c2, tmp_path):
    """A coarse tissue grid has too few points for statistics of its own: the section's spots give them."""
    a = her2st_c2[:40].copy()
    recipe = {"source": "colour_texture", "standardize": "section"}
    grid = locations_adata(a, np.asarray(a.obsm["spatial"])[:3] + 50.0)
    spots_raw = spot_features(a, {**recipe, "standardize": "none"}, cache_dir=tmp_path)
    grid_raw = spot_features(grid, {**recipe, "standardize": "none"}, cache_dir=tmp_path)
    got = spot_features(grid, recipe, cache_dir=tmp_path, standardize_with=a)
    np.testing.assert_allclose(got, standardize_section(grid_raw, reference=spots_raw), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, standardize_section(grid_raw), atol=1e-2)  # not its own three points
