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
from spafoundation.tasks.tumor import TumorClassifier, TumorModel, held_out_models, tumor_maps


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
    assert per["A"] == (("B", "C"), True) and per["B"] == (("A", "C"), True)
    assert per["X"] == (("A", "B", "C"), False)


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


def test_tumor_maps_needs_labels_for_the_supervised_route(labelled):
    with pytest.raises(InputError, match="known labels"):
        tumor_maps(labelled, labelled, routes=["supervised"], label_column="nope", source="mean_colour")


def test_cli_tumor_writes_spots_grid_model_and_heatmaps(her2st_root, tiny_folder, tmp_path, capsys):
    out = tmp_path / "tumor"
    common = ["--encoder", str(tiny_folder), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["tumor", str(her2st_root), "--sections", "C2,C3", "--label-column", "cluster_annotation",
                 "--route", "both", "--grid-um", "1500", "--out", str(out), *common]) == 0
    spots = ad.read_h5ad(out / "spots.h5ad")
    assert {"tumor_probability", "tumor_marker_score", "tumor_label"} <= set(spots.obs)
    assert set(spots.obs["section"]) == {"C2", "C3"}
    grid = ad.read_h5ad(out / "grid.h5ad")
    assert set(grid.obs["section"]) == {"C2", "C3"} and grid.obs["tumor_probability"].between(0, 1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"supervised", "markers"} and metrics["supervised"]["C2"]["held_out"]
    assert (out / "C2_tumor.png").stat().st_size > 10_000
    assert "ROC AUC" in capsys.readouterr().out
    # the saved model scores an image-only section by itself
    out2 = tmp_path / "again"
    assert main(["tumor", str(her2st_root), "--sections", "C4", "--model", str(out / "model"), "--grid-um", "0",
                 "--no-figure", "--out", str(out2), *common]) == 0
    assert ad.read_h5ad(out2 / "spots.h5ad").obs["tumor_probability"].notna().all()
    assert TumorModel.load(out / "model", encoder=str(tiny_folder)).recipe["context"] == 2.0


def test_cli_tumor_unknown_label_column_exits_2_and_writes_nothing(her2st_root, tiny_folder, tmp_path, capsys):
    out = tmp_path / "tumor"
    assert main(["tumor", str(her2st_root), "--sections", "C2", "--label-column", "nope", "--out", str(out),
                 "--encoder", str(tiny_folder)]) == 2
    assert not out.exists() and "nope" in capsys.readouterr().err
