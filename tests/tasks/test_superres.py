"""Superpixels from encoder tokens, forward-sum training, anchoring, count redistribution, the CLI, the
pseudo-low-resolution benchmark."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.tasks.superres import (
    anchor_to_measurements,
    fit_superres,
    footprint_means,
    idw,
    redistribute,
    spot_members,
    spot_radius_px,
    superpixels,
)


def test_redistribute_shares_each_spot_exactly_and_leaves_the_rest_nan():
    rng = np.random.default_rng(0)
    members = np.array([0, 0, 0, 1, 1, -1])
    pred = rng.normal(1, 0.5, size=(6, 3))
    counts = np.array([[10, 0, 3], [5, 7, 1]], dtype=float)
    out = redistribute(pred, members, counts)
    np.testing.assert_allclose(np.nansum(out[:3], 0), counts[0], rtol=1e-5)
    np.testing.assert_allclose(np.nansum(out[3:5], 0), counts[1], rtol=1e-5)
    assert np.isnan(out[5]).all() and (out[:5] >= 0).all()


def test_members_and_footprint_means():
    sp_xy = np.array([[0, 0], [1, 0], [10, 10], [50, 50]], float)
    members = spot_members(sp_xy, np.array([[0.5, 0], [10, 11]]), radius_px=2.0)
    np.testing.assert_array_equal(members, [0, 0, 1, -1])
    means, k = footprint_means(np.array([[1.0], [3.0], [5.0], [100.0]]), members, 3)
    np.testing.assert_allclose(means[:, 0], [2.0, 5.0, 0.0])
    np.testing.assert_array_equal(k, [2, 1, 0])


def test_idw_is_exact_at_sources_and_colour_stops_bleeding():
    src = np.array([[0, 0], [10, 0]], float)
    vals = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(idw(src, vals, src, k=2), vals, atol=1e-6)
    mid = np.array([[4.0, 0.0]])
    plain = idw(src, vals, mid, k=2)[0, 0]
    aware = idw(src, vals, mid, k=2, src_colour=np.array([[0.0], [1.0]]), dst_colour=np.array([[0.0]]))[0, 0]
    assert 0.2 < plain < 0.5 and aware < plain / 2  # the point looks like source 0: it takes its value


def test_anchoring_keeps_a_perfect_prediction_and_fixes_a_biased_one():
    rng = np.random.default_rng(1)
    sp_xy = rng.uniform(0, 100, size=(400, 2))
    truth = (sp_xy[:, :1] / 100).repeat(2, axis=1).astype(np.float32)
    centres = np.array([[25, 25], [75, 25], [25, 75], [75, 75]], float)
    members = spot_members(sp_xy, centres, 20.0)
    observed = footprint_means(truth, members, 4)[0]
    np.testing.assert_allclose(anchor_to_measurements(sp_xy, truth, members, centres, observed), truth, atol=1e-5)
    biased = truth + 3.0
    fixed = anchor_to_measurements(sp_xy, biased, members, centres, observed)
    assert np.abs(fixed - truth).max() < 1e-4  # a constant bias is removed everywhere


@pytest.fixture(scope="module")
def c3_sp(her2st_root):
    from spafoundation.io import read_dataset
    from spafoundation.models import build_encoder
    from tests.conftest import TINY

    enc = build_encoder("random-vitt16", overrides=TINY)
    a = read_dataset(her2st_root, ["C3"], with_images=False)["C3"]
    return a, enc, superpixels(a, enc)


def test_superpixels_tile_the_tissue_on_a_regular_grid(c3_sp):
    a, enc, sp = c3_sp
    assert sp.step_um == pytest.approx(56.0)  # 112 um tiles of 2 x 2 tokens
    step_px = sp.step_um / float(a.uns["spatial"]["C3"]["scalefactors"]["microns_per_pixel"])
    np.testing.assert_allclose(sp.xy[:, 0], (sp.col + 0.5) * step_px, rtol=1e-6)
    np.testing.assert_allclose(sp.xy[:, 1], (sp.row + 0.5) * step_px, rtol=1e-6)
    assert len(np.unique(np.stack([sp.row, sp.col], 1), axis=0)) == len(sp)
    assert sp.features.shape == (len(sp), 32 + 32 + 3) and (sp.tissue >= 0.25).all()
    # most spots lie on tissue: nearly all get superpixels
    k = footprint_means(sp.features, spot_members(sp.xy, np.asarray(a.obsm["spatial"]), spot_radius_px(a)),
                        a.n_obs)[1]
    assert (k > 0).mean() > 0.9
    with pytest.raises(InputError, match="step-um"):
        superpixels(a, enc, step_um=20)


def test_superpixel_predictions_average_to_the_spot_prediction(c3_sp):
    a, enc, sp = c3_sp
    model = fit_superres({"C3": a}, enc, genes="hvg:5", cached={"C3": sp})
    members = spot_members(sp.xy, np.asarray(a.obsm["spatial"]), spot_radius_px(a))
    means, k = footprint_means(sp.features, members, a.n_obs)
    per_spot = footprint_means(model.predict(sp), members, a.n_obs)[0]
    np.testing.assert_allclose(per_spot[k > 0], model.head.predict(means[k > 0]), atol=1e-4)


def test_cli_superres_trains_maps_and_reuses_its_model(her2st_root, tiny_folder, tmp_path, capsys):
    out = tmp_path / "sr"
    assert main(["superres", str(her2st_root), "--sections", "C3", "--encoder", str(tiny_folder), "--genes", "hvg:4",
                 "--step-um", "28", "--out", str(out), "--quiet"]) == 0
    spa = ad.read_h5ad(out / "C3.h5ad")
    assert spa.uns["superres"]["step_um"] == pytest.approx(28.0) and spa.n_vars == 4
    counts = spa.layers["counts"]  # the spots' counts, summed back from their superpixels
    inside = spa.obs["spot"].astype(str) != ""
    sums = (ad.AnnData(np.nan_to_num(counts[inside.to_numpy()]), obs=spa.obs[inside]).to_df()
            .groupby(spa.obs.loc[inside, "spot"].astype(str).to_numpy()).sum())
    from spafoundation.io import read_dataset

    c3 = read_dataset(her2st_root, ["C3"], with_images=False)["C3"]
    measured = c3[sums.index, list(spa.var_names)].X
    measured = measured.toarray() if hasattr(measured, "toarray") else measured
    np.testing.assert_allclose(sums.to_numpy(), measured, rtol=1e-4, atol=1e-3)
    maps = np.load(out / "C3_maps.npz")
    assert maps["maps"].shape[0] == 4 and np.isfinite(maps["maps"]).sum() == spa.n_obs * 4
    assert (out / "C3_superres.png").exists() and (out / "model" / "config.json").exists()
    # an image-only use of the saved model: no counts layer, the image prediction as X
    out2 = tmp_path / "again"
    assert main(["superres", str(her2st_root), "--sections", "C4", "--model", str(out / "model"), "--encoder",
                 str(tiny_folder), "--no-figure", "--out", str(out2), "--quiet"]) == 0
    assert ad.read_h5ad(out2 / "C4.h5ad").n_vars == 4


def test_superres_benchmark_runs_every_method(her2st_root, tiny_folder):
    from spafoundation.eval.superres_benchmark import METHODS, coarsen, run_superres_benchmark
    from spafoundation.io import read_dataset

    sections = read_dataset(her2st_root, ["C3", "C4"], with_images=False)
    block, coarse = coarsen(sections["C3"])
    assert coarse.n_obs == len(np.unique(block)) and np.isclose(coarse.X.sum(), sections["C3"].X.sum())
    rows, genes, _ = run_superres_benchmark(sections, str(tiny_folder), genes="hvg:5")
    assert len(genes) == 5 and set(rows["method"]) == set(METHODS) and len(rows) == 2 * len(METHODS)
    assert rows["mean_r"].notna().all() and rows["ssim"].between(-1, 1).all()
