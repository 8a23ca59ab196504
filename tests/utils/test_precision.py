"""The pipeline's encoder precision: int8 on CPU by default, the user's --precision for one command, a fitted
model's own precision when it rebuilds its encoder."""

from __future__ import annotations

import json
import logging

import pytest

from spafoundation import settings
from spafoundation.cli import main
from spafoundation.tasks.expression import _encoder_reference, encoder_from_reference, resolve_encoder
from spafoundation.utils.precision import chosen_precision, default_precision, int8_available

needs_int8 = pytest.mark.skipif(not int8_available(), reason="this torch build has no quantised CPU engine")


@pytest.fixture(autouse=True)
def _automatic_default():
    with settings.override(precision="auto"):
        yield


@needs_int8
def test_int8_on_cpu_by_default_and_the_users_choice_wins(tiny_folder):
    assert default_precision("cpu") == "int8" and default_precision("cuda:0") is None
    enc = resolve_encoder(str(tiny_folder))
    assert enc.precision == "int8" and enc.identity.endswith("+int8")  # its own cache key
    settings.precision = "fp32"
    assert resolve_encoder(str(tiny_folder)).precision == "fp32"
    assert resolve_encoder(str(tiny_folder), precision="int8").precision == "int8"  # an explicit argument wins
    with pytest.raises(ValueError, match="precision"):
        settings.precision = "int4"
    assert settings.precision == "fp32" and "precision='fp32'" in repr(settings)


@needs_int8
def test_a_fitted_model_rebuilds_its_encoder_at_its_own_precision(tiny_folder, caplog):
    caplog.set_level(logging.WARNING)
    fitted_with = resolve_encoder(str(tiny_folder), precision="fp32")
    ref = _encoder_reference(fitted_with)
    assert ref["precision"] == "fp32"
    assert encoder_from_reference(ref).identity == fitted_with.identity  # not the CPU default, int8
    old = {k: v for k, v in ref.items() if k != "precision"}  # written before the precision was recorded
    assert encoder_from_reference(old).precision == "fp32"
    assert "differs" not in caplog.text
    settings.precision = "int8"  # the user's choice still wins, with a warning
    assert encoder_from_reference(ref).precision == "int8" and "differs" in caplog.text


@needs_int8
def test_cli_precision_applies_to_one_command(her2st_root, tiny_folder, tmp_path):
    common = ["--encoder", str(tiny_folder), "--genes", "hvg:3", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for flag, expected in (([], "int8"), (["--precision", "fp32"], "fp32")):
        model = tmp_path / f"model_{expected}"
        assert main(["fit-expression", str(her2st_root), "--sections", "C3", "--out", str(model), *common,
                     *flag]) == 0
        assert json.loads((model / "config.json").read_text())["encoder"]["precision"] == expected
        assert chosen_precision() is None  # nothing leaks into the next command
    with pytest.raises(SystemExit) as bad:  # argparse: unknown choice
        main(["fit-expression", str(her2st_root), "--sections", "C3", "--out", str(tmp_path / "m"),
              "--precision", "int4", *common])
    assert bad.value.code == 2 and not (tmp_path / "m").exists()


def test_run_passes_its_precision_to_every_step(her2st_root, tmp_path, capsys):
    argv = ["run", "--data", str(her2st_root), "--out", str(tmp_path / "run"), "--sections", "C2,C3", "--dry-run"]
    assert main([*argv, "--set", "precision=fp32"]) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if ": spafoundation " in line]
    assert len(steps) >= 4 and all("--precision fp32" in line for line in steps)
    assert main(argv) == 0  # the automatic default: no flag, each step picks int8 on CPU itself
    assert "--precision" not in capsys.readouterr().out
    assert main([*argv, "--set", "precision=int4"]) == 2
    assert "precision" in capsys.readouterr().err and not (tmp_path / "run").exists()
