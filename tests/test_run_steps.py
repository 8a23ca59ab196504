"""`spafoundation run`'s plan as typed step configs (commands/_run_steps.py): what plan() returns, that each step's
printed command line parses to the arguments the step runs on, that a bad config value fails naming its key before
any step, and that a run reads its dataset once, clustering on observed expression included."""

from __future__ import annotations

import json
import shlex

import anndata as ad
import numpy as np
import pytest

from spafoundation.cli import EXIT_BAD_INPUT, build_parser, main
from tests.io.layouts import write_manifest


def _plan(her2st_root, her2st_imaged, tiny_folder, tmp_path, *settings):
    from spafoundation.commands.run import DEFAULTS, check_value_types, plan
    from spafoundation.utils.config import load_yaml_config

    cfg = load_yaml_config(DEFAULTS, None, [f"encoder={tiny_folder}", *settings])
    check_value_types(cfg, None)
    data = {n: her2st_imaged[n] for n in ("C3", "C4")}
    return plan(str(her2st_root), tmp_path / "run", cfg, data)


def test_plan_is_typed_step_configs(her2st_root, her2st_imaged, tiny_folder, tmp_path):
    from spafoundation.commands._run_steps import (
        ClusterStep,
        FitExpressionStep,
        PredictExpressionStep,
        SuperresStep,
        TumorStep,
    )
    from spafoundation.run_folder import RunFolder

    steps = _plan(her2st_root, her2st_imaged, tiny_folder, tmp_path, "clusters.n_clusters=3", "clusters.smooth=1",
                  "tumor.markers=ERBB2, GRB7", "tumor.grid_um=200", "expression.programs=1",
                  f"expression.reference={her2st_root}", "expression.reference_sections=B1, D1")
    assert [type(s) for s in steps] == [FitExpressionStep, PredictExpressionStep, SuperresStep, TumorStep,
                                        ClusterStep]
    fit, predict, _, tumor, clusters = steps
    folder = RunFolder(tmp_path / "run")
    assert fit.sections == ["C3"] and fit.out == folder.expression_model and fit.head == "ridge-ensemble"
    assert fit.programs == 1 and fit.argv[fit.argv.index("--programs") + 1] == "1"
    assert fit.reference == str(her2st_root) and fit.reference_sections == ["B1", "D1"]
    assert fit.argv[fit.argv.index("--reference-sections") + 1] == "B1,D1"
    assert predict.model == str(folder.expression_model) and predict.sections == ["C4"]
    assert tumor.markers == ["ERBB2", "GRB7"] and tumor.grid_um == 200.0 and isinstance(tumor.grid_um, float)
    # the values as the command's parser would give them: a whole number stays one, a number from YAML is a float
    assert clusters.n_clusters == 3 and isinstance(clusters.n_clusters, int)
    assert clusters.smooth == 1.0 and isinstance(clusters.smooth, float)
    assert clusters.cache_dir == str(folder.cache) and clusters.out == folder.clusters


def test_each_printed_command_parses_to_the_arguments_its_step_runs_on(her2st_root, her2st_imaged, tiny_folder,
                                                                        tmp_path):
    steps = _plan(her2st_root, her2st_imaged, tiny_folder, tmp_path, "clusters.features=predicted", "mpp=0.7",
                  "precision=fp32", "tumor.label_column=cluster_annotation", "superres.step_um=8",
                  f"expression.reference={her2st_root}", "expression.reference_sections=B1")
    parser = build_parser()
    for step in steps:
        parsed = vars(parser.parse_args(shlex.split(step.command_line())[1:]))
        given = vars(step.namespace())
        for key in ("argv", "command", "verbose"):  # what cli.main adds around the command's own options
            parsed.pop(key, None)
            given.pop(key, None)
        assert given == parsed, step.command


@pytest.mark.parametrize("setting, key", [("expression.genes=5", "expression.genes"),
                                          ("clusters.n_clusters=0", "clusters.n_clusters"),
                                          ("expression.programs=-1", "expression.programs"),
                                          ("clusters.method=null", "clusters.method"),
                                          ("clusters.features=colour", "clusters.features"),
                                          ("tumor.markers=5", "tumor.markers")])
def test_a_bad_step_value_fails_naming_its_key_before_any_step(c2_small, tmp_path, capsys, setting, key):
    root = write_manifest(tmp_path / "data", c2_small)
    out = tmp_path / "out"
    assert main(["run", "--data", str(root), "--out", str(out), "--set", setting]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"(config key {key})" in err[0], err
    assert not out.exists()


def test_run_reads_the_dataset_once_clustering_on_observed_expression(c2_small, tiny_folder, tmp_path, capsys,
                                                                      monkeypatch):
    import spafoundation.io.readers as readers

    root = write_manifest(tmp_path / "data", c2_small)
    out = tmp_path / "run"
    argv = ["run", "--data", str(root), "--out", str(out), "--quiet", "--set", f"encoder={tiny_folder}",
            *(f"--set={k}.enabled=false" for k in ("expression", "superres", "tumor", "report")),
            "--set", "clusters.features=expression", "--set", "clusters.n_clusters=3"]
    assert main([*argv, "--dry-run"]) == 0
    [command] = [line.split(": spafoundation ", 1)[1] for line in capsys.readouterr().out.splitlines()
                 if ": spafoundation " in line]
    reads = []
    read_dataset = readers.read_dataset
    monkeypatch.setattr(readers, "read_dataset", lambda *a, **k: reads.append(k) or read_dataset(*a, **k))
    assert main(argv) == 0
    assert len(reads) == 1 and reads[0]["with_images"]  # run's own read, with the thumbnails the figures draw on
    monkeypatch.undo()
    # the printed command, reading the dataset itself (without thumbnails), writes the same
    by_hand = tmp_path / "by_hand"
    assert main([a.replace(str(out), str(by_hand)) for a in shlex.split(command)] + ["--quiet"]) == 0
    a, b = ad.read_h5ad(out / "clusters" / "spots.h5ad"), ad.read_h5ad(by_hand / "clusters" / "spots.h5ad")
    np.testing.assert_array_equal(a.obs["spatial_domain"].to_numpy(), b.obs["spatial_domain"].to_numpy())
    assert a.uns["spatial"]["S1"]["images"] == {} == b.uns["spatial"]["S1"]["images"]
    assert a.uns["spatial"]["S1"]["scalefactors"] == b.uns["spatial"]["S1"]["scalefactors"]
    assert json.loads((out / "clusters" / "metrics.json").read_text()) == json.loads(
        (by_hand / "clusters" / "metrics.json").read_text())


@pytest.mark.parametrize("setting", ["expression.programs=1", "expression.reference=elsewhere"])
def test_programs_with_another_head_fail_before_any_step(c2_small, tmp_path, capsys, setting):
    root = write_manifest(tmp_path / "data", c2_small)
    out = tmp_path / "out"
    assert main(["run", "--data", str(root), "--out", str(out), "--set", "expression.head=ridge",
                 "--set", setting]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert setting.split("=")[0] in err and "ridge" in err
    assert not out.exists()
