"""Stain normalisation of H&E patches to a reference: Macenko (stain vectors in optical density) or Reinhard (Lab
colour statistics).

Why not torchstain (checked, 1.4.1): its ``normalize(image)`` always re-estimates the source stains from that one
image, so a slide cannot be normalised with one estimate made over many of its tissue patches; it takes no tissue
mask, and a masked export's black glass (optical density ~5.5 in every channel) passes its transparency threshold
as the densest "stain" and tilts the stain plane; and it raises (``LinAlgError``, NaN) on a patch without tissue.

How it is used (``SectionStain``): the reference is fitted once over tissue pixels of a sample of patches (the
training sections of a model, or the built-in reference below); each section's own stain statistics are estimated
the same way over a sample of its spots' patches, and every patch of the section is then mapped with that one
section estimate. Estimating per section, not per patch, keeps the differences between spots that carry signal
(a patch of dense nuclei stays darker than one of stroma), and a spot on glass needs no estimate of its own.
``StainNormalizer.transform`` without a source estimate normalises each patch on its own (torchstain's use), and a
patch with too little tissue to estimate from is left as it is and counted (``n_identity``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from spafoundation import defaults
from spafoundation.errors import InputError
from spafoundation.io.patches import MASKED_MAX, tissue_mask

log = logging.getLogger(__name__)
METHODS = defaults.STAIN_NORM_METHODS
OD_MIN = 0.15  # optical density below which a channel counts as transparent (Macenko et al. 2009's beta)
ANGLE_PERCENTILE = 1.0  # robust extremes of the stain angles (Macenko's alpha)
MAX_PERCENTILE = 99.0  # a stain's "maximum" concentration
MIN_PIXELS = 500  # fewer tissue pixels than this: no estimate (identity)
MAX_PIXELS = 200_000  # pixels an estimate uses at most (an even subsample), to bound memory and time
# Patches an estimate is made from: spots of a section (evenly spaced), at the default encoder's 1 um/px.
SAMPLE_SPOTS = 64
SAMPLE_PATCH_UM = 112.0
SAMPLE_PATCH_PX = 112
# Built-in reference for stain normalisation without a fitted model (embed, tumor, cluster): fitted with
# fit_reference over 64 spot patches of each of HER2ST's patient C sections C2-C6 (full-resolution scans of one lab);
# regenerate with ``python -m spafoundation.io.stain DATA C2,C3,C4,C5,C6``.
BUILTIN = {
    "macenko": {"stain_matrix": [[0.7401, 0.4145], [0.5921, 0.7972], [0.3188, 0.439]],
                "max_concentration": [3.034, 1.2848]},
    "reinhard": {"mean": [51.9021, 15.266, -22.6042], "std": [17.5831, 5.1036, 7.7538]},
}
BUILTIN_SOURCE = "built-in: HER2ST patient C (C2-C6)"
KEYS = {"macenko": ("stain_matrix", "max_concentration"), "reinhard": ("mean", "std")}
SHAPES = {"stain_matrix": (3, 2), "max_concentration": (2,), "mean": (3,), "std": (3,)}


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density of uint8 RGB values (..., 3), float64; glass (255) is ~0."""
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)


