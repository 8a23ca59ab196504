"""SpatialData in and out on real data (HER2ST C2 at 1/4 scale, tests/io/layouts.py): a store spatialdata-io makes
from a Space Ranger layout, read as a dataset; spafoundation's own store written and read back; a spatialdata-plot
rendering of it; bad stores; the commands' --format spatialdata. Skipped only where the optional extra is absent
(`pip install 'spafoundation[spatialdata]'`, which `make test` installs)."""

from __future__ import annotations

import importlib.util
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spafoundation.cli import main
from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta, spot_diameter_fullres
from spafoundation.io.slide import Slide, open_slide
from tests.io.layouts import visium_barcodes, write_manifest, write_visium

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("spatialdata", "spatialdata_io", "spatialdata_plot"))
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="optional extra missing: pip install "
                                 "'spafoundation[spatialdata]'")


def spaceranger_store(c2_small, root, name: str):
    """A store as spatialdata-io's Visium reader makes it from a Space Ranger layout of C2 with its full-res TIFF."""
    from spatialdata_io import visium

    outs = write_visium(root / name, c2_small) / "outs"
    return visium(outs, dataset_id=name, fullres_image_file=c2_small.tiff)


@pytest.fixture(scope="module")
def manifest(c2_small, tmp_path_factory):
    """C2 (1/4 scale) as a generic manifest of one section, S1."""
    return write_manifest(tmp_path_factory.mktemp("manifest"), c2_small)


@pytest.fixture(scope="module")
def manifest_section(manifest):
    return read_dataset(manifest)["S1"]


def results_of(section: ad.AnnData):
    """What the commands would hand the writer, made from the section's real counts: log-normalised expression of
    8 genes as the prediction, a tumour probability and domains per spot, superpixels of 100 um and a 400 um grid."""
    from spafoundation.pp.genes import expression_matrix
    from spafoundation.tasks.spot_features import locations_adata

    genes = list(section.var_names[np.argsort(-np.asarray(section.X.sum(axis=0)).ravel())[:8]])
    expr = expression_matrix(section, genes, 1e4).astype(np.float32)
    pred = ad.AnnData(expr, obs=section.obs[[]].copy(), var=pd.DataFrame(index=genes))
    annotated = section.copy()
    annotated.obs["tumor_probability"] = expr[:, 0] / expr[:, 0].max()
    annotated.obs["spatial_domain"] = pd.Categorical(np.where(expr[:, 1] > np.median(expr[:, 1]), "high", "low"))
    mpp = microns_per_pixel(section)
    xy = np.asarray(section.obsm["spatial"])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    step = 100 / mpp
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step))
    superpixels = locations_adata(section, np.stack([gx.ravel(), gy.ravel()], axis=1))
    nearest = np.argmin(((superpixels.obsm["spatial"][:, None] - xy[None]) ** 2).sum(-1), axis=1)
    superpixels = ad.AnnData(expr[nearest], obs=superpixels.obs, var=pd.DataFrame(index=genes),
                             obsm=dict(superpixels.obsm), uns=dict(superpixels.uns))
    superpixels.uns["superres"] = {"step_um": 100.0}
    grid = locations_adata(section, np.stack([gx.ravel()[::16], gy.ravel()[::16]], axis=1))
    grid.obs["tumor_probability"] = np.linspace(0, 1, grid.n_obs)
    grid.uns["grid"] = {"step_um": 400.0, "mpp": mpp, "section": "S1"}
    return annotated, pred, superpixels, grid


@pytest.fixture(scope="module")
def written_store(manifest_section, tmp_path_factory):
    from spafoundation.io.spatialdata_write import write_spatialdata

    annotated, pred, superpixels, grid = results_of(manifest_section)
    path = tmp_path_factory.mktemp("out") / "results.zarr"
    write_spatialdata(path, {"S1": annotated}, expression={"S1": pred}, superres={"S1": superpixels},
                      grids={"tumor_grid": {"S1": grid}}, chunk_px=512)
    return path, annotated, pred, superpixels, grid


