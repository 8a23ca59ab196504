"""Cells of a single-cell spatial platform (Xenium, or a SpatialData table of cells) summed into square spots.

An image model predicts expression per spot of tissue, and cells are too small and too sparse in counts for that: the
cells are summed by centroid into the squares of a grid of ``bin_um`` microns (default 55 um, a Visium spot's width:
HEST's pseudo-Visium convention), every cell counted once. A spot is the square's centre; squares without a cell are
no spots. The grid starts at the frame's origin, so the same cells give the same spots in every reader.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spafoundation.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_BIN_UM = 55.0
# a "spot" narrower than this is a cell (Xenium's median cell is ~10 um across; Visium's spot 55 um, HD bins have
# their own sizes and are summed by io/visium_hd.py)
CELL_MAX_UM = 30.0
ONLY_BINS_AND_CELLS = "only Visium HD bins and single cells (Xenium) are summed into spots of a chosen size"


def check_bin_um(bin_um: float, path, field: str = "bin_um") -> float:
    bin_um = float(bin_um)
    if not np.isfinite(bin_um) or not 10 <= bin_um <= 1000:
        raise InputError(path, field, f"{bin_um:g} um: cells are summed into squares of 10 to 1000 um")
    return bin_um


def membership(keys: pd.MultiIndex, *, sort: bool) -> tuple[sp.csr_matrix, pd.MultiIndex]:
    """(groups x rows) 0/1 matrix of which group each row's key is in, and the groups' keys (first-seen order, or
    sorted): ``onehot @ X`` sums the rows of each group (cells into squares here, Visium HD bins into blocks)."""
    group, uniq = pd.factorize(keys, sort=sort)
    onehot = sp.csr_matrix((np.ones(len(group), dtype=np.int64), (group, np.arange(len(group)))),
                           shape=(len(uniq), len(group)))
    return onehot, uniq


def bin_cells(counts: sp.spmatrix, xy_um: np.ndarray, bin_um: float) -> tuple[sp.csr_matrix, pd.DataFrame,
                                                                              np.ndarray, list[str]]:
    """Sum the cells (rows of ``counts``, centroids ``xy_um`` in microns, x then y) into squares of ``bin_um``.

    Returns (spots x genes counts, obs with ``array_row``, ``array_col`` (the square's grid index) and ``n_cells``,
    square centres in microns (x then y), spot ids ``bin_<row>_<col>``), spots in row-major grid order."""
    cols = np.floor(xy_um[:, 0] / bin_um).astype(np.int64)
    rows = np.floor(xy_um[:, 1] / bin_um).astype(np.int64)
    onehot, uniq = membership(pd.MultiIndex.from_arrays([rows, cols]), sort=True)
    summed = sp.csr_matrix(onehot @ sp.csr_matrix(counts))
    r = uniq.get_level_values(0).to_numpy()
    c = uniq.get_level_values(1).to_numpy()
    obs = pd.DataFrame({"array_row": r, "array_col": c,
                        "n_cells": np.asarray(onehot.sum(axis=1)).ravel().astype(np.int64)})
    centres = np.stack([(c + 0.5) * bin_um, (r + 0.5) * bin_um], axis=1)
    return summed, obs, centres, [f"bin_{a}_{b}" for a, b in zip(r, c)]


def spots_on_image(size: tuple[int, int], image_name: str, xy: np.ndarray, counts, obs: pd.DataFrame,
                   ids: list[str], field_path):
    """The spots whose centre (image px) lies on an image of ``size`` (width, height); the others left out with one
    warning (a scan need not cover every cell the instrument read), an error naming ``field_path`` when none does
    (a wrong alignment)."""
    width, height = size
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    if not inside.any():
        raise InputError(field_path, "alignment", f"no spot lies on the {width}x{height} px image {image_name}: the "
                         "cells are not placed on it")
    if not inside.all():
        log.warning("%s: %d of %d spots fall off the image and are left out", image_name, int((~inside).sum()),
                    len(xy))
    keep = np.flatnonzero(inside)
    return counts[keep], obs.iloc[keep].reset_index(drop=True), xy[keep], [ids[i] for i in keep]
