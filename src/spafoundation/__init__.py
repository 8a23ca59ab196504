"""spafoundation: spatial gene expression from H&E histology with visual foundation models."""

from spafoundation.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__"]