def older_store_format():
    """SpatialData's first on-disk format: zarr v2, OME-NGFF 0.4 images (.zattrs), as stores written before 2025."""
    from spatialdata._io.format import (
        RasterFormatV02,
        ShapesFormatV02,
        SpatialDataContainerFormatV01,
        TablesFormatV01,
    )

    return [SpatialDataContainerFormatV01(), RasterFormatV02(), ShapesFormatV02(), TablesFormatV01()]


@needs_extra
@pytest.mark.parametrize("older", [False, True], ids=["current format", "zarr v2 format"])
def test_spaceranger_store_from_spatialdata_io_is_a_dataset(c2_small, tmp_path, older):
    store = tmp_path / "V1.zarr"
    spaceranger_store(c2_small, tmp_path, "V1").write(store, sdata_formats=older_store_format() if older else None)
    assert (store / ("images/V1_full_image/.zattrs" if older else "images/V1_full_image/zarr.json")).exists()
    assert detect_format(store) == "spatialdata"
    adata = read_dataset(store)["V1"]
    np.testing.assert_array_equal(adata.X.toarray(), c2_small.counts.toarray())
    assert list(adata.obs_names) == [f"V1_{b}" for b in visium_barcodes(c2_small)]  # unique across sections
    np.testing.assert_allclose(adata.obsm["spatial"], c2_small.xy)
    # no pixel size in the store: the 55 um Visium spot over the circles' diameter, as for Space Ranger's files
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    assert "55 um" in spatial_meta(adata)["metadata"]["mpp_source"]
    # the full-resolution image element, not the hires PNG, read in place: pixel for pixel the TIFF
    assert image_path(adata) == str(store / "images" / "V1_full_image")
    with open_slide(image_path(adata)) as zs, open_slide(c2_small.tiff) as ts:
        assert (zs.width, zs.height) == (ts.width, ts.height) and len(zs.level_shapes) > 1
        x, y = (int(v) for v in c2_small.xy[0])
        np.testing.assert_array_equal(zs.read_level_region(0, x - 40, y - 40, 80, 80),
                                      ts.read_level_region(0, x - 40, y - 40, 80, 80))
    assert spatial_meta(adata)["images"]["hires"].shape[2] == 3


@needs_extra
@pytest.mark.parametrize("bin_um", [None, 100, 400])
def test_visium_hd_store_from_spatialdata_io_reads_as_our_hd_reader(c2_small, tmp_path, bin_um):
    """Bins as squares, one region per bin size: ``bin_um`` picks one (default 16 um, else the largest written) or
    sums k x k bins of one (400 = 2 x 2 of the 200 um bins), as ``read_dataset`` does on the Space Ranger folder."""
    import json

    import h5py
    from spatialdata_io import visium_hd

    from tests.io.layouts import write_visium_hd

    root = write_visium_hd(tmp_path / "HD", c2_small, levels=(100, 200))
    # spatialdata-io reads the layout version from Space Ranger's feature slice file; that is all it needs of it
    with h5py.File(root / "outs" / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps({"file_format": "1.0"})})
    visium_hd(root / "outs", dataset_id="HD", fullres_image_file=c2_small.tiff).write(tmp_path / "hd.zarr")
    adata = read_dataset(tmp_path / "hd.zarr", bin_um=bin_um)["HD"]
    ours = next(iter(read_dataset(root, bin_um=bin_um or 200).values()))
    assert list(adata.obs_names) == list(ours.obs_names)
    np.testing.assert_array_equal(adata.X.toarray(), ours.X.toarray())
    np.testing.assert_allclose(adata.obsm["spatial"], ours.obsm["spatial"], atol=1e-6)
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    assert spot_diameter_fullres(adata) == pytest.approx(spot_diameter_fullres(ours))
    if bin_um == 400:
        assert adata.obs["n_bins"].max() == 4 and adata.obs["n_bins"].sum() == c2_small.counts.shape[0]
        # results of the summed spots go back as squares of 400 um, each over the 200 um bins it sums
        import geopandas as gpd
        import spatialdata as sd

        import spafoundation as sf

        sdata = sd.read_zarr(tmp_path / "hd.zarr")
        pred = ad.AnnData(adata.X.toarray()[:, :2].astype(np.float32), obs=adata.obs.copy(),
                          var=pd.DataFrame(index=adata.var_names[:2]), obsm={"spatial": adata.obsm["spatial"]},
                          uns={"spatial": dict(adata.uns["spatial"])})
        assert sf.io.add_to_spatialdata(sdata, expression={"HD": pred}) == ["HD_squares", "HD_expression"]
        squares = sdata.shapes["HD_squares"]
        full = adata.obs["n_bins"].to_numpy() == 4  # C2's spots as bins: a grid with its jitter, so about 400 um
        assert np.median(squares.geometry.area.to_numpy()[full]) == pytest.approx((400 / c2_small.mpp) ** 2, rel=0.1)
        bins = gpd.GeoDataFrame(geometry=sdata.shapes["HD_square_200um"].geometry.centroid)
        inside = gpd.sjoin(bins, gpd.GeoDataFrame(geometry=squares.geometry), predicate="within")
        assert inside.groupby("index_right").size().loc[adata.obs_names].tolist() == adata.obs["n_bins"].tolist()
    with pytest.raises(InputError, match="50 um is not a multiple of a bin size"):
        read_dataset(tmp_path / "hd.zarr", bin_um=50)


