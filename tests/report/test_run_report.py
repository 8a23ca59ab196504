"""`spafoundation run` end to end on two real sections with a tiny encoder: plan, steps, resume, the HTML report
(opened in headless Chromium when it is installed), and bad configs that leave nothing behind."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import anndata as ad
import pytest

from spafoundation.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Injected first in <head>: records script errors and, after load, how many images failed to decode.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute('data-probe', JSON.stringify({images: document.images.length, broken,
                                                           errors: window.__errors}));
});
</script>"""


def _run_args(root, tiny_folder, out, *extra):
    return ["run", "--data", str(root), "--sections", "C3,C4", "--out", str(out), "--quiet",
            "--set", f"encoder={tiny_folder}", "--set", "expression.genes=hvg:6", "--set", "superres.genes=hvg:4", "--set", "tumor.grid_um=1500",
            "--set", "tumor.label_column=cluster_annotation", "--set", "tumor.route=both",
            "--set", "clusters.n_clusters=3", "--set", "clusters.reference_column=cluster_annotation", *extra]


def test_dry_run_prints_the_plan_and_writes_nothing(her2st_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--data", str(her2st_root), "--sections", "C2,C3,C4", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "fit-expression" in text and "--sections C2,C3 " in text  # the last imaged section is held out
    assert "predict-expression" in text and "--sections C4 " in text
    assert "spafoundation tumor" in text and "spafoundation cluster" in text and not out.exists()
    assert "left out" not in text
    # sections without an image are named as left out, and are in no step
    assert main(["run", "--data", str(her2st_root), "--sections", "B1,C2,C3", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    steps = [line for line in text.splitlines() if line.lstrip().startswith("[")]
    assert "without an H&E image, left out of every step: B1" in text and not any("B1" in s for s in steps)


@pytest.mark.parametrize("setting, field", [("nope=1", "nope"), ("tumor.colour=1", "tumor.colour"),
                                           ("expression.train_sections=[C9]", "C9"),
                                           ("tumor.label_column=nope", "tumor.label_column"),
                                           ("clusters.reference_column=nope", "clusters.reference_column")])
def test_bad_config_exits_2_and_leaves_no_folder(her2st_root, tmp_path, capsys, setting, field):
    out = tmp_path / "run"
    assert main(["run", "--data", str(her2st_root), "--sections", "C3,C4", "--out", str(out), "--set", setting]) == 2
    assert field in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_run_end_to_end_then_resume(her2st_root, tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run_args(her2st_root, tiny_folder, out)) == 0
    text = capsys.readouterr().out
    assert "summary" in text and "report:" in text
    pred = ad.read_h5ad(out / "expression" / "predicted.h5ad")
    assert pred.n_obs > 100 and pred.n_vars == 6 and set(pred.obs["section"]) == {"C4"}
    assert json.loads((out / "expression" / "predicted.metrics.json").read_text())["C4"]["n_genes"] == 6
    assert {"tumor_probability", "tumor_marker_score"} <= set(ad.read_h5ad(out / "tumor" / "spots.h5ad").obs)
    assert ad.read_h5ad(out / "clusters" / "spots.h5ad").obs["spatial_domain"].nunique() == 3
    page = (out / "report.html").read_text()
    assert ad.read_h5ad(out / "superres" / "C4.h5ad").n_vars == 4
    for title in ("Dataset", "Expression from H&amp;E", "Super-resolution maps", "Tumour map", "Spatial domains",
                  "Run"):
        assert f">{title}</h2>" in page
    assert not re.search(r'src="(?!data:)', page)  # self-contained: every image is a data URI
    # how far to trust the prediction: the shift; per-gene cv r from stripes of the single training section (C3)
    assert "C4: image shift " in page and "cv_pearson_stripes" in pred.var
    assert "Genes to trust" in page and "held-out stripes of the one training section" in page
    assert page.count("<img") >= 8

    # a second run with the same config reuses every step; a step whose output vanished is redone
    shutil.rmtree(out / "clusters")
    assert main(_run_args(her2st_root, tiny_folder, out)) == 0
    text = capsys.readouterr().out
    assert text.count("done in an earlier run, skipped") == 4 and "spatial domains ..." in text
    assert (out / "clusters" / "spots.h5ad").exists()

    if CHROMIUM:
        _check_in_chromium(out / "report.html", tmp_path)


def _check_in_chromium(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("<head>", "<head>" + PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"data-probe=\"([^\"]*)\"", dom.stdout)
    assert m, f"the page did not finish loading: {dom.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert result["images"] >= 6 and result["broken"] == 0 and result["errors"] == []
    assert "Uncaught" not in dom.stderr and not re.search(r"CONSOLE.*(error|Error)", dom.stderr)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_run_on_a_visium_sample_whose_image_is_elsewhere_and_no_tumour_markers(c2_small, tiny_folder, tmp_path,
                                                                                capsys):
    """The default run on tissue without the breast-cancer markers (the first 300 genes of C2 hold none) and no
    labels leaves the tumour map out with a note, in the printout and the report, instead of failing in that step;
    an explicit marker route is an error before anything is written."""
    from spafoundation.tasks.tumor import BREAST_TUMOR_MARKERS
    from tests.io.layouts import write_visium

    assert not set(BREAST_TUMOR_MARKERS) & set(c2_small.genes)
    root = write_visium(tmp_path / "V1", c2_small)
    (root / "C2_small.tif").unlink()
    out = tmp_path / "run"
    args = ["run", "--data", str(root), "--image", str(c2_small.tiff), "--out", str(out), "--quiet",
            "--set", f"encoder={tiny_folder}", "--set", "expression.genes=hvg:4", "--set", "superres.genes=hvg:4",
            "--set", "clusters.n_clusters=3"]
    assert main([*args, "--set", "tumor.route=markers"]) == 2
    assert "tumor.markers: route markers: no marker gene (tumor.markers" in capsys.readouterr().err
    assert not out.exists()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "tumour map left out: no labels" in text and "spafoundation tumor" not in text
    assert not (out / "tumor").exists() and (out / "clusters" / "spots.h5ad").exists()
    page = (out / "report.html").read_text()
    assert "Tumour map left out: no labels" in page and ">Tumour map</h2>" not in page
    # with markers this panel has, the step is planned, trained on the run's imaged sections
    assert main([*args, "--set", f"tumor.markers=[{c2_small.genes[0]}]", "--dry-run"]) == 0
    assert "spafoundation tumor" in capsys.readouterr().out


def test_dry_run_of_an_image_only_dataset_says_what_it_leaves_out(c2_small, tmp_path, capsys):
    from tests.io.layouts import write_manifest

    manifest = write_manifest(tmp_path / "m", c2_small, counts="none")
    assert main(["run", "--data", str(manifest), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    for step in ("expression", "super-resolution", "tumour map"):
        assert f"{step} left out: no " in text
    steps = [line for line in text.splitlines() if ": spafoundation " in line]
    assert len(steps) == 1 and "spafoundation cluster" in steps[0]


def test_commands_never_replace_a_folder_of_the_users(her2st_root, tmp_path, capsys):
    mine = tmp_path / "analysis"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for argv in (["cluster", str(her2st_root), "--sections", "C3", "--out", str(mine)],
                 ["fit-expression", str(her2st_root), "--sections", "C3", "--out", str(mine)],
                 ["run", "--data", str(her2st_root), "--sections", "C3,C4", "--out", str(mine)]):
        assert main(argv) == 2
        assert "--out: this folder holds files spafoundation did not write" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_run_passes_mpp_to_every_step(her2st_root, tmp_path, capsys):
    args = ["run", "--data", str(her2st_root), "--sections", "C3,C4", "--out", str(tmp_path / "run"), "--dry-run"]
    assert main([*args, "--mpp", "0.7"]) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if ": spafoundation " in line]
    assert len(steps) >= 4 and all("--mpp 0.7" in line for line in steps)
    assert main([*args, "--set", "mpp=-1"]) == 2
    assert "mpp: must be a positive number of microns" in capsys.readouterr().err


def test_tumour_rows_say_whether_each_score_is_out_of_sample_and_what_the_model_saw():
    from spafoundation.report.run_report import _tumor_rows

    base = {"roc_auc": 0.9, "pr_auc": 0.8, "n_positive": 5, "n_spots": 10}
    rows = _tumor_rows({"supervised": {"C2": {**base, "held_out": True, "trained_on": ["C3", "C4"]},
                                       "C3": {**base, "held_out": False, "trained_on": ["C3", "C4"]},
                                       "C5": {**base, "held_out": None, "trained_on": None}}})
    assert [(r["section"], r["out-of-sample"], r["model trained on"]) for r in rows] == [
        ("C2", "yes", "C3, C4"), ("C3", "no", "C3, C4"), ("C5", "unknown", "unknown")]


def test_expression_block_lists_the_genes_to_trust_and_flags_a_shifted_section(tmp_path):
    import numpy as np
    import pandas as pd

    from spafoundation.report.run_report import _expression_block
    from spafoundation.run_folder import RunFolder

    var = pd.DataFrame({"cv_pearson": [0.3, 0.02], "reliable": [True, False]}, index=["ERBB2", "NOISE1"])
    pred = ad.AnnData(np.zeros((3, 2), np.float32), var=var, obs=pd.DataFrame({"section": ["A1"] * 3},
                                                                               index=list("abc")))
    pred.uns["spafoundation_prediction"] = {"shift": {"A1": {"score": 4.05, "training_limit": 3.34,
                                                             "out_of_range": True}}}
    (tmp_path / "expression").mkdir()
    pred.write_h5ad(tmp_path / "expression" / "predicted.h5ad")
    (tmp_path / "expression" / "predicted.metrics.json").write_text(json.dumps({"A1": {
        "mean_r": 0.1, "median_r": 0.1, "n_significant": 1, "n_genes": 2, "rmse": 0.5}}))
    text = " ".join(_expression_block(RunFolder(tmp_path), 2).paragraphs)
    assert "Genes to trust: 1 of 2" in text and ": ERBB2." in text and "NOISE1" not in text
    assert "A1: image shift 4.05" in text and "at most 3.34" in text and "OUT OF THE TRAINING RANGE" in text


@pytest.mark.slow
def test_run_in_process_writes_what_its_printed_commands_write(her2st_root, tiny_folder, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "run"
    argv = [*_run_args(her2st_root, tiny_folder, out), "--set", "superres.enabled=false", "--set",
            "tumor.enabled=false", "--set", "report.enabled=false"]
    assert main([*argv, "--dry-run"]) == 0
    commands = [line.split(": spafoundation ", 1)[1] for line in capsys.readouterr().out.splitlines()
                if ": spafoundation " in line]
    assert main(argv) == 0  # the steps in this process, on the dataset read once
    by_hand = tmp_path / "by_hand"
    for command in commands:  # the same commands, one process each, each reading the dataset itself
        assert main([a.replace(str(out), str(by_hand)) for a in shlex.split(command)] + ["--quiet"]) == 0
    for rel in ("expression/predicted.h5ad", "clusters/spots.h5ad"):
        a, b = ad.read_h5ad(out / rel), ad.read_h5ad(by_hand / rel)
        dense = [x.toarray() if hasattr(x, "toarray") else np.asarray(x) for x in (a.X, b.X)]
        np.testing.assert_array_equal(*dense)
        assert a.obs.equals(b.obs) and a.var.equals(b.var) and set(a.obsm) == set(b.obsm) and set(a.uns) == set(b.uns)
    for rel in ("expression/predicted.metrics.json", "clusters/metrics.json"):
        assert (out / rel).read_text() == (by_hand / rel).read_text()
