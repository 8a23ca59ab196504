import numpy as np
import pandas as pd
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta
from tests.io.layouts import write_visium, write_visium_hd


def by_array(adata):
    """Spots ordered by (array_row, array_col), to compare with C2's own order."""
    return adata[np.lexsort((adata.obs["array_col"], adata.obs["array_row"]))]


def test_hd_bins_summed_into_the_spots_they_tile(c2_small, tmp_path):
    root = write_visium_hd(tmp_path / "HD1", c2_small, levels=(100,))
    assert detect_format(root) == "visium_hd"
    adata = by_array(read_dataset(root, bin_um=200)["HD1"])
    order = np.lexsort((c2_small.array_rc[:, 1], c2_small.array_rc[:, 0]))
    # the 2 x 2 blocks of 100 um bins are C2's spots again: counts, centres and array positions
    np.testing.assert_array_equal(adata.X.toarray(), c2_small.counts[order].toarray())
    np.testing.assert_allclose(adata.obsm["spatial"], c2_small.xy[order], atol=1e-6)
    np.testing.assert_array_equal(adata.obs[["array_row", "array_col"]].to_numpy(), c2_small.array_rc[order])
    assert (adata.obs["n_bins"] == 4).all()
    assert adata.obs_names[0].startswith("HD1_s_200um_")
    meta = spatial_meta(adata)
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    assert meta["metadata"]["mpp_source"] == "microns_per_pixel (scalefactors_json.json)"
    assert meta["metadata"]["platform"] == "visium_hd" and meta["metadata"]["bins_read_um"] == 100
    assert meta["scalefactors"]["spot_diameter_fullres"] == pytest.approx(200 / c2_small.mpp)
    assert image_path(adata).endswith("C2_small.tif")
    assert meta["scalefactors"]["tissue_hires_scalef"] == 0.25 and meta["images"]["hires"].ndim == 3


def test_hd_bin_level_default_choice_and_bad_size(c2_small, tmp_path):
    root = write_visium_hd(tmp_path / "HD2", c2_small, levels=(100, 200))
    # no 16 um level here: the coarsest one is read as is
    default = read_dataset(root, with_images=False)["HD2"]
    assert default.n_obs == len(c2_small.ids) and (default.obs["n_bins"] == 1).all()
    assert spatial_meta(default)["metadata"]["bins_read_um"] == 200
    fine = read_dataset(root, bin_um=100, with_images=False)["HD2"]
    assert fine.n_obs == 4 * len(c2_small.ids)
    assert fine.X.sum() == default.X.sum() == c2_small.counts.sum()
    # 400 um: 2 x 2 blocks of the coarsest level that divides it
    coarse = read_dataset(root, bin_um=400, with_images=False)["HD2"]
    assert spatial_meta(coarse)["metadata"]["bins_read_um"] == 200 and coarse.obs["n_bins"].max() == 4
    assert coarse.X.sum() == c2_small.counts.sum()
    # a bin folder given directly: that level, the section still named by the sample
    level = read_dataset(root / "outs" / "binned_outputs" / "square_100um", with_images=False)
    assert list(level) == ["HD2"] and level["HD2"].n_obs == fine.n_obs
    with pytest.raises(InputError, match=r"bin_um.*150 um is not a multiple of a bin size of this run \(100, 200 um\)"):
        read_dataset(root, bin_um=150)
    # the H&E kept elsewhere, given with --image
    (root / "C2_small.tif").unlink()
    for png in root.rglob("tissue_hires_image.png"):  # else the hires PNG is the image (test_downscaled.py)
        png.unlink()
    assert image_path(read_dataset(root, with_images=False)["HD2"]) is None
    assert image_path(read_dataset(root, bin_um=400, image=c2_small.tiff)["HD2"]) == str(c2_small.tiff)


def test_bin_um_is_an_error_for_round_spots(c2_small, tmp_path, capsys):
    root = write_visium(tmp_path / "V1", c2_small)
    with pytest.raises(InputError, match="only Visium HD bins"):
        read_dataset(root, bin_um=16)
    assert main(["info", str(root), "--bin-um", "16"]) == 2
    assert "bin_um" in capsys.readouterr().err


def test_cohort_mixes_visium_and_visium_hd(c2_small, tmp_path):
    cohort = tmp_path / "cohort"
    write_visium(cohort / "S1", c2_small)
    write_visium_hd(cohort / "S2", c2_small, levels=(100,))
    assert detect_format(cohort) == "visium_cohort"
    data = read_dataset(cohort, with_images=False)
    assert spatial_meta(data["S1"])["metadata"]["platform"] == "visium"
    assert spatial_meta(data["S2"])["metadata"]["platform"] == "visium_hd"
    assert data["S2"].n_obs == 4 * len(c2_small.ids)


def test_info_reports_bin_levels(c2_small, tmp_path, capsys):
    root = write_visium_hd(tmp_path / "HD3", c2_small, levels=(100, 200))
    assert main(["info", str(root), "--bin-um", "400"]) == 0
    out = capsys.readouterr().out
    assert "format: visium_hd" in out and "200 um of 100, 200 (--bin-um)" in out


def test_damaged_parquet_names_the_file(c2_small, tmp_path, capsys):
    root = write_visium_hd(tmp_path / "HD4", c2_small, levels=(100,))
    path = root / "outs" / "binned_outputs" / "square_100um" / "spatial" / "tissue_positions.parquet"
    path.write_bytes(path.read_bytes()[:200])
    assert main(["info", str(root)]) == 2
    err = capsys.readouterr().err
    assert "tissue_positions.parquet" in err and "spot coordinates" in err
    pd.DataFrame({"barcode": ["x"], "in_tissue": [1]}).to_parquet(path)
    with pytest.raises(InputError, match="array_row"):
        read_dataset(root)


def test_bad_pixel_size_names_the_scale_factor(c2_small, tmp_path):
    root = write_visium_hd(tmp_path / "HD7", c2_small, levels=(100,))
    scale = root / "outs" / "binned_outputs" / "square_100um" / "spatial" / "scalefactors_json.json"
    scale.write_text('{"microns_per_pixel": "n/a", "bin_size_um": 100}')
    with pytest.raises(InputError, match=r"scalefactors_json.json.*microns_per_pixel.*'n/a'"):
        read_dataset(root, with_images=False)


def test_run_passes_bin_um_to_every_step(c2_small, tmp_path, capsys):
    root = write_visium_hd(tmp_path / "HD5", c2_small, levels=(100,))
    assert main(["run", "--data", str(root), "--out", str(tmp_path / "run"), "--bin-um", "200", "--dry-run"]) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if ": spafoundation " in line]
    assert len(steps) >= 3 and all("--bin-um 200" in line for line in steps)
    assert main(["run", "--data", str(root), "--out", str(tmp_path / "run"), "--set", "bin_um=-5", "--dry-run"]) == 2


def test_run_leaves_superres_out_for_bins_finer_than_superpixels(c2_small, tiny_folder, tmp_path, capsys):
    root = write_visium_hd(tmp_path / "HD6", c2_small, levels=(50,))  # the tiny encoder's superpixels are 56 um
    args = ["run", "--data", str(root), "--out", str(tmp_path / "run"), "--set", f"encoder={tiny_folder}", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "super-resolution left out HD6: spots span fewer than 1.5 superpixels of 56 um" in out
    assert "spafoundation superres" not in out
    assert main([*args, "--bin-um", "100"]) == 0
    assert "spafoundation superres" in capsys.readouterr().out

