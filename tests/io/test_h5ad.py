from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import microns_per_pixel, spatial_meta
from spafoundation.io.downscaled import open_image
from spafoundation.io.slide import open_slide
from spafoundation.utils.atomic import write_h5ad


def test_h5ad_round_trip_of_two_sections(her2st_imaged, tmp_path):
    parts = {s: her2st_imaged[s] for s in ("C2", "C3")}
    merged = ad.concat(parts, uns_merge="unique")
    path = tmp_path / "two.h5ad"
    write_h5ad(merged, path)
    assert detect_format(path) == "h5ad"
    data = read_dataset(path)
    assert sorted(data) == ["C2", "C3"]
    for s, original in parts.items():
        back = data[s]
        assert list(back.var_names) == list(merged.var_names)  # concat keeps the shared genes
        np.testing.assert_array_equal(back.X.toarray(), original[:, back.var_names].X.toarray())
        np.testing.assert_allclose(back.obsm["spatial"], original.obsm["spatial"])
        assert list(back.uns["spatial"]) == [s]
        assert microns_per_pixel(back) == pytest.approx(microns_per_pixel(original))
        assert (
            spatial_meta(back)["metadata"]["image_path"] == spatial_meta(original)["metadata"]["image_path"]
        )


def test_h5ad_from_scanpy_visium_without_mpp(her2st_c2, tmp_path):
    """A scanpy-style file: one library, no obs['section'], Space Ranger metadata and no microns_per_pixel."""
    a = her2st_c2[:20, :50].copy()
    del a.obs["section"]
    a.uns["spatial"] = {
        "lib1": {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.1},
            "metadata": {"software_version": "spaceranger-2.0.0"},
        }
    }
    a.write_h5ad(tmp_path / "sc.h5ad")
    back = read_dataset(tmp_path / "sc.h5ad")["lib1"]
    assert microns_per_pixel(back) == pytest.approx(55.0 / 110.0)
    assert (back.obs["section"] == "lib1").all()


def test_h5ad_without_spatial(her2st_c2, tmp_path):
    a = her2st_c2[:5, :5].copy()
    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(InputError, match="obsm") as e:
        read_dataset(tmp_path / "nospatial.h5ad")
    assert e.value.path.endswith("nospatial.h5ad")


def test_h5ad_unknown_pixel_size(her2st_c2, tmp_path):
    a = her2st_c2[:5, :5].copy()
    del a.obs["section"]
    a.uns["spatial"] = {"x": {"images": {}, "scalefactors": {}, "metadata": {}}}
    a.write_h5ad(tmp_path / "nompp.h5ad")
    with pytest.raises(InputError, match="unknown pixel size"):
        read_dataset(tmp_path / "nompp.h5ad")


def test_h5ad_round_trip_of_expression_only_section(her2st_root, tmp_path):
    b1 = read_dataset(her2st_root, ["B1"], with_images=False)["B1"]  # no image: empty image_size, no hires
    write_h5ad(b1, tmp_path / "b1.h5ad")
    back = read_dataset(tmp_path / "b1.h5ad")["B1"]
    assert back.n_obs == b1.n_obs and back.obs["label"].notna().sum() == 295
    assert spatial_meta(back)["metadata"]["image_path"] == ""


@pytest.mark.parametrize("keep", ["layers", "raw", "nothing"])
def test_h5ad_processed_by_scanpy_reads_its_raw_counts(her2st_c2, tmp_path, keep, caplog):
    """X normalised and log-transformed (sc.pp.normalize_total + sc.pp.log1p); the counts kept in
    layers['counts'] or .raw are what the reader returns, else X is kept with a warning."""
    import scipy.sparse as sp

    a = her2st_c2[:30, :40].copy()
    counts = sp.csr_matrix(a.X).astype(np.float32)
    if keep == "raw":
        a.raw = a.copy()
    lib = np.maximum(np.asarray(counts.sum(1)), 1)
    a.X = sp.csr_matrix(np.log1p(counts.toarray() / lib * 1e4))
    if keep == "layers":
        a.layers["counts"] = counts
    a.write_h5ad(tmp_path / "processed.h5ad")
    back = read_dataset(tmp_path / "processed.h5ad")["C2"]
    if keep == "nothing":
        assert not np.allclose(back.X.toarray(), counts.toarray())
        assert "non-integer" in caplog.text and "processed.h5ad" in caplog.text
    else:
        np.testing.assert_array_equal(back.X.toarray(), counts.toarray())
        assert list(back.var_names) == list(a.var_names) and back.X.dtype == np.int32


