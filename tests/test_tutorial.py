"""docs/tutorial.py runs, on 40 spots of each HER2ST section, with the shipped encoder."""

from __future__ import annotations

import runpy
from pathlib import Path

import matplotlib
import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.py"


@pytest.mark.slow
def test_tutorial_runs_end_to_end(her2st_root, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setenv("SPAFOUNDATION_HER2ST", str(her2st_root))
    monkeypatch.setenv("SPAFOUNDATION_TUTORIAL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("SPAFOUNDATION_TUTORIAL_SPOTS", "40")
    import spafoundation as sf

    with sf.settings.override():  # whatever the tutorial sets stays inside this test
        done = runpy.run_path(str(TUTORIAL), run_name="__main__")
    pred, adata = done["pred"], done["adata"]
    assert pred.n_obs == 40 and pred.n_vars == 8 and "reliable" in pred.var
    assert adata.n_obs == 200 and adata.obs["spatial_domain"].nunique() == 6
    assert adata.obs["tumor_probability"].between(0, 1).all()
    assert (tmp_path / "out" / "expression_model" / "config.json").is_file()
    assert (tmp_path / "out" / "domains.h5ad").is_file()
