import numpy as np
import pytest
import scipy.sparse as sp

from spafoundation.io import extract_patches, read_dataset, tissue_fraction
from spafoundation.io.anndata_spec import image_path, microns_per_pixel, spot_diameter_fullres
from spafoundation.io.readers import imageless_sections

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


@pytest.mark.slow
def test_all_36_count_matrices_load(her2st_root):
    data = read_dataset(her2st_root, with_images=False)
    assert len(data) == 36
    assert sum(a.n_obs for a in data.values()) == 13620
    assert {n for n, a in data.items() if image_path(a)} == {"C2", "C3", "C4", "C5", "C6", "A1"}
    assert {a.obs["section"].iloc[0] for a in data.values()} == set(data)


@pytest.mark.parametrize(("section", "expected"), [("A1", 346), ("B1", 295), ("D1", 306)])
def test_pathologist_labels_attached(her2st_root, section, expected):
    adata = read_dataset(her2st_root, [section], with_images=False)[section]
    assert adata.obs["label"].notna().sum() == expected


def test_cluster_annotations(her2st_c2):
    ann = her2st_c2.obs["cluster_annotation"]
    assert ann.notna().mean() > 0.95
    assert ann.str.startswith("cancer").mean() == pytest.approx(0.45, abs=0.1)


def _st_pipeline_folder(root, folder, names):
    """HER2ST sections written as a GEO series of ST Pipeline files ships them (GSE144240's naming): a GSM prefix,
    <S>_stdata.tsv.gz, spot_data-selection-<S>.tsv, <S>.jpg."""
    from spafoundation.io.legacy_st import find_image

    folder.mkdir()
    for i, (section, name) in enumerate(names.items()):
        gsm = f"GSM42843{i:02d}_"
        (folder / f"{gsm}{name}_stdata.tsv.gz").symlink_to(root / "ST-cnts" / f"{section}.tsv.gz")
        (folder / f"{gsm}spot_data-selection-{name}.tsv").symlink_to(root / "ST-spotfiles" / f"{section}_selection.tsv")
        image = find_image(root, section)
        if image is not None:
            (folder / f"{gsm}{name}{image.suffix}").symlink_to(image)
    return folder


def test_st_pipeline_folder_reads_as_the_her2st_layout(her2st_root, her2st_imaged, tmp_path):
    from spafoundation.io import detect_format

    folder = _st_pipeline_folder(her2st_root, tmp_path / "GSE1", {"C2": "P2_ST_rep1", "B1": "P9_ST_rep1"})
    assert detect_format(folder) == "st_pipeline"
    data = read_dataset(folder, with_images=False)
    assert sorted(data) == ["P2_ST_rep1", "P9_ST_rep1"]
    flat, ref = data["P2_ST_rep1"], her2st_imaged["C2"]
    np.testing.assert_array_equal(flat.X.toarray(), ref.X.toarray())
    np.testing.assert_array_equal(flat.obsm["spatial"], ref.obsm["spatial"])
    assert (flat.obs[["array_row", "array_col"]].to_numpy() == ref.obs[["array_row", "array_col"]].to_numpy()).all()
    assert list(flat.var_names) == list(ref.var_names) and microns_per_pixel(flat) == microns_per_pixel(ref)
    assert image_path(flat).endswith("P2_ST_rep1.jpg") and (flat.obs["patient"] == "P2").all()
    assert image_path(data["P9_ST_rep1"]) is None  # B1 has no image: counts only
    assert list(read_dataset(folder, ["P9_ST_rep1"], with_images=False)) == ["P9_ST_rep1"]


def test_st_pipeline_count_file_without_its_selection_names_it(her2st_root, tmp_path):
    from spafoundation.errors import InputError

    folder = _st_pipeline_folder(her2st_root, tmp_path / "GSE2", {"C3": "P3_ST_rep1", "C4": "P4_ST_rep1"})
    next(folder.glob("*spot_data-selection-P4*")).unlink()
    with pytest.raises(InputError, match="no spot_data-selection file for section P4_ST_rep1") as e:
        read_dataset(folder, with_images=False)
    assert e.value.path.endswith("P4_ST_rep1_stdata.tsv.gz")


