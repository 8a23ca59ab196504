"""An OME-Zarr multiscale image (an image element of a SpatialData store) read as a slide, region by region.

The folder's metadata (``zarr.json`` attributes ``ome.multiscales`` in OME-NGFF 0.5, or ``.zattrs``
``multiscales`` in 0.4) lists the levels, finest first, and the axes; only zarr itself is needed to read it, so an
image inside a store opens like any pyramidal TIFF and only the chunks a region touches are decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spafoundation.errors import InputError
from spafoundation.io.slide import Slide, _to_rgb


def multiscales_metadata(path: Path) -> dict | None:
    """The first ``multiscales`` entry of an OME-Zarr image folder, or None when ``path`` is not one."""
    for name, wrap in (("zarr.json", ("attributes", "ome")), (".zattrs", ())):
        meta_file = path / name
        if not meta_file.is_file():
            continue
        try:
            attrs = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        for key in wrap:
            attrs = attrs.get(key, {}) if isinstance(attrs, dict) else {}
        multiscales = attrs.get("multiscales") if isinstance(attrs, dict) else None
        if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict):
            return multiscales[0]
    return None


def is_ome_zarr_image(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and multiscales_metadata(path) is not None


class ZarrSlide(Slide):
    """Levels of an OME-Zarr multiscale image with axes (c, y, x), (y, x, c) or (y, x); 1 channel is grey, 3 or
    more are taken as RGB (the first three)."""

    def __init__(self, path: Path, mpp: float | None = None):
        import zarr

        self.path, self.mpp = path, mpp
        meta = multiscales_metadata(path)
        if meta is None:
            raise InputError(path, "image", "not an OME-Zarr multiscale image (no multiscales metadata)")
        try:
            self._axes = [a["name"] if isinstance(a, dict) else str(a) for a in meta["axes"]]
            group = zarr.open_group(str(path), mode="r")
            self._arrays = [group[d["path"]] for d in meta["datasets"]]
        except Exception as e:
            raise InputError(path, "image", f"unreadable OME-Zarr image ({e})") from None
        if "y" not in self._axes or "x" not in self._axes or not self._arrays:
            raise InputError(path, "image", f"expected y and x axes and at least one level, found {self._axes}")
        self.level_shapes = [(int(a.shape[self._axes.index("y")]), int(a.shape[self._axes.index("x")]))
                             for a in self._arrays]
        self.height, self.width = self.level_shapes[0]
        self.level_downsamples = [self.width / s[1] for s in self.level_shapes]

    def _read_level(self, level, x, y, w, h):
        index = tuple(slice(y, y + h) if a == "y" else slice(x, x + w) if a == "x" else slice(None)
                      for a in self._axes)
        try:
            region = np.asarray(self._arrays[level][index])
        except Exception as e:
            raise InputError(self.path, "image", f"truncated or unreadable OME-Zarr region ({e})") from None
        spatial = [self._axes.index("y"), self._axes.index("x")]
        order = spatial + [i for i in range(len(self._axes)) if i not in spatial]
        return _to_rgb(np.transpose(region, order).reshape(h, w, -1))
