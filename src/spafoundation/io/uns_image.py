"""The H&E of an AnnData that holds only the images scanpy and squidpy keep in ``uns['spatial'][library]['images']``
(``sc.read_visium`` without ``source_image_path``, ``sq.read.visium``, an .h5ad saved from either).

Every command reads patches from an image file, so the finest of those arrays ('hires', else 'lowres') is written
once to a PNG named by its content under the cache folder (``<cache>/uns_images``; the same array is the same file,
so embeddings cached from it are found again) and read at its scale factor as a downscaled copy, as Space Ranger's
``tissue_hires_image.png`` is read from a sample folder (io/downscaled.py): patches keep their size in microns and
are upsampled, with the one warning line that says the effective resolution.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from spafoundation.errors import InputError

# the arrays scanpy/squidpy keep, finest first, with the scale factor (image px per full-resolution px) of each
UNS_IMAGES = (("hires", "tissue_hires_scalef"), ("lowres", "tissue_lowres_scalef"))
FOLDER = "uns_images"


def uns_image(lib: dict, section: str, where) -> tuple[Path, float, str] | None:
    """(PNG file, its scale, where it came from) for the finest image array in ``lib['images']``; None when there is
    none. ``where``: the file the library was read from (None in memory), named by errors."""
    from spafoundation.io.downscaled import check_scale
    from spafoundation.io.pixels import to_rgb8

    images, scalefactors = lib.get("images") or {}, lib.get("scalefactors") or {}
    for key, scalef in UNS_IMAGES:
        if images.get(key) is None:
            continue
        field = f"uns['spatial']['{section}']"
        if scalef not in scalefactors:
            raise InputError(where, f"{field}['scalefactors']['{scalef}']",
                             f"missing: the scale of images['{key}'] (image px per full-resolution px)")
        scale = check_scale(scalefactors[scalef], where, f"{field}['scalefactors']['{scalef}']")
        pixels = np.asarray(images[key])
        if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) == 0:
            raise InputError(where, f"{field}['images']['{key}']", f"expected an (h, w[, channels]) image, got "
                             f"shape {pixels.shape}")
        rgb = to_rgb8(pixels, where)
        return _png(rgb), scale, f"{field}['images']['{key}']"
    return None


def _png(rgb: np.ndarray) -> Path:
    """The PNG of ``rgb`` in the cache folder, written once (by a temporary name, then renamed)."""
    from spafoundation.models.cache import cache_root
    from spafoundation.utils.atomic import atomic_path

    digest = hashlib.sha256(np.asarray(rgb.shape, np.int64).tobytes() + rgb.tobytes()).hexdigest()[:24]
    path = cache_root() / FOLDER / f"{digest}.png"
    if not path.exists():
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
    return path
