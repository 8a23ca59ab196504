"""Sections as a user who holds only a downscaled export of their H&E has them (issue #18).

Most public Visium deposits ship Space Ranger's ``tissue_hires_image.png`` (2000 px on its long side) and no
full-resolution image. ``hires_only_copy`` makes that copy of a benchmark section: the same counts and spot
positions, with a 2000 px PNG of its image, read back the way a user reads one (a one-library .h5ad with
``image=`` and ``image_scale=``), so the benchmark can score a model fitted on full-resolution sections on it.
"""

from __future__ import annotations

import io
from pathlib import Path

import anndata as ad
from PIL import Image

from spafoundation.io.anndata_spec import library_id, spatial_meta, without_thumbnail
from spafoundation.io.patches import open_section_slide
from spafoundation.utils.atomic import atomic_path

HIRES_LONG_SIDE = 2000  # px: Space Ranger's tissue_hires_image.png


def hires_only_copy(section: ad.AnnData, folder: str | Path, long_side: int = HIRES_LONG_SIDE) -> ad.AnnData:
    """``section`` with its image replaced by a PNG of ``long_side`` px on its long side (Lanczos, from a read at
    twice that size), written to ``folder`` as ``<section>_hires.png`` with the section as ``<section>.h5ad`` and
    read back from them. A PNG already there with the same pixels is kept, so caches keyed on the file stay valid."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lib = library_id(section)
    with open_section_slide(section) as slide:
        width, height = slide.width, slide.height  # the full-resolution frame, whatever the file's own size
        large, _ = slide.thumbnail(2 * long_side)
    scale = long_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    buffer = io.BytesIO()
    Image.fromarray(large).resize(size, Image.LANCZOS).save(buffer, format="PNG")
    png = folder / f"{lib}_hires.png"
    if not png.exists() or png.read_bytes() != buffer.getvalue():
        with atomic_path(png) as tmp:
            Path(tmp).write_bytes(buffer.getvalue())
    copy = without_thumbnail(section)
    meta = spatial_meta(copy)["metadata"]
    meta["image_path"] = ""
    meta.pop("source_image_path", None)
    copy.strings_to_categoricals()  # what write_h5ad would do, without a line per column on the console
    h5ad = folder / f"{lib}.h5ad"
    with atomic_path(h5ad) as tmp:
        copy.write_h5ad(tmp)
    from spafoundation.io.readers import read_dataset

    return read_dataset(h5ad, image=png, image_scale=scale)[lib]
