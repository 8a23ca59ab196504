"""One registry of encoders by name, as in timm: a builder registers with ``@register_encoder(name)``,
``list_encoders()`` reads the registry, and ``build_encoder`` builds any registered name, ``timm:<arch>``,
``hf-hub:<repo>`` or a model folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spafoundation.errors import InputError
from spafoundation.models.encoder import Encoder, quantize_int8

# The modules whose builders register themselves on import (imported on first use: their imports are heavy and
# they import this module).
BUILTIN_MODULES = ("spafoundation.models.vits", "spafoundation.models.hub")


@dataclass(frozen=True)
class RegisteredEncoder:
    """A registered name and its builder: ``build(weights, overrides, pretrained) -> Encoder``."""

    name: str
    build: Callable[..., Encoder]
    description: str


_REGISTRY: dict[str, RegisteredEncoder] = {}


def register_encoder(name: str) -> Callable:
    """Decorator: register ``fn(weights=None, overrides=None, pretrained=True) -> Encoder`` under ``name``.

    The first line of the builder's docstring is the name's description in ``list_encoders()``. Names are matched
    without regard to case (Hugging Face repository ids are case-insensitive)."""
    def decorate(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"encoder {name!r} is registered twice")
        description = (fn.__doc__ or "").strip().split("\n", 1)[0]
        _REGISTRY[key] = RegisteredEncoder(name, fn, description)
        return fn

    return decorate


def _registry() -> dict[str, RegisteredEncoder]:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def list_encoders() -> dict[str, str]:
    """Every registered encoder name and a one-line description (``timm:<arch>``, ``hf-hub:<repo>`` and model
    folders are accepted besides these)."""
    return {e.name: e.description for e in _registry().values()}


def build_encoder(name_or_path, weights=None, device="cpu", *, pretrained: bool = True,
                  overrides: dict | None = None) -> Encoder:
    """Build an encoder in eval mode on ``device``.

    Parameters
    ----------
    name_or_path
        A registered name (``list_encoders()``), ``timm:<arch>``, ``hf-hub:<repo>``, or a model folder.
    weights
        A checkpoint file (``.pth``/``.safetensors``) or model folder, for names that take one.
    device
        Torch device of the built encoder.
    pretrained
        False builds a registered name's architecture with random weights and no download (as timm's
        ``create_model(name, pretrained=False)``), for tests and for inspecting an architecture.
    overrides
        Changes to the architecture or geometry (``{"timm_kwargs": {"depth": 2}, "input_size": 32}``), mainly for
        tests; also ``precision``, ``pooling``, ``name``, ``mean``/``std``, ``target_mpp``.

    Returns
    -------
    Encoder
        In eval mode; with ``precision="int8"`` its Linear layers dynamically quantised.
    """
    name = str(name_or_path)
    entry = _registry().get(name.lower())
    if entry is not None:
        enc = entry.build(weights, overrides, pretrained)
    elif name.startswith("timm:"):
        from spafoundation.models.hub import build_timm

        enc = build_timm(name[5:], weights, overrides)
    elif name.startswith("hf-hub:"):
        from spafoundation.models.hub import build_timm_hub

        enc = build_timm_hub(name[7:], weights, dict(overrides or {}))
    elif Path(name).exists():
        from spafoundation.models.vits import build_folder
        from spafoundation.models.weights import is_model_folder

        if not is_model_folder(name):
            raise InputError(name, "encoder", "not a model folder (needs config.json + model.safetensors); "
                             "for a checkpoint file use --encoder spafoundation-vitb16 --weights FILE")
        if weights:
            raise InputError(weights, "weights", "a model folder carries its own weights")
        enc = build_folder(name, overrides)
    else:
        raise InputError(None, "encoder", f"unknown encoder {name!r}; known: {', '.join(list_encoders())}, "
                         "timm:<arch>, hf-hub:<repo> or a model folder")
    enc = enc.to(device).eval()
    return quantize_int8(enc) if enc.precision == "int8" else enc
