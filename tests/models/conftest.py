"""Fixtures of the encoder tests (the tiny encoders live in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def c2_16(her2st_c2):
    """16 spots of C2, a private copy (the session fixture stays untouched)."""
    return her2st_c2[:16].copy()
