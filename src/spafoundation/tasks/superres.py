"""Super-resolution expression maps: expression on a regular grid of superpixels far finer than the spots.

Superpixels are the encoder's patch tokens: the tissue is tiled with the encoder's field of view (112 um for the
registered encoders) and one forward pass gives a grid of tokens (7 x 7 of 16 um for a /16 ViT at 112 px);
``step_um`` finer than a token upsamples the token map bilinearly (8 um = 2x). Each superpixel's features are
its token, its tile's class embedding (112 um of context) and its own mean colour.

Training follows iStar's forward-sum idea with a linear head: a spot's measured expression is modelled as the
mean of its superpixels' expression, and since the ridge head is affine, the mean of the superpixel predictions
equals the head applied to the mean superpixel features. So the head is fitted on spot-averaged superpixel
features, then applied to every superpixel: the predictions of the superpixels inside a spot average exactly to
that spot's prediction (no post-hoc rescaling), and the map needs one ridge fit, not a network per gene.

Where a section has counts, the map is anchored to them (regression kriging): each spot's residual (measured
minus the mean prediction of its superpixels) is interpolated over the tissue by inverse-distance weighting and
added, so the image supplies the pattern and the measurements the level; the image-only map stays in
``layers['image_only']``. Inside a spot, a superpixel is the spot's measurement plus two deviations that average to
zero over the spot: the image's (its prediction minus the spot's mean prediction) and the neighbours' (the spots
interpolated to its position minus the spot's own value), with weights learned by scale transfer
(``calibrate_anchoring``) on the section being anchored (``section_anchoring``): its own spots are pooled into
2 x 2-pitch blocks, and the two weights that best predict each spot's deviation from its block, from the same two
deviations one level up (the image's from the model's head), are kept. No finer truth is needed, the weights fit the
image and tissue at hand rather than the patient the model was trained on, and they are shrunk by their
t-statistics, so an image whose deviations do not measurably follow the spots' gets weight 0 and the map falls back
to the measured spots. A section with too few spots in blocks takes the weights stored in the model, calibrated the
same way on its training spots (with a second head fitted on their blocks). ``layers['counts']`` redistributes
each spot's measured counts over its superpixels in proportion to the anchored (expm1) expression, so the
superpixels of a spot sum to its counts (relative tolerance 1e-4, float32). Sections without counts get the
image-only map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from spafoundation import defaults
from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import library_id, microns_per_pixel, spot_diameter_fullres
from spafoundation.io.patches import (
    extract_patches,
    open_section_slide,
    section_tissue,
    tissue_grid,
    tissue_share,
)
from spafoundation.pp.genes import TARGET_SUM, expression_matrix, select_genes
from spafoundation.utils.model_folder import fitted_on, read_model_folder, write_model_folder

FORMAT = "spafoundation-superres"
MIN_TISSUE = 0.25  # superpixels with less tissue than this are left out of the map
TILE_MIN_TISSUE = 0.05
# The anchoring before calibration (and for too few spots): the full image pattern, no neighbour term.
ANCHOR_DEFAULT = {"image": 1.0, "interpolation": 0.0, "method": "default"}
MIN_CALIBRATION_SPOTS = 40  # spots in blocks of two or more, over all the sections calibrated on
SHRINKAGE = 1.0  # positive-part James-Stein constant: a weight is kept x (1 - SHRINKAGE / t^2), 0 below
# A spot must be at least this many superpixel steps across to be super-resolved (and to train on): it then holds
# about 1.8 superpixels (pi / 4 x 1.5^2); finer spots (Visium HD bins) hold one superpixel or none.
MIN_SPOT_STEPS = 1.5
SUPERPIXEL_CACHE_VERSION = 3  # bump when the superpixels of a section change for the same inputs (3: pasted insets)


@dataclass
class Superpixels:
    """Superpixels of one section: centres (full-resolution px), grid indices, features, tissue share."""

    xy: np.ndarray
    row: np.ndarray
    col: np.ndarray
    features: np.ndarray
    tissue: np.ndarray
    step_um: float
    blocks: list[int]

    def __len__(self) -> int:
        return len(self.xy)


def token_grid(encoder) -> int:
    from spafoundation.models.objectives.vit_tokens import patch_size

    return encoder.input_size // patch_size(encoder.model)


def _token_and_upsampling(encoder, step_um: float | None) -> tuple[float, int]:
    """(encoder token size in um, how many superpixels per token side) for ``step_um`` (default: one per token)."""
    token_um = encoder.patch_um / token_grid(encoder)
    up = 1 if not step_um else round(token_um / float(step_um))
    if up < 1 or abs(token_um / up - float(step_um or token_um)) > 1e-6 * token_um:
        raise InputError(None, "--step-um", f"must be {token_um:g} um (one encoder token) divided by a whole "
                         f"number, e.g. {token_um:g} or {token_um / 2:g}")
    return token_um, up


def superpixel_step_um(encoder, step_um: float | None = None) -> float:
    """The superpixel step that ``superpixels`` uses for ``step_um`` (None: one per encoder token)."""
    token_um, up = _token_and_upsampling(encoder, step_um)
    return token_um / up


def spots_resolvable(adata: ad.AnnData, step_um: float) -> bool:
    """Whether ``adata``'s spots span at least ``MIN_SPOT_STEPS`` superpixels of ``step_um``."""
    return spot_diameter_fullres(adata) * microns_per_pixel(adata) >= MIN_SPOT_STEPS * step_um - 1e-9