def scanpy_visium_h5ad(c2_small, path, hires=None, scalef=0.01, **metadata):
    """What scanpy's read_visium(source_image_path=...) writes: one library, Space Ranger metadata, its hires
    thumbnail (``hires`` at ``scalef``; default an 8 x 8 one that covers none of the spots), the image's path in
    metadata['source_image_path'], no microns_per_pixel."""
    a = ad.AnnData(c2_small.counts.astype(np.float32))
    a.obsm["spatial"] = c2_small.xy
    a.uns["spatial"] = {"lib1": {
        "images": {"hires": np.zeros((8, 8, 3), np.uint8) if hires is None else hires},
        "scalefactors": {"spot_diameter_fullres": 55.0 / c2_small.mpp, "tissue_hires_scalef": scalef},
        "metadata": {"software_version": "spaceranger-2.0.0", **metadata}}}
    a.write_h5ad(path)
    return path


def test_h5ad_from_scanpy_takes_its_source_image_path(c2_small, tmp_path, caplog):
    path = scanpy_visium_h5ad(c2_small, tmp_path / "sc.h5ad", source_image_path=str(c2_small.tiff))
    back = read_dataset(path)["lib1"]
    meta = spatial_meta(back)
    assert meta["metadata"]["image_path"] == str(c2_small.tiff.resolve())
    assert meta["metadata"]["image_size"] == [c2_small.rgb.shape[1], c2_small.rgb.shape[0]]
    # scanpy's own thumbnail stays the one plotted
    assert meta["images"]["hires"].shape == (8, 8, 3) and meta["scalefactors"]["tissue_hires_scalef"] == 0.01
    # moved from another machine: no image, a warning saying how to give it
    path = scanpy_visium_h5ad(c2_small, tmp_path / "moved.h5ad", source_image_path="/elsewhere/image.tif")
    back = read_dataset(path)["lib1"]
    assert spatial_meta(back)["metadata"]["image_path"] == ""
    assert "/elsewhere/image.tif not found" in caplog.text and "--image" in caplog.text


def hires_of(c2_small, scalef: float) -> np.ndarray:
    """The H&E at ``scalef`` as scanpy holds its hires image (matplotlib's imread of a PNG: float32, 0-1)."""
    h, w = c2_small.rgb.shape[:2]
    small = Image.fromarray(c2_small.rgb).resize((round(w * scalef), round(h * scalef)), Image.BILINEAR)
    return (np.asarray(small) / 255.0).astype(np.float32)


def test_h5ad_from_scanpy_with_only_its_hires_image_reads_that_image(c2_small, tmp_path, caplog):
    """sc.read_visium without source_image_path keeps only the hires array: it becomes the section's image, read at
    its tissue_hires_scalef as a downscaled copy, so patches cover the same tissue as on the full-resolution H&E."""
    scalef = 0.25
    path = scanpy_visium_h5ad(c2_small, tmp_path / "sc.h5ad", hires=hires_of(c2_small, scalef), scalef=scalef)
    back = read_dataset(path)["lib1"]
    meta = spatial_meta(back)["metadata"]
    assert meta["image_source"] == "uns['spatial']['lib1']['images']['hires']" and meta["image_scale"] == scalef
    assert Path(meta["image_path"]).parent.name == "uns_images" and "4.0x smaller" in caplog.text
    xy = c2_small.xy[:: len(c2_small.xy) // 12]
    with open_image(meta["image_path"], mpp=c2_small.mpp, scale=scalef) as copy, open_slide(c2_small.tiff) as full:
        ours = np.stack([copy.read_region(p, 150, 16, mpp=c2_small.mpp).mean((0, 1)) for p in xy])
        truth = np.stack([full.read_region(p, 150, 16, mpp=c2_small.mpp).mean((0, 1)) for p in xy])
    assert np.abs(ours - truth).max() < 8  # the same tissue under each spot, in 0-255 units
    # the same array is the same file: embeddings cached from it are found again
    assert spatial_meta(read_dataset(path)["lib1"])["metadata"]["image_path"] == meta["image_path"]


def test_h5ad_image_array_that_misses_the_spots_leaves_the_counts_usable(c2_small, tmp_path, caplog):
    back = read_dataset(scanpy_visium_h5ad(c2_small, tmp_path / "sc.h5ad"))["lib1"]
    assert spatial_meta(back)["metadata"]["image_path"] == "" and back.n_obs == len(c2_small.xy)
    assert "images']['hires'] does not fit the spots" in caplog.text


def test_h5ad_image_given_for_one_library(c2_small, her2st_imaged, tmp_path):
    path = scanpy_visium_h5ad(c2_small, tmp_path / "sc.h5ad")
    assert spatial_meta(read_dataset(path)["lib1"])["metadata"]["image_path"] == ""
    back = read_dataset(path, image=c2_small.tiff)["lib1"]
    assert spatial_meta(back)["metadata"]["image_path"] == str(c2_small.tiff.resolve())
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tiny)
    with pytest.raises(InputError, match=r"obsm\['spatial'\]"):  # the spots do not lie on this image
        read_dataset(path, image=tiny)
    merged = ad.concat({s: her2st_imaged[s] for s in ("C2", "C3")}, uns_merge="unique")
    write_h5ad(merged, tmp_path / "two.h5ad")
    with pytest.raises(InputError, match="image of one section; this file has 2"):
        read_dataset(tmp_path / "two.h5ad", image=c2_small.tiff)
