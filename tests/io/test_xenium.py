"""Xenium with its post-Xenium H&E, on real data: HER2ST C2 (1/4 scale) laid out as a Xenium output folder
(tests/io/layouts.write_xenium: each spot's counts shared among 5 cells around it, the H&E turned 90 degrees against
the cells' frame by its alignment CSV). Summing the cells into 200 um squares must give back C2's spots; the same
folder read by spatialdata-io into a SpatialData store must give the same spots as the folder itself."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
from scipy.spatial import cKDTree

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta, spot_diameter_fullres
from tests.io.layouts import XENIUM_CELLS_PER_SPOT, write_xenium

HAVE_SPATIALDATA = all(importlib.util.find_spec(m) for m in ("spatialdata", "spatialdata_io"))


@pytest.fixture(scope="module")
def xenium_folder(c2_small, tmp_path_factory):
    return write_xenium(tmp_path_factory.mktemp("xenium") / "X1_outs", c2_small, morphology=HAVE_SPATIALDATA)


def matched_to_c2(adata, c2_small):
    """Each spot's nearest C2 spot, and how far it is in microns."""
    dist, nearest = cKDTree(c2_small.xy).query(adata.obsm["spatial"])
    return nearest, dist * c2_small.mpp


def test_cells_summed_into_200_um_squares_give_back_c2(xenium_folder, c2_small):
    assert detect_format(xenium_folder) == "xenium"
    adata = read_dataset(xenium_folder, bin_um=200)["X1"]  # named after the folder, less 10x's "_outs"
    nearest, dist_um = matched_to_c2(adata, c2_small)
    assert adata.n_obs == c2_small.counts.shape[0] and len(set(nearest)) == adata.n_obs
    # the square's centre, not the cells' mean: within the spot grid's own irregularity of C2's spot centre
    assert dist_um.max() < 40
    np.testing.assert_array_equal(adata.X.toarray(), c2_small.counts[nearest].toarray())
    assert (adata.obs["n_cells"] == XENIUM_CELLS_PER_SPOT).all()
    assert list(adata.var_names) == c2_small.genes
    # the H&E's pixel size: the morphology's (2 um here) times the alignment's scale
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    assert spot_diameter_fullres(adata) * microns_per_pixel(adata) == pytest.approx(200)
    assert image_path(adata) == str(xenium_folder / "X1_he_image.ome.tif")
    assert spatial_meta(adata)["metadata"]["platform"] == "xenium"


def test_default_squares_are_55_um_and_keep_every_count(xenium_folder, c2_small):
    adata = read_dataset(xenium_folder)["X1"]
    assert spot_diameter_fullres(adata) * microns_per_pixel(adata) == pytest.approx(55)
    assert adata.X.sum() == c2_small.counts.sum()
    assert adata.obs["n_cells"].sum() == XENIUM_CELLS_PER_SPOT * c2_small.counts.shape[0]
    assert adata.n_obs > c2_small.counts.shape[0]
    # neighbouring squares lie one square apart on the H&E, turned or not
    gaps = cKDTree(adata.obsm["spatial"]).query(adata.obsm["spatial"], k=2)[0][:, 1] * microns_per_pixel(adata)
    assert np.median(gaps) == pytest.approx(55, rel=1e-6)


def test_spots_off_the_scan_are_left_out_with_a_warning(c2_small, tmp_path, caplog):
    import tifffile

    root = write_xenium(tmp_path / "X2", c2_small, name="X2")
    half = c2_small.rgb.shape[0] // 2
    tifffile.imwrite(root / "X2_he_image.ome.tif", c2_small.rgb[:half], ome=True, photometric="rgb")
    with caplog.at_level(logging.WARNING):
        adata = read_dataset(root, bin_um=200)["X2"]
    assert "fall off the image and are left out" in caplog.text
    assert 0 < adata.n_obs < c2_small.counts.shape[0] and (adata.obsm["spatial"][:, 1] < half).all()
    nearest, _ = matched_to_c2(adata, c2_small)
    np.testing.assert_array_equal(adata.X.toarray(), c2_small.counts[nearest].toarray())


