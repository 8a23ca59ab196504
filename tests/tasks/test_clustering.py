"""Spatial graph, smoothing, clustering (k-means, Leiden with a target k), shared domains, the cluster CLI."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from spafoundation.cli import main
from spafoundation.io.anndata_spec import build_anndata
from spafoundation.tasks.clustering import (
    cluster_features,
    domain_features,
    smooth,
    spatial_clusters,
    spatial_graph,
)


def grid_section(n: int = 12, pitch_um: float = 200.0, mpp: float = 1.0, name: str = "S") -> ad.AnnData:
    """An n x n square spot grid (legacy ST pitch), no counts, no image."""
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    xy = np.stack([xs.ravel(), ys.ravel()], 1) * pitch_um / mpp + 500
    ids = [f"{x}x{y}" for x, y in zip(xs.ravel(), ys.ravel(), strict=True)]
    return build_anndata(counts=None, genes=[], spot_ids=ids, xy=xy, obs=pd.DataFrame(index=ids), library=name,
                         mpp=mpp, mpp_source="test", spot_diameter_um=100.0, platform="test", image_path=None)


def test_spatial_graph_is_the_first_ring_and_stored_as_squidpy_does():
    a = grid_section(6)
    conn = spatial_graph(a)
    assert (conn != conn.T).nnz == 0 and conn.diagonal().sum() == 0
    deg = np.asarray(conn.sum(1)).ravel().reshape(6, 6)
    assert deg[2, 2] == 8 and deg[0, 0] == 3 and deg[0, 2] == 5  # a square grid: 4 sides + 4 diagonals
    assert "spatial_connectivities" in a.obsp and "spatial_distances" in a.obsp
    d = a.obsp["spatial_distances"]
    assert np.isclose(d.data.min(), 200.0) and np.isclose(d.data.max(), 200 * np.sqrt(2), atol=1e-3)


def test_smooth_keeps_constants_and_isolated_spots():
    a = grid_section(4)
    conn = spatial_graph(a)
    const = np.full((16, 3), 2.5)
    np.testing.assert_allclose(smooth(const, conn, 0.7), const)
    conn = conn.tolil()
    conn[0, :] = 0
    conn[:, 0] = 0
    f = np.random.default_rng(0).normal(size=(16, 2))
    out = smooth(f, conn.tocsr(), 0.5)
    np.testing.assert_allclose(out[0], f[0])
    assert not np.allclose(out[1:], f[1:])


@pytest.mark.parametrize("method", ["kmeans", "leiden"])
def test_cluster_features_recovers_separated_groups(method):
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 60)
    X = rng.normal(size=(180, 10)) + np.eye(3, 10)[truth] * 8
    labels = cluster_features(X, method=method, n_clusters=3)
    assert len(np.unique(labels)) == 3 and adjusted_rand_score(truth, labels) > 0.95


def test_smoothing_recovers_noisy_domains_better():
    """Two half-plane domains under noise four times the signal: neighbour smoothing must raise the ARI."""
    a = grid_section(16)
    truth = (np.asarray(a.obsm["spatial"])[:, 0] > np.median(a.obsm["spatial"][:, 0])).astype(int)
    X = np.random.default_rng(1).normal(size=(a.n_obs, 5)) * 2.0 + truth[:, None] * 1.0
    raw = spatial_clusters({"S": a}, {"S": X}, n_clusters=2, smooth_weight=0.0)["S"]
    smoothed = spatial_clusters({"S": a}, {"S": X}, n_clusters=2, smooth_weight=0.8)["S"]
    assert adjusted_rand_score(truth, smoothed) > adjusted_rand_score(truth, raw) + 0.2
    assert a.obs["spatial_domain"].dtype.name == "category"


def test_domains_are_shared_across_sections_and_grids_get_the_nearest_domain():
    a, b, g = grid_section(8, name="A"), grid_section(8, name="B"), grid_section(4, pitch_um=400, name="A")
    left = lambda s: (np.asarray(s.obsm["spatial"])[:, 0] < 1200).astype(float)  # noqa: E731
    feats = {"A": np.c_[left(a), -left(a)] * 5, "B": np.c_[left(b), -left(b)] * 5}
    labels = spatial_clusters({"A": a, "B": b}, feats, n_clusters=2, smooth_weight=0.0,
                              grids={"A": g}, grid_features={"A": np.c_[left(g), -left(g)] * 5})
    np.testing.assert_array_equal(labels["A"], labels["B"])  # same features, same domain ids in both sections
    assert list(a.obs["spatial_domain"].cat.categories) == list(b.obs["spatial_domain"].cat.categories)
    on_left = g.obs["spatial_domain"][left(g) == 1].unique()
    assert len(on_left) == 1 and on_left[0] == str(labels["A"][left(a) == 1][0])


def test_expression_features_need_counts():
    from spafoundation.errors import InputError

    with pytest.raises(InputError, match="no counts"):
        domain_features({"S": grid_section(3)}, "expression")


def test_cli_cluster_image_features_with_reference_and_grid(her2st_root, tiny_folder, tmp_path, capsys):
    out = tmp_path / "clusters"
    assert main(["cluster", str(her2st_root), "--sections", "C3", "--features", "image", "--encoder", str(tiny_folder),
                 "--reference-column", "cluster_annotation", "--n-clusters", "4", "--grid-um", "1500",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    spots = ad.read_h5ad(out / "spots.h5ad")
    assert spots.obs["spatial_domain"].nunique() == 4 and "spatial_connectivities" in spots.obsp
    grid = ad.read_h5ad(out / "grid.h5ad")
    assert grid.n_obs > 0 and set(grid.obs["spatial_domain"]) <= set(spots.obs["spatial_domain"].cat.categories)
    m = json.loads((out / "metrics.json").read_text())["C3"]
    assert -1 <= m["ari"] <= 1 and 0 <= m["nmi"] <= 1
    assert (out / "C3_clusters.png").stat().st_size > 10_000
    assert "ARI" in capsys.readouterr().out


def test_colour_texture_features_are_z_scored_per_section_and_grids_use_their_sections_statistics(her2st_root):
    from spafoundation.io import read_dataset
    from spafoundation.tasks.spot_features import locations_adata

    data = read_dataset(her2st_root, ["A1", "C3"], with_images=False)
    sections = {n: a[:40].copy() for n, a in data.items()}
    grid = {"C3": locations_adata(sections["C3"], np.asarray(sections["C3"].obsm["spatial"])[:5])}
    feats, grid_feats, blocks = domain_features(sections, "colour_texture", locations=grid)
    assert blocks == [42, 42]  # the spot patch and a twice-wider one; no encoder
    for f in feats.values():  # another lab's stain does not set a section apart
        np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-4)
        assert np.allclose(f.std(axis=0)[f.std(axis=0) > 0], 1, atol=1e-3)
    # grid points on the first five spots: z-scored with the section's spot statistics, not their own
    np.testing.assert_allclose(grid_feats["C3"], feats["C3"][:5], atol=1e-4)


def test_observed_expression_features_are_z_scored_per_section(her2st_root):
    from spafoundation.io import read_dataset

    sections = read_dataset(her2st_root, ["A1", "C3"], with_images=False)
    feats, _, blocks = domain_features(sections, "expression", genes="hvg:50")
    assert blocks is None and all(f.shape == (a.n_obs, 50) for f, a in zip(feats.values(), sections.values()))
    for f in feats.values():  # each patient's counts centred on its own mean: domains are not patients
        np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-4)


def test_cli_cluster_default_colour_texture_needs_no_encoder(her2st_root, tmp_path, monkeypatch):
    import spafoundation.tasks.expression as expression

    def no_encoder(*args, **kwargs):
        raise AssertionError("the default domains built an encoder")

    monkeypatch.setattr(expression, "resolve_encoder", no_encoder)
    out = tmp_path / "ct"
    assert main(["cluster", str(her2st_root), "--sections", "C3,C4", "--n-clusters", "3", "--no-figure",
                 "--reference-column", "cluster_annotation", "--out", str(out), "--quiet"]) == 0
    spots = ad.read_h5ad(out / "spots.h5ad")
    assert spots.obs["spatial_domain"].nunique() == 3
    assert spots.uns["spafoundation_clustering"]["features"] == "colour_texture"
    assert set(json.loads((out / "metrics.json").read_text())) == {"C3", "C4"}


def test_cli_cluster_observed_expression_leiden(her2st_root, tmp_path):
    out = tmp_path / "expr"
    assert main(["cluster", str(her2st_root), "--sections", "C4", "--features", "expression", "--method", "leiden",
                 "--n-clusters", "3", "--genes", "hvg:200", "--no-figure", "--out", str(out)]) == 0
    assert ad.read_h5ad(out / "spots.h5ad").obs["spatial_domain"].nunique() == 3


def test_cli_cluster_bad_reference_leaves_nothing(her2st_root, tmp_path):
    out = tmp_path / "bad"
    assert main(["cluster", str(her2st_root), "--sections", "C3", "--features", "expression",
                 "--reference-column", "nope", "--out", str(out)]) == 2
    assert not out.exists()


def test_more_domains_than_spots_is_an_input_error():
    from spafoundation.errors import InputError
    from spafoundation.tasks.clustering import cluster_features

    with pytest.raises(InputError, match="12 domains asked of 10 spots"):
        cluster_features(np.random.default_rng(0).normal(size=(10, 5)), n_clusters=12)