@needs_extra
def test_store_without_full_resolution_image_uses_the_finest_there_is(c2_small, tmp_path, caplog):
    """Space Ranger's hires PNG (1/4 scale here) placed by its transformation: spots and pixel size follow it."""
    sdata = spaceranger_store(c2_small, tmp_path, "V1")
    del sdata.images["V1_full_image"]
    sdata.write(tmp_path / "hires.zarr")
    adata = read_dataset(tmp_path / "hires.zarr")["V1"]
    assert image_path(adata).endswith("V1_hires_image")
    np.testing.assert_allclose(adata.obsm["spatial"], c2_small.xy * 0.25)
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp * 4)
    assert "4.0x coarser" in caplog.text


@needs_extra
@pytest.mark.parametrize("one_table", [False, True], ids=["a table per sample", "one table"])
def test_several_samples_in_one_store_are_several_sections(c2_small, tmp_path, one_table):
    import spatialdata as sd

    both = sd.concatenate([spaceranger_store(c2_small, tmp_path, "A"), spaceranger_store(c2_small, tmp_path, "B")],
                          concatenate_tables=one_table)
    assert len(both.tables) == (1 if one_table else 2)
    both.write(tmp_path / "two.zarr")
    data = read_dataset(tmp_path / "two.zarr")
    assert sorted(data) == ["A", "B"]
    assert not set(data["A"].obs_names) & set(data["B"].obs_names)  # the same barcodes, told apart by section
    for name, adata in data.items():
        assert adata.n_obs == c2_small.counts.shape[0] and adata.obs["section"].eq(name).all()
        assert image_path(adata).endswith(f"{name}_full_image")
    assert list(read_dataset(tmp_path / "two.zarr", ["B"])) == ["B"]
    with pytest.raises(InputError, match="unknown section"):
        read_dataset(tmp_path / "two.zarr", ["C"])


