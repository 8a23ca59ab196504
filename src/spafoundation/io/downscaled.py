"""H&E images coarser than the spot coordinates: Space Ranger's ``tissue_hires_image.png``, a viewer's export, a
thumbnail with a known factor.

Spot coordinates stay in full-resolution pixels (``obsm['spatial']``, as scanpy and squidpy expect), and such an
image is read through its scale, ``metadata['image_scale']``: image pixels per full-resolution pixel (Space
Ranger's ``tissue_hires_scalef`` for its hires image, below 1 for any downscaled copy). ``FramedSlide`` shows the
copy in the full-resolution frame, so a patch of a given size in microns covers the same tissue whatever the
image's resolution, upsampled where the copy is coarser than the encoder's input.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spafoundation.errors import InputError
from spafoundation.io.slide import Slide, open_slide

log = logging.getLogger(__name__)

# Space Ranger's own images in spatial/ and the scale factor it records for each in scalefactors_json.json
SPACERANGER_SCALEFACTORS = {"tissue_hires_image": "tissue_hires_scalef", "tissue_lowres_image": "tissue_lowres_scalef"}


class FramedSlide(Slide):
    """A scaled copy of an H&E in the full-resolution frame of its spots: level-0 coordinates are full-resolution
    pixels, and each level of the copy sits at its downsample from that frame (``scale``: copy px per frame px)."""

    def __init__(self, copy: Slide, scale: float):
        self._copy, self.scale = copy, float(scale)
        self.path = copy.path
        self.mpp = None if copy.mpp is None else copy.mpp * self.scale
        self.width = max(1, round(copy.width / self.scale))
        self.height = max(1, round(copy.height / self.scale))
        self.level_shapes = list(copy.level_shapes)
        self.level_downsamples = [d / self.scale for d in copy.level_downsamples]

    def _read_level(self, level, x, y, w, h):
        return self._copy._read_level(level, x, y, w, h)

    def verify(self) -> None:
        self._copy.verify()

    def close(self) -> None:
        self._copy.close()


def open_image(path, mpp: float | None = None, scale: float = 1.0) -> Slide:
    """The slide of a section's image in full-resolution pixels: the image itself (``scale`` 1), else its copy
    framed by ``scale``. ``mpp``: microns per full-resolution pixel."""
    if scale == 1.0:
        return open_slide(path, mpp=mpp)
    return FramedSlide(open_slide(path, mpp=None if mpp is None else mpp / scale), scale)


def check_scale(value, path, field: str) -> float:
    """A scale factor as given (manifest, config, scalefactors_json.json): a positive finite number."""
    from spafoundation.io.values import positive_number

    try:
        return positive_number(value, path, field)
    except InputError:
        raise InputError(path, field, "must be a positive number (image px per full-resolution px), got "
                         f"{value!r}") from None


_warned: set[tuple] = set()  # (section, image, scale) already warned about since ``forget_warnings``


def forget_warnings() -> None:
    """Warn again about every downscaled image: each command starts with this (cli.main), so a command that reads
    its dataset twice (run, then its report) says it once, and each step of a run says it for itself."""
    _warned.clear()


def warn_if_downscaled(section: str, image, mpp: float, scale: float, source: str) -> None:
    """One warning line for an image coarser than the spot coordinates: its effective resolution, and what it
    costs."""
    key = (section, str(Path(image).resolve()), scale)
    if scale >= 1.0 or key in _warned:
        return
    _warned.add(key)
    log.warning("section %s: the H&E is %s (%s), %.1fx smaller than the spot coordinates' frame: %.2f um/px "
                "instead of %.2f; patches are upsampled to the encoder's input, so predictions and maps rest on "
                "coarser detail and are less accurate than from the full-resolution H&E", section, Path(image).name,
                source, 1 / scale, mpp / scale, mpp)