def test_imaged_only_leaves_imageless_sections_out_unread(her2st_root, monkeypatch, caplog):
    from spafoundation.errors import InputError
    from spafoundation.io import legacy_st

    read = []
    real = legacy_st.read_legacy_st_section
    monkeypatch.setattr(legacy_st, "read_legacy_st_section", lambda root, s, **kw: read.append(s) or real(root, s, **kw))
    with caplog.at_level("INFO"):
        data = read_dataset(her2st_root, imaged_only=True, with_images=False)
    assert sorted(data) == sorted(read) == ["A1", "C2", "C3", "C4", "C5", "C6"]  # 30 count tables never opened
    assert "left out 30 section(s) without an H&E image: A2, A3" in caplog.text
    assert list(read_dataset(her2st_root, ["B1", "A1"], imaged_only=True, with_images=False)) == ["A1"]
    read.clear()  # the same 30 named without reading a count table (fit-expression's --reference hint)
    imageless = imageless_sections(her2st_root)
    assert len(imageless) == 30 and "B1" in imageless and not {"A1", "C2"} & set(imageless) and not read
    with pytest.raises(InputError, match="unknown section"):  # a name the data lacks is still an error
        read_dataset(her2st_root, ["Z9"], imaged_only=True)


def test_imaged_only_on_st_pipeline_files_and_an_h5ad(her2st_root, tmp_path, caplog):
    folder = _st_pipeline_folder(her2st_root, tmp_path / "GSE3", {"C2": "P2_ST_rep1", "B1": "P9_ST_rep1"})
    with caplog.at_level("INFO"):
        assert list(read_dataset(folder, imaged_only=True, with_images=False)) == ["P2_ST_rep1"]
    assert "left out 1 section(s) without an H&E image: P9_ST_rep1" in caplog.text
    assert imageless_sections(folder) == ["P9_ST_rep1"]
    # layouts that hold counts and image together are read, then filtered
    b1 = read_dataset(her2st_root, ["B1"], with_images=False)["B1"]
    b1.write_h5ad(tmp_path / "b1.h5ad")
    assert read_dataset(tmp_path / "b1.h5ad", imaged_only=True) == {}
    assert imageless_sections(tmp_path / "b1.h5ad") == []  # only read, it would tell
    assert list(read_dataset(tmp_path / "b1.h5ad")) == ["B1"]


@pytest.mark.parametrize("body", [
    "3\t0\t12\n0\t7\t1",
    "3\t0\t1.5\n0\t7\t1",  # a decimal
    "3\t0\t1e3\n0\t7\t1",  # an exponent
    "3\t-\t12\n0\t7\t1",  # a lone sign
    "3\t2-1\t12\n0\t7\t1",
    "3\t99999999999999999999\t1\n0\t7\t1",  # beyond int64
])
def test_count_table_values_are_read_as_numbers_or_refused(tmp_path, body):
    """Every value as numpy's float parser reads it; what it cannot read is an InputError naming the counts."""
    import io

    from spafoundation.errors import InputError
    from spafoundation.io.legacy_st import read_counts_table

    path = tmp_path / "counts.tsv"
    path.write_text("\tG1\tG2\tG3\n" + "\n".join(f"{i}x1\t{row}" for i, row in enumerate(body.split("\n"))) + "\n")
    try:
        expected = np.loadtxt(io.StringIO(body), delimiter="\t", dtype=np.float64, ndmin=2)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(InputError, match="counts"):
            read_counts_table(path)
    else:
        np.testing.assert_array_equal(read_counts_table(path)[2], expected)


def test_count_table_with_an_empty_field_is_refused_naming_it(tmp_path):
    from spafoundation.errors import InputError
    from spafoundation.io.legacy_st import read_counts_table

    path = tmp_path / "counts.tsv"
    path.write_text("\tG1\tG2\tG3\n1x1\t3\t\t12\n2x1\t0\t7\t1\n")
    with pytest.raises(InputError, match="counts"):
        read_counts_table(path)
