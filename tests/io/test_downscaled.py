"""Images coarser than the spot coordinates: a Space Ranger sample whose only image is its hires PNG (built from
real section C2: its counts, its full-resolution spot positions, its H&E downscaled to 2000 px), a downscaled copy
given with --image, and one declared in a manifest."""

import json
import logging
import shutil

import anndata as ad
import numpy as np
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io import extract_patches, read_dataset
from spafoundation.io.anndata_spec import image_path, image_scale, microns_per_pixel, spatial_meta
from spafoundation.report.run_report import _image_note
from tests.io.layouts import write_manifest, write_visium_hires_only

PATCH_UM = 112


@pytest.fixture(scope="module")
def hires_only(her2st_c2, c2_small, tmp_path_factory):
    return write_visium_hires_only(tmp_path_factory.mktemp("hires_only") / "S1", her2st_c2, c2_small)


def hires_scalef(root) -> float:
    return json.loads((root / "outs/spatial/scalefactors_json.json").read_text())["tissue_hires_scalef"]


def assert_same_tissue(adata, reference):
    """Patches of the same microns around the same spots show the same tissue: per-spot mean colours agree."""
    ours = extract_patches(adata, PATCH_UM, 64).mean(axis=(1, 2))
    theirs = extract_patches(reference, PATCH_UM, 64).mean(axis=(1, 2))
    for k in range(3):
        assert np.corrcoef(ours[:, k], theirs[:, k])[0, 1] > 0.98
    assert np.abs(ours - theirs).mean() < 6  # grey levels: the same place, not only the same ranking


def test_hires_png_is_the_image_of_a_sample_without_one(her2st_c2, c2_small, tmp_path, caplog):
    hires_only = write_visium_hires_only(tmp_path / "S1", her2st_c2, c2_small)  # its own: warned about once
    with caplog.at_level(logging.WARNING):
        adata = read_dataset(hires_only)["S1"]
        read_dataset(hires_only, with_images=False)
    meta = spatial_meta(adata)["metadata"]
    assert image_path(adata).endswith("spatial/tissue_hires_image.png") and meta["image_source"] == "hires"
    assert image_scale(adata) == pytest.approx(hires_scalef(hires_only))
    assert microns_per_pixel(adata) == pytest.approx(microns_per_pixel(her2st_c2), rel=1e-6)  # the frame's
    np.testing.assert_allclose(adata.obsm["spatial"], her2st_c2.obsm["spatial"])
    assert max(meta["image_size"]) == 2000
    warnings = [r.getMessage() for r in caplog.records if "coarser detail" in r.getMessage()]
    assert len(warnings) == 1 and "3.41 um/px instead of 0.69" in warnings[0]
    assert "downscaled copy (hires): 3.41 um/px" in _image_note(adata)  # the run report's word beside the section
    assert _image_note(her2st_c2) == "yes"
    assert_same_tissue(adata, her2st_c2)


def test_info_names_the_hires_image(hires_only, capsys):
    assert main(["info", str(hires_only)]) == 0
    out = capsys.readouterr().out
    assert "tissue_hires_image.png" in out and " hires " in out
    assert f"{hires_scalef(hires_only):.4g}" in out and "3.41" in out  # scale and effective um/px


def test_downscaled_copy_given_with_its_scale(hires_only, her2st_c2, tmp_path):
    copy = tmp_path / "viewer_export.png"
    shutil.copy(hires_only / "outs/spatial/tissue_hires_image.png", copy)
    with pytest.raises(InputError, match="--image-scale"):  # read as full resolution, the spots fall off it
        read_dataset(hires_only, image=copy)
    adata = read_dataset(hires_only, image=copy, image_scale=hires_scalef(hires_only))["S1"]
    assert image_path(adata) == str(copy) and spatial_meta(adata)["metadata"]["image_source"] == "given"
    assert_same_tissue(adata, her2st_c2)
    # Space Ranger's own PNG given with --image: the factor it recorded for that file
    adata = read_dataset(hires_only, image=hires_only / "outs/spatial/tissue_hires_image.png")["S1"]
    assert image_scale(adata) == pytest.approx(hires_scalef(hires_only))
    with pytest.raises(InputError, match="image_scale"):
        read_dataset(hires_only, image_scale=0.5)
    assert main(["info", str(hires_only), "--image-scale", "0.5"]) == 2


