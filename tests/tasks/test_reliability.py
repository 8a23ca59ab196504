"""How far to trust a prediction: per-gene cross-validated r and the image-shift score."""

from __future__ import annotations

import numpy as np
import pytest

from spafoundation.tasks.expression import shift_features
from spafoundation.tasks.heads import RidgeHead
from spafoundation.tasks.reliability import RELIABLE_R, FeatureShift, gene_cv_pearson, reliable_genes


def test_gene_cv_pearson_separates_genes_that_carry_over_from_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 6))
    Y = np.stack([X[:, 0] + 0.3 * rng.normal(size=900), rng.normal(size=900)], axis=1)
    sections = np.repeat(["S1", "S2", "S3"], 300)
    patients = np.array(["P1"] * 600 + ["P2"] * 300)

    def make_head():
        return RidgeHead(alphas=(1.0,))

    r = gene_cv_pearson(X, Y, sections, sections, make_head)
    assert r[0] > 0.9 and abs(r[1]) < 0.1
    assert list(reliable_genes(r)) == [True, False] and RELIABLE_R > abs(r[1])
    by_patient = gene_cv_pearson(X, Y, sections, patients, make_head)
    assert by_patient[0] > 0.9
    assert gene_cv_pearson(X, Y, sections, np.repeat("P1", 900), make_head) is None  # one patient: no such score
    assert not reliable_genes(np.array([np.nan, 0.5]))[0]


def test_shift_score_flags_a_section_unlike_every_training_section():
    rng = np.random.default_rng(1)
    train = {f"S{i}": rng.normal(size=(150, 12)) + 0.1 * i for i in range(3)}
    shift = FeatureShift.fit(train)
    assert set(shift.reference) == set(train) and shift.limit == max(shift.reference.values())
    alike, unlike = rng.normal(size=(150, 12)), rng.normal(size=(150, 12)) * 2.0 + 1.5
    assert not shift.out_of_range(shift.score(alike))
    assert shift.out_of_range(shift.score(unlike)) and shift.score(unlike) > 1.5 * shift.score(alike)
    again = FeatureShift.from_arrays({"other": np.zeros(1), **shift.arrays()}, shift.reference)
    assert again.score(unlike) == pytest.approx(shift.score(unlike))
    assert FeatureShift.from_arrays({"coef": np.zeros(1)}, {}) is None  # a model saved before shift scores
    assert FeatureShift.fit({"S0": train["S0"]}).limit is None  # one training section: no reference range


def test_shift_ranks_another_patients_scan_further_than_a_held_out_section(her2st_imaged, her2st_root, tmp_path):
    """A1 (patient A: another lab batch, a low-resolution copy on black glass) against patient C's sections."""
    from spafoundation.io import read_dataset

    a1 = read_dataset(her2st_root, ["A1"], with_images=False)["A1"]
    shift = FeatureShift.fit({n: shift_features(her2st_imaged[n], tmp_path) for n in ("C2", "C3", "C4", "C5")})
    held_out = shift.score(shift_features(her2st_imaged["C6"], tmp_path))
    other_patient = shift.score(shift_features(a1, tmp_path))
    assert other_patient > held_out and shift.out_of_range(other_patient) and not shift.out_of_range(held_out)