def from_optical_density(od: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def tissue_pixels(patches: np.ndarray) -> np.ndarray:
    """The stained tissue pixels (m, 3) uint8 of RGB patches (any leading dims): coloured or dark by the patch tissue
    rule, but not glass masked to black (brightest channel below ``MASKED_MAX``, which the dark rule takes for
    tissue), and at least ``OD_MIN`` optical density in every channel. An even subsample past ``MAX_PIXELS``."""
    rgb = np.asarray(patches, dtype=np.uint8).reshape(-1, 3)
    keep = tissue_mask(rgb) & (rgb.max(axis=-1) >= MASKED_MAX) & (optical_density(rgb) >= OD_MIN).all(axis=-1)
    pixels = rgb[keep]
    if len(pixels) > MAX_PIXELS:
        pixels = pixels[np.linspace(0, len(pixels) - 1, MAX_PIXELS).astype(np.int64)]
    return pixels


def _macenko(pixels: np.ndarray) -> dict | None:
    """Stain matrix (3 x 2: haematoxylin, eosin OD unit vectors) and 99th-percentile concentrations of tissue
    pixels, after Macenko et al. (ISBI 2009); None when the pixels do not span two stains."""
    od = optical_density(pixels)
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]  # the two largest eigenvalues' vectors
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # a sign convention, so an estimate is reproducible
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v_lo, v_hi = plane @ np.array([np.cos(lo), np.sin(lo)]), plane @ np.array([np.cos(hi), np.sin(hi)])
    # haematoxylin absorbs more red light than eosin: the vector with the larger red OD is H
    he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    he /= np.linalg.norm(he, axis=0, keepdims=True)
    if not np.isfinite(he).all() or abs(float(he[:, 0] @ he[:, 1])) > 0.995:
        return None
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    max_c = np.percentile(conc, MAX_PERCENTILE, axis=1)
    if not np.isfinite(max_c).all() or (max_c <= 1e-6).any():
        return None
    return {"stain_matrix": he, "max_concentration": max_c}


def _lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0).reshape(-1, 3)


def _reinhard(pixels: np.ndarray) -> dict | None:
    """Mean and standard deviation of the tissue pixels in CIE Lab (Reinhard et al. 2001, on tissue only)."""
    lab = _lab(pixels)
    std = lab.std(axis=0)
    if (std <= 1e-6).any():
        return None
    return {"mean": lab.mean(axis=0), "std": std}


ESTIMATORS = {"macenko": _macenko, "reinhard": _reinhard}


def stain_statistics(patches: np.ndarray, method: str) -> dict | None:
    """The ``method``'s statistics of the tissue pixels of ``patches`` (uint8 RGB, any leading dims), or None when
    there are fewer than ``MIN_PIXELS`` of them or they do not give an estimate (a blank or glass patch)."""
    check_method(method, None, "method")
    pixels = tissue_pixels(patches)
    if len(pixels) < MIN_PIXELS:
        return None
    return ESTIMATORS[method](pixels)


