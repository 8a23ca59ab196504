"""Slide access: one interface over tifffile (pyramidal TIFF/OME-TIFF/SVS via zarr), openslide and PIL.

Every reader works in level-0 (full-resolution) pixel coordinates, x = column, y = row. ``read_region`` cuts a
patch of a physical size (microns) and resamples it to the requested pixel size, reading from the coarsest
pyramid level that still has enough resolution, so only the requested region is decoded.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from spafoundation.errors import InputError
from spafoundation.io.pixels import check_decodable, oriented_size, pil_to_rgb8, to_rgb8

PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".btf", ".ndpi", ".scn", ".bif", ".qptiff"}
OPENSLIDE_ONLY_SUFFIXES = {".mrxs", ".vms", ".vmu", ".dcm"}
# scanner formats neither tifffile nor openslide reads: Bio-Formats converts each to a pyramidal OME-TIFF
CONVERT_FIRST = {".czi": "Zeiss", ".vsi": "Olympus/Evident", ".lif": "Leica", ".nd2": "Nikon", ".ims": "Imaris"}
BACKGROUND = 255
THUMB_BAND_PIXELS = 1 << 25  # level pixels decoded at once while building a thumbnail (~100 MB of RGB)
_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_pixel_limit(pixels: int):
    """Raise PIL's decompression-bomb limit for one call only; the global default is restored afterwards."""
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(old or 0, pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


class Slide:
    """Base class. Subclasses set ``path``, ``width``, ``height``, ``mpp``, ``level_downsamples`` and
    implement ``_read_level(level, x, y, w, h)`` (level pixel coordinates, already clipped to the level)."""

    path: Path
    width: int
    height: int
    mpp: float | None
    level_downsamples: list[float]
    level_shapes: list[tuple[int, int]]  # (height, width)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Region in level pixels; parts outside the image are white. Returns uint8 (h, w, 3)."""
        lh, lw = self.level_shapes[level]
        out = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read_level(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def best_level(self, downsample: float) -> int:
        """Coarsest level whose downsample does not exceed the wanted one (small tolerance)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = i
        return best

    def resolve_mpp(self, mpp: float | None) -> float:
        mpp = mpp or self.mpp
        if not mpp:
            raise InputError(self.path, "microns_per_pixel", "unknown pixel size: give it explicitly")
        return float(mpp)

    def read_region(
        self, center_xy: tuple[float, float], size_um: float, out_px: int, mpp: float | None = None
    ) -> np.ndarray:
        """Square patch of ``size_um`` microns centred on a level-0 point, resampled to ``out_px`` pixels."""
        mpp = self.resolve_mpp(mpp)
        size0 = size_um / mpp
        level = self.best_level(size0 / out_px)
        ds = self.level_downsamples[level]
        side = max(1, round(size0 / ds))
        x = round(center_xy[0] / ds - side / 2)
        y = round(center_xy[1] / ds - side / 2)
        region = self.read_level_region(level, x, y, side, side)
        if side != out_px:
            region = np.asarray(Image.fromarray(region).resize((out_px, out_px), Image.BILINEAR))
        return region

    def verify(self) -> None:
        """Cheap readability check: decode the last pixel of the full and of the coarsest level, which sit near
        the end of a tiled file, so a truncated file fails here rather than halfway through a job."""
        for level in {0, len(self.level_shapes) - 1}:
            lh, lw = self.level_shapes[level]
            self.read_level_region(level, lw - 1, lh - 1, 1, 1)

    def thumbnail(self, max_side: int = 2000) -> tuple[np.ndarray, float]:
        """Whole-slide thumbnail and its scale factor (thumbnail px per level-0 px)."""
        scale = min(1.0, max_side / max(self.width, self.height))
        level = self.best_level(1.0 / scale)
        lh, lw = self.level_shapes[level]
        tw, th = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        if (lw, lh) == (tw, th):
            return self.read_level_region(level, 0, 0, lw, lh), tw / self.width
        # Bands of rows keep memory bounded when the coarsest level is still large (a flat TIFF has one level).
        band = max(1, THUMB_BAND_PIXELS // max(lw, 1))
        parts = []
        for y0 in range(0, lh, band):
            y1 = min(lh, y0 + band)
            t0, t1 = round(y0 * th / lh), round(y1 * th / lh)
            if t1 > t0:
                part = self.read_level_region(level, 0, y0, lw, y1 - y0)
                parts.append(np.asarray(Image.fromarray(part).resize((tw, t1 - t0), Image.BILINEAR)))
        return np.concatenate(parts, axis=0), tw / self.width


class _DecodedImages:
    """The last few decoded JPEG/PNG images, keyed by file identity (path, size, mtime): a pipeline opens the same
    section's image once per step and feature, and decoding a 90 Mpx JPEG costs ~0.6 s each time. Read-only
    arrays, shared by every handle; bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes, self._items, self._lock = max_bytes, {}, threading.Lock()

    def get(self, path: Path, decode, part: int = 0) -> np.ndarray:
        """The decoded image (``part``: which one of the file, e.g. a TIFF's pyramid level)."""
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, part)
        with self._lock:
            arr = self._items.pop(key, None)
            if arr is not None:
                self._items[key] = arr  # most recently used last
                return arr
        arr = decode()
        arr.flags.writeable = False
        with self._lock:
            self._items[key] = arr
            while sum(a.nbytes for a in self._items.values()) > self.max_bytes and len(self._items) > 1:
                self._items.pop(next(iter(self._items)))
        return arr

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_DECODED = _DecodedImages()


class PILSlide(Slide):
    """JPEG/PNG. These cannot be read by region, so the decoded image is kept once per slide."""

    def __init__(self, path: Path, mpp: float | None = None):
        self.path = path
        self.mpp = mpp
        try:
            with _pil_pixel_limit(2_000_000_000), Image.open(path) as img:
                self.width, self.height = oriented_size(img)  # the size as shown, turned as its EXIF says
        except FileNotFoundError:
            raise InputError(path, "image", "file not found") from None
        except (OSError, Image.DecompressionBombError, SyntaxError) as e:
            raise InputError(path, "image", f"unreadable image ({e})") from None
        self.level_downsamples = [1.0]
        self.level_shapes = [(self.height, self.width)]
        self._array: np.ndarray | None = None

    def _load(self) -> np.ndarray:
        if self._array is None:
            self._array = _DECODED.get(self.path, self._decode)
        return self._array

    def _decode(self) -> np.ndarray:
        check_decodable(self.width, self.height, self.path)
        try:
            with _pil_pixel_limit(self.width * self.height + 1), Image.open(self.path) as img:
                img.load()
                return pil_to_rgb8(img, self.path)
        except (OSError, SyntaxError) as e:
            raise InputError(self.path, "image", f"truncated or unreadable image ({e})") from None
        except MemoryError:
            raise InputError(self.path, "image", f"{self.width} x {self.height} px do not fit in memory once "
                             "decoded: save it as a tiled TIFF") from None

    def _read_level(self, level, x, y, w, h):
        return self._load()[y : y + h, x : x + w]

    def verify(self) -> None:
        # A JPEG decodes as one stream: a small draft-mode thumbnail reads all of it, at 1/8 of the cost.
        self.thumbnail(256)

    def thumbnail(self, max_side: int = 2000) -> tuple[np.ndarray, float]:
        if self._array is not None:
            return super().thumbnail(max_side)
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: a fast thumbnail without the full image.
        scale = min(1.0, max_side / max(self.width, self.height))
        tw, th = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        try:
            with _pil_pixel_limit(self.width * self.height + 1), Image.open(self.path) as img:
                turned = oriented_size(img) != img.size
                img.draft("RGB", (th, tw) if turned else (tw, th))
                check_decodable(*img.size, self.path)
                rgb = pil_to_rgb8(img, self.path)
                return np.asarray(Image.fromarray(rgb).resize((tw, th), Image.BILINEAR)), tw / self.width
        except (OSError, SyntaxError) as e:
            raise InputError(self.path, "image", f"truncated or unreadable image ({e})") from None
        except MemoryError:
            raise InputError(self.path, "image", f"{self.width} x {self.height} px do not fit in memory once "
                             "decoded: save it as a tiled TIFF") from None

    def close(self) -> None:
        self._array = None


WHOLE_CHUNK_PX = 1 << 24  # a TIFF strip or tile of this many pixels or more: its level is decoded once, whole
MPP_PLAUSIBLE = (0.05, 20.0)  # um/px: from a 100x objective to a coarse overview scan


def _ome_pixel_size(ome_xml: str, series) -> float | None:
    """PhysicalSizeX (um) of the OME Image of ``series``: the one of its level-0 size (of those, its name first).
    None where no Image of that size records one: another image's pixel size would be wrong for this one."""
    import xml.etree.ElementTree as ET

    size = _series_yx(series)
    matches = []
    for image in ET.fromstring(ome_xml).findall(".//{*}Image"):
        pixels = image.find("{*}Pixels")
        if pixels is not None and "PhysicalSizeX" in pixels.attrib:
            if (int(pixels.get("SizeY", -1)), int(pixels.get("SizeX", -1))) == size:
                matches.append((image.get("Name") != series.name, pixels))
    if not matches:
        return None
    pixels = min(matches, key=lambda m: m[0])[1]
    factor = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
    return float(pixels.get("PhysicalSizeX")) * factor


def _tiff_mpp(tif, series) -> float | None:
    """Pixel size of ``series`` from OME-XML, an Aperio description (``MPP = x``) or the resolution tags."""
    try:
        if tif.is_ome and tif.ome_metadata:
            mpp = _ome_pixel_size(tif.ome_metadata, series)
            if mpp:
                return mpp
        page = series.keyframe
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
        if m:
            return float(m.group(1))
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            px_per_unit = num / den if den else 0
            if px_per_unit > 0 and unit in (2, 3):
                mpp = (25400.0 if unit == 2 else 10000.0) / px_per_unit
                # a writer's default (72 or 300 dpi: 353 or 85 um/px) is no microscope's pixel size
                return mpp if MPP_PLAUSIBLE[0] <= mpp <= MPP_PLAUSIBLE[1] else None
    except Exception:  # metadata is advisory: a malformed tag must not make a readable slide unreadable
        return None
    return None


def _series_yx(series) -> tuple[int, int]:
    """(height, width) of a series' full level, (0, 0) for one without both image axes."""
    if "Y" not in series.axes or "X" not in series.axes:
        return 0, 0
    return int(series.shape[series.axes.index("Y")]), int(series.shape[series.axes.index("X")])


def _slide_series(tif):
    """The largest image of the file. Slide scanners and converters (bfconvert of .vsi/.czi, SVS, NDPI) store a
    label, a macro photograph or an overview beside the scan, and not always after it."""
    sizes = [_series_yx(s) for s in tif.series]
    best = max(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], -i))
    return tif.series[best]


