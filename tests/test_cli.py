import os
import subprocess
import sys

import pytest

from spafoundation import __version__
from spafoundation.cli import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, build_parser, main
from tests.io.layouts import C2Small, write_manifest


def test_info_on_real_data(her2st_root, capsys):
    assert main(["info", str(her2st_root), "--sections", "C2,C3"]) == 0
    out = capsys.readouterr().out
    assert "format: legacy_st" in out
    rows = [line.split() for line in out.splitlines()]
    lines = {r[0]: r for r in rows if r and r[0] in ("C2", "C3")}
    assert lines["C2"][2] == "187" and lines["C2"][4].endswith("_C2.jpg") and lines["C2"][5] == "9274x9911"
    assert lines["C3"][2] == "180"
    assert "2 sections, 2 with images, 367 spots" in out


def test_info_unknown_section_exit_2(her2st_root, capsys):
    assert main(["info", str(her2st_root), "--sections", "Z9"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown section" in err and "ST-cnts" in err


def test_anndata_bookkeeping_lines_are_quiet_unless_verbose(her2st_root, capsys, monkeypatch):
    """anndata logs "... storing 'section' as categorical" at INFO for every string column it writes: a command
    says nothing of it, -v does."""
    import logging

    monkeypatch.setattr(logging.getLogger("anndata"), "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)  # what basicConfig sets outside pytest
    assert main(["info", str(her2st_root), "--sections", "C2"]) == 0
    assert not logging.getLogger("anndata").isEnabledFor(logging.INFO)
    assert main(["-v", "info", str(her2st_root), "--sections", "C2"]) == 0
    assert logging.getLogger("anndata").isEnabledFor(logging.INFO)


def test_commands_are_discovered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"info", "benchmark"} <= set(sub.choices)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["no-such-command"])
    assert e.value.code == 2


def test_help_imports_no_numerical_library():
    """``spafoundation --help`` and a usage error answer at once: building the parser imports none of torch,
    anndata, pandas or numpy (they took 4-7 s, paid by every --help and mistyped option)."""
    heavy = ("torch", "timm", "anndata", "pandas", "numpy", "scipy", "sklearn", "PIL", "matplotlib")
    code = ("import sys; from spafoundation.cli import build_parser; build_parser(); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


@pytest.fixture(scope="module")
def c2_manifest(her2st_c2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    return write_manifest(folder, C2Small(her2st_c2, folder / "image"))


def test_info_on_generic_manifest(c2_manifest, capsys):
    assert main(["info", str(c2_manifest)]) == 0
    out = capsys.readouterr().out
    assert "format: generic" in out and "given in the manifest" in out and "1 sections, 1 with images" in out


def test_closed_pipe_exits_quietly(c2_manifest):
    """`spafoundation info DATA | head -1`: the reader is gone before we write. No traceback, exit 141."""
    manifest = c2_manifest
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "spafoundation.cli", "info", str(manifest)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


def test_info_mpp_option_supplies_unknown_pixel_size(her2st_c2, tmp_path, capsys):
    manifest = write_manifest(tmp_path, C2Small(her2st_c2, tmp_path / "image"), section={"mpp": None})
    assert main(["info", str(manifest)]) == EXIT_BAD_INPUT
    assert "unknown pixel size" in capsys.readouterr().err
    assert main(["info", str(manifest), "--mpp", "2.5"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["S1"])
    assert row[4] == "C2_small.tif" and row[6] == "2.5" and row[7] == "given"
    with pytest.raises(SystemExit) as e:  # argparse's usage error, exit code 2 like every bad input
        main(["info", str(manifest), "--mpp", "-1"])
    assert e.value.code == EXIT_BAD_INPUT
    assert "argument --mpp: must be a positive number, got '-1'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["cluster", "DATA", "--out", "o", "--smooth", "2"], "--smooth: must be a number from 0 to 1, got '2'"),
    (["cluster", "DATA", "--out", "o", "--n-clusters", "0"], "--n-clusters: must be a whole number >= 1"),
    (["benchmark", "clustering", "DATA", "--out", "o", "--seeds", "0"], "--seeds: must be a whole number >= 1"),
    (["fit-expression", "DATA", "--out", "o", "--epochs", "-1"], "--epochs: must be a whole number >= 1"),
    (["fit-expression", "DATA", "--out", "o", "--lr", "nan"], "--lr: must be a positive number, got 'nan'"),
    (["fit-expression", "DATA", "--out", "o", "--programs", "-1"], "--programs: must be a whole number >= 0"),
    (["superres", "DATA", "--out", "o", "--step-um", "0"], "--step-um: must be a positive number"),
    (["tumor", "DATA", "--out", "o", "--grid-um", "-5"], "--grid-um: must be a number >= 0"),
    (["embed", "DATA", "--out", "o", "--batch-size", "0"], "--batch-size: must be a whole number >= 1"),
])
def test_out_of_range_numbers_are_usage_errors(argv, message, capsys):
    """Before: --smooth 2 extrapolated past the neighbours' mean, --n-clusters 0 silently meant 7, --step-um 0 meant
    the default and --epochs -1 trained nothing; each is now refused with exit code 2 before any data is read."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == EXIT_BAD_INPUT and message in capsys.readouterr().err


def test_run_refuses_a_config_value_a_step_would_refuse_before_writing(her2st_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--data", str(her2st_root), "--sections", "C3,C4", "--out", str(out), "--set", "clusters.smooth=2"]
    assert main(args) == EXIT_BAD_INPUT
    assert "config (spatial domains): argument --smooth: must be a number from 0 to 1" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("task", ["expression", "tumor"])
def test_benchmark_random_seeds_need_a_random_init_encoder(task, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "bench"
    data.mkdir()
    assert main(["benchmark", task, str(data), "--out", str(out), "--random-seeds", "3",
                 "--random-encoder", "spafoundation-default"]) == EXIT_BAD_INPUT
    assert "--random-seeds" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["benchmark", task, str(data), "--out", str(out), "--random-seeds", "0"])
    assert e.value.code == EXIT_BAD_INPUT
