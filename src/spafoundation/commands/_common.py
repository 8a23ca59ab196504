"""Argument helpers shared by several subcommands."""

from __future__ import annotations

from spafoundation.errors import InputError


def parse_sections(text: str | None) -> list[str] | None:
    """``"C2,C3"`` -> ``["C2", "C3"]``; empty or None -> every section."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    return names or None


def parse_target_sum(text: str) -> float | None:
    """``--target-sum``: a positive number (counts per spot after scaling) or ``none`` (log1p of raw counts)."""
    if str(text).lower() in ("none", "raw", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(None, "--target-sum", f"expected a number or 'none', got {text!r}") from None
    if value <= 0:
        raise InputError(None, "--target-sum", "must be positive (or 'none' for log1p of raw counts)")
    return value


def add_cache_args(p) -> None:
    p.add_argument("--cache-dir", help="embedding cache (default $SPAFOUNDATION_CACHE or ~/.cache/spafoundation)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cache_dir(args):
    return False if args.no_cache else args.cache_dir
