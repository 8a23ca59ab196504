"""Each kind of bad input is an InputError naming the file and the field, and exit code 2 from the CLI."""

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spafoundation.cli import EXIT_BAD_INPUT, main
from spafoundation.errors import InputError
from spafoundation.io import read_dataset
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
    unknown_pixel_size,
    manifest_section_without_id,
    manifest_misspelt_key,
    unsupported_folder,
    unsupported_file,
    spots_table_without_image,
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
