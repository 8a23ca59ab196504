"""Visium as GEO deposits it: every file of a sample in one folder, renamed with the sample's prefix and gzipped."""

import gzip
import shutil
import tarfile

import numpy as np
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io import detect_format, open_slide, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta
from spafoundation.io.patches import open_section_slide
from spafoundation.io.visium import read_visium
from tests.io.layouts import write_visium


def deposit(sample, geo, prefix: str, *, spatial_group: str = "", matrix_group: str = "", image: str | None = None):
    """Copy a Space Ranger sample into the GEO folder ``geo`` as ``<prefix>[group]<name>.gz`` (the .h5 as it is),
    with its H&E gzipped as ``<prefix><image>``."""
    outs = sample / "outs"
    sources = [(p, matrix_group) for p in (outs / "filtered_feature_bc_matrix").glob("*")]
    sources += [(outs / "filtered_feature_bc_matrix.h5", "")] if (outs / "filtered_feature_bc_matrix.h5").exists() else []
    sources += [(p, spatial_group) for p in (outs / "spatial").glob("*")]
    for path, group in sources:
        if path.suffix == ".h5":
            shutil.copy(path, geo / f"{prefix}{path.name}")
        else:
            (geo / f"{prefix}{group}{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    if image:
        (geo / f"{prefix}{image}").write_bytes(gzip.compress((sample / "C2_small.tif").read_bytes()))


@pytest.fixture
def geo_folder(c2_small, tmp_path):
    """GSE-like folder: S1 with its HDF5 matrix, gzipped full-resolution H&E and headed positions list; S2 with the three matrix files, spatial
    files after ``spatial_``, no H&E (only the gzipped hires PNG), and a raw matrix beside the filtered one."""
    s1 = write_visium(tmp_path / "sr" / "S1", c2_small)
    s2 = write_visium(tmp_path / "sr" / "S2", c2_small, header=False, mtx=True)
    geo = tmp_path / "GSE000_RAW"
    geo.mkdir()
    deposit(s1, geo, "GSM0000001_S1_", image="HE.tif.gz")
    # Space Ranger 2's table (with its header) under the older name, as some deposits re-save it
    (geo / "GSM0000001_S1_tissue_positions.csv.gz").rename(geo / "GSM0000001_S1_tissue_positions_list.csv.gz")
    deposit(s2, geo, "GSM0000002_S2.", spatial_group="spatial_", matrix_group="filtered_feature_bc_matrix_")
    (geo / "GSM0000002_S2.raw_feature_bc_matrix_barcodes.tsv.gz").write_bytes(gzip.compress(b"NOT-A-SPOT-1\n"))
    # S3 as 10x's public datasets download: the matrix, spatial/ packed, the H&E as <prefix>image.tif
    s3 = write_visium(tmp_path / "sr" / "S3", c2_small)
    prefix = "V1_Breast_Cancer_Block_A_Section_3_"
    shutil.copy(s3 / "outs" / "filtered_feature_bc_matrix.h5", geo / f"{prefix}filtered_feature_bc_matrix.h5")
    with tarfile.open(geo / f"{prefix}spatial.tar.gz", "w:gz") as tar:
        tar.add(s3 / "outs" / "spatial", arcname="spatial")
    shutil.copy(s3 / "C2_small.tif", geo / f"{prefix}image.tif")
    return geo, s1, s2, s3


def test_geo_folder_reads_as_its_space_ranger_folders(geo_folder, c2_small):
    geo, s1, s2, s3 = geo_folder
    assert detect_format(geo) == "visium_geo"
    data = read_dataset(geo)
    s3_name = "V1_Breast_Cancer_Block_A_Section_3"
    assert list(data) == ["S1", "S2", s3_name]
    for name, sample in (("S1", s1), ("S2", s2), (s3_name, s3)):
        ours, theirs = data[name], read_visium(sample)
        np.testing.assert_array_equal(ours.X.toarray(), theirs.X.toarray())
        assert list(ours.var_names) == list(theirs.var_names)
        np.testing.assert_array_equal(ours.obsm["spatial"], theirs.obsm["spatial"])
        assert [i.removeprefix(f"{name}_") for i in ours.obs_names] == \
            [i.removeprefix(f"{sample.name}_") for i in theirs.obs_names]
        assert microns_per_pixel(ours) == pytest.approx(c2_small.mpp)
        np.testing.assert_array_equal(spatial_meta(ours)["images"]["hires"], spatial_meta(theirs)["images"]["hires"])
    # S1's gzipped H&E is unpacked once into the cache, and read from there
    assert image_path(data["S1"]).endswith("GSM0000001_S1_HE.tif") and "unpacked" in image_path(data["S1"])
    assert spatial_meta(data["S1"])["metadata"]["image_source"] == "sample folder, unpacked from " \
        "GSM0000001_S1_HE.tif.gz"
    # S2 deposited no H&E: its gzipped hires PNG, unpacked once into the cache, read at tissue_hires_scalef
    meta = spatial_meta(data["S2"])["metadata"]
    assert meta["image_scale"] == 0.25 and meta["image_source"] == "hires, unpacked from " \
        "GSM0000002_S2.spatial_tissue_hires_image.png.gz"
    assert image_path(read_dataset(geo, sections=["S2"])["S2"]) == image_path(data["S2"])
    assert image_path(data[s3_name]) == str(geo / f"{s3_name}_image.tif")
    # a 10x download on its own (no positions file beside the archive) is found as such
    download = geo.parent / "download"
    download.mkdir()
    for p in geo.glob(f"{s3_name}_*"):
        shutil.copy(p, download / p.name)
    assert detect_format(download) == "visium_geo" and list(read_dataset(download)) == [s3_name]
    # downloads each in its own folder, beside a Space Ranger sample: a cohort, one section per folder
    cohort = geo.parent / "cohort"
    cohort.mkdir()
    shutil.copytree(download, cohort / "breast3")
    shutil.copytree(s1, cohort / "S1", symlinks=True)
    assert detect_format(cohort) == "visium_cohort"
    both = read_dataset(cohort)
    assert list(both) == ["S1", "breast3"]
    np.testing.assert_array_equal(both["breast3"].X.toarray(), data[s3_name].X.toarray())
    assert image_path(both["breast3"]) == str(cohort / "breast3" / f"{s3_name}_image.tif")
    xy = data["S2"].obsm["spatial"][::15]
    with open_slide(image_path(data["S1"])) as full:
        truth = np.stack([full.read_region(p, 150, 16, mpp=c2_small.mpp).mean((0, 1)) for p in xy])
    with open_section_slide(data["S2"]) as copy:
        ours = np.stack([copy.read_region(p, 150, 16, mpp=c2_small.mpp).mean((0, 1)) for p in xy])
    assert np.abs(ours - truth).max() < 8


def test_geo_folder_bad_or_partial_samples_are_one_clear_error(geo_folder, c2_small, capsys):
    geo = geo_folder[0]
    with pytest.raises(InputError, match="several samples"):
        read_dataset(geo, image=c2_small.tiff)
    with pytest.raises(InputError, match=r"unknown section\(s\) \['S9'\]"):
        read_dataset(geo, sections=["S9"])
    archive = geo / "V1_Breast_Cancer_Block_A_Section_3_spatial.tar.gz"
    archive.write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(InputError, match=r"Section_3_spatial\.tar\.gz: spatial: unreadable archive"):
        read_dataset(geo)
    archive.unlink()
    (geo / "GSM0000002_S2.spatial_tissue_positions_list.csv.gz").unlink()
    with pytest.raises(InputError, match=r"sample 'GSM0000002_S2\.' has no spot positions"):
        read_dataset(geo)
    assert main(["info", str(geo)]) == 2
    assert "GSE000_RAW: files: sample 'GSM0000002_S2.' has no spot positions" in capsys.readouterr().err
    # one sample, files without a prefix: the section is the folder's name; --image is that sample's H&E
    one = geo.parent / "one"
    one.mkdir()
    deposit(geo_folder[1], one, "")
    adata = read_dataset(one, image=c2_small.tiff)["one"]
    assert image_path(adata) == str(c2_small.tiff)
    (one / "scalefactors_json.json.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match=r"scalefactors_json\.json\.gz: scalefactors: unreadable file"):
        read_dataset(one)
