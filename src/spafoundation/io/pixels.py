"""Pixels of any mode PIL or tifffile hands back, as 8-bit RGB, or an InputError naming the image.

- integers are scaled by their type's range (16-bit: 65535 -> 255), the same for every region of a slide;
- floats are taken as 0-1 (or 0-255 when larger values occur); NaN, negative or larger values are refused;
- grey is repeated into RGB; an alpha channel (grey+alpha, RGBA) is laid over white, the colour of no tissue;
- an image whose declared size would not fit in memory once decoded is refused before it is decoded."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from spafoundation.errors import InputError

BACKGROUND = 255
DECODE_COPIES = 2  # a decoded image and one converted copy live at once


def _scale_to_uint8(arr: np.ndarray, path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0 and arr.size and arr.min() < 0:
            raise InputError(path, "image", f"negative pixel values in a {arr.dtype} image")
        top = info.max
        if arr.dtype == np.int32 and arr.size and arr.max() <= 65535:
            top = 65535  # PIL hands a 16-bit grey PNG over as 32-bit integers ('I')
        return np.round(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise InputError(path, "image", f"{int((~np.isfinite(arr)).sum())} NaN or infinite pixel values in a "
                             "floating-point image")
        low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        if low < 0 or high > 255:
            raise InputError(path, "image", f"floating-point pixels from {low:g} to {high:g}: expected 0-1 or 0-255")
        scale = 255.0 if high <= 1.0 else 1.0
        return np.round(arr.astype(np.float64) * scale).astype(np.uint8)
    raise InputError(path, "image", f"unsupported pixel type {arr.dtype}")


def to_rgb8(arr: np.ndarray, path) -> np.ndarray:
    """(h, w[, channels]) pixels of any type as (h, w, 3) uint8."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels not in (1, 2, 3, 4):
        raise InputError(path, "image", f"{channels} channels per pixel: expected grey, grey+alpha, RGB or RGBA")
    arr = _scale_to_uint8(arr, path)
    colour = arr[..., :1] if channels <= 2 else arr[..., :3]
    if channels in (2, 4):
        alpha = arr[..., -1:].astype(np.float32) / 255.0
        colour = np.round(colour * alpha + BACKGROUND * (1.0 - alpha)).astype(np.uint8)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return np.ascontiguousarray(colour)


def pil_to_rgb8(img: Image.Image, path) -> np.ndarray:
    """A PIL image, turned as its EXIF orientation says, as (h, w, 3) uint8."""
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)  # a copy: made only when the EXIF says to turn or mirror the pixels
    if img.mode in ("RGB", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "LA", "RGBA"):
        return to_rgb8(np.asarray(img), path)
    if img.mode in ("P", "PA", "1", "La", "RGBa"):
        return to_rgb8(np.asarray(img.convert("RGBA")), path)
    return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV: PIL's conversion is the right one


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored; 2-8: mirrored and/or turned)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        return 1
    return value if value in range(1, 9) else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of ``img`` as displayed: EXIF orientations 5-8 turn it by a quarter."""
    w, h = img.size
    return (h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_decodable(width: int, height: int, path) -> None:
    """An InputError when an image of this declared size (it may be a few bytes that claim 40000 x 40000 px)
    would not fit in the memory available once decoded."""
    need = int(width) * int(height) * 3 * DECODE_COPIES
    free = available_memory()
    if free is not None and need > free:
        raise InputError(path, "image", f"declares {width} x {height} px, {need / 2**30:.1f} GiB to decode, more "
                         f"than the {free / 2**30:.1f} GiB of memory available: save it as a tiled TIFF, which is "
                         "read region by region")
