"""The commands (and so ``run``'s steps) compute through ``sf.tl``: one path from the data to a result for the CLI
and the Python API. Each test swaps an ``sf.tl`` function for a wrapper that records its calls."""

from __future__ import annotations

import anndata as ad
import pytest

import spafoundation.tl as tl
from spafoundation.cli import main


@pytest.fixture
def record(monkeypatch):
    """``record(name)``: ``sf.tl.<name>`` still computes, and every call's keyword arguments land in the list
    returned."""
    def wrap(name: str) -> list[dict]:
        calls, original = [], getattr(tl, name)

        def recorder(*args, **kwargs):
            calls.append(kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(tl, name, recorder)
        return calls

    return wrap


def test_cluster_computes_through_spatial_domains(her2st_root, tmp_path, record):
    calls = record("spatial_domains")
    out = tmp_path / "clusters"
    assert main(["cluster", str(her2st_root), "--sections", "C4", "--features", "expression", "--n-clusters", "3",
                 "--genes", "hvg:100", "--no-figure", "--quiet", "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0]["n_clusters"] == 3 and calls[0]["features"] == "expression"
    assert ad.read_h5ad(out / "spots.h5ad").obs["spatial_domain"].nunique() == 3


def test_tumor_computes_through_tumor_maps(her2st_root, tiny_folder, tmp_path, record):
    calls = record("tumor_maps")
    out = tmp_path / "tumor"
    assert main(["tumor", str(her2st_root), "--sections", "C2,C3", "--train-sections", "C2,C3,C4", "--label-column",
                 "cluster_annotation", "--route", "supervised", "--grid-um", "0", "--no-figure", "--encoder",
                 str(tiny_folder), "--quiet", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0]["sections"] == ["C2", "C3"] and calls[0]["route"] == "supervised"
    assert calls[0]["train_sections"] == ["C2", "C3", "C4"]
    assert ad.read_h5ad(out / "spots.h5ad").obs["tumor_probability"].between(0, 1).all()


def test_predict_expression_computes_through_predict_expression(her2st_imaged, tiny_folder, tmp_path, record):
    from spafoundation.tasks.expression import fit_expression

    fit_expression([her2st_imaged["C3"][:60].copy()], str(tiny_folder), genes="hvg:5",
                   cache_dir=tmp_path / "cache").save(tmp_path / "model")
    data = tmp_path / "c4.h5ad"
    her2st_imaged["C4"][:60].copy().write_h5ad(data)
    calls = record("predict_expression")
    out = tmp_path / "pred.h5ad"
    assert main(["predict-expression", str(tmp_path / "model"), str(data), "--out", str(out), "--no-figure",
                 "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(calls) == 1
    assert ad.read_h5ad(out).shape == (60, 5)


def test_fit_expression_computes_through_fit_expression(her2st_imaged, tiny_folder, tmp_path, record, capsys):
    data = tmp_path / "c3.h5ad"
    her2st_imaged["C3"][:60].copy().write_h5ad(data)
    calls = record("fit_expression")
    assert main(["fit-expression", str(data), "--encoder", str(tiny_folder), "--genes", "hvg:5", "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "model")]) == 0
    assert len(calls) == 1 and calls[0]["genes"] == "hvg:5"
    assert len(tl.ExpressionModel.load(tmp_path / "model").genes) == 5
    assert "--reference" not in capsys.readouterr().out  # an .h5ad of one section has no count-only sections


def test_fit_expression_names_the_count_only_sections_reference_could_use(her2st_root, tiny_folder, tmp_path, capsys):
    """HER2ST's 30 sections without an image are named once, with the option that would use them."""
    assert main(["fit-expression", str(her2st_root), "--sections", "C3", "--encoder", str(tiny_folder), "--genes",
                 "hvg:5", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert f"30 section(s) of {her2st_root} have counts but no H&E image (A2, A3, A4, A5, A6, ...): `--reference " \
           f"{her2st_root}`" in out


def test_superres_fits_and_maps_through_fit_superres_and_superres(her2st_imaged, tiny_folder, tmp_path, record):
    data = tmp_path / "c3.h5ad"
    her2st_imaged["C3"][:60].copy().write_h5ad(data)
    fits, maps = record("fit_superres"), record("superres")
    out = tmp_path / "sr"
    assert main(["superres", str(data), "--encoder", str(tiny_folder), "--genes", "hvg:3", "--step-um", "28",
                 "--no-figure", "--quiet", "--no-cache", "--out", str(out)]) == 0
    assert len(fits) == 1 and len(maps) == 1 and maps[0]["sections"] == ["C3"]
    assert "C3" in maps[0]["superpixels"]  # the fit's superpixels, not computed a second time
    assert ad.read_h5ad(out / "C3.h5ad").n_vars == 3
