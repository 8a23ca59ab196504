"""H&E augmentations on batched tensors (B, 3, H, W), uint8 or float in [0, 1], driven by an explicit generator so that a
resumed run draws exactly the same views.

The random draws are made on the CPU generator and applied on the batch's own device: on a GPU the views are cut
there (a CPU building twelve views of a large batch starves the GPU), and the views are the same on either device.

Orientation is arbitrary on a slide (flips, 90 degree rotations); stain intensity varies between labs and days
(HED jitter scales and shifts each stain's optical density); focus varies (blur); and so does the detail a scan holds
(Space Ranger's 2000 px hires image or an archive copy holds 3-5 um per pixel: ``low_resolution`` downsamples and
upsamples back)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spafoundation.errors import InputError
from spafoundation.models.handcrafted import HED_FROM_RGB, RGB_FROM_HED

# The keys of the ``augment`` section of a pre-training config (each read below with its default).
OPTIONS = ("hed_sigma", "hed_bias", "brightness", "contrast", "saturation", "blur_p", "blur_sigma", "lowres_p",
           "lowres_max", "crop_scale", "n_local", "local_px", "mask_shape", "mask_ratio", "mask_prob", "clean_target")
RANGES = ("crop_scale", "mask_ratio")  # [low, high]; the others are numbers >= 0 but mask_shape
MASK_SHAPES = ("block", "rand")


def check_options(augment: dict, path=None) -> None:
    """InputError naming ``augment.KEY`` for a value of the wrong kind, before any tile is read (not a TypeError
    in the first training step)."""

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    for key, v in augment.items():
        if key == "mask_shape":
            ok, want = v in MASK_SHAPES, f"one of {', '.join(MASK_SHAPES)}"
        elif key in RANGES:
            ok = isinstance(v, list | tuple) and len(v) == 2 and all(map(number, v)) and v[0] <= v[1]
            want = "[low, high], two numbers >= 0"
        else:
            ok, want = number(v), "a number >= 0"
        if not ok:
            raise InputError(path, f"augment.{key}", f"must be {want}, got {v!r}")


def _u(gen: torch.Generator, *shape, device=None) -> torch.Tensor:
    return torch.rand(*shape, generator=gen).to(device or "cpu")


def dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image: a random one of the 8 flips/rotations (applied per group of images sharing one, not per image)."""
    k = torch.randint(0, 4, (len(x),), generator=gen)
    flip = _u(gen, len(x)) < 0.5
    out = torch.empty_like(x)
    for f in (False, True):
        for r in range(4):
            idx = ((flip == f) & (k == r)).nonzero().flatten()
            if len(idx):
                idx = idx.to(x.device)
                imgs = x[idx].flip(-1) if f else x[idx]
                out[idx] = torch.rot90(imgs, r, dims=(-2, -1))
    return out