@pytest.mark.parametrize(("broken", "field", "message"), [
    ("alignment", "alignment", "3 x 3 affine matrix"),
    ("far", "alignment", "no spot lies on"),
    ("pixel_size", "pixel_size", "missing"),
    ("cells", "cells", "file not found"),
    ("no_image", "image", "no H&E"),
])
def test_bad_xenium_folder_is_one_error_exit_2(c2_small, tmp_path, capsys, broken, field, message):
    root = write_xenium(tmp_path / "X3", c2_small, name="X3")
    alignment = root / "X3_he_imagealignment.csv"
    if broken == "alignment":
        alignment.write_text("1,0\n0,1\n")
    elif broken == "far":
        matrix = np.loadtxt(alignment, delimiter=",")
        matrix[:2, 2] -= 1e6  # the cells land far from the scan
        np.savetxt(alignment, matrix, delimiter=",")
    elif broken == "pixel_size":
        (root / "experiment.xenium").write_text('{"run_name": "X3"}')
    elif broken == "cells":
        (root / "cells.parquet").unlink()
    else:
        (root / "X3_he_image.ome.tif").unlink()
    with pytest.raises(InputError, match=message) as err:
        read_dataset(root)
    assert field in str(err.value)
    assert main(["info", str(root)]) == 2
    assert message in capsys.readouterr().err


def test_bin_size_out_of_range_and_on_round_spots_are_errors(xenium_folder, c2_small, tmp_path):
    from tests.io.layouts import write_visium

    with pytest.raises(InputError, match="10 to 1000 um"):
        read_dataset(xenium_folder, bin_um=5)
    with pytest.raises(InputError, match="only Visium HD"):
        read_dataset(write_visium(tmp_path / "V1", c2_small), bin_um=200)


@pytest.mark.skipif(not HAVE_SPATIALDATA, reason="optional extra missing: pip install 'spafoundation[spatialdata]'")
@pytest.mark.parametrize("bin_um", [None, 200])
def test_spatialdata_io_xenium_store_gives_the_folders_spots(xenium_folder, tmp_path, bin_um):
    """spatialdata-io's store holds a one-channel DAPI image finer than the H&E: the H&E is read all the same, the
    cells (in microns there) summed into the same squares as from the folder."""
    from spatialdata_io import xenium

    sdata = xenium(xenium_folder, cells_as_circles=True, cells_boundaries=False, nucleus_boundaries=False,
                   cells_labels=False, nucleus_labels=False, transcripts=False, morphology_focus=False,
                   morphology_mip=True, aligned_images=True)
    assert set(sdata.images) == {"he_image", "morphology_mip"}
    sdata.write(tmp_path / "X1.zarr")
    store = read_dataset(tmp_path / "X1.zarr", bin_um=bin_um)["X1"]
    folder = read_dataset(xenium_folder, bin_um=bin_um)["X1"]
    assert spatial_meta(store)["metadata"]["spatialdata_image"] == "he_image"
    assert list(store.obs_names) == list(folder.obs_names)
    np.testing.assert_array_equal(store.X.toarray(), folder.X.toarray())
    np.testing.assert_allclose(store.obsm["spatial"], folder.obsm["spatial"], atol=1e-6)
    assert microns_per_pixel(store) == pytest.approx(microns_per_pixel(folder))
    assert spot_diameter_fullres(store) == pytest.approx(spot_diameter_fullres(folder))

    del sdata.images["he_image"]
    sdata.write(tmp_path / "dapi_only.zarr")
    with pytest.raises(InputError, match="only fluorescence: morphology_mip"):
        read_dataset(tmp_path / "dapi_only.zarr")


