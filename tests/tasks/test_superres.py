"""Superpixels from encoder tokens, forward-sum training, anchoring, count redistribution, the CLI, the
pseudo-low-resolution benchmark."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import microns_per_pixel
from spafoundation.tasks.superres import (
    SuperresModel,
    anchor_to_measurements,
    calibrate_anchoring,
    check_spots_resolvable,
    fit_superres,
    footprint_means,
    idw,
    redistribute,
    section_anchoring,
    spot_blocks,
    spot_members,
    spot_radius_px,
    superpixel_step_um,
    superpixels,
    values_at_spots,
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


def test_anchoring_with_neighbours_keeps_every_spot_mean_and_follows_a_gradient():
    rng = np.random.default_rng(2)
    sp_xy = rng.uniform(0, 100, size=(2000, 2))
    centres = np.array([[x, y] for y in (15, 50, 85) for x in (15, 50, 85)], float)
    members = spot_members(sp_xy, centres, 15.0)
    field = (sp_xy[:, :1] / 100).astype(np.float32)  # expression rising left to right
    observed = footprint_means(field, members, len(centres))[0]
    flat = np.zeros_like(field)  # an image that sees nothing
    out = anchor_to_measurements(sp_xy, flat, members, centres, observed, image=0.0, interpolation=1.0)
    np.testing.assert_allclose(footprint_means(out, members, len(centres))[0], observed, atol=1e-5)
    inside = members >= 0
    # the neighbours tilt each spot the way the field rises; without them the spot is flat
    truth_dev = field[inside, 0] - observed[members[inside], 0]
    assert np.corrcoef(out[inside, 0] - observed[members[inside], 0], truth_dev)[0, 1] > 0.5
    flat_out = anchor_to_measurements(sp_xy, flat, members, centres, observed, image=0.0, interpolation=0.0)
    np.testing.assert_allclose(flat_out[inside], observed[members[inside]], atol=1e-6)


def test_spot_blocks_pool_a_jittered_square_lattice_in_twos_and_a_hexagonal_one_compactly():
    rng = np.random.default_rng(3)
    r, c = np.meshgrid(np.arange(8), np.arange(10), indexing="ij")
    square = np.stack([c.ravel() * 290.0, r.ravel() * 290.0], 1) + rng.uniform(-30, 30, size=(80, 2))
    blocks = spot_blocks(square)
    np.testing.assert_array_equal(np.bincount(blocks), np.full(20, 4))
    assert all(len({(a, b) for a, b in zip(r.ravel()[blocks == k] // 2, c.ravel()[blocks == k] // 2,
                                           strict=True)}) == 1 for k in range(20))
    hexa = np.array([[x * 100.0 + (50.0 if y % 2 else 0.0), y * 86.6] for y in range(10) for x in range(10)])
    blocks = spot_blocks(hexa)
    sizes = np.bincount(blocks)
    assert sizes.max() <= 6 and np.median(sizes) >= 3
    spread = max(np.ptp(hexa[blocks == k], axis=0).max() for k in range(len(sizes)))
    assert spread < 200  # every block lies within one 2-pitch cell


def _calibration_levels(image_sees_the_field: bool, seed: int = 4):
    """One synthetic section: spots on a 200 um lattice, 10 um superpixels, expression = a smooth gradient plus a
    fine pattern; the superpixel features see the fine pattern (or only noise)."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(0, 2400, 10.0), np.arange(0, 2400, 10.0))
    sp_xy = np.stack([gx.ravel(), gy.ravel()], 1)
    fine = np.sin(sp_xy[:, 0] / 37.0) * np.cos(sp_xy[:, 1] / 29.0)
    field = np.stack([sp_xy[:, 0] / 2400 + fine, sp_xy[:, 1] / 2400 - fine], 1).astype(np.float32)
    centres = np.array([[x, y] for y in range(100, 2400, 200) for x in range(100, 2400, 200)], float)
    members = spot_members(sp_xy, centres, 50.0)
    targets = np.log1p(footprint_means(np.expm1(field), members, len(centres))[0])
    noise = rng.normal(size=(len(sp_xy), 6))
    feats = np.concatenate([fine[:, None], noise], 1) if image_sees_the_field else noise
    return {"S": (feats.astype(np.float32), members, targets, centres)}


