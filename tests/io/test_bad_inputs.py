"""Each kind of bad input is an InputError naming the file and the field, and exit code 2 from the CLI."""

import gzip
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spafoundation.cli import EXIT_BAD_INPUT, main
from spafoundation.errors import InputError
from spafoundation.io import read_dataset
from tests.conftest import HER2ST
from tests.io.layouts import write_manifest, write_visium


def _edit_counts(root, edit):
    path = root / "counts.tsv"
    df = pd.read_csv(path, sep="\t", index_col=0)
    edit(df)
    df.to_csv(path, sep="\t")


def missing_file(root, c):
    return root / "nowhere", "nowhere", "data"


def missing_image(root, c):
    write_manifest(root, c, section={"image": "gone.tif"})
    return root, "gone.tif", "image"


def spot_ids_not_in_counts(root, c):
    write_manifest(root, c)
    _edit_counts(root, lambda df: df.rename(index={df.index[3]: "99x99"}, inplace=True))
    return root, "counts.tsv", "spot id"


def visium_barcodes_without_position(root, c):
    write_visium(root, c)
    with h5py.File(root / "outs" / "filtered_feature_bc_matrix.h5", "a") as f:
        f["matrix/barcodes"][0] = b"GGGG999999-1"
    return root, "tissue_positions.csv", "barcode"


def coordinates_outside_image(root, c):
    write_manifest(root, c)
    spots = pd.read_csv(root / "spots.csv")
    spots.loc[5, "x"] = c.rgb.shape[1] + 10
    spots.to_csv(root / "spots.csv", index=False)
    return root, "spots.csv", "x/y"


def nan_counts(root, c):
    write_manifest(root, c)
    _edit_counts(root, lambda df: df.iloc.__setitem__((0, 0), np.nan))
    return root, "counts.tsv", "counts"


def negative_counts(root, c):
    write_manifest(root, c)
    _edit_counts(root, lambda df: df.iloc.__setitem__((0, 0), -3))
    return root, "counts.tsv", "counts"


def duplicated_barcodes(root, c):
    write_visium(root, c)
    with h5py.File(root / "outs" / "filtered_feature_bc_matrix.h5", "a") as f:
        f["matrix/barcodes"][1] = f["matrix/barcodes"][0]
    return root, "filtered_feature_bc_matrix.h5", "barcode"


def duplicated_spot_ids(root, c):
    write_manifest(root, c)
    spots = pd.read_csv(root / "spots.csv")
    spots.loc[1, "id"] = spots.loc[0, "id"]
    spots.to_csv(root / "spots.csv", index=False)
    return root, "spots.csv", "id"


