"""Tumour labels, the classifier, held-out scoring of training sections, both routes, the tumor CLI."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.tasks.labels import tumor_labels
from spafoundation.tasks.spot_features import make_recipe
from spafoundation.tasks.tumor import (
    TUMOR_FEATURES,
    TumorClassifier,
    TumorModel,
    held_out_models,
    sample_fields,
    sample_note,
    tumor_maps,
)


def test_tumor_labels_match_case_insensitively_and_leave_unknown_out():
    a = ad.AnnData(np.zeros((5, 0)), obs=pd.DataFrame({"lab": ["cancer in situ", "Invasive Cancer", "stroma",
                                                               "unknown", "Tumour"]}, index=list("abcde")))
    np.testing.assert_array_equal(tumor_labels(a, "lab"), [1, 1, 0, np.nan, 1])
    with pytest.raises(InputError, match="obs\\['nope'\\]"):
        tumor_labels(a, "nope")


def test_classifier_learns_and_round_trips_through_its_state():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(float)
    X = rng.normal(size=(300, 6)) + y[:, None] * np.array([2, 0, 0, 1, 0, 0])
    y[:10] = np.nan  # unknown labels are ignored
    groups = np.repeat(["a", "b", "c"], 100)
    clf = TumorClassifier().fit(X, y, groups)
    from sklearn.metrics import roc_auc_score

    p = clf.predict_proba(X[10:])
    assert roc_auc_score(y[10:], p) > 0.9 and clf.C in clf.cs
    np.testing.assert_allclose(TumorClassifier.from_state(clf.state()).predict_proba(X), clf.predict_proba(X),
                               rtol=1e-6)
    with pytest.raises(InputError, match="one class"):
        TumorClassifier().fit(X, np.zeros(300), groups)


def test_held_out_models_never_score_a_section_with_a_model_that_saw_it():
    fitted = []

    def fit(names):
        fitted.append(tuple(names))
        return tuple(names)

    per, full = held_out_models(["A", "B", "X"], ["A", "B", "C"], fit)
    assert full == ("A", "B", "C")
    assert per["A"] == (("B", "C"), ["B", "C"]) and per["B"] == (("A", "C"), ["A", "C"])
    assert per["X"] == (("A", "B", "C"), ["A", "B", "C"])
    # every target is out-of-sample: A and B held out by refitting, X never in training
    assert all(sample_fields(t, per[t][1])["held_out"] for t in ("A", "B", "X"))
    # the only training section cannot be held out: it is scored in training, and says so
    per, _ = held_out_models(["A", "X"], ["A"], fit)
    assert per["A"] == (("A",), ["A"]) and sample_fields("A", per["A"][1]) == {"held_out": False, "trained_on": ["A"]}
    assert sample_fields("X", per["X"][1]) == {"held_out": True, "trained_on": ["A"]}


def test_sample_fields_and_note():
    assert sample_note(sample_fields("C4", ["C2", "C3"])) == "out-of-sample (model trained on C2, C3)"
    assert sample_note(sample_fields("C2", ["C2", "C3"])) == "in training (model trained on C2, C3)"
    assert sample_fields("C2", None) == {"held_out": None, "trained_on": None}
    assert sample_note(sample_fields("C2", None)) == "training sections unknown"


@pytest.fixture
def labelled(her2st_imaged):
    return {s: her2st_imaged[s][:60].copy() for s in ("C2", "C3", "C4")}


def test_tumor_maps_both_routes_on_real_sections(labelled, tmp_path):
    res = tumor_maps(labelled, labelled, routes=["supervised", "markers"], label_column="cluster_annotation",
                     source="colour_texture", context=1.0, neighbours_um=0.0, cache_dir=tmp_path)
    for name, a in res["spots"].items():
        p = a.obs["tumor_probability"].to_numpy()
        assert p.shape == (60,) and np.all((p >= 0) & (p <= 1))
        assert np.isfinite(a.obs["tumor_marker_score"]).all()
        assert "tumor_probability" not in labelled[name].obs  # inputs untouched
    for route in ("supervised", "markers"):
        for m in res["metrics"][route].values():
            assert m["held_out"] and (np.isnan(m["roc_auc"]) or 0 <= m["roc_auc"] <= 1)
    assert res["model"].training["sections"] == ["C2", "C3", "C4"]
    assert set(res["marker_model"].genes) <= {"ERBB2", "GRB7", "STARD3", "PGAP3", "KRT8", "KRT18", "KRT19",
                                              "EPCAM", "CDH1", "MUC1", "CD24"}


def test_tumor_maps_records_per_section_whether_its_score_is_out_of_sample(labelled, tmp_path):
    """C2 is the only training section (scored in training); C3 and C4 were never in training (out-of-sample). A
    saved model scores by its recorded training sections; one that records none says so."""
    res = tumor_maps(labelled, {"C2": labelled["C2"]}, routes=["supervised", "markers"],
                     label_column="cluster_annotation", source="mean_colour", context=1.0, neighbours_um=0.0,
                     cache_dir=tmp_path)
    for route in ("supervised", "markers"):
        per = res["metrics"][route]
        assert set(per) == {"C2", "C3", "C4"}
        assert per["C2"]["held_out"] is False and per["C2"]["trained_on"] == ["C2"]
        assert per["C3"]["held_out"] is True and per["C4"]["held_out"] is True
        assert per["C3"]["trained_on"] == per["C4"]["trained_on"] == ["C2"]
    model = res["model"]
    assert model.training["sections"] == ["C2"]
    again = tumor_maps(labelled, {}, routes=["supervised"], label_column="cluster_annotation", model=model,
                       cache_dir=tmp_path)["metrics"]["supervised"]
    assert again["C2"] == {**res["metrics"]["supervised"]["C2"], "held_out": False, "trained_on": ["C2"]}
    assert again["C3"]["held_out"] is True and again["C3"]["trained_on"] == ["C2"]
    model.save(tmp_path / "model")
    loaded = TumorModel.load(tmp_path / "model")
    assert loaded.training["sections"] == ["C2"]
    loaded.training = {}  # a model that does not record its training sections
    unknown = tumor_maps({"C3": labelled["C3"]}, {}, routes=["supervised"], label_column="cluster_annotation",
                         model=loaded, cache_dir=tmp_path)["metrics"]["supervised"]["C3"]
    assert unknown["held_out"] is None and unknown["trained_on"] is None


def test_tumor_maps_needs_labels_for_the_supervised_route(labelled):
    with pytest.raises(InputError, match="known labels"):
        tumor_maps(labelled, labelled, routes=["supervised"], label_column="nope", source="mean_colour")


@pytest.mark.slow
def test_cli_tumor_writes_spots_grid_model_and_heatmaps(her2st_root, tiny_folder, tmp_path, capsys, monkeypatch):
    from spafoundation.io import readers

    read = []  # the sections each call reads: those it scores and trains on, not the 36 of the folder
    read_dataset = readers.read_dataset
    monkeypatch.setattr(readers, "read_dataset", lambda path, sections=None, **kw: read.append(sections) or
                        read_dataset(path, sections, **kw))
    out = tmp_path / "tumor"
    common = ["--encoder", str(tiny_folder), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["tumor", str(her2st_root), "--sections", "C2,C3", "--train-sections", "C3,C4,A1", "--label-column",
                 "cluster_annotation", "--route", "both", "--grid-um", "1500", "--out", str(out), *common]) == 0
    spots = ad.read_h5ad(out / "spots.h5ad")
    assert {"tumor_probability", "tumor_marker_score", "tumor_label"} <= set(spots.obs)
    assert set(spots.obs["section"]) == {"C2", "C3"}
    grid = ad.read_h5ad(out / "grid.h5ad")
    assert set(grid.obs["section"]) == {"C2", "C3"} and grid.obs["tumor_probability"].between(0, 1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"supervised", "markers"} and metrics["supervised"]["C2"]["held_out"] is True
    trained = metrics["supervised"]["C2"]["trained_on"]
    assert sorted(trained) == ["A1", "C3", "C4"] and metrics["supervised"]["C3"]["trained_on"] == ["C4", "A1"]
    assert (out / "C2_tumor.png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "ROC AUC" in text and f"tumour spots, out-of-sample (model trained on {', '.join(trained)})" in text
    assert "in training" not in text
    # the saved model scores an image-only section by itself; C4 was among its training sections: in training
    out2 = tmp_path / "again"
    assert main(["tumor", str(her2st_root), "--sections", "C4", "--model", str(out / "model"), "--grid-um", "0",
                 "--label-column", "cluster_annotation", "--no-figure", "--out", str(out2), *common]) == 0
    assert ad.read_h5ad(out2 / "spots.h5ad").obs["tumor_probability"].notna().all()
    again = json.loads((out2 / "metrics.json").read_text())["supervised"]["C4"]
    assert again["held_out"] is False and "C4" in again["trained_on"]
    assert "C4 supervised" in (text := capsys.readouterr().out) and "tumour spots, in training (model" in text
    assert TumorModel.load(out / "model", encoder=str(tiny_folder)).recipe == make_recipe(**TUMOR_FEATURES)
    assert read == [["C2", "C3", "C4", "A1"], ["C4"]]


def test_cli_tumor_unknown_label_column_exits_2_and_writes_nothing(her2st_root, tiny_folder, tmp_path, capsys,
                                                                  monkeypatch):
    from spafoundation.io import legacy_st

    read = []
    real = legacy_st.read_legacy_st_section
    monkeypatch.setattr(legacy_st, "read_legacy_st_section", lambda root, s, **kw: read.append(s) or real(root, s, **kw))
    out = tmp_path / "tumor"
    assert main(["tumor", str(her2st_root), "--sections", "C2", "--train-sections", "C3", "--label-column", "nope",
                 "--out", str(out), "--encoder", str(tiny_folder)]) == 2
    assert not out.exists() and "nope" in capsys.readouterr().err
    # a training section the data does not have is named, whether or not the sections to score are given
    for sections in (["--sections", "C2"], []):
        assert main(["tumor", str(her2st_root), *sections, "--train-sections", "Z9", "--out", str(out),
                     "--encoder", str(tiny_folder)]) == 2
        assert not out.exists() and "Z9" in capsys.readouterr().err
    # no call above reads a count-only section: none trains or is scored (HER2ST's 30 took half a minute)
    assert set(read) <= {"C2", "C3", "C4", "C5", "C6", "A1"}, read
    # one named without an image is read (any imaged section may train: those are read too), to be named as such
    assert main(["tumor", str(her2st_root), "--sections", "B1", "--out", str(out), "--encoder", str(tiny_folder)]) == 2
    assert not out.exists() and "no selected section has an H&E image to score" in capsys.readouterr().err
