"""Fit on sections with counts, save, load, predict on a section without counts; the CLI round trip."""

from __future__ import annotations

import itertools
import json

import anndata as ad
import numpy as np
import pytest
import torch

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.tasks.expression import ExpressionModel, fit_expression


@pytest.fixture
def small_sections(her2st_imaged):
    return [her2st_imaged[s][:40].copy() for s in ("C2", "C3", "C4")]


def test_fit_save_load_predict_without_counts(small_sections, tiny_encoder, tmp_path):
    train, test = small_sections[:2], small_sections[2]
    model = fit_expression(train, tiny_encoder, genes="hvg:8", cache_dir=tmp_path / "cache")
    assert len(model.genes) == 8 and model.recipe["source"] == "encoder+colour_texture+nuclei"
    assert model.head.kind == "ridge-ensemble" and len(model.head.members) == 2
    assert model.training["sections"] == ["C2", "C3"] and model.training["alpha"] is not None
    pred = model.predict(test, cache_dir=tmp_path / "cache")
    assert pred.shape == (40, 8) and list(pred.var_names) == model.genes
    assert pred.obs.equals(test.obs) and np.array_equal(pred.obsm["spatial"], test.obsm["spatial"])
    assert pred.uns["spatial"].keys() == test.uns["spatial"].keys()

    model.save(tmp_path / "model")
    loaded = ExpressionModel.load(tmp_path / "model", encoder=tiny_encoder)
    image_only = ad.AnnData(np.zeros((40, 0), np.float32), obs=test.obs.copy(), uns={"spatial": test.uns["spatial"]},
                            obsm={"spatial": np.asarray(test.obsm["spatial"])})
    again = loaded.predict(image_only, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(again.X, pred.X, rtol=1e-4, atol=1e-4)

    # how far to trust it: each gene's r over held-out training sections, and the section's image shift
    assert list(pred.var.columns) == ["cv_pearson", "cv_pearson_sections", "reliable"]  # one patient: no patient folds
    assert pred.var["reliable"].dtype == bool
    assert (pred.var["reliable"] == (pred.var["cv_pearson"] >= 0.1)).all()
    assert model.reliable() == list(pred.var_names[pred.var["reliable"]])
    np.testing.assert_allclose(again.var["cv_pearson"].to_numpy(), pred.var["cv_pearson"].to_numpy())
    shift = pred.uns["spafoundation_prediction"]["shift"]["C4"]
    assert shift["score"] > 0 and shift["training_limit"] > 0 and again.uns["spafoundation_prediction"]["shift"]["C4"] == shift


def test_gene_cv_over_patients_and_models_saved_before_it(small_sections, tmp_path):
    train = [a.copy() for a in small_sections[:3]]
    train[2].obs["patient"] = "other"
    model = fit_expression(train, None, genes="hvg:6", source="colour_texture", cache_dir=tmp_path)
    assert set(model.gene_cv) == {"sections", "patients"} and model.training["patients"]["C4"] == "other"
    pred = model.predict(small_sections[0], cache_dir=tmp_path)
    np.testing.assert_allclose(pred.var["cv_pearson"], pred.var["cv_pearson_patients"])  # patients where there are two
    # a model folder written before reliability was recorded still loads and predicts, without those columns
    folder = model.save(tmp_path / "model")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["reliability"]
    cfg["recipe"].pop("standardize")
    (folder / "config.json").write_text(json.dumps(cfg))
    with np.load(folder / "head.npz") as z:
        np.savez(folder / "head.npz", **{k: z[k] for k in z.files if not k.startswith("shift.")})
    old = ExpressionModel.load(folder)
    assert old.recipe.get("standardize") is None and old.shift is None and old.reliable() == []
    out = old.predict(small_sections[0], cache_dir=tmp_path)
    assert "cv_pearson" not in out.var and "shift" not in out.uns["spafoundation_prediction"]


def test_handcrafted_and_mean_heads(small_sections, tmp_path):
    m = fit_expression(small_sections[:2], None, genes="hvg:5", source="colour_texture", neighbours_um=0)
    assert m.encoder is None and m.predict(small_sections[2]).shape == (40, 5)
    flat = fit_expression(small_sections[:2], None, genes="hvg:5", head="mean", source="mean_colour")
    p = flat.predict(small_sections[2]).X
    assert np.allclose(p, p[0])


def test_load_rejects_bad_folders(tmp_path):
    with pytest.raises(InputError, match=r"config\.json"):
        ExpressionModel.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="format"):
        ExpressionModel.load(tmp_path)


