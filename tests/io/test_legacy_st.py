import numpy as np
import pytest
import scipy.sparse as sp

from spafoundation.io import extract_patches, read_dataset, tissue_fraction
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spot_diameter_fullres

README_SPOTS = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}


def test_imaged_sections_spot_counts_and_inside(her2st_imaged):
    for section, adata in her2st_imaged.items():
        assert adata.n_obs == README_SPOTS[section]
        assert sp.issparse(adata.X) and np.issubdtype(adata.X.dtype, np.integer)
        w, h = adata.uns["spatial"][section]["metadata"]["image_size"]
        xy = adata.obsm["spatial"]
        assert (xy[:, 0] >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] < h).all()
        assert image_path(adata)
        # ~0.69 um/px from the 200 um pitch, per HEST-1k's metadata for these images
        assert 0.65 < microns_per_pixel(adata) < 0.73
        assert 140 < spot_diameter_fullres(adata) < 152


def test_c2_patches_of_100um_on_tissue(her2st_c2):
    patches = extract_patches(her2st_c2, size_um=100, out_px=64)
    assert patches.shape == (187, 64, 64, 3) and patches.dtype == np.uint8
    frac = tissue_fraction(patches)
    assert np.median(frac) > 0.8
    assert (frac > 0.3).mean() > 0.95


def test_all_36_count_matrices_load(her2st_root):
    data = read_dataset(her2st_root, with_images=False)
    assert len(data) == 36
    assert sum(a.n_obs for a in data.values()) == 13620
    assert sum(bool(image_path(a)) for a in data.values()) == 5
    assert {a.obs["section"].iloc[0] for a in data.values()} == set(data)


@pytest.mark.parametrize(("section", "expected"), [("A1", 346), ("B1", 295), ("D1", 306)])
def test_pathologist_labels_attached(her2st_root, section, expected):
    adata = read_dataset(her2st_root, [section], with_images=False)[section]
    assert adata.obs["label"].notna().sum() == expected


def test_cluster_annotations(her2st_c2):
    ann = her2st_c2.obs["cluster_annotation"]
    assert ann.notna().mean() > 0.95
    assert ann.str.startswith("cancer").mean() == pytest.approx(0.45, abs=0.1)
