"""Outputs replace their folder as a whole, so a folder of the user's given as --out must never be replaced."""

import pytest

from spafoundation.errors import InputError
from spafoundation.utils.atomic import OUTPUT_MARKER, atomic_dir, check_output_dir


def _write(path, name="result.txt"):
    with atomic_dir(path) as tmp:
        (tmp / name).write_text("new")


def test_a_folder_of_the_users_is_refused_and_left_as_it_was(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.txt").write_text("precious")
    with pytest.raises(InputError, match="files spafoundation did not write") as e:
        _write(mine)
    assert e.value.path.endswith("thesis") and e.value.field == "--out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temporary folder left beside it
    assert [p.name for p in mine.iterdir()] == ["chapter1.txt"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_output_dir(tmp_path / "a_file")


def test_new_empty_and_own_folders_are_written_and_rewritten(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write(out, "first.txt")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "first.txt"]
    _write(out, "second.txt")  # its own output: replaced as a whole
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "second.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    _write(".")  # '.' has no name of its own; an empty current folder is written in place
    assert sorted(p.name for p in empty.iterdir()) == [OUTPUT_MARKER, "result.txt"]


def test_a_file_output_given_a_folder_is_an_input_error(tmp_path, capsys):
    from spafoundation.cli import main
    from spafoundation.utils.atomic import atomic_path

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="is a folder; give a file name in it"), atomic_path(tmp_path):
        pass
    # before: embed computed every embedding, then failed renaming its file onto the folder (IsADirectoryError)
    assert main(["embed", "DATA", "--encoder", "random-vitt16", "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file name in it ending in .h5ad" in capsys.readouterr().err
    assert main(["embed", "DATA", "--encoder", "random-vitt16", "--out", str(tmp_path / "emb.csv")]) == 2
    assert "the output is written as .h5ad" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