@pytest.mark.slow
def test_cli_fit_and_predict(her2st_root, tiny_folder, tmp_path, capsys):
    model_dir, out = tmp_path / "model", tmp_path / "pred.h5ad"
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["fit-expression", str(her2st_root), "--sections", "C3,C4", "--encoder", str(tiny_folder),
                 "--genes", "hvg:6", "--out", str(model_dir), *common]) == 0
    cfg = json.loads((model_dir / "config.json").read_text())
    assert len(cfg["genes"]) == 6 and cfg["encoder"]["name"] == str(tiny_folder)
    assert cfg["head"] == "ridge-ensemble" and cfg["head_params"]["programs"] == 2
    assert main(["predict-expression", str(model_dir), str(her2st_root), "--sections", "C6", "--out", str(out),
                 *common]) == 0
    pred = ad.read_h5ad(out)
    assert pred.n_vars == 6 and pred.n_obs > 100 and "C6" in pred.uns["spatial"]
    printed = capsys.readouterr().out
    assert f"{int(pred.var['reliable'].sum())} of 6 genes reliable" in printed and "C6: image shift" in printed
    assert pred.var["reliable"].dtype == bool and "shift" in pred.uns["spafoundation_prediction"]
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert set(metrics) == {"C6"} and -1 <= metrics["C6"]["mean_r"] <= 1
    assert (tmp_path / "pred_C6_maps.png").stat().st_size > 10_000
    # bad inputs: exit 2, nothing written
    assert main(["predict-expression", str(tmp_path / "nowhere"), str(her2st_root), "--out", str(out)]) == 2
    assert main(["predict-expression", str(model_dir), str(her2st_root), "--out", str(tmp_path / "p.csv")]) == 2
    assert main(["fit-expression", str(her2st_root), "--sections", "C3", "--genes", "hvg:x",
                 "--encoder", str(tiny_folder), "--out", str(tmp_path / "m2"), *common]) == 2
    assert main(["fit-expression", str(her2st_root), "--sections", "C3", "--head", "ridge", "--programs", "1",
                 "--encoder", str(tiny_folder), "--out", str(tmp_path / "m3"), *common]) == 2
    assert "--programs" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists() and not (tmp_path / "p.csv").exists()