def restain(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x`` (B, 3, H, W, values in [0, 1]) with its H/E/D concentrations in optical density scaled by ``scale`` and
    shifted by ``shift`` (each (B, 3, 1, 1)); not clamped. Also re-stains whole test images (eval/stain_copies.py)."""
    rgb_from_hed = torch.as_tensor(RGB_FROM_HED, dtype=x.dtype, device=x.device)
    hed_from_rgb = torch.as_tensor(HED_FROM_RGB, dtype=x.dtype, device=x.device)
    od = -torch.log((x * 255.0 + 1.0) / 256.0)  # (B, 3, H, W)
    hed = torch.einsum("bchw,cd->bdhw", od, hed_from_rgb) * scale + shift
    od = torch.einsum("bdhw,dc->bchw", hed, rgb_from_hed)
    return (256.0 * torch.exp(-od) - 1.0) / 255.0


def hed_jitter(x: torch.Tensor, gen: torch.Generator, sigma: float = 0.05, bias: float = 0.02) -> torch.Tensor:
    """Stain jitter in optical density space: per image, H/E/D concentrations scaled by 1+N(0, sigma) and
    shifted by N(0, bias)."""
    if sigma <= 0 and bias <= 0:
        return x
    b = len(x)
    scale = 1 + sigma * torch.randn(b, 3, 1, 1, generator=gen).to(x.device)
    shift = bias * torch.randn(b, 3, 1, 1, generator=gen).to(x.device)
    return restain(x, scale, shift).clamp(0, 1)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.1, contrast: float = 0.1,
                  saturation: float = 0.1) -> torch.Tensor:
    b = len(x)
    d = x.device
    out = x * (1 + brightness * (2 * _u(gen, b, 1, 1, 1, device=d) - 1))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + contrast * (2 * _u(gen, b, 1, 1, 1, device=d) - 1)) + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * (1 + saturation * (2 * _u(gen, b, 1, 1, 1, device=d) - 1)) + grey
    return out.clamp(0, 1)


def gaussian_blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.2, max_sigma: float = 1.0) -> torch.Tensor:
    """With probability ``p`` per image, a Gaussian blur of sigma in [0.1, max_sigma] pixels."""
    out = x.clone()
    chosen = (_u(gen, len(x)) < p).nonzero().flatten().tolist()
    sigmas = 0.1 + (max_sigma - 0.1) * _u(gen, len(x))
    for i in chosen:
        s = float(sigmas[i])
        r = max(1, math.ceil(2 * s))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t**2) / (2 * s * s))
        k = k / k.sum()
        img = F.pad(x[i : i + 1], (r, r, r, r), mode="reflect")
        img = F.conv2d(img, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
        out[i] = F.conv2d(img, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]
    return out


def low_resolution(x: torch.Tensor, gen: torch.Generator, p: float = 0.0, max_factor: float = 4.0) -> torch.Tensor:
    """With probability ``p`` per image, the detail of a coarser scan: downsampled (antialiased) by a factor drawn
    log-uniformly in [1, max_factor], then upsampled back to its size, as a patch cut from such a scan is. Off
    (``p`` 0, the default) it draws nothing, so the views of configs without it are unchanged."""
    if p <= 0 or max_factor <= 1:
        return x
    out = x.clone()
    h, w = x.shape[-2:]
    chosen = (_u(gen, len(x)) < p).nonzero().flatten().tolist()
    factors = torch.exp(_u(gen, len(x)) * math.log(max_factor))
    for i in chosen:
        f = float(factors[i])
        small = (max(2, round(h / f)), max(2, round(w / f)))
        img = F.interpolate(x[i : i + 1], size=small, mode="bilinear", align_corners=False, antialias=True)
        out[i] = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    return out


def random_resized_crop(x: torch.Tensor, out_px: int, gen: torch.Generator, scale=(0.4, 1.0)) -> torch.Tensor:
    """Per image, a square crop covering a random share ``scale`` of the area, resized to ``out_px``."""
    b, _, h, w = x.shape
    side = min(h, w)
    out = torch.empty(b, x.shape[1], out_px, out_px, dtype=x.dtype, device=x.device)
    areas = scale[0] + (scale[1] - scale[0]) * _u(gen, b)
    for i in range(b):
        s = max(2, round(side * math.sqrt(float(areas[i]))))
        y0 = int(torch.randint(0, h - s + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - s + 1, (1,), generator=gen))
        crop = x[i : i + 1, :, y0 : y0 + s, x0 : x0 + s]
        out[i] = F.interpolate(crop, size=(out_px, out_px), mode="bilinear", align_corners=False, antialias=True)[0]
    return out


def he_augment(x: torch.Tensor, gen: torch.Generator, cfg: dict) -> torch.Tensor:
    """The photometric and geometric H&E augmentations, strengths from ``cfg`` (augment section of the yaml)."""
    return photometric(dihedral(x, gen), gen, cfg)


def photometric(x: torch.Tensor, gen: torch.Generator, cfg: dict) -> torch.Tensor:
    """Stain, colour, resolution and focus: what differs between labs and scanners, not what the tissue is."""
    x = hed_jitter(x, gen, cfg.get("hed_sigma", 0.05), cfg.get("hed_bias", 0.02))
    x = colour_jitter(x, gen, cfg.get("brightness", 0.1), cfg.get("contrast", 0.1), cfg.get("saturation", 0.1))
    x = low_resolution(x, gen, cfg.get("lowres_p", 0.0), cfg.get("lowres_max", 4.0))
    return gaussian_blur(x, gen, cfg.get("blur_p", 0.2), cfg.get("blur_sigma", 1.0))


def block_masks(b: int, grid: int, gen: torch.Generator, ratio=(0.1, 0.5), prob: float = 0.5) -> torch.Tensor:
    """iBOT masks (B, grid*grid) bool: for a share ``prob`` of images, random rectangles covering a ratio drawn
    in ``ratio`` of the patches; the other images are unmasked."""
    masks = torch.zeros(b, grid, grid, dtype=torch.bool)
    for i in range(b):
        if float(_u(gen, 1)) >= prob:
            continue
        target = round(grid * grid * (ratio[0] + (ratio[1] - ratio[0]) * float(_u(gen, 1))))
        for _ in range(50):
            if int(masks[i].sum()) >= target:
                break
            area = max(1, round((target - int(masks[i].sum())) * (0.3 + 0.7 * float(_u(gen, 1)))))
            aspect = math.exp((2 * float(_u(gen, 1)) - 1) * math.log(3))
            hh = max(1, min(grid, round(math.sqrt(area * aspect))))
            ww = max(1, min(grid, round(math.sqrt(area / aspect))))
            y0 = int(torch.randint(0, grid - hh + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, grid - ww + 1, (1,), generator=gen))
            masks[i, y0 : y0 + hh, x0 : x0 + ww] = True
    return masks.flatten(1)


def random_masks(b: int, grid: int, gen: torch.Generator, ratio=(0.1, 0.5), prob: float = 0.5) -> torch.Tensor:
    """iBOT's "rand" masks (B, grid*grid) bool: for a share ``prob`` of images, a ratio drawn in ``ratio`` of the
    patches chosen uniformly at random; the other images are unmasked."""
    masks = torch.zeros(b, grid * grid, dtype=torch.bool)
    for i in range(b):
        if float(_u(gen, 1)) >= prob:
            continue
        n = round(grid * grid * (ratio[0] + (ratio[1] - ratio[0]) * float(_u(gen, 1))))
        masks[i, torch.randperm(grid * grid, generator=gen)[:n]] = True
    return masks


def to_float(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 (0-255) or float (0-1) NCHW -> float NCHW in [0, 1]."""
    return tiles.float() / 255 if tiles.dtype == torch.uint8 else tiles.float()


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    return (x - mean) / std


def mae_views(tiles: torch.Tensor, input_px: int, gen: torch.Generator, cfg: dict, mean, std,
              descriptors: bool = False) -> dict:
    """One augmented view per tile (MAE): a crop of 60-100% of the tile, then H&E augmentations. With
    ``clean_target`` (non-zero) the pixels to reconstruct are the view before its photometric augmentations, so the
    encoder learns to see through stain, blur and resolution instead of reproducing them. ``descriptors``: also the
    colour and texture descriptors of that clean view (``models.objectives.descriptor``)."""
    x = dihedral(random_resized_crop(to_float(tiles), input_px, gen, tuple(cfg.get("crop_scale", (0.6, 1.0)))), gen)
    views = {"images": normalise(photometric(x, gen, cfg), mean, std)}
    if cfg.get("clean_target"):
        views["targets"] = normalise(x, mean, std)
    if descriptors:
        from spafoundation.models.objectives.descriptor import view_descriptors

        views["descriptors"] = view_descriptors(x)
    return views


GLOBAL_CROP_SCALE = (0.32, 1.0)  # share of the tile's area in a global view (iBOT's, and SimCLR's by default)


def two_views(tiles: torch.Tensor, input_px: int, gen: torch.Generator, cfg: dict, mean, std,
              scale=GLOBAL_CROP_SCALE) -> torch.Tensor:
    """(2, B, 3, input_px, input_px): two crops of each tile (``scale`` of its area), each with its own H&E
    augmentations."""
    tiles = to_float(tiles)
    return torch.stack([normalise(he_augment(random_resized_crop(tiles, input_px, gen, scale), gen, cfg), mean, std)
                        for _ in range(2)])


def pair_views(tiles: torch.Tensor, input_px: int, gen: torch.Generator, cfg: dict, mean, std) -> dict:
    """Two views per tile for contrastive matching (SimCLR): crops of ``crop_scale`` (default GLOBAL_CROP_SCALE)."""
    return {"globals": two_views(tiles, input_px, gen, cfg, mean, std, tuple(cfg.get("crop_scale", GLOBAL_CROP_SCALE)))}


def ibot_views(tiles: torch.Tensor, input_px: int, gen: torch.Generator, cfg: dict, mean, std,
               patch: int = 16) -> dict:
    """2 global crops (32-100% of the tile, masked for the student: ``mask_shape`` "block" or "rand") and
    ``n_local`` local crops (5-32%)."""
    tiles = to_float(tiles)
    n_local, local_px = int(cfg.get("n_local", 4)), int(cfg.get("local_px", max(patch, input_px * 3 // 7 // patch
                                                                               * patch)))
    glob = two_views(tiles, input_px, gen, cfg, mean, std)
    loc = [normalise(he_augment(random_resized_crop(tiles, local_px, gen, (0.05, 0.32)), gen, cfg), mean, std)
           for _ in range(n_local)]
    grid = input_px // patch
    mask_fn = {"block": block_masks, "rand": random_masks}[cfg.get("mask_shape", "block")]
    ratio, prob = tuple(cfg.get("mask_ratio", (0.1, 0.5))), cfg.get("mask_prob", 0.5)
    masks = torch.stack([mask_fn(len(tiles), grid, gen, ratio, prob) for _ in range(2)])
    return {"globals": glob, "locals": torch.stack(loc) if loc else None, "masks": masks}