def check_method(method, path, field_name: str) -> None:
    """An InputError naming ``path`` and ``field_name`` unless ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise InputError(path, field_name, f"unknown stain normalisation {method!r}; choose from {', '.join(METHODS)}")


@dataclass(frozen=True)
class StainReference:
    """What patches are normalised to: ``method`` ('macenko' or 'reinhard') and its statistics (``values``, lists of
    floats), with a word on where it came from (``source``)."""

    method: str
    values: dict
    source: str = ""
    arrays: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "arrays", _check_values(self.method, self.values, None, "stain_reference"))

    def digest(self) -> str:
        """A short digest of the method and its statistics (rounded), for cache keys."""
        rounded = {k: np.round(np.asarray(v, dtype=np.float64), 6).tolist() for k, v in sorted(self.values.items())}
        return hashlib.sha256(json.dumps([self.method, rounded]).encode()).hexdigest()[:16]

    def record(self) -> dict:
        """What an output says about the normalisation applied: method, reference digest and where it came from."""
        return {"method": self.method, "reference": self.digest(), "reference_source": self.source}

    def to_dict(self) -> dict:
        return {"method": self.method, "source": self.source,
                **{k: np.asarray(v, dtype=np.float64).round(8).tolist() for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d, path=None, field_name: str = "stain_reference") -> StainReference:
        """The reference ``to_dict`` wrote; an InputError naming ``path`` and ``field_name`` when it is not one."""
        if not isinstance(d, dict):
            raise InputError(path, field_name, f"expected a mapping with 'method' and its statistics, got {d!r}")
        method = d.get("method")
        if method not in KEYS:
            raise InputError(path, f"{field_name}.method", f"expected one of {', '.join(KEYS)}, got {method!r}")
        values = {k: d.get(k) for k in KEYS[method]}
        _check_values(method, values, path, field_name)
        return cls(method, values, str(d.get("source", "")))


def _check_values(method: str, values: dict, path, field_name: str) -> dict:
    """The statistics as float arrays of the right shapes, all finite (and positive where they scale)."""
    if method not in KEYS:
        raise InputError(path, f"{field_name}.method", f"expected one of {', '.join(KEYS)}, got {method!r}")
    arrays = {}
    for k in KEYS[method]:
        try:
            a = np.asarray(values.get(k), dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != SHAPES[k] or not np.isfinite(a).all():
            raise InputError(path, f"{field_name}.{k}", f"expected {SHAPES[k]} finite numbers, got {values.get(k)!r}")
        if k in ("max_concentration", "std") and (a <= 0).any():
            raise InputError(path, f"{field_name}.{k}", f"must be positive, got {a.tolist()}")
        arrays[k] = a
    return arrays


def fit_reference(patches: np.ndarray, method: str, source: str = "") -> StainReference:
    """A reference fitted over the tissue pixels of many patches (uint8 RGB, (n, h, w, 3)) together; an InputError
    when they hold too little tissue."""
    reference = _reference(patches, method, source)
    if reference is None:
        raise InputError(None, "stain_norm", f"{method}: the reference patches ({source or 'given'}) hold fewer than "
                         f"{MIN_PIXELS} stained tissue pixels, or not two stains, to fit a reference on")
    return reference


def _reference(patches: np.ndarray, method: str, source: str) -> StainReference | None:
    """The ``method`` reference of the tissue pixels of ``patches``, None when they give no estimate."""
    stats = stain_statistics(patches, method)
    return None if stats is None else StainReference(method, {k: v.tolist() for k, v in stats.items()}, source)


def builtin_reference(method: str) -> StainReference:
    """The documented fixed reference (``BUILTIN``, fitted on HER2ST patient C) for normalising without a model."""
    check_method(method, None, "stain_norm")
    if method == "none":
        raise ValueError("no reference for stain_norm 'none'")
    return StainReference(method, BUILTIN[method], BUILTIN_SOURCE)


def reference_from_image(path, method: str) -> StainReference:
    """A reference fitted over the tissue of an image file (an H&E region or tile chosen as the target look)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise InputError(path, "--stain-reference", f"cannot read the image ({e})") from None
    reference = _reference(rgb, method, f"image {path}")
    if reference is None:
        raise InputError(path, "--stain-reference", f"holds fewer than {MIN_PIXELS} stained tissue pixels (or not "
                         f"two stains) to fit a {method} reference on")
    return reference


class StainNormalizer:
    """Maps patches to ``reference``. ``n_identity`` counts the patches (or sections) left as they were because
    they held too little tissue to estimate their own stain from."""

    def __init__(self, reference: StainReference):
        self.reference = reference
        self.n_identity = 0

    def estimate(self, patches: np.ndarray) -> dict | None:
        """The source statistics of ``patches`` together (a section's sample), None when there is too little tissue."""
        return stain_statistics(patches, self.reference.method)

    def transform(self, patches: np.ndarray, source: dict | str | None = "each") -> np.ndarray:
        """Normalised copies of uint8 RGB patches (n, h, w, 3).

        ``source``: the statistics of the slide the patches come from (``estimate``), applied to every patch;
        ``None`` (no estimate could be made) leaves them as they are (and counts them); ``"each"`` (default)
        estimates every patch from itself, leaving a patch with too little tissue unchanged (counted)."""
        patches = np.asarray(patches, dtype=np.uint8)
        if isinstance(source, str):
            if source != "each":
                raise ValueError(f"source must be statistics, None or 'each', got {source!r}")
            out = np.empty_like(patches)
            for i, patch in enumerate(patches):
                out[i] = self.transform(patch[None], self.estimate(patch))[0]
            return out
        if source is None:
            self.n_identity += len(patches)
            return patches.copy()
        return _apply(patches, self.reference.method, source, self.reference.arrays)