class TiffSlide(Slide):
    """Pyramidal or flat TIFF (also OME-TIFF, SVS, NDPI) read lazily through tifffile's zarr store."""

    def __init__(self, path: Path, mpp: float | None = None):
        import tifffile
        import zarr

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            series = _slide_series(self._tif)
            levels = list(series.levels)
        except FileNotFoundError:
            raise InputError(path, "image", "file not found") from None
        except Exception as e:
            raise InputError(path, "image", f"unreadable TIFF ({e})") from None
        self._axes = series.axes
        self._arrays = []
        store = series.aszarr()
        root = zarr.open(store, mode="r")
        if hasattr(root, "shape"):  # single level
            self._arrays = [root]
        else:
            self._arrays = [root[str(i)] for i in range(len(levels))]
        shapes = [self._yx(a.shape) for a in self._arrays]
        self.level_shapes = shapes
        self.height, self.width = shapes[0]
        self.level_downsamples = [self.width / s[1] for s in shapes]
        self.mpp = mpp or _tiff_mpp(self._tif, series)

    def _yx(self, shape) -> tuple[int, int]:
        ax = self._axes
        return int(shape[ax.index("Y")]), int(shape[ax.index("X")])

    def _read_level(self, level, x, y, w, h):
        arr = self._arrays[level]
        if np.prod([c for c, a in zip(arr.chunks, self._axes) if a in "YX"]) >= WHOLE_CHUNK_PX:
            # one strip (or tile) holds most of the level: each region would decode all of it again
            return _DECODED.get(self.path, lambda: self._decode(level), part=level)[y : y + h, x : x + w]
        index = []
        for a in self._axes:
            index.append(slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X" else slice(None))
        try:
            region = np.asarray(arr[tuple(index)])
        except Exception as e:
            raise InputError(self.path, "image", f"truncated or unreadable TIFF region ({e})") from None
        return self._rgb(region, h, w)

    def _rgb(self, pixels: np.ndarray, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 from the file's axes: moved to (Y, X, S), any other singleton axes dropped."""
        axes = self._axes
        order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
        return to_rgb8(np.transpose(pixels, order).reshape(h, w, -1), self.path)

    def _decode(self, level: int) -> np.ndarray:
        lh, lw = self.level_shapes[level]
        check_decodable(lw, lh, self.path)
        try:
            pixels = np.asarray(self._arrays[level][...])
        except MemoryError:
            raise InputError(self.path, "image", f"{lw} x {lh} px do not fit in memory once decoded: save it as a "
                             "tiled TIFF") from None
        except Exception as e:
            raise InputError(self.path, "image", f"truncated or unreadable TIFF ({e})") from None
        return self._rgb(pixels, lh, lw)

    def close(self) -> None:
        self._tif.close()


class OpenSlideSlide(Slide):
    def __init__(self, path: Path, mpp: float | None = None):
        import openslide

        self.path = path
        try:
            self._osr = openslide.OpenSlide(str(path))
        except Exception as e:
            raise InputError(path, "image", f"openslide cannot read it ({e})") from None
        self.width, self.height = self._osr.dimensions
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.level_shapes = [(h, w) for w, h in self._osr.level_dimensions]
        prop = self._osr.properties.get("openslide.mpp-x")
        self.mpp = mpp or (float(prop) if prop else None)

    def _read_level(self, level, x, y, w, h):
        ds = self.level_downsamples[level]
        img = self._osr.read_region((round(x * ds), round(y * ds)), level, (w, h))
        rgba = np.asarray(img)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = BACKGROUND  # transparent = outside the scanned area
        return rgb

    def close(self) -> None:
        self._osr.close()


def _openslide_available() -> bool:
    try:
        import openslide  # noqa: F401
    except Exception:
        return False
    return True


def open_slide(path: str | os.PathLike, mpp: float | None = None, backend: str = "auto") -> Slide:
    """Open an H&E image. ``mpp`` overrides the pixel size found in its metadata."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "image", "file not found")
    from spafoundation.io.slide_zarr import ZarrSlide, is_ome_zarr_image

    if backend in ("auto", "zarr") and is_ome_zarr_image(path):  # an image element of a SpatialData store
        return ZarrSlide(path, mpp)
    suffix = path.suffix.lower()
    if backend == "openslide" or (backend == "auto" and suffix in OPENSLIDE_ONLY_SUFFIXES):
        if not _openslide_available():
            raise InputError(
                path, "image", "this format needs openslide: pip install 'spafoundation[openslide]'"
            )
        return OpenSlideSlide(path, mpp)
    if backend == "pil" or (backend == "auto" and suffix in PIL_SUFFIXES):
        return PILSlide(path, mpp)
    if backend == "tifffile" or (backend == "auto" and suffix in TIFF_SUFFIXES):
        return TiffSlide(path, mpp)
    if suffix in CONVERT_FIRST:
        raise InputError(path, "image", f"a {CONVERT_FIRST[suffix]} '{suffix}' file is not read directly: convert it "
                         f"to OME-TIFF (bfconvert -noflat -pyramid-resolutions 4 -pyramid-scale 2 "
                         f"{path.name} {path.stem}.ome.tif) and give that; the scan is its largest image")
    raise InputError(
        path, "image", f"unsupported image format '{suffix}' (supported: jpg, png, tif, svs, ndpi, ...)"
    )