def test_h_and_e_kept_elsewhere_is_given_with_image(xenium_folder, c2_small, tmp_path):
    import shutil

    root = tmp_path / "X4"
    shutil.copytree(xenium_folder, root)
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("X1_he_image.ome.tif", "X1_he_imagealignment.csv"):
        shutil.move(root / name, scans / name)
    with pytest.raises(InputError, match="no H&E"):
        read_dataset(root)
    adata = read_dataset(root, bin_um=200, image=scans / "X1_he_image.ome.tif")["X4"]
    np.testing.assert_allclose(adata.obsm["spatial"], read_dataset(xenium_folder, bin_um=200)["X1"].obsm["spatial"])
    assert image_path(adata) == str(scans / "X1_he_image.ome.tif")
    # as 10x's downloads lie: <dataset>_outs/ beside <dataset>_he_image.ome.tif and its alignment
    shutil.move(root, tmp_path / "X4_outs")
    for name in ("he_image.ome.tif", "he_imagealignment.csv"):
        shutil.move(scans / f"X1_{name}", tmp_path / f"X4_{name}")
    adata = read_dataset(tmp_path / "X4_outs", bin_um=200)["X4"]
    assert image_path(adata) == str(tmp_path / "X4_he_image.ome.tif")
    np.testing.assert_allclose(adata.obsm["spatial"], read_dataset(xenium_folder, bin_um=200)["X1"].obsm["spatial"])


