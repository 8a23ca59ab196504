"""`spafoundation run` on bad inputs (one line, exit 2, no output folder) and after an interrupted run (the next
run continues from the finished steps; the embedding cache stays readable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from spafoundation.cli import EXIT_BAD_INPUT, main
from tests.io.layouts import write_manifest
from tests.io.test_bad_inputs import CASES, _edit_counts


def no_tissue(root, c):
    root.mkdir(parents=True)
    tifffile.imwrite(root / "blank.tif", np.full(c.rgb.shape, 242, np.uint8), tile=(256, 256))
    write_manifest(root, c, section={"image": "blank.tif"})
    return root, [], "no tissue"


def non_numeric_counts(root, c):
    write_manifest(root, c)
    path = root / "counts.tsv"
    path.write_text(path.read_text().replace("\t0\t", "\tmany\t", 1))
    return root, [], "counts.tsv"


def counts_without_spots(root, c):
    write_manifest(root, c)
    _edit_counts(root, lambda df: df.drop(index=df.index, inplace=True))
    return root, [], "counts.tsv"


def unknown_section(root, c):
    write_manifest(root, c)
    return root, ["--sections", "Z9"], "Z9"


def gene_list_without_overlap(root, c):
    write_manifest(root, c)
    (root / "genes.txt").write_text("NOTAGENE1\nNOTAGENE2\n")
    return root, ["--set", f"expression.genes={root / 'genes.txt'}"], "genes"


def gene_list_partly_measured(root, c):
    write_manifest(root, c)
    (root / "genes.txt").write_text(f"{c.genes[0]}\n{c.genes[1]}\nNOTAGENE1\nNOTAGENE2\n")  # was: 2 genes fitted
    return root, ["--set", f"expression.genes={root / 'genes.txt'}"], "NOTAGENE1"


def cache_dir_is_a_file(root, c):
    write_manifest(root, c)
    (root / "cache").write_text("not a folder")
    return root, ["--set", f"cache_dir={root / 'cache'}"], "is a file, not a folder"


def invalid_config_yaml(root, c):
    write_manifest(root, c)
    (root / "run.yaml").write_text("expression: [unclosed\n")
    return root, ["--config", str(root / "run.yaml")], "run.yaml"


def unknown_config_key(root, c):
    write_manifest(root, c)
    return root, ["--set", "clusters.colour=3"], "clusters.colour"


def from_io_case(make):
    def case(root, c):
        path, file_part, _ = make(root, c)
        return path, [], file_part

    case.__name__ = make.__name__
    return case


RUN_CASES = [from_io_case(m) for m in CASES] + [no_tissue, non_numeric_counts, counts_without_spots, unknown_section,
                                                gene_list_without_overlap, gene_list_partly_measured,
                                                cache_dir_is_a_file, invalid_config_yaml, unknown_config_key]


def test_there_are_at_least_twenty_bad_inputs():
    assert len(RUN_CASES) >= 20


@pytest.mark.parametrize("make", RUN_CASES, ids=[f.__name__ for f in RUN_CASES])
def test_bad_input_one_line_exit_2_no_output(make, c2_small, tmp_path, capsys):
    path, extra, expected = make(tmp_path / "data", c2_small)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", "--data", str(path), "--out", str(out), *extra]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spafoundation: error:") and expected in err[0], err
    assert not out.exists()


def _run_cmd(root, tiny_folder, out):
    return [sys.executable, "-m", "spafoundation", "run", "--data", str(root), "--sections", "C3,C4", "--out",
            str(out), "--quiet", "--set", f"encoder={tiny_folder}", "--set", "expression.genes=hvg:5",
            "--set", "superres.genes=hvg:3", "--set", "tumor.grid_um=0", "--set", "clusters.n_clusters=3"]


def _wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_interrupted_run_continues_from_finished_steps(her2st_root, tiny_folder, tmp_path, sig):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # SIGINT back to its default in the child: a suite started in the background (`make test &`) ignores it, and
    # Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(_run_cmd(her2st_root, tiny_folder, out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(out / ".steps" / "fit_expression.json", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
    if sig == signal.SIGTERM:  # was: exit 143 without a word, a .superres.*.tmp folder left for good
        assert "spafoundation: terminated" in err
    assert not list(out.rglob("*.tmp")) or sig == signal.SIGKILL  # SIGINT and SIGTERM clean their temporary files
    assert (out / ".steps" / "fit_expression.json").exists()
    if sig != signal.SIGKILL:
        return  # resuming is tested once, after the hardest stop: SIGKILL also leaves temporary files behind
    done = subprocess.run(_run_cmd(her2st_root, tiny_folder, out), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fit expression: done in an earlier run, skipped" in done.stdout
    assert not list(out.rglob("*.tmp"))  # what a killed run left is removed by the next write of the same output
    assert (out / "report.html").exists()
    # every cached embedding is readable
    import anndata as ad

    assert ad.read_h5ad(out / "expression" / "predicted.h5ad").n_vars == 5
    caches = list((out / "cache").rglob("*.npz"))
    assert caches
    for f in caches:
        with np.load(f) as z:
            assert len(z.files) > 0


def test_a_step_whose_inputs_changed_is_redone(c2_small, tmp_path):
    """A finished step is reused only while its arguments and its input files (size and time) are unchanged."""
    import dataclasses

    from spafoundation.commands.run import ClusterStep, _earlier_run, _mark_done, step_inputs
    from spafoundation.io import read_dataset

    root = write_manifest(tmp_path / "data", c2_small)
    genes = tmp_path / "genes.txt"
    genes.write_text("IGKC\n")
    data = read_dataset(root, with_images=False)
    out = tmp_path / "run"
    step = ClusterStep(data=str(root), genes=str(genes), out=out / "clusters")
    (out / "clusters").mkdir(parents=True)
    cache = str(out / "cache")
    _mark_done(out, step, 1.0, step_inputs(step, data, str(root), cache))
    assert _earlier_run(out, step, step_inputs(step, data, str(root), cache)) == (True, "")
    (out / "clusters" / "new.txt").write_text("its own output and the cache do not count")
    (out / "cache").mkdir()
    (out / "cache" / "x.npz").write_text("x")
    assert _earlier_run(out, step, step_inputs(step, data, str(root), cache))[0]
    for changed in (root.parent / "counts.tsv", genes):
        st = changed.stat()
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        done, why = _earlier_run(out, step, step_inputs(step, data, str(root), cache))
        assert not done and "changed since the earlier run" in why, why
        _mark_done(out, step, 1.0, step_inputs(step, data, str(root), cache))
    other = dataclasses.replace(step, n_clusters=3)
    assert _earlier_run(out, other, step_inputs(other, data, str(root), cache)) == (
        False, "its options changed since the earlier run")
    # a step drawn on an older tissue mask (tissue grids and fractions) is redone
    from spafoundation.run_folder import RunFolder

    marker = RunFolder(out).step_marker(step.name)
    done = json.loads(marker.read_text())
    marker.write_text(json.dumps({**done, "tissue_mask_version": done["tissue_mask_version"] - 1}))
    done, why = _earlier_run(out, step, step_inputs(step, data, str(root), cache))
    assert not done and "tissue mask changed" in why


def test_config_values_of_the_wrong_type_fail_before_any_step(c2_small, tmp_path, capsys):
    root = write_manifest(tmp_path / "data", c2_small)
    out = tmp_path / "out"
    for setting, field in (("report.top_genes=abc", "report.top_genes"), ("encoder=", "encoder"),
                           ("clusters.enabled=maybe", "clusters.enabled"), ("stain_norm=vahadane", "stain_norm")):
        capsys.readouterr()
        assert main(["run", "--data", str(root), "--out", str(out), "--dry-run", "--set", setting]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0], err
    assert not out.exists()
    assert main(["pretrain", str(root), "--out", str(out), "--set", "optim.steps=abc"]) == EXIT_BAD_INPUT
    assert "optim.steps: must be a whole number" in capsys.readouterr().err
    assert not out.exists()


def test_out_inside_the_dataset_named_by_the_config_is_refused(c2_small, tmp_path, capsys):
    root = tmp_path / "data"
    write_manifest(root, c2_small)
    (tmp_path / "run.yaml").write_text(f"data: {root}\n")
    capsys.readouterr()
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(root / "run"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the dataset folder" in err[0] and not (root / "run").exists()


def test_run_stain_norm_reaches_every_step_that_computes_image_features(c2_small, tmp_path, capsys):
    root = write_manifest(tmp_path / "data", c2_small)
    assert main(["run", "--data", str(root), "--out", str(tmp_path / "out"), "--dry-run",
                 "--set", "stain_norm=macenko"]) == 0
    plan = capsys.readouterr().out
    steps = {line.split(": spafoundation ")[1].split()[0]: line for line in plan.splitlines()
             if ": spafoundation " in line}
    assert {"fit-expression", "cluster"} <= set(steps), plan
    for command, line in steps.items():  # predict-expression takes the model's own reference
        assert ("--stain-norm macenko" in line) == (command in ("fit-expression", "tumor", "cluster")), line
    assert main(["run", "--data", str(root), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "--stain-norm" not in capsys.readouterr().out  # the default: patches as scanned
