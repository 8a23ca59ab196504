"""Nuclear morphometry: counts, sizes and the glass share of synthetic patches with known nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from spafoundation.models.handcrafted import hed_to_rgb
from spafoundation.models.nuclei import N_FEATURES, nuclei_features

COUNT, MEAN_AREA, GLASS = 6, 7, 11  # columns (models/nuclei.py docstring order)


def _patch(centres, radius_px: float, size: int = 112, glass: bool = False) -> np.ndarray:
    """Eosin-pink tissue (or white glass) with haematoxylin discs of ``radius_px`` at ``centres``."""
    yy, xx = np.mgrid[:size, :size]
    hed = np.zeros((size, size, 3))
    hed[..., 1] = 0.0 if glass else 0.25
    for cy, cx in centres:
        hed[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2, 0] = 1.2
    return hed_to_rgb(hed)


def test_counts_and_sizes_known_nuclei():
    rng = np.random.default_rng(0)
    grid = [(y, x) for y in range(12, 110, 20) for x in range(12, 110, 20)]
    few = [grid[i] for i in rng.choice(len(grid), 8, replace=False)]
    f = nuclei_features(np.stack([_patch(few, 4.0), _patch(grid, 4.0), _patch(grid, 2.5)]), um_per_px=1.0)
    assert f.shape == (3, N_FEATURES) and np.isfinite(f).all()
    assert f[0, COUNT] == 8 and f[1, COUNT] == len(grid)
    assert f[1, MEAN_AREA] == pytest.approx(np.pi * 4.0**2, rel=0.25)
    assert f[2, MEAN_AREA] < f[1, MEAN_AREA]  # smaller nuclei read smaller
    # the same discs read at 0.5 um/px are a quarter of the area in um^2
    assert nuclei_features(_patch(grid, 4.0), um_per_px=0.5)[0, MEAN_AREA] == pytest.approx(f[1, MEAN_AREA] / 4)


def test_glass_without_nuclei():
    f = nuclei_features(_patch([], 4.0, glass=True))
    assert np.isfinite(f).all() and f[0, COUNT] == 0 and f[0, GLASS] == 1.0
