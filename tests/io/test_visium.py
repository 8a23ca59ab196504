import h5py
import numpy as np
import pytest

from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta
from spafoundation.io.visium import read_visium
from tests.io.layouts import visium_barcodes, write_visium


def assert_round_trip(adata, c, ids):
    np.testing.assert_array_equal(adata.X.toarray(), c.counts.toarray())
    assert list(adata.var_names) == c.genes
    np.testing.assert_allclose(adata.obsm["spatial"], c.xy)
    np.testing.assert_array_equal(adata.obs[["array_row", "array_col"]].to_numpy(), c.array_rc)
    assert [i.split("_", 1)[1] for i in adata.obs_names] == ids


@pytest.mark.parametrize(("header", "mtx"), [(True, False), (False, True)])
def test_visium_round_trip(c2_small, tmp_path, header, mtx):
    root = write_visium(tmp_path / "V1", c2_small, header=header, mtx=mtx)
    assert detect_format(root) == "visium"
    adata = read_dataset(root)["V1"]
    # the two off-tissue positions are dropped by in_tissue
    assert_round_trip(adata, c2_small, visium_barcodes(c2_small))
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    meta = spatial_meta(adata)
    assert "55 um spot diameter" in meta["metadata"]["mpp_source"]
    assert meta["metadata"]["image_size"] == [c2_small.rgb.shape[1], c2_small.rgb.shape[0]]
    assert image_path(adata).endswith("C2_small.tif")
    # Space Ranger's hires PNG is the thumbnail, with its own scale factor
    assert meta["scalefactors"]["tissue_hires_scalef"] == 0.25
    assert meta["images"]["hires"].shape[:2] == (
        round(c2_small.rgb.shape[0] / 4),
        round(c2_small.rgb.shape[1] / 4),
    )


def test_visium_outs_path_and_pitch_estimate(c2_small, tmp_path):
    root = write_visium(tmp_path / "V2", c2_small, spot_diameter=False)
    adata = read_dataset(root / "outs")["V2"]
    meta = spatial_meta(adata)["metadata"]
    assert "100 um spot pitch" in meta["mpp_source"]
    # The C2 grid is legacy ST (200 um per array step), read as Visium (50 um per array_col step): 4x smaller.
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp / 4, rel=0.02)


def test_visium_duplicate_gene_symbols_made_unique(c2_small, tmp_path):
    root = write_visium(tmp_path / "V3", c2_small)
    with h5py.File(root / "outs" / "filtered_feature_bc_matrix.h5", "a") as f:
        names = f["matrix/features/name"]
        names[1] = names[0]
    adata = read_dataset(root)["V3"]
    assert adata.var_names.is_unique
    assert list(adata.var_names[:2]) == [c2_small.genes[0], f"{c2_small.genes[0]}-1"]


def test_visium_image_given_or_absent(c2_small, tmp_path):
    root = write_visium(tmp_path / "V4", c2_small)
    (root / "C2_small.tif").unlink()
    # without the full-resolution H&E, Space Ranger's hires PNG at its scale factor (tests/io/test_downscaled.py)
    adata = read_visium(root, with_images=False)
    assert image_path(adata).endswith("tissue_hires_image.png") and spatial_meta(adata)["metadata"]["image_scale"] == 0.25
    (root / "outs" / "spatial" / "tissue_hires_image.png").unlink()
    adata = read_visium(root, with_images=False)
    assert image_path(adata) is None and spatial_meta(adata)["metadata"]["image_size"] == []
    adata = read_visium(root, image=c2_small.tiff, section="S9", patient="P")
    assert image_path(adata) == str(c2_small.tiff)
    assert adata.obs["section"].iloc[0] == "S9" and adata.obs["patient"].iloc[0] == "P"
    assert list(adata.uns["spatial"]) == ["S9"]


