import numpy as np
import pytest
import tifffile

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


def test_ome_tiff_with_a_label_before_the_scan_reads_the_scan(c2_small, tmp_path):
    """bfconvert of a .vsi or .czi writes the scanner's label / overview as images of their own, not always after
    the scan: the section's image is the largest one, with its own pixel size, never the label's."""
    from spafoundation.io import open_slide

    write_manifest(tmp_path, c2_small)
    label = np.full((120, 200, 3), 40, np.uint8)
    ome = tmp_path / "converted.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tif:
        tif.write(label, photometric="rgb", metadata={"axes": "YXS", "Name": "label", "PhysicalSizeX": 40.0})
        tif.write(c2_small.rgb, photometric="rgb", tile=(256, 256), metadata={
            "axes": "YXS", "Name": "scan", "PhysicalSizeX": c2_small.mpp, "PhysicalSizeY": c2_small.mpp})
    a = read_dataset(tmp_path / "spots.csv", image=ome)["spots"]
    assert microns_per_pixel(a) == pytest.approx(c2_small.mpp)
    with open_slide(ome) as slide:
        assert (slide.height, slide.width) == c2_small.rgb.shape[:2]
        x, y = np.round(c2_small.xy[0]).astype(int)
        np.testing.assert_array_equal(slide.read_level_region(0, x, y, 32, 32), c2_small.rgb[y:y + 32, x:x + 32])
    # only the label records a pixel size: the scan's is unknown, not borrowed from the label
    with tifffile.TiffWriter(ome, ome=True) as tif:
        tif.write(label, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 40.0})
        tif.write(c2_small.rgb, photometric="rgb", metadata={"axes": "YXS"})
    with pytest.raises(InputError, match="unknown pixel size"):
        read_dataset(tmp_path / "spots.csv", image=ome)
