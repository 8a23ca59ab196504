"""Numbers read from files, checked where they are read: type, finite, sign, range, and integer overflow. Every
reader uses these instead of its own ``float(...)`` / ``astype(int)``, so a bad value is an InputError naming the
file and the field, never a traceback or a silently wrong number (a count of 3e9 wrapping to -2147483648)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spafoundation.errors import InputError

INT32_MAX = int(np.iinfo(np.int32).max)
INT64_MAX = int(np.iinfo(np.int64).max)


def number(value, path, field: str, *, minimum: float | None = None, positive: bool = False,
           maximum: float | None = None) -> float:
    """``value`` as a finite float: a number or a numeric string; ``positive``: > 0; ``minimum``/``maximum``:
    inclusive bounds."""
    parsed = None
    if not isinstance(value, bool):
        try:
            parsed = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            parsed = None
    if parsed is None or not math.isfinite(parsed):
        raise InputError(path, field, f"not a finite number: {value!r}")
    if positive and parsed <= 0:
        raise InputError(path, field, f"must be positive, got {value!r}")
    if minimum is not None and parsed < minimum:
        raise InputError(path, field, f"must be >= {minimum:g}, got {value!r}")
    if maximum is not None and parsed > maximum:
        raise InputError(path, field, f"must be <= {maximum:g}, got {value!r}")
    return parsed


def positive_number(value, path, field: str) -> float:
    return number(value, path, field, positive=True)


def numeric_column(values, path, field: str) -> np.ndarray:
    """A table column as finite float64; the first value that is not a number (or is empty, NaN, infinite) is
    named with its row."""
    series = pd.Series(values).reset_index(drop=True)
    parsed = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(parsed)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(path, field, f"{int(bad.sum())} values are missing or not finite numbers (row {i + 1}: "
                         f"{series.iloc[i]!r})")
    return parsed


def integer_column(values, path, field: str, allowed=None) -> np.ndarray:
    """A table column of whole numbers as int64 (``allowed``: the only values accepted, e.g. (0, 1))."""
    parsed = numeric_column(values, path, field)
    fractional = parsed != np.round(parsed)
    if fractional.any():
        i = int(np.flatnonzero(fractional)[0])
        raise InputError(path, field, f"must hold whole numbers (row {i + 1}: {parsed[i]:g})")
    if np.abs(parsed).max(initial=0) > 2**53:
        raise InputError(path, field, "values too large to be exact")
    out = parsed.astype(np.int64)
    if allowed is not None:
        outside = ~np.isin(out, list(allowed))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise InputError(path, field, f"must be one of {', '.join(map(str, allowed))} (row {i + 1}: {out[i]})")
    return out


def integer_counts(X: sp.csr_matrix, path, field: str = "counts") -> sp.csr_matrix:
    """Whole-number counts in an integer type wide enough for them: int32 when every value fits, int64 when one
    does not, refused beyond int64 (a cast would wrap them round to negative numbers)."""
    peak = float(X.data.max()) if X.data.size else 0.0
    if peak > INT64_MAX:
        raise InputError(path, field, f"a count of {peak:.3g} is beyond the range of a 64-bit integer")
    return X.astype(np.int32 if peak <= INT32_MAX else np.int64)