def test_visium_cohort_folder_reads_one_section_per_sample(c2_small, tmp_path):
    cohort = tmp_path / "cohort"
    for name in ("S1", "S2"):
        write_visium(cohort / name, c2_small)
    (cohort / "notes").mkdir()  # a folder that is not a sample is ignored
    assert detect_format(cohort) == "visium_cohort"
    data = read_dataset(cohort)
    assert list(data) == ["S1", "S2"]
    assert_round_trip(data["S2"], c2_small, visium_barcodes(c2_small))
    assert image_path(data["S1"]).endswith("C2_small.tif") and data["S1"].obs["section"].iloc[0] == "S1"
    assert list(read_dataset(cohort, ["S2"])) == ["S2"]
    with pytest.raises(InputError, match="unknown section"):
        read_dataset(cohort, ["S3"])
    with pytest.raises(InputError, match="image"):
        read_dataset(cohort, image=c2_small.tiff)


def test_visium_image_kept_elsewhere_is_given_with_image(c2_small, tmp_path, capsys):
    from spafoundation.cli import main

    root = write_visium(tmp_path / "V5", c2_small)
    (root / "C2_small.tif").unlink()
    (root / "outs" / "spatial" / "tissue_hires_image.png").unlink()
    assert image_path(read_dataset(root)["V5"]) is None
    # a command that needs the image says how to give it, before any encoder is built
    assert main(["embed", str(root), "--encoder", "spafoundation-default", "--out", str(tmp_path / "e.h5ad")]) == 2
    assert "--image" in capsys.readouterr().err and not (tmp_path / "e.h5ad").exists()
    adata = read_dataset(root, image=c2_small.tiff)["V5"]
    assert image_path(adata) == str(c2_small.tiff)
    assert spatial_meta(adata)["metadata"]["image_size"] == [c2_small.rgb.shape[1], c2_small.rgb.shape[0]]
    assert main(["info", str(root), "--image", str(c2_small.tiff)]) == 0
    assert f"{c2_small.rgb.shape[1]}x{c2_small.rgb.shape[0]}" in capsys.readouterr().out
    with pytest.raises(InputError, match="file not found") as e:
        read_dataset(root, image=tmp_path / "missing.tif")
    assert e.value.path.endswith("missing.tif")


def test_visium_folder_with_two_images_asks_which(c2_small, tmp_path):
    root = write_visium(tmp_path / "V6", c2_small)
    (root / "IF_stain.tif").symlink_to(c2_small.tiff)
    with pytest.raises(InputError, match=r"2 candidate full-resolution images \(C2_small.tif, IF_stain.tif\).*--image"):
        read_dataset(root)
    assert image_path(read_dataset(root, image=root / "C2_small.tif")["V6"]).endswith("C2_small.tif")


def test_image_option_is_an_error_where_each_section_names_its_image(her2st_root):
    with pytest.raises(InputError, match=r"image.*legacy_st data finds each section's image itself"):
        read_dataset(her2st_root, image="x.tif")


def test_run_passes_image_to_every_step(c2_small, tmp_path, capsys):
    from spafoundation.cli import main

    root = write_visium(tmp_path / "V7", c2_small)
    (root / "C2_small.tif").unlink()
    (root / "outs" / "spatial" / "tissue_hires_image.png").unlink()
    run = ["run", "--data", str(root), "--out", str(tmp_path / "run"), "--dry-run"]
    assert main(run) == 2 and "--image" in capsys.readouterr().err
    assert main([*run, "--image", str(c2_small.tiff)]) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if ": spafoundation " in line]
    assert len(steps) >= 3 and all(f"--image {c2_small.tiff}" in line for line in steps)
    assert main([*run, "--set", "image=5"]) == 2
    assert "image: must be the path of an image file" in capsys.readouterr().err


def test_downscaled_copy_given_as_the_image_is_named_as_downscaled(c2_small, tmp_path):
    root = write_visium(tmp_path / "V8", c2_small)
    copy = tmp_path / "tissue_hires_image.png"  # Space Ranger's PNG away from its scale factor
    copy.write_bytes((root / "outs" / "spatial" / "tissue_hires_image.png").read_bytes())
    with pytest.raises(InputError, match=r"outside the \d+x\d+ px image tissue_hires_image.png .*reach [0-9.]+x the "
                       r"image's size: spot coordinates are full-resolution pixels, and this looks like a downscaled "
                       r"copy of the H&E \(give its scale.*--image-scale"):
        read_dataset(root, image=copy)
