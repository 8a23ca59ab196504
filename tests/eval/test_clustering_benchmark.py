"""Clustering benchmark: per-section and across-patients protocols, seed averaging, the summary and its table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spafoundation.eval.clustering_benchmark import (
    ClusterContender,
    clustering_markdown,
    image_contender,
    joint_contenders,
    run_clustering_benchmark,
    run_joint_clustering,
    summarize_clustering,
)


def test_summary_averages_seeds_within_a_section_before_sections():
    rows = pd.DataFrame({"contender": ["x"] * 4, "test": ["S1", "S1", "S1", "S2"], "seed": [0, 1, 2, 0],
                         "ari": [0.0, 0.3, 0.6, 0.1], "nmi": [0.2] * 4})
    s = summarize_clustering(rows, [ClusterContender("x", "expression")])
    assert s.loc[0, "ari_mean"] == pytest.approx((0.3 + 0.1) / 2)  # S1's three seeds count as one section
    assert s.loc[0, "ari_std"] == pytest.approx(np.std([0.3, 0.1], ddof=1))
    assert s.loc[0, "n_sections"] == 2
    assert "patient" not in clustering_markdown(s)


def test_joint_summary_has_a_column_per_patient_and_the_patient_nmi():
    rows = pd.DataFrame({"contender": ["x"] * 4, "test": ["A1", "C2", "A1", "C2"], "patient": ["A", "C", "A", "C"],
                         "seed": [0, 0, 1, 1], "ari": [0.1, 0.3, 0.2, 0.4], "nmi": [0.5] * 4,
                         "patient_nmi": [0.02, 0.02, 0.04, 0.04]})
    s = summarize_clustering(rows, [ClusterContender("x", "image")])
    assert s.loc[0, "ari_patient_A"] == pytest.approx(0.15) and s.loc[0, "ari_patient_C"] == pytest.approx(0.35)
    assert s.loc[0, "patient_nmi"] == pytest.approx(0.03)
    table = clustering_markdown(s)
    assert "ARI, patient A" in table and "| x | 0.250 ± 0.141 | 0.150 | 0.350 | 0.500 ± 0.000 | 0.030 | 2 |" in table


def test_the_default_row_is_clusters_default_recipe():
    from spafoundation import defaults
    from spafoundation.tasks.clustering import IMAGE_RECIPES

    rows = joint_contenders("enc", "random-vitt16")
    default = [c for c in rows if c.name.endswith("(default)")]
    assert len(default) == 1 and default[0].image.recipe() == image_contender(
        "x", None, defaults.DOMAIN_FEATURES).recipe()
    assert default[0].image.standardize == IMAGE_RECIPES[defaults.DOMAIN_FEATURES]["standardize"] == "section"
    assert default[0].smooth == defaults.DOMAIN_SMOOTH and default[0].method == defaults.DOMAIN_METHOD


def test_joint_clustering_on_two_patients_scores_each_section_and_how_domains_split_by_patient(her2st_root):
    from spafoundation.io import read_dataset

    data = read_dataset(her2st_root, ["A1", "C3"], with_images=False)
    texture = [ClusterContender(f"colour/texture {z}", "image",
                                image_contender("ct", None, "colour_texture", standardize=z), "kmeans", 0.5)
               for z in ("none", "section")]
    observed = [ClusterContender(f"expression {z}", "expression", None, "kmeans", 0.5, standardize=z)
                for z in (False, True)]
    rows = run_joint_clustering(data, texture + observed, reference="cluster_annotation", n_clusters=4, seeds=2)
    assert len(rows) == 4 * 2 * 2  # contenders x sections x seeds
    assert set(rows["patient"]) == {"A", "C"} and (rows["n_found"] <= 4).all()
    nmi = rows.groupby("contender")["patient_nmi"].mean()
    # A1 is another lab's low-resolution scan: raw colour/texture splits domains by patient, z-scored far less;
    # so do the counts of two patients
    assert nmi["colour/texture section"] < nmi["colour/texture none"] / 2
    assert nmi["expression True"] < nmi["expression False"] / 2
    assert rows["ari"].between(-1, 1).all()
    assert "spatial_domain" not in data["A1"].obs  # the benchmark leaves the sections as they were

    per_section = run_clustering_benchmark(data, texture[1:], reference="cluster_annotation", seeds=3)
    assert sorted(per_section["seed"].unique()) == [0, 1, 2] and set(per_section["test"]) == {"A1", "C3"}


def test_cli_benchmark_clustering_leads_with_the_sections_clustered_together(her2st_root, tiny_folder, tmp_path):
    from spafoundation.cli import main

    out = tmp_path / "bench"
    assert main(["benchmark", "clustering", str(her2st_root), "--sections", "A1,C3", "--out", str(out), "--seeds", "2",
                 "--n-clusters", "4", "--default-encoder", str(tiny_folder), "--random-encoder", str(tiny_folder),
                 "--quiet"]) == 0
    md = (out / "clustering_benchmark.md").read_text()
    assert md.index("clustered together") < md.index("each section on its own")
    assert "| ARI, patient A | ARI, patient C |" in md and "(default)" in md
    joint = pd.read_csv(out / "clustering_joint_per_section.csv")
    assert set(joint["test"]) == {"A1", "C3"} and set(joint["seed"]) == {0, 1} and (joint["k"] == 4).all()
    assert (out / "clustering_imaged_per_section.csv").exists()