@needs_extra
def test_round_trip_same_values_and_positions(written_store):
    import spatialdata as sd
    from spatialdata.transformations import Identity, get_transformation

    path, annotated, pred, superpixels, grid = written_store
    back = read_dataset(path)["S1"]
    np.testing.assert_array_equal(back.X.toarray(), annotated.X.toarray())
    assert list(back.obs_names) == list(annotated.obs_names) and list(back.var_names) == list(annotated.var_names)
    np.testing.assert_allclose(back.obsm["spatial"], annotated.obsm["spatial"])
    assert microns_per_pixel(back) == pytest.approx(microns_per_pixel(annotated))
    assert spot_diameter_fullres(back) == pytest.approx(spot_diameter_fullres(annotated))
    np.testing.assert_allclose(back.obs["tumor_probability"], annotated.obs["tumor_probability"])
    assert list(back.obs["spatial_domain"].astype(str)) == list(annotated.obs["spatial_domain"].astype(str))

    sdata = sd.read_zarr(path)
    assert set(sdata.coordinate_systems) == {"S1"}
    for element in [*sdata.images.values(), *sdata.shapes.values()]:
        assert isinstance(get_transformation(element, "S1"), Identity)
    np.testing.assert_allclose(sdata.tables["S1_expression"].X, pred.X)
    spots = sdata.shapes["S1_spots"]
    np.testing.assert_allclose(np.stack([spots.geometry.x, spots.geometry.y], 1), annotated.obsm["spatial"])
    np.testing.assert_allclose(spots["radius"], spot_diameter_fullres(annotated) / 2)
    squares = sdata.shapes["S1_superpixels"].geometry
    side = 100 / microns_per_pixel(annotated)
    np.testing.assert_allclose(np.stack([squares.centroid.x, squares.centroid.y], 1), superpixels.obsm["spatial"])
    np.testing.assert_allclose(squares.area, side**2)
    np.testing.assert_allclose(sdata.tables["S1_superpixels_table"].X, superpixels.X)
    np.testing.assert_allclose(sdata.tables["S1_tumor_grid_table"].obs["tumor_probability"],
                               grid.obs["tumor_probability"])
    assert sdata.shapes["S1_tumor_grid"].geometry.area.iloc[0] == pytest.approx((400 / microns_per_pixel(annotated))**2)
    # the H&E: pixel for pixel the source at full resolution, then halved levels
    with open_slide(image_path(back)) as zs, open_slide(image_path(annotated)) as src:
        np.testing.assert_array_equal(zs.read_level_region(0, 0, 0, zs.width, zs.height),
                                      src.read_level_region(0, 0, 0, src.width, src.height))
        assert zs.level_downsamples[:3] == pytest.approx([1, 2, 4], rel=0.01)


@needs_extra
def test_section_without_an_image_comes_back_without_one(manifest_section, her2st_root, tmp_path):
    """Sections clustered on their counts alone (B1 has no H&E) are written and read back as such; a store that
    lost a section's image is still an error (test_bad_store_is_one_line_error_exit_2)."""
    from spafoundation.io.spatialdata_write import write_spatialdata

    b1 = read_dataset(her2st_root, sections=["B1"])["B1"]
    assert not image_path(b1)
    write_spatialdata(tmp_path / "mixed.zarr", {"S1": manifest_section, "B1": b1}, chunk_px=512)
    back = read_dataset(tmp_path / "mixed.zarr")
    assert set(back) == {"S1", "B1"} and image_path(back["S1"]) and not image_path(back["B1"])
    np.testing.assert_array_equal(back["B1"].X.toarray(), b1.X.toarray())
    np.testing.assert_allclose(back["B1"].obsm["spatial"], b1.obsm["spatial"])
    assert microns_per_pixel(back["B1"]) == pytest.approx(microns_per_pixel(b1))
    assert spot_diameter_fullres(back["B1"]) == pytest.approx(spot_diameter_fullres(b1))


@needs_extra
def test_image_is_written_chunk_by_chunk(manifest_section, tmp_path, monkeypatch):
    from spafoundation.io.spatialdata_write import write_spatialdata

    reads = []
    original = Slide.read_level_region

    def recorded(self, level, x, y, w, h):
        reads.append((level, w, h))
        return original(self, level, x, y, w, h)

    monkeypatch.setattr(Slide, "read_level_region", recorded)
    write_spatialdata(tmp_path / "s.zarr", {"S1": manifest_section}, chunk_px=256)
    width, height = manifest_section.uns["spatial"]["S1"]["metadata"]["image_size"]
    assert reads and max(w * h for _, w, h in reads) <= 256 * 256
    assert sum(w * h for _, w, h in reads) >= width * height  # every pixel was read, a chunk at a time


