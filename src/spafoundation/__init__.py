"""spafoundation: spatial gene expression from H&E histology with visual foundation models.

``import spafoundation as sf``, as scanpy: ``sf.read`` (datasets of every supported layout), ``sf.pp``
(normalisation, gene selection), ``sf.tl`` (embeddings, expression, super-resolution, tumour score, spatial domains),
``sf.pl`` (their figures), ``sf.io`` (readers, slides, patches, SpatialData in and out), ``sf.settings`` (device,
precision, cache, threads, progress)."""

import importlib

from spafoundation._settings import settings
from spafoundation.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__", "io", "pl", "pp", "read", "settings", "tl"]


def __getattr__(name: str):
    # imported on first use: the CLI imports this package for its version and must not load anndata or torch
    if name in ("pp", "tl", "pl", "io"):
        return importlib.import_module(f"spafoundation.{name}")
    if name == "read":
        from spafoundation._read import read

        return read
    raise AttributeError(f"module 'spafoundation' has no attribute {name!r}")


def __dir__() -> list[str]:
    # tab completion shows the lazily imported namespaces too (sf.read, sf.pp, sf.tl, sf.pl, sf.io)
    return sorted({*__all__, *globals()} - {"importlib"})
