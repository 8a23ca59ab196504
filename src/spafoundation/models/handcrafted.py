"""Hand-crafted patch features: the baselines every learned encoder must beat, and H&E stain conversion.

Stain separation follows Ruifrok & Johnston (2001): optical density is a linear mix of haematoxylin, eosin and DAB
stain vectors, so unmixing is one matrix product in OD space.
"""

from __future__ import annotations

import numpy as np

# Rows: normalised OD vectors of haematoxylin, eosin, DAB (Ruifrok & Johnston).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
PERCENTILES = (10, 50, 90)
FEATURES_VERSION = 1  # part of the cache key of stored features (embed_handcrafted.py): bump when a feature changes
# Bin edges of haematoxylin and eosin concentration (natural-log OD units), spread over the range seen in H&E.
STAIN_BIN_EDGES = {0: (0.0, 0.5, 1.0, 2.0), 1: (0.0, 0.05, 0.15, 0.3)}


def _as_batch(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim == 3:
        patches = patches[None]
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"expected (n, h, w, 3) RGB patches, got shape {patches.shape}")
    return patches


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> stain concentrations (..., 3) float32 (H, E, D), non-negative."""
    od = -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)
    return np.clip(od @ HED_FROM_RGB, 0.0, None).astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Stain concentrations (..., 3) -> uint8 RGB (..., 3); the inverse of ``rgb_to_hed`` up to rounding."""
    od = np.asarray(hed, dtype=np.float64) @ RGB_FROM_HED
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def mean_colour(patches: np.ndarray) -> np.ndarray:
    """Mean RGB of each patch in [0, 1]: (n, 3) float32."""
    patches = _as_batch(patches)
    return (patches.reshape(len(patches), -1, 3).mean(axis=1) / 255.0).astype(np.float32)


def _gradient_stats(grey: np.ndarray) -> np.ndarray:
    """(n, 4): mean and std of gradient magnitude, Laplacian variance, mean absolute deviation of grey levels."""
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.hypot(gx, gy).reshape(len(grey), -1)
    lap = (grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
           - 4 * grey[:, 1:-1, 1:-1]).reshape(len(grey), -1)
    flat = grey.reshape(len(grey), -1)
    mad = np.abs(flat - flat.mean(axis=1, keepdims=True)).mean(axis=1)
    return np.stack([mag.mean(1), mag.std(1), lap.var(1), mad], axis=1)


def colour_texture_features(patches: np.ndarray) -> np.ndarray:
    """Colour and texture descriptors of each patch: (n, 42) float32.

    RGB and HED channel mean, std and 10/50/90th percentiles (30); coarse histograms of haematoxylin and eosin
    concentration, which track nuclear density and stroma (2 x 4); grey-level gradient and Laplacian texture (4).
    """
    patches = _as_batch(patches)
    n = len(patches)
    rgb = patches.reshape(n, -1, 3).astype(np.float32) / 255.0
    hed = rgb_to_hed(patches).reshape(n, -1, 3)
    feats = []
    for chans in (rgb, hed):
        feats += [chans.mean(1), chans.std(1)]
        feats += list(np.percentile(chans, PERCENTILES, axis=1))
    for c, edges in STAIN_BIN_EDGES.items():  # haematoxylin (nuclei) and eosin (stroma, cytoplasm)
        idx = np.searchsorted(np.asarray(edges[1:]), hed[:, :, c], side="right")
        feats.append(np.stack([(idx == b).mean(1) for b in range(len(edges))], axis=1))
    grey = patches.astype(np.float32).mean(axis=-1) / 255.0
    feats.append(_gradient_stats(grey))
    return np.concatenate(feats, axis=1).astype(np.float32)

