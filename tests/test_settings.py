"""sf.settings: one visible object for the session's device, precision, cache folder, threads and progress."""

import pytest
import torch

import spafoundation as sf
from spafoundation.models.cache import cache_root


def test_defaults_are_shown_and_unknown_settings_refused():
    assert repr(sf.settings) == ("Settings(device='cpu', precision='auto', cache_dir=None, n_threads=None, "
                                 "progress=True, verbosity='warning')")
    with pytest.raises(AttributeError, match="precison"):
        sf.settings.precison = "fp32"
    for name, bad in (("precision", "int4"), ("n_threads", 0), ("n_threads", 1.5), ("device", "gpu9"),
                      ("verbosity", "loud"), ("verbosity", 7)):
        with pytest.raises((ValueError, RuntimeError)):
            setattr(sf.settings, name, bad)
    assert sf.settings.precision == "auto" and sf.settings.n_threads is None


def test_override_is_undone_after_the_block_even_on_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAFOUNDATION_CACHE", str(tmp_path / "env"))
    threads = torch.get_num_threads()
    with pytest.raises(KeyError):
        with sf.settings.override(cache_dir=tmp_path / "mine", precision="fp32", n_threads=1):
            assert cache_root() == tmp_path / "mine" and cache_root(tmp_path / "arg") == tmp_path / "arg"
            assert torch.get_num_threads() == 1
            raise KeyError
    assert sf.settings.cache_dir is None and sf.settings.precision == "auto"
    assert cache_root() == tmp_path / "env" and torch.get_num_threads() == threads


def test_verbosity_sets_what_the_functions_log(monkeypatch, capsys, caplog):
    """As scanpy's sc.settings.verbosity: a name or 0-3; where nothing else prints log records (a notebook, a plain
    script), info lines reach stderr; undone after an override."""
    import logging

    log = logging.getLogger("spafoundation.tasks.expression")
    with sf.settings.override(verbosity="info"), caplog.at_level(logging.NOTSET):
        log.info("a step")
        assert sf.settings.verbosity == "info"
    assert [r.getMessage() for r in caplog.records] == ["a step"]
    caplog.clear()
    with sf.settings.override(verbosity=0), caplog.at_level(logging.NOTSET):
        log.warning("a warning")
        assert sf.settings.verbosity == "error"
    assert not caplog.records and sf.settings.verbosity == "warning"
    assert logging.getLogger("spafoundation").level == logging.NOTSET  # the application's logging decides again

    package = logging.getLogger("spafoundation")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a notebook: no handler anywhere
    monkeypatch.setattr(package, "handlers", [])
    with sf.settings.override(verbosity="info"):
        log.info("shown without logging.basicConfig")
    assert "INFO spafoundation.tasks.expression: shown without logging.basicConfig" in capsys.readouterr().err
    assert not package.handlers  # removed with the verbosity that needed it
