"""What every ``sf.tl`` function takes from ``sf.settings``: the encoder's device and precision, the cache, progress."""

from __future__ import annotations

from spafoundation._settings import settings


def encoder_for(encoder):
    """An Encoder as is; a name or model folder built on ``settings.device`` at ``settings.precision``."""
    from spafoundation.tasks.expression import resolve_encoder

    return resolve_encoder(encoder, device=settings.device)


def cache_dir():
    """The task functions' ``cache_dir``: False turns the cache off; None lets ``cache_root`` read the settings."""
    return False if settings.cache_dir is False else None


def progress() -> bool:
    return settings.progress