def check_spots_resolvable(train: dict[str, ad.AnnData], encoder, step_um: float | None) -> None:
    """An InputError naming the first training section whose spots are too fine to train super-resolution on."""
    step = superpixel_step_um(encoder, step_um)
    for n, a in train.items():
        if not spots_resolvable(a, step):
            d = spot_diameter_fullres(a) * microns_per_pixel(a)
            raise InputError(None, f"section {n}: spot_diameter_fullres",
                             f"spots of {d:g} um span fewer than {MIN_SPOT_STEPS:g} superpixels of {step:g} um, so "
                             f"there is nothing to super-resolve: train on larger spots (Visium HD: --bin-um "
                             f"{MIN_SPOT_STEPS * step:g} or more), a smaller --step-um, or give --model")


def superpixels(adata: ad.AnnData, encoder, *, step_um: float | None = None, min_tissue: float = MIN_TISSUE,
                batch_size: int = 32, progress: bool = False, cache_dir=False) -> Superpixels:
    """Superpixels over the tissue of ``adata``'s image (and over the footprint of any spot of ``adata`` that the
    tissue mask leaves without one) at ``step_um`` (default: one per encoder token). ``cache_dir``: False (no
    cache), None (``$SPAFOUNDATION_CACHE`` or ``~/.cache/spafoundation``) or a folder: the superpixels are then
    read from / written to ``<cache>/superpixels/<key>.npz`` (``superpixel_cache_path``)."""
    _, up = _token_and_upsampling(encoder, step_um)
    cached = superpixel_cache_path(adata, encoder, up, min_tissue, cache_dir)
    if cached is not None and cached.exists():
        sp = load_superpixels(cached)
        if sp is not None:
            return sp
    sp = _encode_superpixels(adata, encoder, token_grid(encoder), up, min_tissue, batch_size, progress)
    if cached is not None:
        save_superpixels(sp, cached)
    return sp


