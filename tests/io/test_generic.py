import numpy as np
import pytest

from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta
from tests.io.layouts import write_manifest


@pytest.mark.parametrize("counts", ["tsv", "mtx", "h5ad"])
def test_generic_round_trip(c2_small, tmp_path, counts):
    manifest = write_manifest(tmp_path, c2_small, counts=counts)
    assert detect_format(manifest) == "generic"
    adata = read_dataset(manifest)["S1"]
    np.testing.assert_array_equal(adata.X.toarray(), c2_small.counts.toarray())
    assert list(adata.var_names) == c2_small.genes
    np.testing.assert_allclose(adata.obsm["spatial"], c2_small.xy)
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    meta = spatial_meta(adata)["metadata"]
    assert meta["platform"] == "legacy_st" and meta["spot_diameter_um"] == 100
    assert image_path(adata) == str(tmp_path / "C2_small.tif")  # relative to the manifest's folder


def test_generic_folder_and_pitch_estimate(c2_small, tmp_path):
    write_manifest(tmp_path, c2_small, section={"mpp": None, "pitch_um": 200})
    assert detect_format(tmp_path) == "generic"
    adata = read_dataset(tmp_path)["S1"]
    # C2's spots sit on the 200 um legacy ST grid
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp, rel=0.02)
    assert "200 um spot pitch" in spatial_meta(adata)["metadata"]["mpp_source"]


def test_generic_pitch_without_array_coordinates(c2_small, tmp_path):
    manifest = write_manifest(tmp_path, c2_small, section={"mpp": None, "pitch_um": 200})
    spots = (tmp_path / "spots.csv").read_text().splitlines()
    (tmp_path / "spots.csv").write_text("\n".join(",".join(r.split(",")[:3]) for r in spots) + "\n")
    adata = read_dataset(manifest)["S1"]
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp, rel=0.03)
    assert (adata.obs["array_row"] == -1).all()


def test_generic_image_only_section(c2_small, tmp_path):
    manifest = write_manifest(tmp_path, c2_small, counts="none")
    adata = read_dataset(manifest, with_images=False)["S1"]
    assert adata.n_obs == len(c2_small.ids) and adata.n_vars == 0


def test_generic_unknown_pixel_size(c2_small, tmp_path):
    manifest = write_manifest(tmp_path, c2_small, section={"mpp": None})
    with pytest.raises(InputError, match="unknown pixel size") as e:
        read_dataset(manifest)
    assert e.value.path == str(manifest) and "mpp" in e.value.field


def test_spots_table_with_its_image_is_a_section_without_counts(c2_small, tmp_path, capsys):
    """An H&E and a CSV of its spots, no manifest: what predict-expression needs."""
    import tifffile

    from spafoundation.cli import main

    write_manifest(tmp_path, c2_small)  # writes spots.csv (id, x, y, array_row, array_col) beside the image
    spots = tmp_path / "spots.csv"
    with pytest.raises(InputError, match=r"unknown pixel size.*--mpp \(the image records none\)"):
        read_dataset(spots, image=c2_small.tiff)
    data = read_dataset(spots, image=c2_small.tiff, mpp=c2_small.mpp)
    a = data["spots"]
    assert a.n_obs == len(c2_small.ids) and a.n_vars == 0 and image_path(a) == str(c2_small.tiff.resolve())
    np.testing.assert_allclose(a.obsm["spatial"], c2_small.xy)
    # an OME-TIFF records its pixel size: no --mpp needed
    ome = tmp_path / "he.ome.tif"
    tifffile.imwrite(ome, c2_small.rgb, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": c2_small.mpp,
                                                                     "PhysicalSizeY": c2_small.mpp})
    a = read_dataset(spots, image=ome)["spots"]
    assert microns_per_pixel(a) == pytest.approx(c2_small.mpp)
    assert spatial_meta(a)["metadata"]["mpp_source"] == "the image's metadata"
    assert main(["info", str(spots), "--image", str(ome)]) == 0
    assert "format: spots_table" in capsys.readouterr().out