def _apply(patches: np.ndarray, method: str, src: dict, ref: dict) -> np.ndarray:
    """Every pixel mapped from the source statistics to the reference's, except glass masked to black (kept)."""
    flat = patches.reshape(-1, 3)
    if method == "macenko":
        conc = optical_density(flat) @ np.linalg.pinv(np.asarray(src["stain_matrix"])).T
        conc *= np.asarray(ref["max_concentration"]) / np.asarray(src["max_concentration"])
        mapped = from_optical_density(conc @ ref["stain_matrix"].T)
    else:
        from skimage.color import lab2rgb

        lab = (_lab(flat) - np.asarray(src["mean"])) / np.asarray(src["std"]) * ref["std"] + ref["mean"]
        lab[:, 0] = np.clip(lab[:, 0], 0.0, 100.0)
        mapped = np.clip(np.rint(lab2rgb(lab.reshape(-1, 1, 3)).reshape(-1, 3) * 255.0), 0, 255).astype(np.uint8)
    black = flat.max(axis=-1) < MASKED_MAX
    mapped[black] = flat[black]
    return mapped.reshape(patches.shape)


def sample_centres(xy: np.ndarray, n: int = SAMPLE_SPOTS) -> np.ndarray:
    """Up to ``n`` of the centres ``xy``, evenly spaced in their order (deterministic)."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) <= n:
        return xy
    return xy[np.linspace(0, len(xy) - 1, n).astype(np.int64)]


def sample_patches(adata, xy: np.ndarray | None = None) -> np.ndarray:
    """The patches a section's stain is estimated from: ``SAMPLE_SPOTS`` of its spots (or of ``xy``) at 1 um/px."""
    from spafoundation.io.patches import extract_patches

    centres = sample_centres(adata.obsm["spatial"] if xy is None else xy)
    return extract_patches(adata, SAMPLE_PATCH_UM, SAMPLE_PATCH_PX, xy=centres)


def fit_reference_on_sections(sections, method: str) -> StainReference:
    """A reference fitted over the tissue of ``SAMPLE_SPOTS`` spot patches of each section (AnnData) together."""
    from spafoundation.io.anndata_spec import library_id

    sections = list(sections)
    patches = np.concatenate([sample_patches(a) for a in sections])
    names = ",".join(library_id(a) for a in sections)
    return fit_reference(patches, method, f"sections {names}")


class SectionStain:
    """The normalisation of one section's patches: its own statistics, estimated once over a sample of its spots'
    patches, mapped to ``reference``. ``identity``: the sample held too little tissue, patches are left as they are."""

    def __init__(self, reference: StainReference, source: dict | None, section: str = "section"):
        self.reference, self.source, self.section = reference, source, section
        self.normalizer = StainNormalizer(reference)
        self.identity = source is None
        if self.identity:
            log.warning("%s: too little stained tissue in %d sampled spot patches to estimate its %s stain "
                        "statistics; its patches are not stain-normalised", section, SAMPLE_SPOTS, reference.method)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return self.normalizer.transform(patches, self.source)


_SECTION_MEMO: dict[tuple, dict | None] = {}


def section_stain(adata, reference: StainReference | None) -> SectionStain | None:
    """The ``SectionStain`` of a section (None for no normalisation). The source estimate is made once per image,
    spot set and method in a process (a section's features call it for every source and field of view)."""
    if reference is None:
        return None
    from spafoundation.io.anndata_spec import image_path, image_scale, library_id
    from spafoundation.models.cache import coords_digest, slide_identity

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    slide = json.dumps(slide_identity(image_path(adata), image_scale(adata)), sort_keys=True)
    key = (slide, coords_digest(sample_centres(xy)), reference.method)
    if key not in _SECTION_MEMO:
        _SECTION_MEMO[key] = stain_statistics(sample_patches(adata, xy), reference.method)
    return SectionStain(reference, _SECTION_MEMO[key], library_id(adata))


def _fit_builtin(argv=None) -> int:
    """Print the built-in references fitted on sections of a dataset: ``python -m spafoundation.io.stain DATA C2,C3``."""
    import sys

    from spafoundation.io.readers import read_dataset

    data_path, names = (argv or sys.argv[1:])[:2]
    data = read_dataset(data_path, names.split(","))
    for method in KEYS:
        ref = fit_reference_on_sections(data.values(), method)
        print(json.dumps({method: {k: np.round(np.asarray(v), 4).tolist() for k, v in ref.values.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_fit_builtin())
