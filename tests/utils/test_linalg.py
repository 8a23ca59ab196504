import numpy as np
import pytest

from spafoundation.tasks.heads import program_loadings
from spafoundation.utils.linalg import thin_svd


def _gesdd_fails(monkeypatch):
    def svd(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", svd)


def test_thin_svd_falls_back_to_gesvd_where_gesdd_does_not_converge(monkeypatch):
    rng = np.random.default_rng(0)
    M = rng.normal(size=(30, 8)) @ rng.normal(size=(8, 50))  # low rank, as the reduced targets that made it fail
    expected = np.linalg.svd(M, full_matrices=False)[1]
    _gesdd_fails(monkeypatch)
    U, s, Vt = thin_svd(M)
    assert U.shape == (30, 30) and Vt.shape == (30, 50)
    np.testing.assert_allclose(s, expected, atol=1e-9)
    np.testing.assert_allclose(U * s @ Vt, M, atol=1e-9)


def test_thin_svd_still_raises_on_non_finite_input(monkeypatch):
    _gesdd_fails(monkeypatch)
    with pytest.raises(np.linalg.LinAlgError):
        thin_svd(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_program_loadings_survive_a_failed_gesdd(monkeypatch):
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(40, 60))  # fewer spots than genes: the thin-SVD path
    groups = np.repeat(["a", "b"], 20)
    expected = program_loadings(Z, groups, 3)
    _gesdd_fails(monkeypatch)
    got = program_loadings(Z, groups, 3)
    np.testing.assert_allclose(np.abs((got * expected).sum(1)), 1.0, atol=1e-9)  # same axes, up to sign


@pytest.mark.parametrize("shape", [(30, 80), (80, 30)])
def test_leading_svd_matches_the_full_decomposition(shape):
    from spafoundation.utils.linalg import leading_svd

    rng = np.random.default_rng(4)
    M = rng.normal(size=(shape[0], 6)) * np.array([9.0, 7, 5, 4, 3, 2]) @ rng.normal(size=(6, shape[1]))
    M += 0.1 * rng.normal(size=shape)
    U, s, Vt = leading_svd(M, 4)
    U0, s0, Vt0 = np.linalg.svd(M, full_matrices=False)
    np.testing.assert_allclose(s, s0[:4], rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(U * U0[:, :4], axis=0)), 1.0, atol=1e-9)  # same axes, up to sign
    np.testing.assert_allclose(np.abs(np.sum(Vt * Vt0[:4], axis=1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(U * s @ Vt, U0[:, :4] * s0[:4] @ Vt0[:4], atol=1e-8)


def test_leading_svd_beyond_the_rank_gives_zero_triplets():
    from spafoundation.utils.linalg import leading_svd

    rng = np.random.default_rng(5)
    M = rng.normal(size=(20, 2)) @ rng.normal(size=(2, 40))  # rank 2
    U, s, Vt = leading_svd(M, 4)
    assert U.shape == (20, 4) and Vt.shape == (4, 40) and np.all(np.isfinite(Vt))
    assert s[2] == s[3] == 0 and not Vt[2:].any()
    np.testing.assert_allclose(U * s @ Vt, M, atol=1e-8)