def test_cli_fit_without_sections_trains_on_the_imaged_ones(her2st_root, tiny_folder, tmp_path, capsys):
    # a cohort whose counts outnumber its images (HER2ST's layout): C3 imaged, B1 counts only
    data = tmp_path / "cohort"
    for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs/C"):
        (data / sub).mkdir(parents=True)
    for s in ("C3", "B1"):
        (data / "ST-cnts" / f"{s}.tsv.gz").symlink_to(her2st_root / "ST-cnts" / f"{s}.tsv.gz")
        (data / "ST-spotfiles" / f"{s}_selection.tsv").symlink_to(her2st_root / "ST-spotfiles" / f"{s}_selection.tsv")
    (data / "ST-imgs" / "C" / "C3").symlink_to(her2st_root / "ST-imgs" / "C" / "C3")
    model_dir = tmp_path / "model"
    assert main(["fit-expression", str(data), "--encoder", str(tiny_folder), "--features", "encoder", "--genes",
                 "hvg:4", "--out", str(model_dir), "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert json.loads((model_dir / "config.json").read_text())["training"]["sections"] == ["C3"]
    # named, a section without an image is still refused: it cannot train
    assert main(["fit-expression", str(data), "--sections", "C3,B1", "--encoder", str(tiny_folder),
                 "--out", str(tmp_path / "m2"), "--quiet"]) == 2
    assert "B1" in capsys.readouterr().err and not (tmp_path / "m2").exists()


def test_finetune_head_trains_saves_and_reloads(small_sections, tiny_encoder, tmp_path):
    train, test = small_sections[:2], small_sections[2]
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    model = fit_expression(train, tiny_encoder, genes="hvg:5", head="finetune",
                           head_params={"epochs": 4, "lr": 1e-3, "batch_size": 16})
    losses = model.training["finetune_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # the caller's encoder is untouched; the model carries its own fine-tuned copy with its own cache identity
    assert all(torch.equal(before[k], v) for k, v in tiny_encoder.model.state_dict().items())
    assert model.encoder.identity != tiny_encoder.identity
    pred = model.predict(test, cache_dir=tmp_path / "cache")
    model.save(tmp_path / "ft")
    assert (tmp_path / "ft" / "encoder" / "model.safetensors").is_file()
    again = ExpressionModel.load(tmp_path / "ft").predict(test, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(again.X, pred.X, rtol=1e-4, atol=1e-4)


def test_a_section_on_another_panel_is_scored_on_the_model_genes_it_has(small_sections):
    from types import SimpleNamespace

    from spafoundation.commands.predict_expression import _evaluate

    a = small_sections[2]
    genes = list(a.var_names[:4])
    model = SimpleNamespace(genes=[*genes[:2], "NOT_MEASURED", *genes[2:]], target_sum=1e4)
    pred = ad.AnnData(np.random.default_rng(0).random((a.n_obs, 5)).astype(np.float32))
    m = _evaluate(model, a, pred)
    assert m["n_genes"] == 4 and list(m["per_gene_r"]) == genes
    assert _evaluate(SimpleNamespace(genes=["NOT_MEASURED"], target_sum=1e4), a, pred[:, :1]) is None


def test_a_damaged_or_mismatched_model_folder_is_one_input_error(small_sections, tmp_path, capsys):
    model = fit_expression(small_sections[:2], None, genes="hvg:5", head="mean", source="mean_colour")
    good = model.save(tmp_path / "good")
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((good / "config.json").read_text())
    data = (good / "head.npz").read_bytes()
    (cut / "head.npz").write_bytes(data[: len(data) // 2])  # was a BadZipFile traceback
    with pytest.raises(InputError, match="unreadable") as e:
        ExpressionModel.load(cut)
    assert e.value.path.endswith("head.npz")
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    (fewer / "head.npz").write_bytes(data)
    cfg = json.loads((good / "config.json").read_text())
    (fewer / "config.json").write_text(json.dumps({**cfg, "genes": cfg["genes"][:3], "reliability": {}}))
    with pytest.raises(InputError, match=r"the head predicts 5 genes but config\.json lists 3"):
        ExpressionModel.load(fewer)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "head.npz").write_bytes(data)
    (moved / "config.json").write_text(json.dumps({**cfg, "encoder": {"name": str(tmp_path / "gone"),
                                                                      "identity": "x"}}))
    with pytest.raises(InputError, match="refers to this encoder folder, which is not there") as e:
        ExpressionModel.load(moved)._get_encoder()
    assert e.value.path.endswith("gone") and "--encoder" in str(e.value)
    capsys.readouterr()
    out = tmp_path / "pred.h5ad"
    (tmp_path / "data").mkdir()
    # was a ValueError traceback drawing the figure, after the prediction was written
    assert main(["predict-expression", str(good), str(tmp_path / "data"), "--genes", f"{model.genes[0]}, NOPE", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--genes: not predicted by this model: NOPE" in err[0] and not out.exists()


def test_stain_reference_is_fitted_on_training_sections_saved_and_applied_at_prediction(small_sections, tiny_encoder,
                                                                                         tmp_path):
    from spafoundation.io.stain import builtin_reference
    from spafoundation.tasks.spot_features import spot_features

    train, test = small_sections[:2], small_sections[2]
    cache = tmp_path / "cache"
    model = fit_expression(train, tiny_encoder, genes="hvg:5", stain_norm="macenko", neighbours_um=0, context=1,
                           cache_dir=cache)
    stored = model.recipe["stain_reference"]
    assert model.recipe["stain_norm"] == "macenko" and stored["source"] == "sections C2,C3"
    assert stored["max_concentration"] != builtin_reference("macenko").to_dict()["max_concentration"]
    model.save(tmp_path / "model")
    loaded = ExpressionModel.load(tmp_path / "model", encoder=tiny_encoder)
    assert loaded.recipe["stain_reference"] == stored
    # prediction normalises the new section to the training reference, without being told
    normalised = spot_features(test, model.recipe, tiny_encoder, cache_dir=cache)
    raw = spot_features(test, {**model.recipe, "stain_norm": "none", "stain_reference": None}, tiny_encoder,
                        cache_dir=cache)
    builtin = spot_features(test, {**model.recipe, "stain_reference": None}, tiny_encoder, cache_dir=cache)
    np.testing.assert_allclose(loaded.features(test, cache_dir=cache), normalised, atol=1e-5)
    assert not np.allclose(normalised, raw, atol=1e-3) and not np.allclose(normalised, builtin, atol=1e-3)
    np.testing.assert_allclose(loaded.predict(test, cache_dir=cache).X, model.head.predict(normalised), atol=1e-4)
    # a damaged stored reference: one error naming the file and the field
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    cfg["recipe"]["stain_reference"]["stain_matrix"] = [[0.1, 0.2]]
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"config\.json: recipe\.stain_reference\.stain_matrix"):
        ExpressionModel.load(tmp_path / "model")


def test_cli_stain_norm_values(her2st_root, tiny_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit-expression", str(her2st_root), "--sections", "C3", "--encoder", str(tiny_folder),
              "--stain-norm", "vahadane", "--out", str(tmp_path / "m")])
    assert e.value.code == 2 and "--stain-norm" in capsys.readouterr().err
    assert main(["embed", str(her2st_root), "--sections", "C3", "--encoder", str(tiny_folder), "--tiles",
                 "--stain-norm", "macenko", "--out", str(tmp_path / "tiles")]) == 2
    assert "--stain-norm" in capsys.readouterr().err
    assert main(["embed", str(her2st_root), "--sections", "C3", "--encoder", str(tiny_folder),
                 "--stain-reference", str(tmp_path / "none.png"), "--out", str(tmp_path / "e.h5ad")]) == 2
    assert "--stain-reference: needs --stain-norm" in capsys.readouterr().err
    assert not (tmp_path / "tiles").exists() and not (tmp_path / "e.h5ad").exists()


def test_reference_sections_inform_the_programs_and_leave_held_out_patients(small_sections, her2st_root, tmp_path,
                                                                            monkeypatch):
    import spafoundation.tasks.expression as expression
    from spafoundation.io import read_dataset

    train = [a.copy() for a in small_sections]
    train[2].obs["patient"] = "other"
    reference = read_dataset(her2st_root, ["B1", "C4"])  # C4 is a training section: skipped
    reference["B1"].obs["patient"] = "other"
    seen, seen_transcriptome = {}, {}

    def spy(X, Y, sections, folds, make_head, blocks=None, fit_options=None):
        options = {f: fit_options(f) for f in np.unique(folds)}
        if "reference" in options[folds[0]]:
            seen.update({f: o["reference"] for f, o in options.items()})
            # with a reference, no transcriptome is read: the reference shapes the targets
            assert all(set(o) == {"reference"} for o in options.values())
        else:  # without one, the factors of the other training sections' transcriptome do, one row per spot
            for f, o in options.items():
                assert set(o) == {"transcriptome"} and len(o["transcriptome"]) == (folds != f).sum()
            seen_transcriptome.update(options)
        return cv_pearson(X, Y, sections, folds, make_head, blocks, fit_options)

    cv_pearson = expression.gene_cv_pearson
    monkeypatch.setattr(expression, "gene_cv_pearson", spy)
    model = fit_expression(train, None, genes="hvg:6", source="colour_texture", cache_dir=tmp_path,
                           reference=list(reference.values()))
    assert model.training["reference"] == {"sections": ["B1"], "patients": ["other"], "n_spots": 295}
    assert len(seen["other"]) == 0 and len(seen["C"]) == 1 and len(seen["C2"]) == 1  # held-out patient's: out
    without = fit_expression(train, None, genes="hvg:6", source="colour_texture", cache_dir=tmp_path)
    # in cross-validation the held-out section's genes have no say in which genes form the others' factors
    from spafoundation.pp.genes import transcriptome_z

    np.testing.assert_array_equal(seen_transcriptome["C2"]["transcriptome"], transcriptome_z(train[1:]))
    np.testing.assert_array_equal(seen_transcriptome["C"]["transcriptome"], transcriptome_z(train[2:]))
    assert not np.array_equal(seen_transcriptome["C2"]["transcriptome"], transcriptome_z(train)[40:])
    assert not np.allclose(np.abs(model.head.programs_part.loadings), np.abs(without.head.programs_part.loadings))
    again = ExpressionModel.load(model.save(tmp_path / "model"))
    np.testing.assert_allclose(again.predict(train[0], cache_dir=tmp_path).X,
                               model.predict(train[0], cache_dir=tmp_path).X, rtol=1e-5, atol=1e-5)
    for head in ("ridge", "finetune"):  # refused before any work, the fine-tuned head included
        with pytest.raises(InputError, match=f"{head} head has none"):
            fit_expression(train, None, genes="hvg:6", head=head, source="colour_texture", reference=[reference["B1"]])


def test_cli_reference(her2st_root, tmp_path, capsys):
    common = ["--sections", "C3,C4", "--features", "colour_texture", "--genes", "hvg:6", "--cache-dir",
              str(tmp_path / "cache"), "--quiet"]
    assert main(["fit-expression", str(her2st_root), *common, "--reference", str(her2st_root),
                 "--reference-sections", "B1,D1", "--out", str(tmp_path / "m")]) == 0
    assert "programs also from 2 reference section(s) of patient(s) B, D" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["training"]["reference"]["sections"] == ["B1", "D1"]
    for bad, field in ((["--reference", str(her2st_root), "--programs", "0"], "--reference"),
                       (["--reference", str(her2st_root), "--head", "ridge"], "--reference"),
                       (["--reference-sections", "B1"], "--reference-sections"),
                       (["--reference", str(her2st_root), "--reference-sections", "Z9"], "Z9")):
        assert main(["fit-expression", str(her2st_root), *common, *bad, "--out", str(tmp_path / "bad")]) == 2
        assert field in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_a_model_of_one_section_rates_its_genes_on_held_out_stripes(her2st_imaged, tmp_path):
    """One training section (one Xenium run, one Visium slide) has no section to hold out: each gene's r comes from 4
    contiguous stripes of it held out in turn, and is saved with the model like the other levels."""
    from spafoundation.tasks.reliability import spatial_stripes

    c3 = her2st_imaged["C3"]
    stripes = spatial_stripes(c3.obsm["spatial"])
    assert len(np.bincount(stripes)) == 4 and np.ptp(np.bincount(stripes)) <= 1  # equal shares
    axis = int(np.ptp(c3.obsm["spatial"][:, 1]) > np.ptp(c3.obsm["spatial"][:, 0]))
    edges = [c3.obsm["spatial"][stripes == s, axis] for s in range(4)]
    assert all(a.max() <= b.min() for a, b in itertools.pairwise(edges))  # contiguous bands, in order

    model = fit_expression([c3], None, genes="hvg:8", source="colour_texture", cache_dir=tmp_path)
    assert set(model.gene_cv) == {"stripes"}
    pred = model.predict(her2st_imaged["C4"], cache_dir=tmp_path)
    assert list(pred.var.columns) == ["cv_pearson", "cv_pearson_stripes", "reliable"]
    assert np.isfinite(pred.var["cv_pearson"]).all()
    assert "stripes of the one training section" in model.reliability_summary()
    again = ExpressionModel.load(model.save(tmp_path / "model")).predict(her2st_imaged["C4"], cache_dir=tmp_path)
    np.testing.assert_allclose(again.var["cv_pearson"], pred.var["cv_pearson"])
