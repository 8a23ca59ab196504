"""The tumour benchmark's label source per section, its splits (leave-one-patient-out first, then
leave-one-section-out within a patient) and its summary, on tiny synthetic sections with synthetic features."""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spafoundation.eval import tumor_benchmark as tb
from spafoundation.eval.expression_benchmark import Contender
from spafoundation.eval.splits import LOPO, LOSO, MEAN_OF_DIRECTIONS, benchmark_splits, headline
from spafoundation.tasks.labels import label_columns, label_source

MARKERS = ["ERBB2", "GRB7", "KRT8"]


def _section(name: str, patient: str | None, tumour: np.ndarray, columns: dict, seed: int) -> ad.AnnData:
    """Spots whose features (obsm['feats']) and marker counts follow ``tumour``; ``columns``: obs label columns."""
    rng = np.random.default_rng(seed)
    n = len(tumour)
    counts = np.column_stack([rng.poisson(2 + 30 * tumour) for _ in MARKERS] +
                             [rng.poisson(10, n) for _ in range(3)]).astype(np.float32)
    obs = pd.DataFrame({"section": name, **columns}, index=[f"{name}_{i}" for i in range(n)])
    if patient is not None:
        obs["patient"] = patient
    a = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[*MARKERS, "G1", "G2", "G3"]))
    a.obsm["feats"] = (tumour[:, None] * np.array([3.0, -2.0, 1.0, 0.0]) + rng.normal(size=(n, 4))).astype(np.float32)
    return a


class _Store:
    """Stands in for FeatureStore: the sections' synthetic features, whatever the contender."""

    def __init__(self, sections, *args, **kwargs):
        self.sections = sections

    def get(self, contender, name, seed=None):
        feats = self.sections[name].obsm["feats"]
        if seed is not None:  # another draw of random weights: the same signal under other noise
            feats = feats + np.random.default_rng([seed, len(name)]).normal(0, 2.0, feats.shape)
        return feats, [4]


@pytest.fixture
def sections():
    """Patient C (C1, C2): expression-cluster annotations only. Patient A (A1): pathologist labels, with 'undetermined'
    spots, and cluster annotations that contradict them. B1: neither column."""
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(("C1", "C2")):
        t = (rng.random(60) < 0.5).astype(float)
        out[name] = _section(name, "C", t, {"cluster_annotation": np.where(t > 0, "cancer 1", "immune : B cells")}, i)
    t = (rng.random(80) < 0.7).astype(float)
    label = np.where(t > 0, np.where(rng.random(80) < 0.8, "invasive cancer", "cancer in situ"), "connective tissue")
    label[:6] = "undetermined"
    out["A1"] = _section("A1", "A", t, {"label": label,
                                        "cluster_annotation": np.where(t > 0, "immune : APC", "cancer 2")}, 5)
    out["B1"] = _section("B1", "B", t[:30], {"other": ["x"] * 30}, 6)
    return out


CONTENDERS = [Contender("features + logistic", head="logistic", source="mean_colour"),
              Contender("label-free markers", head="markers", source="mean_colour")]


def test_label_source_is_the_first_column_with_known_labels():
    a = ad.AnnData(np.zeros((3, 0)), obs=pd.DataFrame({"label": ["undetermined", np.nan, "unknown"],
                                                       "cluster_annotation": ["cancer 1", "immune", np.nan],
                                                       "path": ["stroma", "stroma", "undetermined"]},
                                                      index=list("abc")))
    assert label_columns("label, cluster_annotation,,") == ["label", "cluster_annotation"]
    assert label_columns(["path"]) == ["path"]
    assert label_source(a, "label,cluster_annotation") == "cluster_annotation"  # label: nothing known
    assert label_source(a, ["nope", "path", "cluster_annotation"]) == "path"
    assert label_source(a, "nope,label") is None


def test_splits_leave_one_patient_out_first_then_one_section_out_within_a_patient(sections):
    three = {n: sections[n] for n in ("C1", "C2", "A1")}
    assert benchmark_splits(three) == [
        (LOPO, "C -> A", ["A1"], ["C1", "C2"]),
        (LOPO, "A -> C", ["C1", "C2"], ["A1"]),
        (LOSO, "within C", ["C1"], ["C2"]),
        (LOSO, "within C", ["C2"], ["C1"]),
    ]  # A1 is patient A's only section: no leave-one-section-out split of its own
    for a in three.values():
        del a.obs["patient"]
    assert benchmark_splits(three) == [(LOSO, "within the sections", [t], [n for n in three if n != t])
                                      for t in three]


