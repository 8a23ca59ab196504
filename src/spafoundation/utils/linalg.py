"""Linear algebra that does not fail where LAPACK's fast path gives up."""

from __future__ import annotations

import numpy as np


def thin_svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U, s, Vt`` of ``M`` (``full_matrices=False``). NumPy's divide-and-conquer driver (gesdd) now and then stops
    with "SVD did not converge" on a finite, nearly low-rank matrix (a section's 785 genes reduced to 50 axes, one
    inner fold of the 785-gene benchmark); the slower QR-iteration driver (gesvd) decomposes the same matrix."""
    try:
        return np.linalg.svd(M, full_matrices=False)
    except np.linalg.LinAlgError:
        if not np.isfinite(M).all():
            raise
        import scipy.linalg

        return scipy.linalg.svd(M, full_matrices=False, lapack_driver="gesvd")