def test_calibration_learns_to_trust_an_informative_image_and_ignore_a_blind_one():
    seeing = calibrate_anchoring(_calibration_levels(True))
    blind = calibrate_anchoring(_calibration_levels(False))
    assert seeing["method"].startswith("scale transfer") and seeing["n_spots"] == 144
    assert seeing["image"] > 0.2 and blind["image"] < 0.05  # a blind image is dropped, not amplified
    assert blind["interpolation"] > 0.2  # the gradient is still there for the neighbours to give
    feats, members, targets, centres = _calibration_levels(True)["S"]
    few = {"S": (feats, np.where(members < 12, members, -1), targets, centres)}  # one row of spots imaged
    assert calibrate_anchoring(few)["method"].startswith("default")  # too few spots to learn from


class _LinearHead:
    """A fitted head's stand-in: prediction = features @ W."""

    def __init__(self, W):
        self.W = W

    def predict(self, X):
        return (X @ self.W).astype(np.float32)


def _section_with_head(seed: int, image_carries_truth: bool, n_genes: int = 5):
    """One synthetic section to anchor (spots on a 200 um lattice, 10 um superpixels, genes = a shared fine pattern
    plus noise) and a head whose superpixel predictions are the fine pattern (plus small noise) or pure noise."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(0, 2400, 10.0), np.arange(0, 2400, 10.0))
    sp_xy = np.stack([gx.ravel(), gy.ravel()], 1)
    fine = np.sin(sp_xy[:, 0] / 37.0 + seed) * np.cos(sp_xy[:, 1] / 29.0)
    loading = rng.normal(size=n_genes)
    field = (np.outer(fine, loading) + 0.3 * rng.normal(size=(len(sp_xy), n_genes))).astype(np.float32)
    centres = np.array([[x, y] for y in range(100, 2400, 200) for x in range(100, 2400, 200)], float)
    members = spot_members(sp_xy, centres, 50.0)
    observed = np.log1p(footprint_means(np.expm1(field), members, len(centres))[0])
    feats = rng.normal(size=(len(sp_xy), 8)).astype(np.float32)
    W = rng.normal(size=(8, n_genes))
    if image_carries_truth:
        feats[:, 0], W[0], W[1:] = fine, loading, 0.05 * W[1:]
    return feats, members, observed, centres, _LinearHead(W)


@pytest.mark.parametrize("seed", range(5))
def test_calibration_on_the_section_with_the_models_head_drops_a_noise_image_and_keeps_a_true_one(seed):
    feats, members, observed, centres, head = _section_with_head(seed, image_carries_truth=False)
    noise = calibrate_anchoring({"S": (feats, members, observed, centres)}, head=head)
    assert noise["method"] == "scale transfer, 2 x 2-pitch blocks, the model's head" and noise["n_spots"] == 144
    assert noise["image"] == 0.0  # the image adds nothing measurable: the map falls back to the measured spots
    feats, members, observed, centres, head = _section_with_head(seed, image_carries_truth=True)
    assert calibrate_anchoring({"S": (feats, members, observed, centres)}, head=head)["image"] > 0.8


def test_section_anchoring_calibrates_on_the_section_unless_it_trained_the_model_or_is_too_small():
    feats, members, observed, centres, head = _section_with_head(0, image_carries_truth=True)
    stored = {"image": 0.3, "interpolation": 0.4, "method": "scale transfer, 2 x 2-pitch blocks, a head fitted on "
              "the blocks"}
    model = SuperresModel(["g0", "g1", "g2", "g3", "g4"], head, anchoring=stored)
    own = section_anchoring(feats, members, observed, centres, model)
    assert own["weights_from"] == "this section" and own["image"] > 0.8 and own["section_spots_in_blocks"] == 144
    assert not own["image_weight_override"]
    trained = section_anchoring(feats, members, observed, centres, model, in_training=True)
    assert trained["weights_from"].startswith("the model's training sections (the model was trained on")
    assert (trained["image"], trained["interpolation"]) == (0.3, 0.4)
    few = np.where(members < 24, members, -1)  # two rows of spots imaged: 24 spots in blocks
    small = section_anchoring(feats, few, observed, centres, model)
    assert "fewer than 40" in small["weights_from"] and (small["image"], small["interpolation"]) == (0.3, 0.4)
    forced = section_anchoring(feats, members, observed, centres, model, image_weight=0.0)
    assert forced["image"] == 0.0 and forced["image_weight_override"]
    assert forced["interpolation"] == own["interpolation"]


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
    assert sp.features.shape == (len(sp), 32 + 32 + 3)
    # every measured spot gets superpixels, and only spots keep superpixels the tissue mask would drop
    members = spot_members(sp.xy, np.asarray(a.obsm["spatial"]), spot_radius_px(a))
    assert (footprint_means(sp.features, members, a.n_obs)[1] > 0).all()
    assert (members[sp.tissue < 0.25] >= 0).all()
    with pytest.raises(InputError, match="step-um"):
        superpixels(a, enc, step_um=20)


def test_a_spot_on_background_still_gets_superpixels(c3_sp):
    a, enc, _ = c3_sp
    moved = a.copy()
    moved.obsm["spatial"] = np.asarray(a.obsm["spatial"], float).copy()
    moved.obsm["spatial"][0] = [300.0, 300.0]  # the slide's corner: glass, not tissue
    sp = superpixels(moved, enc)
    members = spot_members(sp.xy, moved.obsm["spatial"], spot_radius_px(moved))
    assert (members == 0).sum() >= 1 and (sp.tissue[members == 0] < 0.25).all()


def test_superpixels_are_cached_by_section_encoder_and_geometry(c3_sp, tmp_path, monkeypatch):
    import spafoundation.tasks.superres as superres

    a, enc, sp = c3_sp
    first = superpixels(a, enc, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.features, sp.features)
    files = list((tmp_path / "superpixels").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as z:  # a tile's class embedding is stored once, not once per superpixel
        assert len(z["shared"]) < len(sp) / 2 and z["own"].shape == (len(sp), 32 + 3)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although the superpixels were cached")

    monkeypatch.setattr(superres, "_encode_superpixels", no_encoder)
    again = superpixels(a, enc, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.xy, sp.xy)
    np.testing.assert_array_equal(again.features, sp.features)
    assert again.blocks == sp.blocks and again.step_um == sp.step_um
    # another geometry or other spots are other entries; a damaged entry is recomputed
    with pytest.raises(AssertionError, match="encoder ran"):
        superpixels(a, enc, step_um=28, cache_dir=tmp_path)
    moved = a.copy()
    moved.obsm["spatial"] = np.asarray(a.obsm["spatial"], float) + 1.0
    with pytest.raises(AssertionError, match="encoder ran"):
        superpixels(moved, enc, cache_dir=tmp_path)
    files[0].write_bytes(b"not an npz")
    with pytest.raises(AssertionError, match="encoder ran"):
        superpixels(a, enc, cache_dir=tmp_path)


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
                 "--step-um", "28", "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache" / "superpixels").glob("*.npz"))) == 1
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
    learned = SuperresModel.load(out / "model", encoder=str(tiny_folder)).anchoring
    assert learned["method"].startswith("scale transfer") and 0 <= learned["image"] <= 1
    used = spa.uns["superres"]["anchoring"]  # C3 trained the model: its stored weights
    assert used["image"] == pytest.approx(learned["image"]) and used["weights_from"].startswith("the model's training")
    # the saved model on a section it never saw: anchored with weights calibrated on that section's own spots
    out2 = tmp_path / "again"
    assert main(["superres", str(her2st_root), "--sections", "C4", "--model", str(out / "model"), "--encoder",
                 str(tiny_folder), "--no-figure", "--out", str(out2), "--quiet", "--no-cache"]) == 0
    c4 = ad.read_h5ad(out2 / "C4.h5ad")
    used = c4.uns["superres"]["anchoring"]
    assert c4.n_vars == 4 and used["weights_from"] == "this section" and used["method"].endswith("the model's head")
    assert 0 <= used["image"] <= 1 and 0 <= used["interpolation"] <= 1 and used["section_spots_in_blocks"] >= 40


@pytest.mark.slow
def test_superres_benchmark_runs_every_split_and_method(her2st_root, tiny_folder):
    from spafoundation.eval.splits import LOPO, MEAN_OF_DIRECTIONS
    from spafoundation.eval.superres_benchmark import (
        METHODS,
        WITHIN,
        coarsen,
        run_superres_benchmark,
        superres_summary,
    )
    from spafoundation.io import read_dataset

    sections = read_dataset(her2st_root, ["C3", "C4", "C5"], with_images=False)
    block, coarse = coarsen(sections["C3"])
    assert coarse.n_obs == len(np.unique(block)) and np.isclose(coarse.X.sum(), sections["C3"].X.sum())
    sections["C5"].obs["patient"] = "X"  # a second patient: leave-one-patient-out both ways, then within C
    rows, genes, details = run_superres_benchmark(sections, str(tiny_folder), genes="hvg:5")
    assert list(genes) == ["X -> C", "C -> X", "within C"] and all(len(g) == 5 for g in genes.values())
    assert set(rows["method"]) == set(METHODS) and len(rows) == (1 + 2 + 2) * len(METHODS)
    assert rows["mean_r"].notna().all() and rows["ssim"].between(-1, 1).all()
    # a test section of another patient is calibrated on its own spots; a section the model trained on is not
    assert details["directions"]["C -> X"]["anchoring"]["C5"]["weights_from"] == "this section"
    assert details["directions"]["within C"]["anchoring"]["C3"]["weights_from"].startswith("the model's training")
    summary = superres_summary(rows)
    assert list(dict.fromkeys(summary["direction"])) == ["X -> C", "C -> X", f"{MEAN_OF_DIRECTIONS} (2)", "within C"]
    assert list(dict.fromkeys(summary["split"])) == [LOPO, WITHIN] and len(summary) == 4 * len(METHODS)
    mean = summary[summary["direction"].str.startswith(MEAN_OF_DIRECTIONS)].set_index("method")["mean_r"]
    per = summary[summary["split"] == LOPO].groupby("method")["mean_r"].apply(lambda v: v.iloc[:2].mean())
    np.testing.assert_allclose(mean.sort_index(), per.sort_index())  # each direction weighs the same


def _hex_section(rows: int = 4, cols: int = 8) -> ad.AnnData:
    rc = np.array([(r, c) for r in range(rows) for c in range(cols) if (r + c) % 2 == 0])
    a = ad.AnnData(np.ones((len(rc), 3), dtype=np.float32))
    a.obs["array_row"], a.obs["array_col"] = rc[:, 0], rc[:, 1]
    a.obsm["spatial"] = np.stack([rc[:, 1] * 50.0, rc[:, 0] * 86.6], 1)
    a.uns["spatial"] = {"S": {}}
    return a


def test_coarsening_takes_2_x_2_spots_on_square_and_hexagonal_arrays():
    from spafoundation.eval.superres_benchmark import array_image, coarsen, lattice

    hexa = _hex_section()
    block, coarse = coarsen(hexa)
    assert np.bincount(block).tolist() == [4] * 4 and coarse.X.sum() == hexa.X.sum()
    img = array_image(lattice(hexa), np.arange(hexa.n_obs, dtype=float)[:, None])
    assert img.shape == (1, 4, 4) and np.isfinite(img).all()  # a row's spots are neighbouring pixels
    square = hexa.copy()
    square.obs["array_col"] = square.obs["array_col"] // 2  # the same spots on a square array
    square.obs["array_row"] = np.arange(square.n_obs) // 4
    square.obsm["spatial"] = np.stack([square.obs["array_col"] * 100.0, square.obs["array_row"] * 100.0], 1)
    assert np.bincount(coarsen(square)[0]).tolist() == [4] * 4
    # without array coordinates the lattice comes from the spot centres, jittered, shifted and scaled
    rng = np.random.default_rng(0)
    for grid, unknown in ((hexa, False), (square, True)):
        bare = grid.copy()
        if unknown:  # what the manifest reader writes for spots without an array position
            bare.obs["array_row"] = bare.obs["array_col"] = -1
        else:
            bare.obs = bare.obs.drop(columns=["array_row", "array_col"])
        bare.obsm["spatial"] = 3.1 * grid.obsm["spatial"] + 1234.0 + rng.normal(0, 5.0, grid.obsm["spatial"].shape)
        np.testing.assert_array_equal(coarsen(bare)[0], coarsen(grid)[0])
        np.testing.assert_array_equal(array_image(lattice(bare), grid.X[:, :1]),
                                      array_image(lattice(grid), grid.X[:, :1]))


def test_benchmark_verdict_reads_the_run():
    import pandas as pd

    from spafoundation.commands.benchmark_superres import verdict
    from spafoundation.eval.superres_benchmark import METHODS, OURS

    r = {"C -> A": {METHODS[0]: (0.50, 0.40), METHODS[1]: (0.52, 0.30), OURS: (0.515, 0.41)},
         "A -> C": {METHODS[0]: (0.60, 0.40), METHODS[1]: (0.50, 0.30), OURS: (0.60, 0.39)}}
    summary = pd.DataFrame([{"split": "leave-one-patient-out", "direction": d, "method": m, "mean_r": v[0],
                             "ssim": v[1]} for d, ms in r.items() for m, v in ms.items()])
    text = verdict(summary)
    assert "C -> A: against the nearest coarse spot mean r +0.0150, SSIM +0.0100 (not worse)" in text
    assert "best baseline (inverse-distance weighting) mean r -0.0050" in text
    assert "A -> C: against the nearest coarse spot mean r +0.0000, SSIM -0.0100 (worse)" in text


def test_spots_finer_than_superpixels_are_refused(her2st_c2, tiny_encoder):
    a = her2st_c2[:40].copy()
    step = superpixel_step_um(tiny_encoder)
    check_spots_resolvable({"C2": a}, tiny_encoder, None)  # 100 um spots over 56 um superpixels: trained on
    a.uns["spatial"]["C2"]["scalefactors"]["spot_diameter_fullres"] = step / microns_per_pixel(a)  # one step wide
    with pytest.raises(InputError, match=r"spot_diameter_fullres.*span fewer than 1.5 superpixels"):
        check_spots_resolvable({"C2": a}, tiny_encoder, None)
    with pytest.raises(InputError, match="nothing to super-resolve"):
        fit_superres({"C2": a}, tiny_encoder, genes=list(a.var_names[:3]))


def test_values_at_spots_fall_back_on_the_nearest_superpixel():
    sp_xy = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    values = np.array([[1.0], [3.0], [7.0]], dtype=np.float32)
    spot_xy = np.array([[1.0, 0.0], [9.0, 1.0]])
    members = spot_members(sp_xy, spot_xy, radius_px=1.0)  # spot 0 holds the first two; spot 1 (radius 1) none
    assert members.tolist() == [0, 0, -1]
    np.testing.assert_allclose(values_at_spots(values, sp_xy, members, spot_xy), [[2.0], [7.0]])

