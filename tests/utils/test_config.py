"""The config schema of run and pretrain: unknown keys at any depth are errors naming them; one default per
setting, the same in run's config, the CLI's options and the Python functions."""

import inspect
from pathlib import Path

import pytest

from spafoundation import defaults
from spafoundation.cli import EXIT_BAD_INPUT, build_parser, main
from spafoundation.errors import InputError
from spafoundation.utils.config import FREE, load_yaml_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = {"seed": 0, "optim": {"steps": 10, "lr": 0.1}, "augment": {}, "model": {"overrides": {}}}
SECTIONS = {"augment": ("blur_p",), "model.overrides": ("timm_kwargs",), "model.overrides.timm_kwargs": FREE}


@pytest.mark.parametrize("overrides,named", [
    (["optim.stepz=1"], "optim.stepz: unknown setting (did you mean optim.steps?)"),
    (["seeds=1"], "seeds: unknown setting (did you mean seed?)"),
    (["augment.blurp=0.1"], "augment.blurp"),
    (["model.overrides.depth=2"], "model.overrides.depth"),
    (["optim=3"], "optim: must be a mapping"),
])
def test_unknown_keys_at_any_depth_are_named(overrides, named):
    with pytest.raises(InputError) as e:
        load_yaml_config(SCHEMA, None, overrides, SECTIONS)
    assert named in str(e.value)


def test_free_sections_and_known_keys_pass(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {steps: 3}\naugment: {blur_p: 0.5}\n")
    cfg = load_yaml_config(SCHEMA, f, ["model.overrides.timm_kwargs.anything=1"], SECTIONS)
    assert cfg["optim"] == {"steps": 3, "lr": 0.1} and cfg["model"]["overrides"]["timm_kwargs"] == {"anything": 1}
    f.write_text("optim: {stepz: 3}\n")
    with pytest.raises(InputError, match=f"{f}: optim.stepz"):
        load_yaml_config(SCHEMA, f, None, SECTIONS)


@pytest.mark.parametrize("setting,named", [
    ("optim.stepz=1", "optim.stepz"),
    ("augment.hed_sigmaa=0.1", "augment.hed_sigmaa"),
    ("objective.params.mask_ration=0.5", "objective.params.mask_ration"),
    ("model.overrides.depht=2", "model.overrides.depht"),
])
def test_pretrain_refuses_a_misspelt_setting_before_reading_data(setting, named, tmp_path, capsys):
    argv = ["pretrain", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"), "--set", setting]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert named in err and "unknown setting" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting", ["augment.lowres_p=abc", "augment.blur_p=-0.1", "augment.hed_sigma=true",
                                     "augment.crop_scale=[0.9, 0.2]", "augment.mask_ratio=0.3",
                                     "augment.mask_shape=square"])
def test_pretrain_refuses_an_augmentation_value_of_the_wrong_kind(setting, tmp_path, capsys):
    argv = ["pretrain", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"), "--set", setting]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and setting.split("=")[0] in err and "must be" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pretrain_configs_follow_the_schema(config):
    from spafoundation.train.pretrain import load_config

    assert load_config(config)["objective"]["params"]


def test_run_refuses_a_misspelt_nested_setting(tmp_path, capsys):
    argv = ["run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--set", "clusters.n_cluster=3"]
    assert main(argv) == EXIT_BAD_INPUT
    assert "clusters.n_cluster: unknown setting (did you mean clusters.n_clusters?)" in capsys.readouterr().err


def _cli_defaults(*argv) -> dict:
    return vars(build_parser().parse_args([*argv, "DATA", "--out", "OUT"]))


def test_one_default_per_setting_in_run_the_cli_and_the_functions():
    from spafoundation.commands.run import DEFAULTS
    from spafoundation.tasks.clustering import spatial_clusters
    from spafoundation.tasks.expression import fit_expression

    cluster = _cli_defaults("cluster")
    for key in ("features", "method", "n_clusters", "smooth", "grid_um"):
        assert DEFAULTS["clusters"][key] == cluster[key], key
    assert DEFAULTS["clusters"]["n_clusters"] == defaults.N_DOMAINS
    assert inspect.signature(spatial_clusters).parameters["n_clusters"].default == defaults.N_DOMAINS
    fit = _cli_defaults("fit-expression")
    fit_params = inspect.signature(fit_expression).parameters
    for key in ("genes", "head"):
        assert DEFAULTS["expression"][key] == fit[key] == fit_params[key].default, key
    assert DEFAULTS["encoder"] == fit["encoder"] == fit_params["encoder"].default
    assert DEFAULTS["tumor"]["grid_um"] == _cli_defaults("tumor")["grid_um"]
    assert DEFAULTS["superres"]["genes"] == _cli_defaults("superres")["genes"]
