"""Sections as another lab or scanner would show them: the same spots and counts, the H&E re-stained or coarsened.

``jittered_copy`` writes a copy of a section's image with its stain moved in HED optical density (haematoxylin,
eosin and residual each scaled by 1 + N(0, ``sigma``) and shifted by N(0, ``bias``), the colour augmentation that
carried best across centres in Tellez et al. 2019) and its brightness by up to ``brightness``; with ``coarsen`` > 1
it is then downscaled by that factor and scaled back up (the detail of a coarser scan, in the same pixel frame). One
draw per copy, from ``seed``: the whole slide moves together, as a slide from another lab does. The copy is the
section with that image, so a benchmark can ask how far a model's predictions on the same spots move.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image

from spafoundation.io.anndata_spec import image_path, library_id, spatial_meta, without_thumbnail
from spafoundation.io.slide import open_slide
from spafoundation.utils.atomic import atomic_path

BAND_ROWS = 512  # rows re-stained at a time: float copies of a 90 Mpx image would take 1 GB each


def restain_image(rgb: np.ndarray, scale, shift, brightness: float) -> np.ndarray:
    """``rgb`` (uint8, rows x cols x 3) with its HED concentrations scaled by ``scale`` and shifted by ``shift``
    (3 each, the pre-training augmentation's ``train.augment.restain``) and its intensity multiplied by
    ``brightness``."""
    import torch

    from spafoundation.train.augment import restain

    scale = torch.as_tensor(np.asarray(scale, dtype=np.float32)).view(1, 3, 1, 1)
    shift = torch.as_tensor(np.asarray(shift, dtype=np.float32)).view(1, 3, 1, 1)
    out = np.empty_like(rgb)
    for r in range(0, len(rgb), BAND_ROWS):
        band = torch.from_numpy(np.ascontiguousarray(rgb[r : r + BAND_ROWS])).permute(2, 0, 1)[None].float() / 255
        moved = restain(band, scale, shift)[0].permute(1, 2, 0).numpy() * (255 * brightness)
        out[r : r + BAND_ROWS] = np.clip(moved + 0.5, 0, 255).astype(np.uint8)
    return out


def jittered_copy(section: ad.AnnData, folder: str | Path, *, seed: int, sigma: float = 0.1, bias: float = 0.03,
                  brightness: float = 0.1, coarsen: float = 1.0, name: str | None = None) -> ad.AnnData:
    """``section`` with its image replaced by a re-stained (and, with ``coarsen`` > 1, coarsened) copy, written to
    ``folder`` as ``<name or section>.tif`` (tiled, lossless); a file already there is kept, so caches keyed on it
    stay valid (the same arguments write the same pixels). The image is read whole: for benchmark sections, not
    whole slides."""
    if coarsen < 1:
        raise ValueError(f"coarsen must be >= 1 (a downscale factor), got {coarsen}")
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name or library_id(section)}.tif"
    if not out.exists():
        rng = np.random.default_rng(seed)
        scale, shift = 1 + sigma * rng.standard_normal(3), bias * rng.standard_normal(3)
        gain = 1 + brightness * (2 * rng.random() - 1)
        with open_slide(image_path(section)) as slide:  # the file's own pixels, whatever frame the spots use
            rgb = slide.read_level_region(0, 0, 0, slide.width, slide.height)
        rgb = restain_image(np.ascontiguousarray(rgb[..., :3]), scale, shift, gain)
        if coarsen > 1:
            h, w = rgb.shape[:2]
            small = Image.fromarray(rgb).resize((max(1, round(w / coarsen)), max(1, round(h / coarsen))),
                                                Image.LANCZOS)
            rgb = np.asarray(small.resize((w, h), Image.BICUBIC))
        with atomic_path(out) as tmp:
            tifffile.imwrite(tmp, rgb, tile=(512, 512), photometric="rgb")
    copy = without_thumbnail(section)
    meta = spatial_meta(copy)["metadata"]
    meta["image_path"] = str(out)
    meta.pop("source_image_path", None)
    return copy
