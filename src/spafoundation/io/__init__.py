"""Readers to AnnData, slide access and patches."""

from spafoundation.io.anndata_spec import library_id, microns_per_pixel, spot_diameter_fullres
from spafoundation.io.patches import PatchDataset, extract_patches, tissue_fraction
from spafoundation.io.readers import detect_format, read_dataset
from spafoundation.io.slide import open_slide
from spafoundation.io.spatialdata_write import add_to_spatialdata, write_spatialdata

__all__ = [
    "PatchDataset",
    "add_to_spatialdata",
    "detect_format",
    "extract_patches",
    "library_id",
    "microns_per_pixel",
    "open_slide",
    "read_dataset",
    "spot_diameter_fullres",
    "tissue_fraction",
    "write_spatialdata",
]