@needs_extra
def test_spatialdata_plot_draws_prediction_over_the_he(written_store, tmp_path):
    """Predicted expression of the spots over the H&E, rendered by spatialdata-plot to PNG; in the PNG, spot
    centres take their value's colour and the tissue between spots keeps the H&E's colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)
    from matplotlib.colors import Normalize
    from PIL import Image
    from scipy.spatial import cKDTree

    path, annotated, pred, _, _ = written_store
    gene = pred.var_names[0]
    values = pred[:, gene].X.ravel()
    norm, cmap = Normalize(float(values.min()), float(values.max())), plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    sdata = sd.read_zarr(path)
    (sdata.pl.render_images("S1_he").pl.render_shapes("S1_spots", color=gene, table_name="S1_expression",
                                                       cmap=cmap, norm=norm, fill_alpha=1.0)
     .pl.show(coordinate_systems="S1", ax=ax, colorbar=False))
    png = tmp_path / "prediction.png"
    fig.savefig(png, dpi=100)
    to_png = ax.transData.transform
    png_height = fig.get_size_inches()[1] * 100
    plt.close(fig)
    picture = np.asarray(Image.open(png).convert("RGB")).astype(float)

    def colours_at(xy):
        disp = to_png(xy)
        cols, rows = np.round(disp[:, 0]).astype(int), np.round(png_height - disp[:, 1]).astype(int)
        return picture[rows, cols]

    xy = np.asarray(annotated.obsm["spatial"])
    expected = cmap(norm(values))[:, :3] * 255
    err = np.linalg.norm(colours_at(xy) - expected, axis=1)
    shuffled = np.linalg.norm(colours_at(xy) - expected[np.random.default_rng(0).permutation(len(xy))], axis=1)
    assert np.median(err) < 30 and np.median(err) < np.median(shuffled) / 2, (np.median(err), np.median(shuffled))

    with open_slide(image_path(annotated)) as slide:
        he = slide.read_level_region(0, 0, 0, slide.width, slide.height).astype(float)
    from spafoundation.io.patches import tissue_mask

    rows, cols = np.nonzero(tissue_mask(he.astype(np.uint8)))
    between = np.stack([cols, rows], axis=1)[::97].astype(float)
    far = cKDTree(xy).query(between)[0] > spot_diameter_fullres(annotated)
    between = between[far]
    assert len(between) > 50
    shown = colours_at(between)
    source = he[between[:, 1].astype(int), between[:, 0].astype(int)]
    # tissue, not glass or a flat fill: stained pixels, about as the H&E has them
    assert np.median(np.linalg.norm(shown - source, axis=1)) < 45
    assert np.median(shown.max(axis=1) - shown.min(axis=1)) > 20


def _store_without(c2_small, tmp_path, what: str):
    from spatialdata.transformations import Identity, set_transformation

    sdata = spaceranger_store(c2_small, tmp_path, "V1")
    if what == "images":
        for name in list(sdata.images):
            del sdata.images[name]
    elif what == "transformation":
        for image in sdata.images.values():
            set_transformation(image, {"elsewhere": Identity()}, set_all=True)
    elif what == "table rows":
        table = sdata.tables["table"]
        sdata.tables["table"] = table[3:].copy()
    path = tmp_path / f"bad_{what.replace(' ', '_')}.zarr"
    sdata.write(path)
    return path


@needs_extra
@pytest.mark.parametrize(("what", "field", "message"), [
    ("images", "images", "no image element"),
    ("transformation", "shapes/V1", "no transformation to an image"),
    ("table rows", "shapes/V1", "3 spots have no row in tables/table"),
])
def test_bad_store_is_one_line_error_exit_2(c2_small, tmp_path, capsys, what, field, message):
    path = _store_without(c2_small, tmp_path, what)
    with pytest.raises(InputError) as e:
        read_dataset(path)
    assert e.value.field == field and message in e.value.message and e.value.path == str(path)
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_extra_is_a_clear_error(manifest, manifest_section, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # import spatialdata now raises ImportError
    from spafoundation.io.spatialdata_write import write_spatialdata

    with pytest.raises(InputError, match=r"pip install 'spafoundation\[spatialdata\]'"):
        write_spatialdata(tmp_path / "x.zarr", {"S1": manifest_section})
    capsys.readouterr()
    out = tmp_path / "clusters"
    assert main(["cluster", str(manifest), "--features", "expression", "--out", str(out), "--format",
                 "spatialdata"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spafoundation[spatialdata]" in err[0] and not out.exists()
    # a store given as data is recognised without the extra, and says what it needs
    store = tmp_path / "given.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": '
                                     '{"spatialdata_attrs": {"version": "0.2"}}}')
    assert detect_format(store) == "spatialdata"
    assert main(["info", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(store) in err[0] and "spafoundation[spatialdata]" in err[0], err


@needs_extra
def test_cluster_reads_a_store_and_writes_one(c2_small, tmp_path, capsys):
    """A command on a spatialdata-io store, --format spatialdata: domains in the spots table of DIR/clusters.zarr,
    which reads back as the same dataset."""
    store = tmp_path / "V1.zarr"
    spaceranger_store(c2_small, tmp_path, "V1").write(store)
    out = tmp_path / "clusters"
    assert main(["cluster", str(store), "--features", "expression", "--genes", "hvg:50", "--n-clusters", "3",
                 "--no-figure", "--out", str(out), "--format", "spatialdata"]) == 0
    assert not (out / "spots.h5ad").exists()
    back = read_dataset(out / "clusters.zarr")["V1"]
    np.testing.assert_array_equal(back.X.toarray(), c2_small.counts.toarray())
    np.testing.assert_allclose(back.obsm["spatial"], c2_small.xy)
    assert back.obs["spatial_domain"].nunique() == 3


def as_section(adata: ad.AnnData, name: str) -> ad.AnnData:
    """``adata`` (one section) renamed ``name``: obs['section'] and its uns['spatial'] library."""
    out = adata.copy()
    out.obs["section"] = name
    out.obs_names = [f"{name}_{i}" for i in range(out.n_obs)]
    out.uns["spatial"] = {name: next(iter(adata.uns["spatial"].values()))}
    return out


def labelled(section: ad.AnnData) -> ad.AnnData:
    """A copy with obs['label']: tumour where the spot has more counts than the median (labels to learn from)."""
    out = section.copy()
    total = np.asarray(out.X.sum(axis=1)).ravel()
    out.obs["label"] = np.where(total > np.median(total), "tumour", "stroma")
    return out


@needs_extra
@pytest.mark.slow
def test_commands_write_their_results_as_a_store(manifest_section, tiny_folder, tmp_path, capsys):
    """predict-expression, tumor and superres with --format spatialdata, on spafoundation's own store."""
    import spatialdata as sd

    from spafoundation.io.spatialdata_write import write_spatialdata

    store = tmp_path / "in.zarr"
    write_spatialdata(store, {"S1": labelled(manifest_section)})
    enc = ["--encoder", str(tiny_folder)]
    assert main(["fit-expression", str(store), "--genes", "hvg:4", "--out", str(tmp_path / "model"), *enc]) == 0
    pred = tmp_path / "pred.zarr"
    assert main(["predict-expression", str(tmp_path / "model"), str(store), "--out", str(pred), "--no-figure",
                 "--format", "spatialdata"]) == 0
    table = sd.read_zarr(pred).tables["S1_expression"]
    assert table.n_vars == 4 and np.isfinite(table.X).all() and table.X.std() > 0
    assert main(["predict-expression", str(tmp_path / "model"), str(store), "--out", str(tmp_path / "p.h5ad"),
                 "--format", "spatialdata"]) == 2  # a store is a .zarr

    assert main(["tumor", str(store), "--label-column", "label", "--grid-um", "600", "--no-figure", "--out",
                 str(tmp_path / "tumor"), "--format", "spatialdata", *enc]) == 0
    assert not (tmp_path / "tumor" / "spots.h5ad").exists()
    spots = read_dataset(tmp_path / "tumor" / "tumor.zarr")["S1"]
    assert spots.obs["tumor_probability"].between(0, 1).all() and (spots.obs["label"] == "tumour").any()
    assert sd.read_zarr(tmp_path / "tumor" / "tumor.zarr").tables["S1_tumor_grid_table"].n_obs > 0

    assert main(["superres", str(store), "--genes", "hvg:3", "--no-figure", "--out", str(tmp_path / "superres"),
                 "--format", "spatialdata", *enc]) == 0
    sdata = sd.read_zarr(tmp_path / "superres" / "superres.zarr")
    assert sdata.tables["S1_superpixels_table"].n_vars == 3
    assert len(sdata.shapes["S1_superpixels"]) == sdata.tables["S1_superpixels_table"].n_obs > manifest_section.n_obs
    assert (tmp_path / "superres" / "S1_maps.npz").exists() and not (tmp_path / "superres" / "S1.h5ad").exists()