def test_manifest_section_declares_its_image_scale(hires_only, c2_small, tmp_path):
    """The manifest's coordinates are those of the 1/4-scale C2 TIFF; the image a copy at 2000 px."""
    png = hires_only / "outs/spatial/tissue_hires_image.png"
    scale = hires_scalef(hires_only) * 4
    manifest = write_manifest(tmp_path / "m", c2_small, section={"image": str(png), "image_scale": scale})
    adata = read_dataset(manifest)["S1"]
    assert image_scale(adata) == pytest.approx(scale)
    reference = read_dataset(write_manifest(tmp_path / "ref", c2_small))["S1"]
    assert_same_tissue(adata, reference)
    bad = write_manifest(tmp_path / "bad", c2_small, section={"image_scale": "half"})
    with pytest.raises(InputError, match=r"sections\[S1\]\.image_scale"):
        read_dataset(bad)


@pytest.mark.slow
def test_hires_only_sample_predicted_end_to_end(hires_only, her2st_root, tiny_folder, tmp_path, capsys):
    """A model fitted on full-resolution sections (C3, C4) predicts C2 from its hires PNG alone."""
    model_dir, out = tmp_path / "model", tmp_path / "pred.h5ad"
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["fit-expression", str(her2st_root), "--sections", "C3,C4", "--encoder", str(tiny_folder),
                 "--genes", "hvg:6", "--out", str(model_dir), *common]) == 0
    assert main(["predict-expression", str(model_dir), str(hires_only), "--out", str(out), *common]) == 0
    pred = ad.read_h5ad(out)
    assert pred.n_obs == 187 and pred.n_vars == 6
    assert np.isfinite(pred.X).all() and pred.X.std(axis=0).min() > 0  # a map, not a constant
    assert spatial_meta(pred)["metadata"]["image_source"] == "hires"
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert np.isfinite(metrics["S1"]["mean_r"])


def test_run_plans_every_step_on_the_hires_image(hires_only, tmp_path, capsys):
    run = ["run", "--data", str(hires_only), "--out", str(tmp_path / "run"), "--dry-run"]
    assert main(run) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if ": spafoundation " in line]
    assert len(steps) >= 3 and not any("--image" in line for line in steps)  # each step finds the PNG itself
    copy = tmp_path / "export.png"
    shutil.copy(hires_only / "outs/spatial/tissue_hires_image.png", copy)
    assert main([*run, "--image", str(copy), "--image-scale", repr(hires_scalef(hires_only))]) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if ": spafoundation " in line]
    assert all(f"--image-scale {hires_scalef(hires_only)!r}" in line for line in steps)
    assert main([*run, "--set", "image_scale=-1"]) == 2
    assert "image_scale: must be a positive number" in capsys.readouterr().err


def test_h5ad_keeps_the_scale_of_its_image_and_takes_one_given(hires_only, her2st_c2, tmp_path):
    adata = read_dataset(hires_only, with_images=False)["S1"]
    adata.write_h5ad(tmp_path / "s1.h5ad")
    again = read_dataset(tmp_path / "s1.h5ad")["S1"]
    assert image_scale(again) == pytest.approx(hires_scalef(hires_only))
    assert_same_tissue(again, her2st_c2)
    spatial_meta(adata)["metadata"].update(image_path="", image_scale=1.0)  # an .h5ad without its image
    adata.write_h5ad(tmp_path / "bare.h5ad")
    copy = tmp_path / "export.png"
    shutil.copy(hires_only / "outs/spatial/tissue_hires_image.png", copy)
    given = read_dataset(tmp_path / "bare.h5ad", image=copy, image_scale=hires_scalef(hires_only))["S1"]
    assert image_path(given) == str(copy.resolve()) and image_scale(given) == pytest.approx(hires_scalef(hires_only))
    assert_same_tissue(given, her2st_c2)