def _encode_superpixels(adata: ad.AnnData, encoder, g: int, up: int, min_tissue: float, batch_size: int,
                        progress: bool) -> Superpixels:
    tile_um = encoder.patch_um
    token_um = tile_um / g
    n = g * up  # superpixels per tile side
    mpp = microns_per_pixel(adata)
    tile_px = tile_um / mpp
    tissue_map = section_tissue(adata)
    spot_xy = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else np.zeros((0, 2))
    radius = spot_radius_px(adata) if len(spot_xy) else 0.0
    centres = tissue_grid(adata, tile_um, min_tissue=TILE_MIN_TISSUE)
    if len(spot_xy):
        # A measured spot is tissue whatever the thumbnail's mask says (faint or folded tissue, a spot at the
        # edge): where the mask leaves a spot no superpixel, its whole footprint is kept, so each spot has
        # superpixels to anchor and to redistribute its counts over.
        cells = np.round(np.concatenate([centres, tiles_under_spots(spot_xy, radius, tile_px)]) / tile_px - 0.5)
        centres = (np.unique(cells, axis=0) + 0.5) * tile_px
        centres = centres[(centres < np.asarray(tissue_map[2:], float)).all(1)]  # inside the image
    if len(centres) == 0:
        raise InputError(None, "image", f"section {library_id(adata)}: no tissue found for super-resolution")
    feats, xy, grid_rc = [], [], []
    offsets = ((np.arange(n) + 0.5) / n - 0.5) * tile_px
    tile_col = np.round((centres[:, 0] - tile_px / 2) / tile_px).astype(int)
    tile_row = np.round((centres[:, 1] - tile_px / 2) / tile_px).astype(int)
    encoder.eval()
    it = range(0, len(centres), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"{library_id(adata)}: superpixels", unit="batch")
    with open_section_slide(adata) as slide, torch.inference_mode():
        for start in it:
            xy_b = centres[start:start + batch_size]
            patches = extract_patches(adata, tile_um, encoder.input_size, xy=xy_b, slide=slide)
            x = encoder.preprocess(patches)
            cls, tok = encoder.split_tokens(encoder.forward_features(x))  # one pass: tokens and class embedding
            tok = tok.transpose(1, 2).reshape(len(x), -1, g, g)
            if up > 1:
                tok = F.interpolate(tok, size=(n, n), mode="bilinear", align_corners=False)
            img = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
            colour = F.adaptive_avg_pool2d(img, n)
            tok = tok.permute(0, 2, 3, 1).reshape(len(x), n * n, -1).cpu().numpy()
            colour = colour.permute(0, 2, 3, 1).reshape(len(x), n * n, 3).numpy()
            cls = cls.cpu().numpy()
            for b in range(len(x)):
                f = np.concatenate([tok[b], np.repeat(cls[b][None], n * n, 0), colour[b]], axis=1)
                feats.append(f)
                ox, oy = np.meshgrid(offsets, offsets)
                xy.append(np.stack([xy_b[b, 0] + ox.ravel(), xy_b[b, 1] + oy.ravel()], 1))
                rr, cc = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
                gi = start + b
                grid_rc.append(np.stack([tile_row[gi] * n + rr.ravel(), tile_col[gi] * n + cc.ravel()], 1))
    feats, xy, grid_rc = (np.concatenate(v) for v in (feats, xy, grid_rc))
    tissue = tissue_share(tissue_map, xy, token_um / up, mpp)
    keep = tissue >= min_tissue
    if len(spot_xy):  # a spot the mask misses keeps its whole footprint (see above); others only their tissue
        members = spot_members(xy, spot_xy, radius)
        covered = np.bincount(members[keep & (members >= 0)], minlength=len(spot_xy)) > 0
        keep |= (members >= 0) & ~covered[np.maximum(members, 0)]
    d = feats.shape[1] - 3
    return Superpixels(xy=xy[keep], row=grid_rc[keep, 0], col=grid_rc[keep, 1], features=feats[keep].astype(np.float32),
                       tissue=tissue[keep], step_um=token_um / up, blocks=[d // 2, d // 2, 3])


def superpixel_cache_path(adata: ad.AnnData, encoder, up: int, min_tissue: float, cache_dir) -> Path | None:
    """Where the superpixels of this section, encoder and geometry are cached (``cache_dir`` False: nowhere).
    The key holds everything they depend on: the image file (path, size, mtime), pixel size, encoder identity
    and precision, tile and superpixel geometry, tissue thresholds, and the spots (footprints are kept)."""
    if cache_dir is False:
        return None
    from spafoundation.io.anndata_spec import image_path, image_scale
    from spafoundation.models.cache import cache_key, cache_root, coords_digest, slide_identity

    spot_xy = adata.obsm.get("spatial", np.zeros((0, 2)))
    desc = {"version": SUPERPIXEL_CACHE_VERSION, "slide": slide_identity(image_path(adata), image_scale(adata)),
            "mpp": round(float(microns_per_pixel(adata)), 9), "encoder": encoder.identity,
            "precision": encoder.precision, "input_size": int(encoder.input_size),
            "patch_um": round(float(encoder.patch_um), 6), "up": int(up), "min_tissue": float(min_tissue),
            "tile_min_tissue": TILE_MIN_TISSUE, "spots": coords_digest(spot_xy),
            "radius": round(float(spot_radius_px(adata)), 6) if len(spot_xy) else 0.0}
    return cache_root(cache_dir) / "superpixels" / f"{cache_key(desc)}.npz"


def save_superpixels(sp: Superpixels, path: Path) -> None:
    """Lossless, at about half the size of the features: the tile's class embedding (the middle feature block)
    is the same for all superpixels of a tile, so it is stored once per run of equal rows."""
    from spafoundation.models.cache import save_npz

    a, b = sp.blocks[0], sp.blocks[0] + sp.blocks[1]
    shared = sp.features[:, a:b]
    starts = np.flatnonzero(np.r_[True, (shared[1:] != shared[:-1]).any(axis=1)]) if len(shared) else np.zeros(0, int)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, xy=sp.xy, row=sp.row, col=sp.col, tissue=sp.tissue, step_um=np.float64(sp.step_um),
             blocks=np.asarray(sp.blocks, dtype=np.int64), own=np.delete(sp.features, np.s_[a:b], axis=1),
             shared=shared[starts], run_length=np.diff(np.r_[starts, len(shared)]))


def load_superpixels(path: Path) -> Superpixels | None:
    """The cached superpixels, or None when the file is unreadable or inconsistent (then they are recomputed)."""
    from spafoundation.models.cache import load_npz

    z = load_npz(path, ("xy", "row", "col", "tissue", "step_um", "blocks", "own", "shared", "run_length"))
    if z is None:
        return None
    try:  # the stored pieces must fit together
        blocks = [int(v) for v in z["blocks"]]
        own, shared = z["own"], np.repeat(z["shared"], z["run_length"], axis=0)
        features = np.concatenate([own[:, :blocks[0]], shared, own[:, blocks[0]:]], axis=1)
        sp = Superpixels(xy=z["xy"], row=z["row"], col=z["col"], features=features, tissue=z["tissue"],
                         step_um=float(z["step_um"]), blocks=blocks)
    except (ValueError, IndexError):
        return None
    n = len(sp.xy)
    if not (sp.features.ndim == 2 and len(sp.features) == n == len(sp.row) == len(sp.col) == len(sp.tissue)
            and sp.features.shape[1] == sum(sp.blocks) and np.isfinite(sp.features).all()):
        return None
    return sp


def tiles_under_spots(spot_xy: np.ndarray, radius_px: float, tile_px: float) -> np.ndarray:
    """Centres of the cells of the ``tile_px`` grid (cell (row, col) centred at ((col + 0.5) * tile_px, ...), as
    ``tissue_grid``) that overlap a spot's disc."""
    lo = np.floor((spot_xy - radius_px) / tile_px).astype(np.int64)
    hi = np.floor((spot_xy + radius_px) / tile_px).astype(np.int64)
    span = int((hi - lo).max()) + 1
    cells = np.concatenate([lo + np.array([dx, dy]) for dx in range(span) for dy in range(span)])
    cells = np.unique(cells[(cells >= 0).all(1)], axis=0)
    return (cells + 0.5) * tile_px


def spot_members(sp_xy: np.ndarray, spot_xy: np.ndarray, radius_px: float) -> np.ndarray:
    """For each superpixel, the index of the spot whose disc holds its centre (nearest spot), or -1."""
    if len(spot_xy) == 0:
        return np.full(len(sp_xy), -1)
    d, idx = cKDTree(spot_xy).query(sp_xy)
    return np.where(d <= radius_px, idx, -1)


def footprint_means(features: np.ndarray, members: np.ndarray, n_spots: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean superpixel feature of each spot's footprint and the number of its superpixels."""
    inside = members >= 0
    counts = np.bincount(members[inside], minlength=n_spots)
    sums = np.zeros((n_spots, features.shape[1]), dtype=np.float64)
    np.add.at(sums, members[inside], features[inside])
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


def values_at_spots(values: np.ndarray, sp_xy: np.ndarray, members: np.ndarray, spot_xy: np.ndarray) -> np.ndarray:
    """Each spot's value from the superpixels: the mean over its footprint, or, for a spot that holds none (spots
    about as fine as the superpixels, e.g. Visium HD bins), the superpixel nearest its centre."""
    out, k = footprint_means(values, members, len(spot_xy))
    empty = k == 0
    if empty.any() and len(sp_xy):
        out[empty] = values[cKDTree(sp_xy).query(spot_xy[empty])[1]]
    return out


def redistribute(pred_log: np.ndarray, members: np.ndarray, spot_counts: np.ndarray) -> np.ndarray:
    """Counts per superpixel: each spot's counts shared among its superpixels in proportion to expm1(prediction);
    NaN outside spots. Superpixels of a spot sum to its counts."""
    w = np.clip(np.expm1(pred_log.astype(np.float64)), 0, None) + 1e-6
    out = np.full(pred_log.shape, np.nan, dtype=np.float64)
    inside = members >= 0
    totals = np.zeros((len(spot_counts), pred_log.shape[1]))
    np.add.at(totals, members[inside], w[inside])
    out[inside] = w[inside] / totals[members[inside]] * spot_counts[members[inside]]
    return out.astype(np.float32)


def spot_radius_px(adata: ad.AnnData) -> float:
    return spot_diameter_fullres(adata) / 2


class SuperresModel:
    """A ridge head from superpixel features to log-normalised expression, with its encoder reference."""

    def __init__(self, genes: Sequence[str], head, encoder=None, *, step_um: float | None = None,
                 target_sum: float | None = TARGET_SUM, training: dict | None = None, encoder_ref: dict | None = None,
                 anchoring: dict | None = None):
        from spafoundation.tasks.expression import _encoder_reference

        self.genes, self.head, self.encoder = list(genes), head, encoder
        self.anchoring = dict(anchoring or ANCHOR_DEFAULT)
        self.step_um, self.target_sum, self.training = step_um, target_sum, dict(training or {})
        self.encoder_ref = encoder_ref or (_encoder_reference(encoder) if encoder is not None else None)

    def predict(self, sp: Superpixels) -> np.ndarray:
        return self.head.predict(sp.features)

    def __repr__(self) -> str:
        step = f"{self.step_um:g} um" if self.step_um else "one-token"
        return (f"SuperresModel({len(self.genes)} genes on {step} superpixels, "
                f"{fitted_on(self.training, self.encoder_ref)})")

    def save(self, folder) -> Path:
        cfg = {"format": FORMAT, "version": 1, "genes": self.genes, "step_um": self.step_um,
               "target": {"normalize": "log1p", "target_sum": self.target_sum}, "encoder": self.encoder_ref,
               "head_params": self.head.hp, "training": self.training, "anchoring": self.anchoring}
        return write_model_folder(folder, cfg, "head.npz", self.head.state())

    @classmethod
    def load(cls, folder, encoder=None) -> SuperresModel:
        from spafoundation.tasks.expression import encoder_from_reference, resolve_encoder
        from spafoundation.tasks.heads import RidgeHead

        cfg, state = read_model_folder(folder, FORMAT, "head.npz", "super-resolution")
        enc = resolve_encoder(encoder) if encoder else encoder_from_reference(cfg["encoder"])
        return cls(cfg["genes"], RidgeHead.from_state(state, cfg["head_params"]), enc, step_um=cfg["step_um"],
                   target_sum=cfg["target"]["target_sum"], training=cfg["training"], encoder_ref=cfg["encoder"],
                   anchoring=cfg.get("anchoring"))


def fit_superres(train: dict[str, ad.AnnData], encoder, *, genes=defaults.SUPERRES_GENES, step_um: float | None = None,
                 target_sum: float | None = TARGET_SUM, footprints: dict | None = None,
                 cached: dict[str, Superpixels] | None = None, progress: bool = False) -> SuperresModel:
    """Fit on sections with counts: the ridge head maps each spot's mean superpixel features to its expression.

    ``footprints``: {section: (members, targets, centres)} replaces the spots (``members`` gives each superpixel's
    row of ``targets`` or -1, ``centres`` the footprints' full-resolution centres; the benchmark's coarse
    pseudo-spots); ``genes`` must then be a list. ``cached``: superpixels already computed, by section. The anchoring
    weights are then learned from the same footprints (``calibrate_anchoring``)."""
    from spafoundation.tasks.expression import resolve_encoder
    from spafoundation.tasks.heads import RidgeHead

    enc = resolve_encoder(encoder)
    gene_list = list(genes) if isinstance(genes, (list, tuple)) else select_genes(list(train.values()), genes,
                                                                                 target_sum)
    check_spots_resolvable({n: a for n, a in train.items() if not (footprints and n in footprints)}, enc, step_um)
    X, Y, groups, blocks, levels = [], [], [], None, {}
    for n, a in train.items():
        sp = (cached or {}).get(n) or superpixels(a, enc, step_um=step_um, progress=progress)
        if footprints and n in footprints:
            members, targets, centres = footprints[n]
        else:
            if a.n_vars == 0:
                raise InputError(None, f"section {n}", "has no counts to train super-resolution on")
            centres = np.asarray(a.obsm["spatial"], float)
            members = spot_members(sp.xy, centres, spot_radius_px(a))
            targets = expression_matrix(a, gene_list, target_sum)
        means, k = footprint_means(sp.features, members, len(targets))
        ok = k > 0
        X.append(means[ok])
        Y.append(targets[ok])
        groups += [n] * int(ok.sum())
        blocks = sp.blocks
        levels[n] = (sp.features, members, targets, np.asarray(centres, float))
    head = RidgeHead().fit(np.concatenate(X), np.concatenate(Y), np.asarray(groups), blocks)
    training = {"sections": list(train), "n_spots": len(groups), "alpha": head.alpha}
    return SuperresModel(gene_list, head, enc, step_um=step_um, target_sum=target_sum, training=training,
                         anchoring=calibrate_anchoring(levels, blocks))


def spot_blocks(xy: np.ndarray, factor: int = 2) -> np.ndarray:
    """Block id of each spot on a square grid of ``factor`` spot pitches, for any layout (square ST, hexagonal
    Visium, scattered). The pitch is the median distance to the 4 nearest neighbours (the nearest alone is biased
    short by jitter); the cell borders sit half a pitch from the lattice the spots lie on (its phase per axis is the
    circular mean of the coordinates modulo the pitch), so jittered spots on a lattice never straddle a border."""
    xy = np.asarray(xy, float)
    if len(xy) < 2:
        return np.zeros(len(xy), dtype=np.int64)
    k = min(4, len(xy) - 1)
    pitch = max(float(np.median(cKDTree(xy).query(xy, k=k + 1)[0][:, 1:])), 1e-9)
    phase = np.angle(np.exp(2j * np.pi * xy / pitch).mean(0)) / (2 * np.pi) * pitch
    origin = phase + pitch * np.round((xy.min(0) - phase) / pitch)  # the lattice line nearest the first spot
    cells = np.floor((xy - origin + pitch / 2) / (factor * pitch)).astype(np.int64)
    return np.unique(cells, axis=0, return_inverse=True)[1].ravel()


def calibrate_anchoring(levels: dict[str, tuple], blocks=None, head=None) -> dict:
    """The weights of the two within-spot deviations used by ``anchor_to_measurements``, learned one scale up.

    ``levels``: {section: (superpixel features, members, targets, centres)} for the spots. Spots are pooled into
    blocks (``spot_blocks``); unless ``head`` (an already-fitted head: the model's own, when calibrating on the
    section being anchored) is given, a ridge head is fitted on the blocks as the model was on the spots; then, for
    every spot in a block of two or more, its deviation from its block is regressed (least squares pooled over
    genes, no intercept) on the image deviation (the head's mean prediction over the spot minus over the block) and
    the neighbour deviation (the blocks interpolated to the spot minus its block). Weights are shrunk by their
    t-statistics (``shrink_weights``) and clipped to [0, 1]: an image deviation that does not measurably follow the
    spots' gets weight 0, and the map falls back to the measured spots."""
    from spafoundation.tasks.heads import RidgeHead

    which_head = "the model's head" if head is not None else "a head fitted on the blocks"
    prepared, X, Y, groups = {}, [], [], []
    for n, (feats, members, targets, centres) in levels.items():
        seen = np.flatnonzero(np.bincount(members[members >= 0], minlength=len(targets)) > 0)
        if len(seen) < 2:
            continue
        parent = np.full(len(targets), -1)
        parent[seen] = spot_blocks(centres[seen])
        n_par = int(parent.max()) + 1
        # a block's expression: log1p of its spots' mean normalised expression; its centre: their mean
        par_y = np.log1p(footprint_means(np.expm1(targets[seen].astype(np.float64)), parent[seen], n_par)[0])
        par_xy, siblings = footprint_means(centres[seen], parent[seen], n_par)
        par_members = np.where(members >= 0, parent[np.maximum(members, 0)], -1)
        if head is None:
            means, k = footprint_means(feats, par_members, n_par)
            X.append(means[k > 0])
            Y.append(par_y[k > 0])
            groups += [n] * int((k > 0).sum())
        child = seen[siblings[parent[seen]] >= 2]
        prepared[n] = (feats, members, targets, centres, parent, par_y, par_xy, par_members, child)
    n_child = sum(len(v[-1]) for v in prepared.values())
    n_blocks = sum(len(np.unique(v[4][v[-1]])) for v in prepared.values())
    if n_child < MIN_CALIBRATION_SPOTS:
        return {**ANCHOR_DEFAULT, "method": f"default ({n_child} spots in blocks, fewer than {MIN_CALIBRATION_SPOTS})",
                "n_spots": int(n_child), "n_blocks": int(n_blocks)}
    if head is None:
        head = RidgeHead().fit(np.concatenate(X), np.concatenate(Y), np.asarray(groups), blocks)
    target, f_image, f_interp = [], [], []
    for feats, members, targets, centres, parent, par_y, par_xy, par_members, child in prepared.values():
        pred = head.predict(feats)
        spot_mean = footprint_means(pred, members, len(targets))[0]
        block_mean = footprint_means(pred, par_members, len(par_y))[0]
        p = parent[child]
        target.append(targets[child] - par_y[p])
        f_image.append(spot_mean[child] - block_mean[p])
        f_interp.append(idw(par_xy, par_y, centres[child]) - par_y[p])
    A = np.stack([np.concatenate(f_image).ravel(), np.concatenate(f_interp).ravel()], 1).astype(np.float64)
    t = np.concatenate(target).ravel().astype(np.float64)
    image, interpolation = shrink_weights(A, t, n_child)
    return {"image": image, "interpolation": interpolation,
            "method": f"scale transfer, 2 x 2-pitch blocks, {which_head}",
            "n_spots": int(n_child), "n_blocks": int(n_blocks)}


def shrink_weights(A: np.ndarray, t: np.ndarray, n_obs: int) -> tuple[float, float]:
    """Least-squares weights of ``A``'s columns for ``t`` (no intercept), each shrunk by positive-part James-Stein
    on its t-statistic, counting ``n_obs`` independent observations (spots, not spot x gene pairs, which are
    correlated), then clipped to [0, 1]. A deviation that fits only by chance (a blind image whose tiny spot-level
    deviations get a large coefficient) is dropped rather than amplified at the superpixels."""
    gram_inv = np.linalg.pinv(A.T @ A)
    w = gram_inv @ A.T @ t
    sigma2 = float(np.mean((t - A @ w) ** 2)) * len(t) / max(n_obs - A.shape[1], 1)
    t_stat = w / np.sqrt(np.maximum(np.diag(gram_inv) * sigma2, 1e-30))
    w = w * np.clip(1.0 - SHRINKAGE / np.maximum(t_stat**2, 1e-12), 0.0, 1.0)
    return tuple(float(np.clip(v, 0.0, 1.0)) + 0.0 for v in w)  # + 0.0: no -0.0


def idw(src_xy: np.ndarray, values: np.ndarray, dst_xy: np.ndarray, k: int = 4, power: float = 2.0,
        src_colour: np.ndarray | None = None, dst_colour: np.ndarray | None = None) -> np.ndarray:
    """Inverse-distance weighting of ``values`` at ``src_xy`` onto ``dst_xy`` over the ``k`` nearest sources.
    With colours (TESLA's idea), each weight is also multiplied by exp(-|colour difference|^2 / 2 sigma^2),
    sigma the median colour difference, so expression does not bleed across a tissue boundary."""
    k = min(k, len(src_xy))
    d, idx = cKDTree(src_xy).query(dst_xy, k=k)
    d, idx = d.reshape(len(dst_xy), k), idx.reshape(len(dst_xy), k)
    w = 1.0 / np.maximum(d, 1e-6) ** power
    if src_colour is not None:
        diff = ((src_colour[idx] - dst_colour[:, None, :]) ** 2).sum(-1)
        sim = np.exp(-diff / (2 * max(float(np.median(diff)), 1e-12)))
        sim[sim.sum(axis=1) < 1e-12] = 1.0  # every neighbour unlike this point: fall back to distance alone
        w = w * sim
    w = w / w.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkg->ng", w, values[idx]).astype(np.float32)


def anchor_to_measurements(sp_xy: np.ndarray, pred: np.ndarray, members: np.ndarray, centres: np.ndarray,
                           observed: np.ndarray, image: float = 1.0, interpolation: float = 0.0) -> np.ndarray:
    """The image prediction anchored to the measured spots (regression kriging). Between spots: the prediction plus
    the spots' residuals (observed minus the mean prediction of their superpixels) interpolated by inverse-distance
    weighting. Inside a spot: its measurement plus ``image`` x the image's deviation from the spot's mean
    prediction plus ``interpolation`` x the neighbours' deviation (the spots interpolated to the superpixel minus
    the spot's own value), that last term centred over the spot, so a spot's superpixels average exactly to its
    measurement. image=1, interpolation=0 keeps the full image pattern; 0, 0 is flat at the measurement."""
    means, k = footprint_means(pred, members, len(observed))
    ok = k > 0
    if not ok.any():
        return pred
    residual = np.zeros_like(observed, dtype=np.float32)
    residual[ok] = observed[ok] - means[ok]
    inside = members >= 0
    m = members[inside]
    out = pred + idw(centres[ok], residual[ok], sp_xy)
    deviation = image * (pred[inside] - means[m])
    if interpolation:
        neighbours = idw(centres[ok], observed[ok], sp_xy[inside]) - observed[m]
        neighbours -= footprint_means(neighbours, m, len(observed))[0][m]
        deviation = deviation + interpolation * neighbours
    out[inside] = observed[m] + deviation
    return out.astype(np.float32)


def section_anchoring(features: np.ndarray, members: np.ndarray, observed: np.ndarray, centres: np.ndarray,
                      model: SuperresModel, image_weight: float | None = None, *, in_training: bool = False) -> dict:
    """The anchoring weights for one section with counts (``observed`` at spot ``centres``; ``members``: each
    superpixel's spot or -1). Calibrated on the section's own measured spots (``calibrate_anchoring`` one level up,
    the image deviation from the model's head) when it has ``MIN_CALIBRATION_SPOTS`` spots in blocks of two or
    more, so the weights fit this image and this tissue, not the patient the model was trained on. Otherwise, and
    for a section the model was trained on (``in_training``: its spots fitted the head, so the head's deviations
    would follow them by construction), the model's stored weights, calibrated on its training sections with a head
    fitted on their blocks. ``image_weight`` overrides the image's weight. Returns the weights and where they came
    from (``weights_from``), as recorded in uns['superres']['anchoring']."""
    own = calibrate_anchoring({"section": (features, members, observed, centres)}, head=model.head)
    stored = {**ANCHOR_DEFAULT, **model.anchoring}
    if own["method"].startswith("scale transfer") and not in_training:
        w = {"image": own["image"], "interpolation": own["interpolation"], "method": own["method"],
             "weights_from": "this section"}
    else:
        why = ("the model was trained on this section's spots" if in_training else
               f"this section has {own['n_spots']} spots in blocks, fewer than {MIN_CALIBRATION_SPOTS}")
        w = {"image": float(stored["image"]), "interpolation": float(stored["interpolation"]),
             "method": str(stored["method"]), "weights_from": f"the model's training sections ({why})"}
    w["section_spots_in_blocks"] = int(own["n_spots"])
    w["image_weight_override"] = image_weight is not None
    if image_weight is not None:
        w["image"] = float(image_weight)
    return w


def superres_adata(section: ad.AnnData, sp: Superpixels, pred: np.ndarray, model: SuperresModel, *,
                   image_weight: float | None = None) -> ad.AnnData:
    """The superpixel AnnData: X = predicted log-normalised expression; obs grid row/col, tissue share and the spot
    each superpixel lies in. Where the section has counts, X is anchored to them (``anchor_to_measurements`` with
    the weights ``section_anchoring`` calibrates on this section's own spots, or the model's stored ones when it
    has too few or is one of the model's training sections; ``image_weight`` overrides the image's; which were used
    is in uns['superres']['anchoring']; the image-only prediction stays in layers['image_only']) and
    layers['counts'] redistributes each spot's counts over its superpixels."""
    lib = library_id(section)
    members = spot_members(sp.xy, np.asarray(section.obsm["spatial"], float), spot_radius_px(section))
    obs = pd.DataFrame({"section": lib, "grid_row": sp.row, "grid_col": sp.col, "tissue_fraction": sp.tissue,
                        "spot": np.where(members >= 0, np.asarray(section.obs_names)[np.maximum(members, 0)], "")},
                       index=[f"{lib}_sp{r}_{c}" for r, c in zip(sp.row, sp.col, strict=True)])
    out = ad.AnnData(pred.astype(np.float32), obs=obs, var=pd.DataFrame(index=model.genes))
    out.obsm["spatial"] = sp.xy
    meta = dict(section.uns["spatial"][lib])
    meta["scalefactors"] = {**meta["scalefactors"], "spot_diameter_fullres": sp.step_um / microns_per_pixel(section)}
    out.uns["spatial"] = {lib: meta}
    out.uns["superres"] = {"step_um": sp.step_um, "grid_origin_fullres": [0.0, 0.0],
                           "spot_diameter_fullres": spot_diameter_fullres(section),
                           "values": "log1p(counts / library size * target_sum)", "target_sum": model.target_sum,
                           "encoder": (model.encoder_ref or {}).get("name")}
    if section.n_vars and all(g in section.var_names for g in model.genes):
        import scipy.sparse as sparse

        observed = expression_matrix(section, model.genes, model.target_sum)
        centres = np.asarray(section.obsm["spatial"], float)
        out.layers["image_only"] = out.X.copy()
        weights = section_anchoring(sp.features, members, observed, centres, model, image_weight,
                                    in_training=lib in set(model.training.get("sections", [])))
        out.X = anchor_to_measurements(sp.xy, pred, members, centres, observed, image=weights["image"],
                                       interpolation=weights["interpolation"])
        out.uns["superres"]["anchored"] = ("inside spots: the spot's measurement + image x the image's deviation "
                                           "from the spot mean + interpolation x the neighbouring spots' deviation; "
                                           "between spots: image prediction + IDW of the spots' residuals")
        out.uns["superres"]["anchoring"] = weights
        counts = section[:, model.genes].X
        counts = np.asarray(counts.toarray() if sparse.issparse(counts) else counts, dtype=np.float64)
        out.layers["counts"] = redistribute(np.asarray(out.X), members, counts)
    return out


def grid_images(sp_adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
    """(genes, rows, cols) float32 maps of the superpixel grid, NaN off tissue (cropped to the tissue)."""
    r = sp_adata.obs["grid_row"].to_numpy()
    c = sp_adata.obs["grid_col"].to_numpy()
    r0, c0 = r.min(), c.min()
    vals = np.asarray(sp_adata.layers[layer] if layer else sp_adata.X, dtype=np.float32)
    img = np.full((sp_adata.n_vars, r.max() - r0 + 1, c.max() - c0 + 1), np.nan, dtype=np.float32)
    img[:, r - r0, c - c0] = vals.T
    return img