@needs_extra
@pytest.mark.slow
def test_run_on_a_store_writes_every_result_into_one(manifest_section, tiny_folder, tmp_path):
    """`run --format spatialdata` on a two-section store spafoundation wrote (every step reads it): expression
    fitted on S1 and predicted on S2, superpixels, tumour probability from labels, domains, both grids, gathered
    in DIR/spafoundation.zarr."""
    from spafoundation.io.spatialdata_write import write_spatialdata

    section = labelled(manifest_section)
    store = tmp_path / "in.zarr"
    write_spatialdata(store, {"S1": as_section(section, "S1"), "S2": as_section(section, "S2")})
    out = tmp_path / "run"
    assert main(["run", "--data", str(store), "--out", str(out), "--quiet", "--set", f"encoder={tiny_folder}",
                 "--set", "expression.genes=hvg:6", "--set", "superres.genes=hvg:4", "--set", "tumor.grid_um=600",
                 "--set", "tumor.label_column=label", "--set", "clusters.n_clusters=3", "--set",
                 "clusters.grid_um=600", "--set", "report.enabled=false", "--format", "spatialdata"]) == 0
    import spatialdata as sd

    result = out / "spafoundation.zarr"
    back = read_dataset(result)
    assert sorted(back) == ["S1", "S2"]
    for adata in back.values():
        np.testing.assert_array_equal(adata.X.toarray(), manifest_section.X.toarray())
        np.testing.assert_allclose(adata.obsm["spatial"], manifest_section.obsm["spatial"])
        assert adata.obs["tumor_probability"].between(0, 1).all()
        assert adata.obs["spatial_domain"].notna().all()
    sdata = sd.read_zarr(result)
    predicted = ad.read_h5ad(out / "expression" / "predicted.h5ad")
    np.testing.assert_allclose(sdata.tables["S2_expression"].X, predicted[back["S2"].obs_names].X)
    assert "S1_expression" not in sdata.tables  # S1 trained the model: measured, not predicted
    for name in ("S1", "S2"):
        superpixels = ad.read_h5ad(out / "superres" / f"{name}.h5ad")
        np.testing.assert_allclose(sdata.tables[f"{name}_superpixels_table"].X, superpixels.X)
        assert len(sdata.shapes[f"{name}_superpixels"]) == superpixels.n_obs
        for grid in ("tumor_grid", "domain_grid"):
            assert len(sdata.shapes[f"{name}_{grid}"]) == sdata.tables[f"{name}_{grid}_table"].n_obs > 0
    assert sdata.tables["S1_tumor_grid_table"].obs["tumor_probability"].between(0, 1).all()


