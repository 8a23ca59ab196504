"""How far to trust an expression prediction: each gene's cross-validated r, and each section's image shift.

- ``gene_cv_pearson``: refits the head without each held-out group (a training section, or a patient where the
  training sections come from two or more) and scores every gene by Pearson r across the spots of each held-out
  section, averaged over held-out sections. A gene that does not carry over between the training sections will not
  carry over to the user's section either.
- ``FeatureShift``: how far a section's image lies from the training sections' in colour, stain and texture (the
  median distance of its spots to the nearest training spot, in whitened colour/texture space). Its reference range
  is the same score of each training section against the other training sections, so "out of range" means further
  than any training section lay from the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spafoundation.eval.metrics import pearson_per_gene
from spafoundation.utils.linalg import thin_svd

RELIABLE_R = 0.1  # a gene is 'reliable' when its cross-validated r (patients where there are two) reaches this
SHIFT_PREFIX = "shift."  # keys of the shift reference among the arrays of a saved model


SINGLE_SECTION_STRIPES = 4  # a model fitted on one section: each gene's r over 4 stripes of it held out in turn
# where each gene's cross-validated r comes from, the most telling first (ExpressionModel.gene_table picks it)
LEVELS = {"patients": "held-out training patients", "sections": "held-out training sections",
          "stripes": f"{SINGLE_SECTION_STRIPES} held-out stripes of the one training section (optimistic: the same "
                     "section's stain and biology)"}


def spatial_stripes(xy: np.ndarray, n: int = SINGLE_SECTION_STRIPES) -> np.ndarray:
    """Stripe index (0..n-1) of each spot: n contiguous bands of equal spot counts across the section's longer
    side, so that a held-out stripe's spots are not the neighbours of the training spots (as random spots would
    be)."""
    xy = np.asarray(xy, dtype=np.float64)
    axis = int(np.ptp(xy[:, 1]) > np.ptp(xy[:, 0]))
    ranks = np.argsort(np.argsort(xy[:, axis], kind="stable"), kind="stable")
    return (ranks * n // max(len(xy), 1)).astype(np.int64)


def gene_cv_pearson(X: np.ndarray, Y: np.ndarray, sections: np.ndarray, folds: np.ndarray,
                    make_head: Callable, blocks=None, fit_options: Callable | None = None) -> np.ndarray | None:
    """Per-gene r on held-out ``folds`` (one label per spot: its section or its patient), each fold's sections
    scored separately, then averaged over every held-out section; None with fewer than two folds.
    ``fit_options(fold label)``: more keyword arguments of the head's fit without that fold (e.g. a reference
    without the held-out patient's sections, the other training sections' transcriptome)."""
    sections, folds = np.asarray(sections), np.asarray(folds)
    if len(np.unique(folds)) < 2:
        return None
    total, n = np.zeros(Y.shape[1]), np.zeros(Y.shape[1])
    for f in np.unique(folds):
        held = folds == f
        head = make_head().fit(X[~held], Y[~held], sections[~held], blocks,
                               **(fit_options(f) if fit_options else {}))
        pred = head.predict(X[held])
        for s in np.unique(sections[held]):
            rows = sections[held] == s
            r = pearson_per_gene(Y[held][rows], pred[rows])
            total += np.nan_to_num(r)
            n += np.isfinite(r)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def reliable_genes(cv_r: np.ndarray | None) -> np.ndarray:
    """Boolean per gene: cross-validated r >= ``RELIABLE_R`` (False where unknown)."""
    if cv_r is None:
        return np.zeros(0, dtype=bool)
    cv_r = np.asarray(cv_r, dtype=np.float64)
    return np.isfinite(cv_r) & (cv_r >= RELIABLE_R)


class FeatureShift:
    """Where the training spots lie in colour/texture space, and how far each training section lay from the others.

    Colour, stain and texture statistics of each spot patch (models/handcrafted.py) are what a new lab, scanner or
    resolution changes, whatever features the head uses (an encoder's embedding of a blurred scan can land among
    the sharp ones). They are standardised and whitened on the training spots (PCA, ``N_COMPONENTS``); a section's
    score is the median distance of its spots to the nearest training spot."""

    def __init__(self, arrays: dict[str, np.ndarray], reference: dict[str, float]):
        self.a, self.reference = {k: np.asarray(v) for k, v in arrays.items()}, dict(reference)

    @classmethod
    def fit(cls, feats: dict[str, np.ndarray]) -> FeatureShift:
        """``feats``: {training section: its colour/texture features (spots x d)}."""
        reference = {}
        if len(feats) > 1:
            for name, f in feats.items():
                others = cls(_space(np.concatenate([g for n, g in feats.items() if n != name])), {})
                reference[name] = others.score(f)
        return cls(_space(np.concatenate(list(feats.values()))), reference)

    def score(self, feats: np.ndarray) -> float:
        from scipy.spatial import cKDTree

        z = (np.asarray(feats, dtype=np.float64) - self.a["mean"]) / self.a["scale"]
        z = (z @ self.a["components"].T) / self.a["sd"]
        return float(np.median(cKDTree(self.a["points"]).query(z)[0]))

    @property
    def limit(self) -> float | None:
        """The largest score of a training section against the others (None with one training section)."""
        return max(self.reference.values()) if self.reference else None

    def out_of_range(self, score: float) -> bool:
        return self.limit is not None and score > self.limit

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{SHIFT_PREFIX}{k}": v for k, v in self.a.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], reference: dict[str, float]) -> FeatureShift | None:
        mine = {k[len(SHIFT_PREFIX):]: v for k, v in arrays.items() if k.startswith(SHIFT_PREFIX)}
        return cls(mine, reference) if mine else None  # none: a model saved before shift scores existed


N_COMPONENTS = 20
MAX_POINTS = 5000  # training spots kept as the reference cloud (a random subset beyond this)


def _space(feats: np.ndarray) -> dict[str, np.ndarray]:
    """Standardisation, whitened principal axes and the projected points of ``feats``."""
    feats = np.asarray(feats, dtype=np.float64)
    mean, scale = feats.mean(0), feats.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (feats - mean) / scale
    _, sv, vt = thin_svd(z - z.mean(0))
    k = min(N_COMPONENTS, len(sv))
    sd = np.maximum(sv[:k] / np.sqrt(max(1, len(z) - 1)), 1e-12)
    points = (z @ vt[:k].T) / sd
    if len(points) > MAX_POINTS:
        points = points[np.random.default_rng(0).choice(len(points), MAX_POINTS, replace=False)]
    return {"mean": mean, "scale": scale, "components": vt[:k], "sd": sd, "points": points.astype(np.float32)}
