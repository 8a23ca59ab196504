"""Nuclear morphometry of H&E patches: how many nuclei, how large and how dark, from the haematoxylin channel.

Cell density and nuclear size tell tumour from lymphocytes, stroma and fat in any lab's stain, where raw colour
statistics do not carry over (issue #17: across HER2ST patients these features lift the expression pipeline,
BENCHMARKS.md).
No segmentation model: blobs are found with a Laplacian of Gaussian at nuclear scales, and nuclei are the connected
regions above an Otsu threshold of the patch's haematoxylin, so a few milliseconds per patch on a CPU.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from spafoundation.io.patches import otsu_threshold
from spafoundation.models.handcrafted import _as_batch, rgb_to_hed

UM_PER_PX = 1.0  # resolution the patches are read at: nuclei (5-10 um) span 5-10 px
BLOB_SCALES_UM = (2.0, 4.0)  # Laplacian-of-Gaussian sigmas: small (lymphocyte) and large (tumour) nuclei
MIN_NUCLEUS_UM2 = 8.0  # regions smaller than this are noise, not nuclei
GLASS_GREY = 0.85  # grey level (0-1) above which a pixel is glass, fat or lumen
MIN_CONTRAST = 0.05  # haematoxylin spread (1st-99th percentile) below which a patch has no nuclei to threshold
N_FEATURES = 13


def nuclei_features(patches: np.ndarray, um_per_px: float = UM_PER_PX) -> np.ndarray:
    """(n, 13) float32 per patch: for each blob scale, the mean positive and 90th-percentile Laplacian-of-Gaussian
    response of haematoxylin and the density of blobs (per 10^4 px); then the number of nuclei, their mean, sd and
    median area (um^2), the nuclear share of the patch, its share of bright pixels (glass, fat, lumen) and the mean
    haematoxylin inside nuclei."""
    patches = _as_batch(patches)
    out = np.zeros((len(patches), N_FEATURES), dtype=np.float32)
    for i, patch in enumerate(patches):
        h = ndi.gaussian_filter(rgb_to_hed(patch)[..., 0].astype(np.float64), 1.0)
        row = []
        for scale_um in BLOB_SCALES_UM:
            s = scale_um / um_per_px
            response = -ndi.gaussian_laplace(h, s) * s * s  # scale-normalised: bright blobs positive
            peaks = (response == ndi.maximum_filter(response, size=int(2 * s) + 1)) & (
                response > response.mean() + 2 * response.std())
            row += [np.maximum(response, 0).mean(), np.percentile(response, 90), peaks.mean() * 1e4]
        lo, hi = np.percentile(h, (1, 99))
        mask = (ndi.binary_opening(h > otsu_threshold(h.ravel()), iterations=1) if hi - lo >= MIN_CONTRAST
                else np.zeros(h.shape, dtype=bool))  # uniform glass or stroma: Otsu would split its noise
        labels, n = ndi.label(mask)
        areas = np.bincount(labels.ravel())[1:] * um_per_px * um_per_px if n else np.zeros(0)
        areas = areas[areas >= MIN_NUCLEUS_UM2]
        row += [len(areas), areas.mean() if len(areas) else 0.0, areas.std() if len(areas) > 1 else 0.0,
                np.median(areas) if len(areas) else 0.0, mask.mean(), (patch.mean(-1) / 255.0 > GLASS_GREY).mean(),
                h[mask].mean() if mask.any() else 0.0]
        out[i] = row
    return out
