"""Whole-slide tile embeddings on real H&E (C2 at 1/4 scale as a tiled TIFF), through the API and the CLI."""

import json
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spafoundation.cli import main
from spafoundation.io import open_slide
from spafoundation.io.slide_tiles import TileBlocks, tissue_tile_grid
from spafoundation.models.embed import embed_patches
from spafoundation.models.encoder import quantize_int8
from spafoundation.models.slide_embed import embed_slide


@pytest.fixture
def grid(c2_small, tiny_encoder):
    with open_slide(c2_small.tiff, mpp=c2_small.mpp) as slide:
        return tissue_tile_grid(slide, tiny_encoder.patch_um, min_tissue=0.25)


def test_grid_keeps_tissue_tiles_that_hold_the_spots(grid, c2_small):
    assert 200 < len(grid) < 2000
    assert (grid.tissue >= 0.25).all()
    # every cell is where (row, col) says, and the spots (all on tissue) fall in kept tiles
    np.testing.assert_allclose(grid.xy, (grid.row_col[:, ::-1] + 0.5) * grid.tile_px)
    cells = {tuple(rc) for rc in grid.row_col}
    spot_cells = [(int(y // grid.tile_px), int(x // grid.tile_px)) for x, y in c2_small.xy]
    assert np.mean([c in cells for c in spot_cells]) > 0.9
    # and the glass beyond the tissue is skipped: far fewer tiles than the whole grid
    assert len(grid) < 0.6 * (grid.width // grid.tile_px) * (grid.height // grid.tile_px)


def test_block_tiles_are_the_patches_read_one_by_one(grid, c2_small, tiny_encoder):
    blocks = TileBlocks(c2_small.tiff, grid, tiny_encoder.input_size, block=4)
    idx, tiles = next(iter(blocks))
    assert tiles.dtype == torch.uint8 and tiles.shape[1:] == (3, 32, 32) and len(idx) == len(tiles)
    with open_slide(c2_small.tiff, mpp=c2_small.mpp) as slide:
        single = np.stack([slide.read_region(tuple(grid.xy[i]), tiny_encoder.patch_um, 32) for i in idx.numpy()])
    diff = np.abs(tiles.numpy().transpose(0, 2, 3, 1).astype(int) - single.astype(int))
    assert diff.mean() < 6  # same pixels up to sub-pixel rounding of the tile origin
    seen = np.concatenate([i.numpy() for i, _ in blocks])
    assert np.array_equal(np.sort(seen), np.arange(len(grid)))  # every tile once


def test_embed_slide_matches_spot_path_and_workers(c2_small, tiny_encoder):
    a = embed_slide(c2_small.tiff, tiny_encoder, mpp=c2_small.mpp, num_workers=0, batch_size=16, progress=False)
    emb = a.obsm["X_random-vitt16"]
    assert a.n_vars == 0 and emb.shape == (a.n_obs, 32) and np.isfinite(emb).all()
    sf = a.uns["spatial"]["C2_small"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(tiny_encoder.patch_um / c2_small.mpp)
    assert a.uns["spatial"]["C2_small"]["images"]["hires"].ndim == 3
    with open_slide(c2_small.tiff, mpp=c2_small.mpp) as slide:
        pick = np.arange(0, a.n_obs, max(1, a.n_obs // 20))
        patches = np.stack([slide.read_region(tuple(a.obsm["spatial"][i]), tiny_encoder.patch_um, 32) for i in pick])
    ref = embed_patches(tiny_encoder, patches)
    cos = (ref * emb[pick]).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(emb[pick], axis=1)
    assert cos.min() > 0.98
    # two reader processes give the same embeddings, tile for tile
    b = embed_slide(c2_small.tiff, tiny_encoder, mpp=c2_small.mpp, num_workers=2, batch_size=7, progress=False)
    np.testing.assert_allclose(b.obsm["X_random-vitt16"], emb, atol=1e-5)


def test_int8_encoder_stays_close_to_fp32(c2_small, tiny_encoder):
    from spafoundation.models import build_encoder
    from tests.conftest import TINY

    with open_slide(c2_small.tiff, mpp=c2_small.mpp) as slide:
        patches = np.stack([slide.read_region(tuple(xy), tiny_encoder.patch_um, 32) for xy in c2_small.xy[:32]])
    q = quantize_int8(build_encoder("random-vitt16", overrides=TINY))
    assert q.precision == "int8" and q.identity.endswith("+int8") and q.identity != tiny_encoder.identity
    assert any("quantized" in type(m).__module__ for m in q.model.modules())
    ref, out = embed_patches(tiny_encoder, patches), embed_patches(q, patches)
    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(ref, out)
    same = build_encoder("random-vitt16", overrides={**TINY, "precision": "int8"})
    assert same.precision == "int8"


def _slides(tmp_path, c2_small, n=2):
    folder = tmp_path / "slides"
    folder.mkdir()
    for k in range(n):
        shutil.copy(c2_small.tiff, folder / f"slide{k}.tif")
    return folder


def test_cli_tiles_folder_restart_and_bad_slide(c2_small, tiny_folder, tmp_path, capsys):
    folder = _slides(tmp_path, c2_small)
    out = tmp_path / "out"
    args = ["embed", str(folder), "--tiles", "--encoder", str(tiny_folder), "--mpp", str(c2_small.mpp),
            "--out", str(out), "--quiet", "--workers", "0"]
    assert main(args) == 0
    index = pd.read_csv(out / "index.csv")
    assert list(index["slide_id"]) == ["slide0", "slide1"] and (index["status"] == "ok").all()
    a = ad.read_h5ad(out / "slide1.h5ad")
    assert a.n_obs == index["n_tiles"].iloc[1] and "X_tiny-model" in a.obsm
    capsys.readouterr()

    # a rerun skips what is done; a new truncated slide fails on its own, named, and the exit code says so
    (folder / "slide2.tif").write_bytes((folder / "slide0.tif").read_bytes()[:5000])
    assert main(args) == 2
    printed = capsys.readouterr().out
    assert printed.count("already done, skipped") == 2 and "slide2: FAILED" in printed and "slide2.tif" in printed
    index = pd.read_csv(out / "index.csv")
    assert list(index["status"]) == ["ok", "ok", "failed"]
    assert not (out / "slide2.h5ad").exists() and not list(out.glob(".*tmp"))
    assert json.loads((out / "slide2.json").read_text())["status"] == "failed"

    # a slide embedded on an older tissue mask is redone, not skipped
    record = json.loads((out / "slide0.json").read_text())
    (out / "slide0.json").write_text(json.dumps({**record, "tissue_mask_version": record["tissue_mask_version"] - 1}))
    (folder / "slide2.tif").unlink()
    assert main(args) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 1


def test_cli_tiles_manifest_errors(c2_small, tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("image\nx.tif\n")
    assert main(["embed", str(bad), "--tiles", "--encoder", "random-vitt16"]) == 2
    err = capsys.readouterr().err
    assert "m.csv" in err and "'path' column" in err
    bad.write_text(f"path,mpp\n{c2_small.tiff},abc\n")
    assert main(["embed", str(bad), "--tiles", "--encoder", "random-vitt16"]) == 2
    assert "mpp (row 2)" in capsys.readouterr().err
    bad.write_text(f"path,slide_id\n{c2_small.tiff},a\n{c2_small.tiff},a\n")
    assert main(["embed", str(bad), "--tiles", "--encoder", "random-vitt16"]) == 2
    assert "'a' names two slides" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_shards_slides_over_processes(c2_small, tiny_folder, tmp_path):
    folder = _slides(tmp_path, c2_small, n=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "spafoundation", "embed", str(folder), "--tiles", "--encoder", str(tiny_folder), "--mpp",
           str(c2_small.mpp), "--out", str(out), "--quiet", "--workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[rank 0] slide0:" in done.stdout and "[rank 1] slide1:" in done.stdout
    assert "[rank 0] slide2:" in done.stdout
    index = pd.read_csv(out / "index.csv")
    assert list(index["status"]) == ["ok"] * 3
    embs = [ad.read_h5ad(out / f"slide{k}.h5ad").obsm["X_tiny-model"] for k in range(3)]
    np.testing.assert_allclose(embs[0], embs[1], atol=1e-5)  # same slide, different ranks


def _env():
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_thumbnail_in_bands_matches_whole_read(c2_small, monkeypatch):
    import spafoundation.io.slide as slide_mod

    with open_slide(c2_small.tiff, mpp=c2_small.mpp) as slide:
        whole, scale = slide.thumbnail(500)
        monkeypatch.setattr(slide_mod, "THUMB_BAND_PIXELS", 50 * slide.width)  # 50-row bands
        banded, scale_b = slide.thumbnail(500)
    assert banded.shape == whole.shape and scale_b == scale
    assert np.abs(banded.astype(int) - whole.astype(int)).mean() < 2


@pytest.mark.slow
def test_predicted_expression_over_whole_slide_tiles(c2_small, her2st_c2, tiny_folder, tmp_path):
    """The tiles AnnData is a dataset like any other: an expression model predicts every tissue tile."""
    from spafoundation.models import build_encoder
    from spafoundation.tasks.expression import fit_expression
    from spafoundation.utils.atomic import write_h5ad

    model = fit_expression([her2st_c2.copy()], str(tiny_folder), genes="hvg:5", cache_dir=tmp_path / "cache")
    model.save(tmp_path / "model")
    tiles = embed_slide(c2_small.tiff, build_encoder(str(tiny_folder)), mpp=c2_small.mpp, num_workers=0,
                        progress=False)
    write_h5ad(tiles, tmp_path / "tiles.h5ad")
    assert main(["predict-expression", str(tmp_path / "model"), str(tmp_path / "tiles.h5ad"), "--out",
                 str(tmp_path / "pred.h5ad"), "--cache-dir", str(tmp_path / "cache")]) == 0
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert pred.n_obs == tiles.n_obs and pred.n_vars == 5 and np.isfinite(pred.X).all()
    np.testing.assert_allclose(pred.obsm["spatial"], tiles.obsm["spatial"])
    assert float(np.asarray(pred.X).std(axis=0).min()) > 0  # a map, not a constant