def test_each_section_is_trained_and_scored_on_its_own_label_source(sections, monkeypatch):
    monkeypatch.setattr(tb, "FeatureStore", _Store)
    rows = tb.run_tumor_benchmark(sections, CONTENDERS, label_column="label,cluster_annotation", markers=MARKERS)
    assert "B1" not in set(rows["test"]) and "B1" not in ",".join(rows["train_sections"])  # no label column
    lopo = rows[rows["split"] == LOPO]
    c_to_a = lopo[lopo["direction"] == "C -> A"]
    assert list(c_to_a["test"]) == ["A1", "A1"] and set(c_to_a["label_column"]) == {"label"}
    assert set(c_to_a["train_label_columns"]) == {"cluster_annotation"}
    assert (c_to_a["n_spots"] == 74).all()  # the 6 'undetermined' spots are left out
    a_to_c = lopo[lopo["direction"] == "A -> C"]
    assert sorted(a_to_c["test"]) == ["C1", "C1", "C2", "C2"] and set(a_to_c["label_column"]) == {"cluster_annotation"}
    assert set(a_to_c["train_label_columns"]) == {"label"} and set(a_to_c["train_sections"]) == {"A1"}
    # features follow the true tumour: scored against the labels it has (not A1's contradicting clusters)
    assert (lopo["roc_auc"] > 0.8).all()
    loso = rows[rows["split"] == LOSO]
    assert sorted(loso["test"]) == ["C1", "C1", "C2", "C2"] and (loso["roc_auc"] > 0.8).all()

    # cluster annotations only: A1 is scored (and trains) against its contradicting clusters, and it shows
    only = tb.run_tumor_benchmark(sections, CONTENDERS, label_column="cluster_annotation", markers=MARKERS)
    a1 = only[(only["test"] == "A1")]
    assert set(a1["label_column"]) == {"cluster_annotation"} and (a1["roc_auc"] < 0.2).all()


def test_summary_rows_per_direction_then_their_mean_then_leave_one_section_out(sections, monkeypatch):
    monkeypatch.setattr(tb, "FeatureStore", _Store)
    rows = tb.run_tumor_benchmark(sections, CONTENDERS, label_column=["label", "cluster_annotation"],
                                  markers=MARKERS)
    s = tb.summarize_tumor(rows, CONTENDERS)
    mean = f"{MEAN_OF_DIRECTIONS} (2)"
    assert list(zip(s["split"], s["direction"])) == [(LOPO, "C -> A")] * 2 + [(LOPO, "A -> C")] * 2 + [
        (LOPO, mean)] * 2 + [(LOSO, "within C")] * 2
    assert list(s["contender"]) == [c.name for c in CONTENDERS] * 4
    assert list(s["labels"][:4]) == ["cluster_annotation -> label"] * 2 + ["label -> cluster_annotation"] * 2
    assert list(s["n_test"]) == [1, 1, 2, 2, 3, 3, 2, 2]
    for name in (c.name for c in CONTENDERS):
        per = s[(s["contender"] == name) & (s["split"] == LOPO)].set_index("direction")
        # each direction weighs the same: the mean of the two direction means, not of the three test sections
        assert per.loc[mean, "roc_auc"] == pytest.approx((per.loc["C -> A", "roc_auc"] + per.loc["A -> C", "roc_auc"]) / 2)
        assert per.loc["A -> C", "roc_auc"] == pytest.approx(
            rows[(rows["contender"] == name) & (rows["direction"] == "A -> C")]["roc_auc"].mean())
    assert (headline(s)["direction"] == mean).all()
    table = tb.tumor_markdown(s)
    assert table.splitlines()[2].startswith("| leave-one-patient-out | C -> A | cluster_annotation -> label |")
    assert table.splitlines()[-1].startswith("| leave-one-section-out | within C | cluster_annotation -> "
                                             "cluster_annotation | label-free markers |")


def test_cli_names_the_label_columns_it_found_in_no_section(her2st_root, tmp_path, capsys):
    from spafoundation.cli import main

    out = tmp_path / "bench"
    assert main(["benchmark", "tumor", str(her2st_root), "--sections", "C2,C3", "--label-column", "nope,label",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "obs['nope'] / obs['label']" in err and not out.exists()


def test_random_rows_average_their_weight_seeds(sections, monkeypatch):
    from spafoundation.eval.expression_benchmark import seed_name, seed_spread

    one = tb.tumor_contenders("enc", "random-enc")
    seeded = tb.tumor_contenders("enc", "random-enc", random_seeds=3)
    random_rows = [c for c in seeded if c.encoder == "random-enc"]
    # the random-init encoder + logistic and the default route on it: both seeded, named so
    assert len(random_rows) == 2 and all(c.seeds == (0, 1, 2) for c in random_rows)
    assert [c.name for c in random_rows] == [c.name + ", mean of 3 weight seeds" for c in one if c.encoder ==
                                             "random-enc"]
    route = random_rows[1]
    default = next(c for c in one if c.name.endswith("(default)"))
    assert route.recipe() == default.recipe() and route.head == default.head == "logistic"

    monkeypatch.setattr(tb, "FeatureStore", _Store)
    row = replace(random_rows[0], source="mean_colour")
    rows = tb.run_tumor_benchmark(sections, [row], label_column="label,cluster_annotation", markers=MARKERS)
    by = rows.set_index(["contender", "split", "direction", "test"])["roc_auc"]
    for key in rows[rows["contender"] == row.name][["split", "direction", "test"]].itertuples(index=False):
        singles = [by[(seed_name(row, s), *key)] for s in row.seeds]
        assert len(set(singles)) == 3 and by[(row.name, *key)] == pytest.approx(np.mean(singles))
    spread = seed_spread(rows, [row], "roc_auc")
    assert (spread["seeds"] == 3).all() and (spread["min_roc_auc"] < spread["max_roc_auc"]).all()
    assert list(tb.summarize_tumor(rows, [row])["contender"].unique()) == [row.name]  # the table: the mean only
    from spafoundation.commands._common import spread_note

    note = spread_note(spread)
    assert note.count(f"{row.name}: single seeds range") == 1 and "C -> A " in note and "(sd " in note
    assert spread_note(spread.iloc[:0]) == ""  # nothing seeded, nothing added
