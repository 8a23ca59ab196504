"""spafoundation: spatial gene expression from H&E histology with visual foundation models.

``import spafoundation as sf``: ``sf.read`` (datasets of every supported layout), ``sf.pp`` (normalisation, gene
selection), ``sf.tl`` (embeddings, expression, super-resolution, tumour score, spatial domains), ``sf.pl`` (their
figures), ``sf.settings`` (device, precision, cache, threads, progress), as in scanpy."""

from spafoundation._settings import settings
from spafoundation.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__", "settings"]