def truncated_tiff(root, c):
    data = c.tiff.read_bytes()
    root.mkdir(parents=True)
    (root / "cut.tif").write_bytes(data[: len(data) // 2])
    write_manifest(root, c, section={"image": "cut.tif"})
    return root, "cut.tif", "image"


def truncated_jpeg(root, c):
    root.mkdir(parents=True)
    Image.fromarray(c.rgb).save(root / "full.jpg", quality=80)
    data = (root / "full.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    write_manifest(root, c, section={"image": "cut.jpg"})
    return root, "cut.jpg", "image"


def unreadable_image(root, c):
    root.mkdir(parents=True)
    (root / "noise.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    write_manifest(root, c, section={"image": "noise.tif"})
    return root, "noise.tif", "image"


def scanner_file_to_convert(root, c):
    root.mkdir(parents=True)
    (root / "scan.czi").write_bytes(b"ZISRAWFILE" + bytes(64))
    write_manifest(root, c, section={"image": "scan.czi"})
    return root, "scan.czi", "image"


def unknown_pixel_size(root, c):
    write_manifest(root, c, section={"mpp": None})
    return root, "spafoundation.yaml", "mpp"


def manifest_section_without_id(root, c):
    write_manifest(root, c, section={"id": None})
    return root, "spafoundation.yaml", "sections[].id"


def manifest_misspelt_key(root, c):
    write_manifest(root, c, section={"imgae": "C2_small.tif"})  # ignored, it would leave the section imageless
    return root, "spafoundation.yaml", "sections[S1].imgae"


def unsupported_folder(root, c):
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("hello")
    return root, root.name, "data"


def unsupported_file(root, c):
    root.mkdir(parents=True)
    (root / "data.xlsx").write_text("a,b\n1,2\n")
    return root / "data.xlsx", "data.xlsx", "data"


def spots_table_without_image(root, c):
    root.mkdir(parents=True)
    (root / "spots.csv").write_text("id,x,y\ns1,10,10\n")
    return root / "spots.csv", "spots.csv", "image"


def _set_manifest(root, **section):
    import yaml

    path = root / "spafoundation.yaml"
    manifest = yaml.safe_load(path.read_text())
    manifest["sections"][0].update(section)
    path.write_text(yaml.safe_dump(manifest))


def negative_pitch(root, c):
    write_manifest(root, c, section={"mpp": None, "pitch_um": -200})  # was a negative pixel size, 1 px patches
    return root, "spafoundation.yaml", "pitch_um"


def zero_pitch(root, c):
    write_manifest(root, c, section={"mpp": None, "pitch_um": 0})
    return root, "spafoundation.yaml", "pitch_um"


def pitch_not_a_number(root, c):
    write_manifest(root, c, section={"mpp": None, "pitch_um": "two hundred"})
    return root, "spafoundation.yaml", "pitch_um"


def implausible_pixel_size(root, c):
    write_manifest(root, c, section={"mpp": 1e-9})  # each patch would be a read of 1e11 px
    return root, "C2_small.tif", "microns_per_pixel"


def negative_spot_diameter(root, c):
    write_manifest(root, c, section={"spot_diameter_um": -100})
    return root, "spafoundation.yaml", "spot_diameter_um"


def zero_spot_diameter(root, c):
    write_manifest(root, c, section={"spot_diameter_um": 0})  # was taken as 55
    return root, "spafoundation.yaml", "spot_diameter_um"


def spot_diameter_not_a_number(root, c):
    write_manifest(root, c, section={"spot_diameter_um": "wide"})
    return root, "spafoundation.yaml", "spot_diameter_um"


def duplicated_gene_column(root, c):
    write_manifest(root, c)
    path = root / "counts.tsv"
    lines = path.read_text().split("\n")
    header = lines[0].split("\t")
    header[2] = header[1]  # was renamed IGKC.1 by pandas
    path.write_text("\n".join(["\t".join(header), *lines[1:]]))
    return root, "counts.tsv", "gene"


def section_id_with_a_slash(root, c):
    write_manifest(root, c, section={"id": "run1/S1"})  # was written as a file in a folder run1
    return root, "spafoundation.yaml", "section"


def h5ad_microns_per_pixel_text(root, c):
    root.mkdir(parents=True)
    adata = read_dataset(write_manifest(root / "m", c), with_images=False)["S1"]
    adata.uns["spatial"]["S1"]["scalefactors"]["microns_per_pixel"] = "half"
    adata.write_h5ad(root / "data.h5ad")
    return root / "data.h5ad", "data.h5ad", "microns_per_pixel"


def h5ad_duplicated_var_names(root, c):
    root.mkdir(parents=True)
    adata = read_dataset(write_manifest(root / "m", c), with_images=False)["S1"]
    adata.var_names = [adata.var_names[1], *adata.var_names[1:]]
    adata.write_h5ad(root / "data.h5ad")
    return root / "data.h5ad", "data.h5ad", "var_names"


def visium_spot_diameter_text(root, c):
    write_visium(root, c)
    path = root / "outs" / "spatial" / "scalefactors_json.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "spot_diameter_fullres": "wide"}))
    return root, "scalefactors_json.json", "spot_diameter_fullres"


def visium_position_not_a_number(root, c):
    write_visium(root, c)
    path = root / "outs" / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(path)
    pos["pxl_row_in_fullres"] = pos["pxl_row_in_fullres"].astype(object)
    pos.loc[4, "pxl_row_in_fullres"] = "12,5"  # a decimal comma
    pos.to_csv(path, index=False)
    return root, "tissue_positions.csv", "pxl_row_in_fullres"


def visium_in_tissue_not_0_or_1(root, c):
    write_visium(root, c)
    path = root / "outs" / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(path)
    pos.loc[4, "in_tissue"] = 2
    pos.to_csv(path, index=False)
    return root, "tissue_positions.csv", "in_tissue"


def nan_float_tiff(root, c):
    import tifffile

    root.mkdir(parents=True)
    rgb = c.rgb.astype(np.float32) / 255
    rgb[-1, -1] = np.nan  # was black
    tifffile.imwrite(root / "float.tif", rgb, tile=(256, 256), photometric="rgb")
    write_manifest(root, c, section={"image": "float.tif"})
    return root, "float.tif", "image"


def symlink_loop(root, c):
    root.mkdir(parents=True)
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")  # was "not found"
    return root / "loop_a", "loop_a", "data"


def _legacy_c2(root):
    """HER2ST's C2 files (counts, spot selection, cluster annotation) in the legacy ST layout, without the image."""
    for sub in ("ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv", "ST-cluster/lbl/C2-cluster-annotation.tsv.gz",
                "ST-cluster/cluster_label_map.tsv"):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HER2ST / sub, root / sub)
    return root


def _edit_selection(root, edit):
    path = root / "ST-spotfiles" / "C2_selection.tsv"
    df = pd.read_csv(path, sep="\t")
    edit(df)
    df.to_csv(path, sep="\t", index=False)


def legacy_latin1_gene(root, c):
    _legacy_c2(root)
    path = root / "ST-cnts" / "C2.tsv.gz"
    header, rest = gzip.decompress(path.read_bytes()).split(b"\n", 1)
    genes = header.split(b"\t")
    genes[1] = "G\u00e8ne".encode("latin-1")  # was a UnicodeDecodeError traceback
    path.write_bytes(gzip.compress(b"\t".join(genes) + b"\n" + rest))
    return root, "C2.tsv.gz", "gene"


def legacy_nan_spot_x(root, c):
    _legacy_c2(root)
    _edit_selection(root, lambda df: df.loc.__setitem__((3, "x"), np.nan))
    return root, "C2_selection.tsv", "x"


def legacy_selected_not_0_or_1(root, c):
    _legacy_c2(root)
    _edit_selection(root, lambda df: df.loc.__setitem__((3, "selected"), 2))
    return root, "C2_selection.tsv", "selected"


def legacy_truncated_cluster_annotation(root, c):
    _legacy_c2(root)
    path = root / "ST-cluster" / "lbl" / "C2-cluster-annotation.tsv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return root, "C2-cluster-annotation.tsv.gz", "cluster"


def legacy_label_map_without_patient(root, c):
    _legacy_c2(root)
    path = root / "ST-cluster" / "cluster_label_map.tsv"
    pd.read_csv(path, sep="\t").drop(columns="patient").to_csv(path, sep="\t", index=False)
    return root, "cluster_label_map.tsv", "patient"


def legacy_two_images(root, c):
    _legacy_c2(root)
    folder = root / "ST-imgs" / "C" / "C2"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):  # the first one was used
        Image.fromarray(c.rgb[:64, :64]).save(folder / name)
    return root, "C2", "image"


CASES = [
    missing_file,
    missing_image,
    spot_ids_not_in_counts,
    visium_barcodes_without_position,
    coordinates_outside_image,
    nan_counts,
    negative_counts,
    duplicated_barcodes,
    duplicated_spot_ids,
    truncated_tiff,
    truncated_jpeg,
    unreadable_image,
    scanner_file_to_convert,
    unknown_pixel_size,
    manifest_section_without_id,
    manifest_misspelt_key,
    unsupported_folder,
    unsupported_file,
    spots_table_without_image,
    negative_pitch,
    zero_pitch,
    pitch_not_a_number,
    implausible_pixel_size,
    negative_spot_diameter,
    zero_spot_diameter,
    spot_diameter_not_a_number,
    duplicated_gene_column,
    section_id_with_a_slash,
    h5ad_microns_per_pixel_text,
    h5ad_duplicated_var_names,
    visium_spot_diameter_text,
    visium_position_not_a_number,
    visium_in_tissue_not_0_or_1,
    nan_float_tiff,
    symlink_loop,
    legacy_latin1_gene,
    legacy_nan_spot_x,
    legacy_selected_not_0_or_1,
    legacy_truncated_cluster_annotation,
    legacy_label_map_without_patient,
    legacy_two_images,
]


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_bad_input_is_named_input_error_and_exit_2(make, c2_small, tmp_path, capsys):
    path, file_part, field_part = make(tmp_path / "data", c2_small)
    with pytest.raises(InputError) as e:
        read_dataset(path, with_images=False)
    assert file_part in (e.value.path or ""), e.value
    assert field_part in (e.value.field or ""), e.value
    capsys.readouterr()
    assert main(["info", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spafoundation: error:") and file_part in err[0]


def test_scanner_file_says_how_to_convert_it(c2_small, tmp_path):
    path, _, _ = scanner_file_to_convert(tmp_path / "data", c2_small)
    with pytest.raises(InputError, match=r"Zeiss '\.czi' file is not read directly: convert it to OME-TIFF \(bfconvert"):
        read_dataset(path, with_images=False)


def test_symlink_loop_says_so(tmp_path, capsys):
    path, _, _ = symlink_loop(tmp_path / "data", None)
    assert main(["info", str(path)]) == EXIT_BAD_INPUT
    assert "loops back on itself" in capsys.readouterr().err


# Inputs that were read silently wrong and now give the right result.

def test_counts_beyond_int32_are_kept_exactly(c2_small, tmp_path):
    root = write_manifest(tmp_path / "data", c2_small)
    _edit_counts(root.parent, lambda df: df.iloc.__setitem__((0, 0), 3_000_000_000))  # wrapped to -2147483648
    adata = read_dataset(root, with_images=False)["S1"]
    assert adata.X.dtype == np.int64 and adata.X[0, 0] == 3_000_000_000 and adata.X.min() >= 0
    small = read_dataset(write_manifest(tmp_path / "small", c2_small), with_images=False)["S1"]
    assert small.X.dtype == np.int32  # counts that fit keep the narrower type


def test_spots_table_saved_with_a_byte_order_mark(c2_small, tmp_path):
    root = write_manifest(tmp_path / "data", c2_small)
    spots = root.parent / "spots.csv"
    spots.write_bytes(b"\xef\xbb\xbf" + spots.read_bytes())  # Excel's "CSV UTF-8": was "id: missing column(s)"
    assert read_dataset(root, with_images=False)["S1"].n_obs == len(c2_small.ids)


def _open(path):
    from spafoundation.io.slide import open_slide

    return open_slide(path, mpp=1.0)


def test_image_modes_become_the_right_8_bit_rgb(tmp_path):
    import tifffile

    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64, a ramp
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # was all white
    tifffile.imwrite(tmp_path / "float.tif", grey.astype(np.float32) / 255)  # 0-1 floats: was near black
    alpha = np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None, :].repeat(48, 0)
    tifffile.imwrite(tmp_path / "grey_alpha.tif", np.stack([grey, alpha], axis=-1), photometric="minisblack",
                     planarconfig="contig", extrasamples=[2])  # was a traceback
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    for name in ("grey16.png", "float.tif", "palette.png"):
        with _open(tmp_path / name) as slide:
            region = slide.read_level_region(0, 0, 0, 64, 48)
        assert region.dtype == np.uint8 and region.shape == (48, 64, 3)
        assert np.abs(region[..., 0].astype(int) - grey).max() <= 1, name
    with _open(tmp_path / "grey_alpha.tif") as slide:
        region = slide.read_level_region(0, 0, 0, 64, 48)
    assert np.array_equal(region[:, :32, 1], grey[:, :32]) and (region[:, 32:] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :10] = (200, 0, 0)  # a red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the band goes to the top
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    with _open(tmp_path / "turned.jpg") as slide:
        assert (slide.width, slide.height) == (40, 60)
        region = slide.read_level_region(0, 0, 0, 40, 60)
        thumb, _ = slide.thumbnail(30)
    assert region[:5, :, 0].mean() > 150 and region[-5:, :, 0].mean() < 50
    assert thumb.shape[:2] == (30, 20) and thumb[:2, :, 0].mean() > 150


def test_declared_size_is_checked_before_decoding(tmp_path, monkeypatch, capsys):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    (tmp_path / "huge.png").write_bytes(png)  # 300 bytes that claim 40000 x 40000 px: was a MemoryError
    import spafoundation.io.pixels as pixels

    monkeypatch.setattr(pixels, "available_memory", lambda: 1 << 30)
    with _open(tmp_path / "huge.png") as slide, pytest.raises(InputError, match="declares 40000 x 40000 px") as e:
        slide.thumbnail(256)
    assert e.value.path.endswith("huge.png") and e.value.field == "image"


def test_cache_folder_that_is_a_file(c2_small, tmp_path, monkeypatch, capsys):
    root = write_manifest(tmp_path / "data", c2_small)
    (tmp_path / "cache").write_text("a file")
    embed = ["embed", str(root), "--encoder", "random-vitt16", "--out", str(tmp_path / "e.h5ad")]
    assert main([*embed, "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "--cache-dir: is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setenv("SPAFOUNDATION_CACHE", str(tmp_path / "cache" / "sub"))
    assert main(embed) == 2
    assert "$SPAFOUNDATION_CACHE: is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "e.h5ad").exists()


def test_sections_with_spaces(c2_small, tmp_path, capsys):
    root = write_manifest(tmp_path / "data", c2_small)
    assert main(["info", str(root), "--sections", " S1 , "]) == 0  # was "unknown section(s) [' S1 ']"
    assert "S1" in capsys.readouterr().out
