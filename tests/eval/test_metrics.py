"""Expression metrics: per-gene Pearson per section, NaN-safe, BH significance; non-regression values."""

from __future__ import annotations

import numpy as np
import pytest

from spafoundation.eval.metrics import (
    average_over_sections,
    bh_adjust,
    evaluate_expression,
    pearson_per_gene,
    summarize_pearson,
)


def test_pearson_matches_numpy_and_marks_constant_genes():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 5))
    p = y + rng.normal(size=(40, 5))
    p[:, 2] = 1.0  # constant prediction: undefined, never a number
    y[:, 4] = 0.0  # constant observation: undefined too
    r = pearson_per_gene(y, p)
    for j in (0, 1, 3):
        assert r[j] == pytest.approx(np.corrcoef(y[:, j], p[:, j])[0, 1], abs=1e-6)
    assert np.isnan(r[2]) and np.isnan(r[4])
    s = summarize_pearson(r, n_spots=40)
    assert s["n_constant"] == 2 and s["n_genes"] == 5
    assert s["mean_r"] == pytest.approx(np.mean(r[[0, 1, 3]]))


def test_bh_adjust_known_values():
    # Benjamini-Hochberg by hand: p sorted (0.01, 0.02, 0.03, 0.5), m = 4 -> (0.04, 0.04, 0.04, 0.5)
    q = bh_adjust(np.array([0.03, 0.5, 0.01, 0.02]))
    np.testing.assert_allclose(q, [0.04, 0.5, 0.04, 0.04])
    assert np.isnan(bh_adjust(np.array([np.nan, 0.01]))[0])


def test_significance_counts_only_positive_correlations():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 3))
    p = np.stack([y[:, 0], -y[:, 1], rng.normal(size=200)], axis=1)
    m = evaluate_expression(y, p, top_k=2)
    assert m["n_significant"] == 1  # the perfectly anti-correlated gene is not a success
    assert set(m) >= {"mean_r", "median_r", "mean_r_top_hvg", "mean_r_top_expressed", "rmse", "r"}


def test_average_over_sections_is_not_pooled():
    # two sections whose pooled correlation would be high through an offset, each uncorrelated within
    rng = np.random.default_rng(2)
    y1, y2 = rng.normal(size=(50, 1)), rng.normal(size=(50, 1)) + 10
    p1, p2 = rng.normal(size=(50, 1)), rng.normal(size=(50, 1)) + 10
    per = [evaluate_expression(y1, p1), evaluate_expression(y2, p2)]
    avg = average_over_sections(per)
    pooled = pearson_per_gene(np.vstack([y1, y2]), np.vstack([p1, p2]))[0]
    assert pooled > 0.9 and abs(avg["mean_r"]) < 0.3 and avg["n_sections"] == 2