@pytest.mark.skipif(not HAVE_SPATIALDATA, reason="optional extra missing: pip install 'spafoundation[spatialdata]'")
def test_results_of_summed_cells_go_back_as_squares_on_the_cells(xenium_folder, tmp_path):
    """sf.io.add_to_spatialdata on a Xenium store: the squares the cells were summed into become a shapes element
    in the cells' own frame (microns, with their transformation to the morphology pixels), each square holding its
    cells; predictions and annotations are tables on it; written, the store still reads as the same section."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import spatialdata as sd
    from spatialdata_io import xenium

    import spafoundation as sf

    xenium(xenium_folder, cells_as_circles=True, cells_boundaries=False, nucleus_boundaries=False,
           cells_labels=False, nucleus_labels=False, transcripts=False, morphology_focus=False,
           morphology_mip=False, aligned_images=True).write(tmp_path / "X1.zarr")
    sdata = sd.read_zarr(tmp_path / "X1.zarr")
    section = sf.read(sdata, bin_um=200)["X1"]
    genes = list(section.var_names[:3])
    pred = ad.AnnData(section[:, genes].X.toarray().astype(np.float32) * 2, obs=section.obs.copy(),
                      var=pd.DataFrame(index=genes), uns={"spatial": dict(section.uns["spatial"])},
                      obsm={"spatial": section.obsm["spatial"]})  # as sf.tl.predict_expression gives it
    section.obs["tumor_probability"] = np.linspace(0, 1, section.n_obs)
    changed = sf.io.add_to_spatialdata(sdata, expression=pred, spots=section)
    assert changed == ["X1_squares", "X1_expression", "X1_squares_table"]
    squares = sdata.shapes["X1_squares"]
    cells = gpd.GeoDataFrame(geometry=sdata.shapes["cell_circles"].geometry)
    inside = gpd.sjoin(cells, gpd.GeoDataFrame(geometry=squares.geometry), predicate="within")
    assert inside.groupby("index_right").size().loc[section.obs_names].tolist() == section.obs["n_cells"].tolist()
    assert squares.geometry.area.to_numpy() == pytest.approx(200.0**2)  # microns, the cells' frame
    predicted = sd.get_values(value_key=genes, sdata=sdata, element_name="X1_squares", table_name="X1_expression")
    np.testing.assert_array_equal(predicted.loc[section.obs_names].to_numpy(), 2 * section[:, genes].X.toarray())
    annotated = sd.get_values(value_key="tumor_probability", sdata=sdata, element_name="X1_squares",
                              table_name="X1_squares_table")
    np.testing.assert_allclose(annotated.loc[section.obs_names, "tumor_probability"],
                               section.obs["tumor_probability"])
    # the squares kept, their annotations table updated; the predictions replaced only when asked
    assert sf.io.add_to_spatialdata(sdata, spots=section) == ["X1_squares_table"]
    with pytest.raises(InputError, match="overwrite=True"):
        sf.io.add_to_spatialdata(sdata, expression=pred)
    for name in changed:
        sdata.write_element(name)
    again = sf.read(sd.read_zarr(tmp_path / "X1.zarr"), bin_um=200)
    assert list(again) == ["X1"]
    np.testing.assert_array_equal(again["X1"].X.toarray(), section.X.toarray())


def test_xenium_folders_side_by_side_are_a_cohort(xenium_folder, c2_small, tmp_path):
    """Replicates, or a Xenium run beside Visium samples: one section per folder, as a cohort of Space Ranger samples
    reads, so that a model is fitted and cross-validated across them."""
    import shutil

    from tests.io.layouts import write_visium

    cohort = tmp_path / "cohort"
    shutil.copytree(xenium_folder, cohort / "Rep1_outs")
    write_xenium(cohort / "Rep2", c2_small, name="Rep2")
    write_visium(cohort / "V1", c2_small)
    assert detect_format(cohort) == "visium_cohort"
    data = read_dataset(cohort, ["Rep1", "Rep2"], bin_um=200)
    assert list(data) == ["Rep1", "Rep2"]
    for adata in data.values():
        np.testing.assert_array_equal(adata.X.sum(axis=0), c2_small.counts.sum(axis=0))
    assert read_dataset(cohort, ["V1"])["V1"].n_obs == c2_small.counts.shape[0]


@pytest.mark.skipif(not HAVE_SPATIALDATA, reason="optional extra missing: pip install 'spafoundation[spatialdata]'")
def test_squares_written_to_a_store_read_back_as_the_same_spots(xenium_folder, tmp_path):
    """20 um squares are narrower than a cell cut-off of 30 um: written by spafoundation they are spots, not cells to
    sum again."""
    from spafoundation.io.spatialdata_write import write_spatialdata

    adata = read_dataset(xenium_folder, bin_um=20)["X1"]
    write_spatialdata(tmp_path / "out.zarr", {"X1": adata})
    back = read_dataset(tmp_path / "out.zarr")["X1"]
    assert list(back.obs_names) == list(adata.obs_names)
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    np.testing.assert_allclose(back.obsm["spatial"], adata.obsm["spatial"], atol=1e-6)
    assert spot_diameter_fullres(back) == pytest.approx(spot_diameter_fullres(adata))


def test_scan_whose_metadata_disagrees_with_the_alignment_is_warned_about(c2_small, tmp_path, caplog):
    import tifffile

    root = write_xenium(tmp_path / "X5", c2_small, name="X5")
    with caplog.at_level(logging.WARNING):
        read_dataset(root, bin_um=200)
    assert "metadata says" not in caplog.text  # no pixel size in the scan's metadata: nothing to compare
    for own, warned in ((c2_small.mpp * 1.05, False), (c2_small.mpp * 2, True)):
        tifffile.imwrite(root / "X5_he_image.ome.tif", c2_small.rgb, ome=True, photometric="rgb",
                         metadata={"PhysicalSizeX": own, "PhysicalSizeY": own})
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            adata = read_dataset(root, bin_um=200)["X5"]
        assert ("metadata says" in caplog.text) == warned
        assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)  # the alignment's, as the spots are placed


def test_older_xenium_outputs_read_the_same(xenium_folder, tmp_path):
    """cells.csv.gz instead of cells.parquet, the cell_feature_matrix/ folder (Matrix Market, gzipped, control
    probes among the features) instead of the HDF5 file: the same spots."""
    import gzip
    import shutil

    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    from spafoundation.io.visium import read_10x_h5

    root = tmp_path / "X6"
    shutil.copytree(xenium_folder, root)
    pd.read_parquet(root / "cells.parquet").to_csv(root / "cells.csv.gz", index=False)
    (root / "cells.parquet").unlink()
    X, barcodes, genes = read_10x_h5(root / "cell_feature_matrix.h5")
    (root / "cell_feature_matrix.h5").unlink()
    folder = root / "cell_feature_matrix"
    folder.mkdir()
    control = sp.csr_matrix(np.ones((X.shape[0], 1), dtype=np.int32))  # a probe, not a gene: left out
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.hstack([X, control]).T.tocoo())
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.write("".join(f"{b}\n" for b in barcodes))
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.write("".join(f"ENSG{i}\t{g}\tGene Expression\n" for i, g in enumerate(genes)))
        f.write("NegControlProbe_1\tNegControlProbe_1\tNegative Control Probe\n")
    old = read_dataset(root, bin_um=200)["X6"]
    new = read_dataset(xenium_folder, bin_um=200)["X1"]
    assert list(old.var_names) == list(new.var_names)
    np.testing.assert_array_equal(old.X.toarray(), new.X.toarray())
    np.testing.assert_allclose(old.obsm["spatial"], new.obsm["spatial"])
