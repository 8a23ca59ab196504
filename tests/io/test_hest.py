import numpy as np
import pytest

from spafoundation.errors import InputError
from spafoundation.io import detect_format, read_dataset
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spatial_meta, spot_diameter_fullres
from tests.io.layouts import write_hest


def test_hest_round_trip(c2_small, tmp_path):
    root = write_hest(tmp_path / "hest", c2_small, "SPA1")
    assert detect_format(root) == "hest"
    adata = read_dataset(root)["SPA1"]
    np.testing.assert_array_equal(adata.X.toarray(), c2_small.counts.toarray())
    assert list(adata.var_names) == c2_small.genes
    np.testing.assert_allclose(adata.obsm["spatial"], c2_small.xy)
    assert list(adata.obs_names) == [f"SPA1_{i}" for i in c2_small.ids]
    # the estimated pixel size wins over the embedded one (set 10% off in the fixture)
    assert microns_per_pixel(adata) == pytest.approx(c2_small.mpp)
    meta = spatial_meta(adata)["metadata"]
    assert meta["mpp_source"] == "HEST metadata pixel_size_um_estimated"
    assert meta["platform"] == "hest:spatial transcriptomics"
    assert spot_diameter_fullres(adata) == pytest.approx(100.0 / c2_small.mpp)
    assert adata.obs["patient"].iloc[0] == "C"
    assert image_path(adata).endswith("SPA1.tif")
    assert spatial_meta(adata)["images"]["hires"].ndim == 3


def test_hest_embedded_pixel_size_and_section_choice(c2_small, tmp_path):
    root = write_hest(tmp_path / "hest", c2_small, "A", meta={"pixel_size_um_estimated": None})
    write_hest(root, c2_small, "B")
    data = read_dataset(root, ["A"], with_images=False)
    assert list(data) == ["A"]
    assert microns_per_pixel(data["A"]) == pytest.approx(c2_small.mpp * 1.1)
    with pytest.raises(InputError, match="unknown section"):
        read_dataset(root, ["Z"])


def test_hest_without_pixel_size(c2_small, tmp_path):
    root = write_hest(
        tmp_path / "hest",
        c2_small,
        "A",
        meta={"pixel_size_um_estimated": None, "pixel_size_um_embedded": None},
    )
    with pytest.raises(InputError, match="unknown pixel size") as e:
        read_dataset(root)
    assert e.value.path.endswith("A.json")
