import anndata as ad
import numpy as np
import pytest

from spafoundation.cli import main


def test_embed_cli_one_section(her2st_root, tiny_folder, tmp_path, capsys):
    out = tmp_path / "emb.h5ad"
    args = ["embed", str(her2st_root), "--sections", "C2", "--encoder", str(tiny_folder), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "C2: 187 spots, cache miss" in first
    a = ad.read_h5ad(out)
    emb = a.obsm["X_tiny-model"]
    assert emb.shape == (187, 32) and np.isfinite(emb).all()
    assert "tissue_fraction" in a.obs and a.obs["section"].eq("C2").all()
    assert not list(tmp_path.glob(".emb.h5ad*"))  # atomic write leaves no temp file

    assert main(args) == 0
    assert "cache hit (187 from cache)" in capsys.readouterr().out
    np.testing.assert_array_equal(ad.read_h5ad(out).obsm["X_tiny-model"], emb)


def test_embed_cli_bad_encoder_is_exit_2(her2st_root, tmp_path, capsys):
    assert main(["embed", str(her2st_root), "--sections", "C2", "--encoder", "no-such-encoder",
                 "--out", str(tmp_path / "x.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown encoder" in err


@pytest.mark.slow
def test_embed_spots_under_torchrun_shards_sections(her2st_root, tiny_folder, tmp_path):
    import os
    import re
    import subprocess
    import sys

    out = tmp_path / "emb.h5ad"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "spafoundation", "embed", str(her2st_root), "--sections", "C2,C3", "--encoder", str(tiny_folder),
           "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[rank 0] C2: embedded" in done.stdout and "[rank 1] C3: embedded" in done.stdout
    assert re.search(r"C2: \d+ spots, cache hit", done.stdout) and re.search(r"C3: \d+ spots, cache hit", done.stdout)
    a = ad.read_h5ad(out)
    assert set(a.obs["section"]) == {"C2", "C3"} and np.isfinite(a.obsm["X_tiny-model"]).all()