@needs_extra
def test_a_spatialdata_object_is_read_through_its_store(c2_small, tmp_path):
    """sf.read(sdata): an object read from (or written to) a store reads as that store; one held only in memory,
    or with elements its store lacks, is an error saying to write it first; sf.tl says to sf.read it."""
    import spatialdata as sd

    import spafoundation as sf

    sdata = spaceranger_store(c2_small, tmp_path, "V1")
    with pytest.raises(InputError, match=r"held only in memory: write it to a store first"):
        sf.read(sdata)
    with pytest.raises(TypeError, match=r"sf.read\(sdata\)"):
        sf.tl.embed(sdata)
    sdata.write(tmp_path / "V1.zarr")
    back = sd.read_zarr(tmp_path / "V1.zarr")
    data = sf.read(back)
    assert list(data) == ["V1"] and image_path(data["V1"]) == str(tmp_path / "V1.zarr" / "images" / "V1_full_image")
    np.testing.assert_array_equal(data["V1"].X.toarray(), c2_small.counts.toarray())
    back.images["extra"] = back.images["V1_full_image"]
    with pytest.raises(InputError, match=r"1 element\(s\) of the SpatialData object are not in its store: images/extra"):
        sf.read(back)


@needs_extra
def test_results_go_back_onto_the_spots_of_the_spatialdata_object(c2_small, tmp_path):
    """sf.io.add_to_spatialdata: predictions become a table on the store's own shapes, spot annotations columns of
    the table the counts came from, each on the right shape although the table's rows are not in the shapes' order;
    written, the store still reads as the same dataset."""
    import spatialdata as sd

    import spafoundation as sf

    sdata = spaceranger_store(c2_small, tmp_path, "V1")
    table = sdata.tables["table"]
    sdata.tables["table"] = table[np.random.default_rng(0).permutation(table.n_obs)].copy()
    sdata.write(tmp_path / "V1.zarr")
    sdata = sd.read_zarr(tmp_path / "V1.zarr")
    section = sf.read(sdata)["V1"]
    genes = list(section.var_names[:3])
    pred = ad.AnnData(section[:, genes].X.toarray().astype(np.float32) * 2, obs=section.obs.copy(),
                      var=pd.DataFrame(index=genes), uns={"spatial": dict(section.uns["spatial"])})
    section.obs["tumor_probability"] = np.linspace(0, 1, section.n_obs)
    section.obs["spatial_domain"] = pd.Categorical(np.where(np.arange(section.n_obs) % 3, "a", "b"))
    assert sf.io.add_to_spatialdata(sdata, expression={"V1": pred}, spots=section) == ["V1_expression", "table"]
    counts = sd.get_values(value_key=genes, sdata=sdata, element_name="V1", table_name="table")
    predicted = sd.get_values(value_key=genes, sdata=sdata, element_name="V1", table_name="V1_expression")
    np.testing.assert_array_equal(predicted.loc[counts.index].to_numpy(), 2 * counts.to_numpy())
    shape_of = pd.Series(np.asarray(section.obs["tumor_probability"]), index=section.obs["spatialdata_instance"])
    annotated = sd.get_values(value_key="tumor_probability", sdata=sdata, element_name="V1", table_name="table")
    np.testing.assert_array_equal(annotated["tumor_probability"].to_numpy(), shape_of.loc[annotated.index].to_numpy())
    with pytest.raises(InputError, match="overwrite=True"):
        sf.io.add_to_spatialdata(sdata, expression=pred)
    sdata.write_element("V1_expression")
    again = sf.read(sd.read_zarr(tmp_path / "V1.zarr"))["V1"]
    np.testing.assert_array_equal(again.X.toarray(), section.X.toarray())
    # results of sections not read from this object have no shapes to go on
    other = read_dataset(write_manifest(tmp_path / "m", c2_small))["S1"]
    other.obs["tumor_probability"] = 0.5
    with pytest.raises(InputError, match="not read from a SpatialData store"):
        sf.io.add_to_spatialdata(sdata, spots=other)
