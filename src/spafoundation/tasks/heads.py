"""Regression heads from spot features to gene expression.

- ``RidgeHead``: standard scaling + PCA + ridge; alpha chosen by inner cross-validation over training sections
  (grouped, so a section never informs its own validation) on the mean per-gene Pearson, the metric we report.
  Feature blocks of different widths (encoder embedding, colour statistics) are weighted equally.
- ``RidgeEnsembleHead``: the mean of ridge heads each fitted on some of the feature blocks (``members``); the
  default pipeline's is one ridge on every block and one on the spot patch's colour/texture and nuclear statistics
  alone, which carry best to another patient (BENCHMARKS.md). To that mean it adds the shared expression programs
  (``ExpressionPrograms``): the few axes along which the training genes vary together, predicted from every block.
- ``MLPHead``: one hidden layer, trained with AdamW on standardised targets, early stopping on a held-out section.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, KFold
from sklearn.preprocessing import StandardScaler
from torch import nn

from spafoundation.eval.metrics import pearson_per_gene
from spafoundation.utils.linalg import leading_svd

ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
N_PCS = 256


# Every head chooses its settings on held-out spots: with fewer, a fold trains on one or two spots and PCA has no
# component left to fit (a traceback from scikit-learn before this was checked).
MIN_TRAINING_SPOTS = 10


def _folds(groups: np.ndarray, n: int):
    if n < MIN_TRAINING_SPOTS:
        from spafoundation.errors import InputError

        sections = ", ".join(str(g) for g in np.unique(np.asarray(groups))) or "none"
        raise InputError(None, "spots", f"{n} training spot(s) with features (sections: {sections}): at least "
                         f"{MIN_TRAINING_SPOTS} are needed to fit a head")
    uniq = np.unique(groups)
    if len(uniq) >= 2:
        return list(GroupKFold(n_splits=min(5, len(uniq))).split(np.zeros(n), groups=groups))
    return list(KFold(n_splits=min(5, n), shuffle=True, random_state=0).split(np.zeros(n)))


def _score(y, pred) -> float:
    r = pearson_per_gene(y, pred)
    return float(np.nanmean(r)) if np.isfinite(r).any() else -1.0


def _ridge_predict(ridge: Ridge, Z: np.ndarray) -> np.ndarray:
    """(spots, genes) even for one gene, where scikit-learn returns a vector."""
    return ridge.predict(Z).reshape(len(Z), -1)


# One ensemble fit fits the scaling + PCA of the same training rows several times: in each inner fold of a member's
# alpha search, again for the programs' ridge on the same blocks and folds, and for the ensemble's own
# cross-validated score. Within ``shared_transforms`` each is fitted once and kept by the rows' content: the same
# transform at a fraction of the time (a randomised PCA of a few hundred spots by a thousand features: ~0.2 s).
_TRANSFORMS: dict | None = None
_TRANSFORMS_BYTES = 2**30  # the oldest are dropped beyond it (tens of thousands of training spots)


@contextlib.contextmanager
def shared_transforms():
    """Ridge heads fitted inside share the scaling + PCA of identical training rows; dropped on leaving."""
    global _TRANSFORMS
    if _TRANSFORMS is not None:  # an enclosing fit already shares them
        yield
        return
    _TRANSFORMS = {}
    try:
        yield
    finally:
        _TRANSFORMS = None


def _digest(X: np.ndarray) -> tuple:
    X = np.ascontiguousarray(X)
    return X.shape, X.dtype.str, hashlib.blake2b(X.view(np.uint8), digest_size=16).digest()


def _keep_transform(key, transform) -> None:
    _TRANSFORMS[key] = transform

    def size(t):
        return t[2].nbytes + (t[1].components_.nbytes if t[1] is not None else 0)

    while len(_TRANSFORMS) > 1 and sum(size(t) for t in _TRANSFORMS.values()) > _TRANSFORMS_BYTES:
        _TRANSFORMS.pop(next(iter(_TRANSFORMS)))


class RidgeHead:
    kind = "ridge"

    def __init__(self, n_pcs: int = N_PCS, alphas=ALPHAS, blocks=None):
        self.n_pcs, self.alphas = int(n_pcs), tuple(float(a) for a in alphas)
        self.blocks = [int(b) for b in blocks] if blocks else None
        self.alpha = None

    @property
    def hp(self) -> dict:
        return {"n_pcs": self.n_pcs, "alphas": list(self.alphas), "blocks": self.blocks}

    def _block_scaler(self, X) -> StandardScaler:
        """Standardise each feature, then (given ``blocks``) divide each block by sqrt(width): every block
        (encoder embedding, colour statistics, neighbourhood mean...) carries the same total variance into PCA."""
        scaler = StandardScaler().fit(X)
        if self.blocks:
            if sum(self.blocks) != X.shape[1]:
                raise ValueError(f"feature blocks {self.blocks} do not add up to {X.shape[1]} features")
            scaler.scale_ = scaler.scale_ * np.repeat(np.sqrt(self.blocks), self.blocks)
        return scaler

    def _transform_fit(self, X):
        key = (_digest(X), self.n_pcs, tuple(self.blocks or ())) if _TRANSFORMS is not None else None
        if key is not None and key in _TRANSFORMS:
            return _TRANSFORMS[key]
        scaler = self._block_scaler(X)
        Z = scaler.transform(X)
        k = min(self.n_pcs, Z.shape[0] - 1, Z.shape[1])
        pca = PCA(n_components=k, random_state=0).fit(Z) if k < Z.shape[1] else None
        transform = (scaler, pca, pca.transform(Z) if pca is not None else Z)
        if key is not None:
            _keep_transform(key, transform)
        return transform

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray, blocks=None) -> RidgeHead:
        """Alpha by grouped inner cross-validation (``cv_scores``: the mean r at each); one alpha: fitted at it."""
        if blocks is not None:
            self.blocks = [int(b) for b in blocks]
        if len(self.alphas) == 1:
            self.cv_scores = None  # nothing to choose (a refit at an alpha chosen before)
            return self.fit_at(X, Y, self.alphas[0])
        scores = np.zeros(len(self.alphas))
        folds = _folds(groups, len(X))
        for tr, va in folds:
            scaler, pca, Ztr = self._transform_fit(X[tr])
            Zva = scaler.transform(X[va])
            Zva = pca.transform(Zva) if pca is not None else Zva
            for i, a in enumerate(self.alphas):
                scores[i] += _score(Y[va], _ridge_predict(Ridge(alpha=a).fit(Ztr, Y[tr]), Zva))
        self.cv_scores = (scores / len(folds)).tolist()
        return self.fit_at(X, Y, self.alphas[int(np.argmax(scores))])

    def fit_at(self, X: np.ndarray, Y: np.ndarray, alpha: float, blocks=None) -> RidgeHead:
        """Fitted at ``alpha``, without cross-validation."""
        if blocks is not None:
            self.blocks = [int(b) for b in blocks]
        self.alpha = float(alpha)
        self.scaler, self.pca, Z = self._transform_fit(X)
        self.ridge = Ridge(alpha=self.alpha).fit(Z, Y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler.transform(X)
        Z = self.pca.transform(Z) if self.pca is not None else Z
        return _ridge_predict(self.ridge, Z).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        st = {"scaler_mean": self.scaler.mean_, "scaler_scale": self.scaler.scale_, "coef": self.ridge.coef_,
              "intercept": np.atleast_1d(self.ridge.intercept_), "alpha": np.array([self.alpha])}
        if self.pca is not None:
            st.update(pca_components=self.pca.components_, pca_mean=self.pca.mean_)
        return st

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], hp: dict | None = None) -> RidgeHead:
        head = cls(**(hp or {}))
        head.alpha = float(st["alpha"][0])
        head.scaler = StandardScaler()
        head.scaler.mean_, head.scaler.scale_ = st["scaler_mean"], st["scaler_scale"]
        head.pca = None
        if "pca_components" in st:
            head.pca = PCA(n_components=len(st["pca_components"]))
            head.pca.components_, head.pca.mean_ = st["pca_components"], st["pca_mean"]
            head.pca.whiten = False
        head.ridge = Ridge(alpha=head.alpha)
        head.ridge.coef_, head.ridge.intercept_ = np.atleast_2d(st["coef"]), st["intercept"]
        head.ridge.n_features_in_ = head.ridge.coef_.shape[1]
        return head


def section_z(Y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each gene z-scored within each group (section): what varies between spots, not between sections."""
    Z = np.zeros(Y.shape)
    for g in np.unique(groups):
        rows = groups == g
        sd = Y[rows].std(0)
        Z[rows] = (Y[rows] - Y[rows].mean(0)) / np.where(sd > 1e-12, sd, 1.0)
    return Z


# Shared expression programs (issue #17). Per-gene ridges each learn their own direction in feature space from a few
# hundred spots, and the noise in those directions is what fails on another patient. The axes along which many genes
# vary together (tumour against stroma, immune infiltrate) are learnt from all of them at once. Adding the predicted
# programs, with each gene's loadings, to its own prediction lifted mean r in both directions across patients and
# within patient C, on hvg:50 and the 785-gene list, normalised and log1p targets; two programs at equal weight did
# best across patients (BENCHMARKS.md, 'programs' rows). The axes are a property of the tissue's genes, not of the
# images, so sections with counts alone (other patients', no H&E needed: ``reference``) can estimate them too; with
# one or two training sections their own axes are noisy (tasks/expression_reference.py).
PROGRAMS, PROGRAMS_WEIGHT = 2, 1.0
# With a reference, each ensemble member also learns the training targets reduced to their 20 leading shared axes
# (training and reference sections): a gene's own variation off those axes is mostly noise on a few hundred spots.
# Across patients (BENCHMARKS.md) that lifted the reference rows from 0.082 to 0.089 (hvg:50 normalised), 0.162 to
# 0.168 (log1p counts) and 0.066 to 0.073 (785 genes), all in A1 -> C; 20 axes did best of 3-50 on both gene lists in
# a sweep on cached features, and the training sections' own axes gave nothing (0.072 either way on hvg:50).
REFERENCE_AXES = 20
# Without a reference, each member learns the training targets reduced to the span of the 10 leading spot factors
# of the training sections' whole transcriptome (its 2000 most variable genes: pp/genes.transcriptome_z). Thousands
# of genes place each spot on those factors far more surely than the few target genes do, so the reduced targets
# keep the shared signal and drop each gene's own noise. Across patients (BENCHMARKS.md) it lifted A1 -> C and
# within patient C on hvg:50 (normalised, log1p counts) and the 785 genes, and moved C -> A1 by at most 0.004;
# 10 did best or tied of 5-50 in a scratch sweep on cached features (and 2000 genes as well as all 6,500-9,500
# detected ones). On colour/texture features alone it loses A1 -> C (tests/eval): chosen for the default features.
TRANSCRIPTOME_FACTORS = 10
EXACT_AXES_UP_TO = 1000  # spots and genes both above it: the leading axes by a randomised SVD


def program_loadings(Z: np.ndarray, groups: np.ndarray, k: int, reference=()) -> np.ndarray:
    """The leading ``k`` principal axes (k x genes) of section-z-scored targets ``Z`` and of each ``reference``
    section's z-scored expression (spots x the same genes), every section weighing the same whatever its spots."""
    blocks = [Z[groups == g] for g in np.unique(groups)] + [np.asarray(R, dtype=np.float64) for R in reference]
    M = np.vstack([B / np.sqrt(max(len(B), 1)) for B in blocks])
    if len(M) < M.shape[1] or (min(M.shape) > EXACT_AXES_UP_TO and k < min(M.shape) // 10):
        return _leading_svd(M, k)[2]  # not a genes x genes eigenproblem where spots are fewer, or both are many
    return np.linalg.eigh(M.T @ M)[1][:, ::-1][:, :k].T


def _leading_svd(M: np.ndarray, k: int):
    """``U, s, Vt`` of the ``k`` leading singular triplets of ``M``: exact (``utils.linalg.leading_svd``), or by a
    randomised SVD where both sides exceed ``EXACT_AXES_UP_TO`` and ``k`` is under a tenth of the smaller."""
    if min(M.shape) > EXACT_AXES_UP_TO and k < min(M.shape) // 10:
        # thousands of genes and of reference spots: a full decomposition takes up to minutes per fit, and a fit
        # runs in every inner and reliability fold; the leading axes of a randomised SVD match its (|cos| > 0.9999
        # with 2,500-4,000 genes), at 3-15x less time
        from sklearn.utils.extmath import randomized_svd

        return randomized_svd(M, k, n_oversamples=k + 10, n_iter=7, random_state=0)
    return leading_svd(M, k)


def factor_reduced_targets(Y: np.ndarray, groups: np.ndarray, transcriptome: np.ndarray, k: int) -> np.ndarray:
    """``Y`` with each section's z-scores replaced by their projection on the ``k`` leading spot factors of
    ``transcriptome`` (the same spots x many genes, z-scored within each section; every section weighing the same),
    in ``Y``'s units (each section's mean and spread per gene kept); ``Y`` itself for ``k`` < 1."""
    if k < 1 or np.size(transcriptome) == 0:
        return Y
    groups = np.asarray(groups)
    if len(transcriptome) != len(Y):
        raise ValueError(f"transcriptome has {len(transcriptome)} spots, the targets {len(Y)}")
    weight = np.empty(len(Y))
    for g in np.unique(groups):
        weight[groups == g] = 1.0 / np.sqrt((groups == g).sum())
    M = np.asarray(transcriptome, dtype=np.float64) * weight[:, None]  # one copy: it can be thousands x 2000
    F = _leading_svd(M, min(k, *M.shape))[0]  # orthonormal spot factors
    return _in_section_units(Y, groups, F @ (F.T @ section_z(Y, groups)))


def _in_section_units(Y: np.ndarray, groups: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Section z-scores ``Z`` back in ``Y``'s units: each section's own mean and spread per gene."""
    out = np.empty(Y.shape)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = Y[rows].mean(0) + Y[rows].std(0) * Z[rows]
    return out


def reduced_targets(Y: np.ndarray, groups: np.ndarray, k: int, reference=()) -> np.ndarray:
    """``Y`` with each section's z-scores projected onto the ``k`` leading axes of ``program_loadings``, in ``Y``'s
    units (each section's mean and spread per gene kept); ``Y`` itself where ``k`` leaves no gene out."""
    if k < 1 or k >= Y.shape[1]:
        return Y
    groups = np.asarray(groups)
    Z = section_z(Y, groups)
    V = program_loadings(Z, groups, k, reference)
    return _in_section_units(Y, groups, Z @ V.T @ V)


class ExpressionPrograms:
    """The leading ``k`` principal axes of the training targets (each section's spots z-scored per gene; with
    ``reference`` sections too), and a ridge from the features to each training spot's scores on them. ``predict``
    gives the programs' part of every gene (spots x genes, in the z units of the section-standardised targets)."""

    def __init__(self, k: int, n_pcs: int = N_PCS, alphas=ALPHAS):
        self.k, self.n_pcs, self.alphas = int(k), int(n_pcs), tuple(alphas)

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray, blocks=None, reference=()) -> ExpressionPrograms:
        """One alpha: fitted at it; several: chosen by the ridge's grouped inner cross-validation. ``reference``:
        z-scored expression of other sections (counts only) that inform the axes, not the ridge."""
        groups = np.asarray(groups)
        Z = section_z(Y, groups)
        self.loadings = program_loadings(Z, groups, self.k, reference)
        self.ridge = RidgeHead(self.n_pcs, self.alphas).fit(X, Z @ self.loadings.T, groups, blocks)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.ridge.predict(X).astype(np.float64) @ self.loadings

    def state(self) -> dict[str, np.ndarray]:
        return {"loadings": self.loadings, **{f"ridge.{k}": v for k, v in self.ridge.state().items()}}

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], blocks=None) -> ExpressionPrograms:
        programs = cls(len(st["loadings"]))
        programs.loadings = st["loadings"]
        programs.ridge = RidgeHead.from_state({k[6:]: v for k, v in st.items() if k.startswith("ridge.")},
                                              {"blocks": blocks})
        return programs


class RidgeEnsembleHead:
    """The mean prediction of ridge heads, member ``i`` fitted on the feature blocks ``members[i]`` (indices into
    the blocks of ``fit``; None: every block). Each member chooses its alpha by the same grouped inner
    cross-validation as ``RidgeHead``, or uses ``member_alphas[i]`` when given.

    ``programs`` > 0 adds that many shared expression programs (``ExpressionPrograms``, on every block; fewer where
    there are fewer genes): gene ``g`` gets ``programs_weight`` x its programs' part, scaled to the spread of the
    members' own prediction of ``g`` on the training spots. Fitted with a ``reference``, the members learn the
    targets reduced to their ``reference_axes`` leading axes (``reduced_targets``; 0: the targets as they are);
    without one but with the training spots' ``transcriptome`` (``pp.genes.transcriptome_z``), the targets reduced
    to its ``transcriptome_factors`` leading spot factors (``factor_reduced_targets``; 0: as they are)."""

    kind = "ridge-ensemble"

    def __init__(self, n_pcs: int = N_PCS, alphas=ALPHAS, blocks=None, members=None, member_alphas=None,
                 programs: int = PROGRAMS, programs_weight: float = PROGRAMS_WEIGHT, programs_alpha=None,
                 reference_axes: int = REFERENCE_AXES, transcriptome_factors: int = TRANSCRIPTOME_FACTORS):
        self.n_pcs, self.alphas = int(n_pcs), tuple(float(a) for a in alphas)
        self.blocks = [int(b) for b in blocks] if blocks else None
        self.members = [None if m is None else [int(i) for i in m] for m in (members or [None])]
        self.member_alphas = None if member_alphas is None else [float(a) for a in member_alphas]
        if self.member_alphas is not None and len(self.member_alphas) != len(self.members):
            raise ValueError(f"{len(self.member_alphas)} member alphas for {len(self.members)} members")
        if int(programs) < 0 or float(programs_weight) < 0:
            raise ValueError(f"programs ({programs}) and programs_weight ({programs_weight}) must be >= 0")
        self.programs, self.programs_weight = int(programs), float(programs_weight)
        self.programs_alpha = None if programs_alpha is None else float(programs_alpha)
        if int(reference_axes) < 0 or int(transcriptome_factors) < 0:
            raise ValueError(f"reference_axes ({reference_axes}) and transcriptome_factors ({transcriptome_factors}) "
                             "must be >= 0")
        self.reference_axes, self.transcriptome_factors = int(reference_axes), int(transcriptome_factors)

    @property
    def hp(self) -> dict:
        return {"n_pcs": self.n_pcs, "alphas": list(self.alphas), "blocks": self.blocks, "members": self.members,
                "member_alphas": self.member_alphas, "programs": self.programs,
                "programs_weight": self.programs_weight, "programs_alpha": self.programs_alpha,
                "reference_axes": self.reference_axes, "transcriptome_factors": self.transcriptome_factors}

    @property
    def alpha(self) -> list[float]:
        return [p.alpha for p in self.parts]

    @property
    def programs_chosen_alpha(self) -> float | None:
        return self.programs_part.ridge.alpha if self.programs_part is not None else None

    def _columns(self, member) -> tuple[np.ndarray | slice, list[int] | None]:
        """Column indices (every column: a slice, so no copy) and block widths of one member."""
        if member is None:
            return slice(None), self.blocks
        if not self.blocks:
            raise ValueError("ensemble members name feature blocks, but the features came without blocks")
        if any(i < 0 or i >= len(self.blocks) for i in member) or not member:
            raise ValueError(f"ensemble member {member} is not a set of the {len(self.blocks)} feature blocks")
        starts = np.cumsum([0, *self.blocks])
        cols = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in member])
        return cols, [self.blocks[i] for i in member]

    def _member(self, i: int) -> RidgeHead:
        return RidgeHead(self.n_pcs, (self.member_alphas[i],) if self.member_alphas else self.alphas)

    def _n_programs(self, n_genes: int) -> int:
        return min(self.programs, n_genes - 1) if self.programs_weight > 0 else 0

    def _fit_programs(self, X, Y, groups, members_pred, reference) -> tuple[ExpressionPrograms | None, np.ndarray | None]:
        """The programs (alpha by inner cross-validation unless ``programs_alpha``) and each gene's scale."""
        k = self._n_programs(Y.shape[1])
        if k < 1:
            return None, None
        alphas = (self.programs_alpha,) if self.programs_alpha is not None else self.alphas
        programs = ExpressionPrograms(k, self.n_pcs, alphas).fit(X, Y, groups, self.blocks, reference)
        part = programs.predict(X)
        spread = part.std(0)  # a gene the programs leave flat gets no part of them
        return programs, members_pred.std(0) / np.where(spread > 1e-12, spread, np.inf)

    def _members_targets(self, Y, groups, reference, transcriptome) -> np.ndarray:
        if len(reference):
            return reduced_targets(Y, groups, self.reference_axes, reference)
        if transcriptome is not None:
            return factor_reduced_targets(Y, groups, transcriptome, self.transcriptome_factors)
        return Y

    def _members_predict(self, parts, X: np.ndarray) -> np.ndarray:
        pred = sum(p.predict(X[:, self._columns(m)[0]]).astype(np.float64)
                   for p, m in zip(parts, self.members, strict=True))
        return pred / len(parts)

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray, blocks=None, reference=(),
            transcriptome=None) -> RidgeEnsembleHead:
        """``reference``: z-scored expression of sections with counts only (``ExpressionPrograms.fit``);
        ``transcriptome``: the training spots' many-gene matrix (rows as ``X``) whose spot factors reduce the
        members' targets."""
        with shared_transforms():
            return self._fit(X, Y, groups, blocks, reference, transcriptome)

    def _fit(self, X, Y, groups, blocks, reference, transcriptome) -> RidgeEnsembleHead:
        if blocks is not None:
            self.blocks = [int(b) for b in blocks]
        groups = np.asarray(groups)
        targets = self._members_targets(Y, groups, reference, transcriptome)
        self.parts = []
        for i, m in enumerate(self.members):
            cols, widths = self._columns(m)
            self.parts.append(self._member(i).fit(X[:, cols], targets, groups, widths))
        self.programs_part, self.programs_scale = self._fit_programs(X, Y, groups, self._members_predict(self.parts, X),
                                                                     reference)
        if self.member_alphas is not None and (self.programs_alpha is not None or self.programs_part is None):
            self.cv_scores = None  # nothing was chosen (a refit at settings chosen before): no score to report
            return self
        # the ensemble's own inner cross-validated score, each member (and the programs) at the alpha it chose
        refit = RidgeEnsembleHead(**chosen_params(self))
        folds = _folds(groups, len(X))
        score = 0.0
        for tr, va in folds:
            fold = refit._fit(X[tr], Y[tr], groups[tr], None, reference,
                              None if transcriptome is None else transcriptome[tr])
            score += _score(Y[va], fold.predict(X[va]))
        self.cv_scores = [score / len(folds)]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        pred = self._members_predict(self.parts, X)
        if self.programs_part is not None:
            pred = pred + self.programs_weight * self.programs_scale * self.programs_part.predict(X)
        return pred.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        st = {f"member{i}.{k}": v for i, p in enumerate(self.parts) for k, v in p.state().items()}
        if self.programs_part is not None:
            st.update({f"programs.{k}": v for k, v in self.programs_part.state().items()},
                      programs_scale=self.programs_scale)
        return st

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], hp: dict | None = None) -> RidgeEnsembleHead:
        # a model saved before the programs existed has none (its hp does not name them)
        head = cls(**{"programs": 0, **(hp or {})})
        head.parts = []
        for i, m in enumerate(head.members):
            prefix = f"member{i}."
            part_state = {k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)}
            head.parts.append(RidgeHead.from_state(part_state, {"n_pcs": head.n_pcs,
                                                                "blocks": head._columns(m)[1]}))
        head.programs_part = head.programs_scale = None
        if "programs_scale" in st:
            head.programs_part = ExpressionPrograms.from_state(
                {k[9:]: v for k, v in st.items() if k.startswith("programs.")}, head.blocks)
            head.programs_scale = st["programs_scale"]
        return head


class _MLP(nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


class MLPHead:
    kind = "mlp"

    def __init__(self, hidden: int = 256, dropout: float = 0.3, lr: float = 1e-3, weight_decay: float = 1e-2,
                 max_epochs: int = 200, patience: int = 20, seed: int = 0):
        self.hp = dict(hidden=hidden, dropout=dropout, lr=lr, weight_decay=weight_decay, max_epochs=max_epochs,
                       patience=patience, seed=seed)

    def _new(self, d_in: int, d_out: int):
        hp = self.hp
        model = _MLP(d_in, d_out, hp["hidden"], hp["dropout"])
        return model, torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])

    @staticmethod
    def _epoch(model, opt, X, Y, rows: torch.Tensor) -> None:
        model.train()
        for b in rows[torch.randperm(len(rows))].split(64):
            loss = nn.functional.mse_loss(model(X[b]), Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray, blocks=None) -> MLPHead:
        hp = self.hp
        self.x_mean, self.x_std = X.mean(0), X.std(0) + 1e-6
        self.y_mean, self.y_std = Y.mean(0), Y.std(0) + 1e-6
        Xn = torch.tensor((X - self.x_mean) / self.x_std, dtype=torch.float32)
        Yn = torch.tensor((Y - self.y_mean) / self.y_std, dtype=torch.float32)
        tr, va = (torch.as_tensor(i) for i in _folds(groups, len(X))[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp["seed"])
            model, opt = self._new(X.shape[1], Y.shape[1])
            best, bad, self.best_epoch = -np.inf, 0, 1
            for epoch in range(hp["max_epochs"]):
                self._epoch(model, opt, Xn, Yn, tr)
                model.eval()
                with torch.no_grad():
                    score = _score(Yn[va].numpy(), model(Xn[va]).numpy())
                if score > best:
                    best, bad, self.best_epoch = score, 0, epoch + 1
                elif (bad := bad + 1) >= hp["patience"]:
                    break
            # refit on all training spots for the number of epochs that validated best
            torch.manual_seed(hp["seed"])
            model, opt = self._new(X.shape[1], Y.shape[1])
            everything = torch.arange(len(Xn))
            for _ in range(self.best_epoch):
                self._epoch(model, opt, Xn, Yn, everything)
        self.model = model.eval()
        return self

    @torch.no_grad()
    def predict(self, X: np.ndarray) -> np.ndarray:
        x = torch.tensor((X - self.x_mean) / self.x_std, dtype=torch.float32)
        return (self.model(x).numpy() * self.y_std + self.y_mean).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        st = {f"net.{k}": v.numpy() for k, v in self.model.state_dict().items()}
        st.update(x_mean=self.x_mean, x_std=self.x_std, y_mean=self.y_mean, y_std=self.y_std,
                  best_epoch=np.array([self.best_epoch]))
        return st

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], hp: dict | None = None) -> MLPHead:
        head = cls(**(hp or {}))
        head.x_mean, head.x_std, head.y_mean, head.y_std = st["x_mean"], st["x_std"], st["y_mean"], st["y_std"]
        head.best_epoch = int(st["best_epoch"][0])
        model = _MLP(len(head.x_mean), len(head.y_mean), head.hp["hidden"], head.hp["dropout"])
        model.load_state_dict({k[4:]: torch.from_numpy(np.asarray(v)) for k, v in st.items() if k.startswith("net.")})
        head.model = model.eval()
        return head


class MeanHead:
    """The training-mean predictor: the floor every head must beat (constant, so its Pearson is undefined)."""

    kind = "mean"

    def __init__(self):
        self.hp = {}

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray, blocks=None) -> MeanHead:
        self.y_mean = Y.mean(axis=0)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.y_mean, (len(X), len(self.y_mean))).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"y_mean": self.y_mean}

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], hp: dict | None = None) -> MeanHead:
        head = cls()
        head.y_mean = st["y_mean"]
        return head


class FineTunedHead:
    """The LayerNorm + Linear head of a fine-tuned encoder (train/finetune.py), applied to its embeddings.
    It is fitted together with the encoder, never on fixed features."""

    kind = "finetune"

    def __init__(self, **hp):
        self.hp = dict(hp)

    def fit(self, X, Y, groups, blocks=None):
        raise TypeError("the finetune head trains with its encoder: use fit_expression(..., head='finetune')")

    @classmethod
    def from_module(cls, module, y_mean, y_std, hp: dict) -> FineTunedHead:
        head = cls(**hp)
        sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        head.w_norm, head.b_norm = sd["norm.weight"], sd["norm.bias"]
        head.w, head.b = sd["linear.weight"], sd["linear.bias"]
        head.y_mean, head.y_std = np.asarray(y_mean), np.asarray(y_std)
        return head

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        z = (X - X.mean(1, keepdims=True)) / np.sqrt(X.var(1, keepdims=True) + 1e-5) * self.w_norm + self.b_norm
        return ((z @ self.w.T + self.b) * self.y_std + self.y_mean).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"w_norm": self.w_norm, "b_norm": self.b_norm, "w": self.w, "b": self.b, "y_mean": self.y_mean,
                "y_std": self.y_std}

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray], hp: dict | None = None) -> FineTunedHead:
        head = cls(**(hp or {}))
        for k, v in st.items():
            setattr(head, k, v)
        return head


# The second member of the default ensemble: the spot patch's own colour/texture and nuclear statistics (no wider field
# of view, no neighbours). Across patients (HER2ST, C <-> A1) a ridge on them carried better than the ridge on every
# block, which wins within a patient; their mean kept the better of the two on both splits (BENCHMARKS.md).
ENSEMBLE_BLOCKS = ("colour_texture", "nuclei")


def ensemble_members(labels: list[str]) -> list[list[int] | None]:
    """The default ensemble over feature blocks named ``labels``: every block, and the spot patch's colour/texture
    and nuclei blocks alone where there are others besides them."""
    narrow = [labels.index(name) for name in ENSEMBLE_BLOCKS if name in labels]
    return [None] + ([narrow] if narrow and len(narrow) < len(labels) else [])


def build_head(kind: str, params: dict | None, recipe: dict):
    """An unfitted head ``kind`` with ``params``; a ridge ensemble without members gets the default ones for the
    blocks of ``recipe`` (tasks/spot_features.py)."""
    from spafoundation.tasks.spot_features import block_labels

    params = dict(params or {})
    if kind == RidgeEnsembleHead.kind and params.get("members") is None:
        params["members"] = ensemble_members(block_labels(recipe))
    return HEADS[kind](**params)


def wants_transcriptome(head, reference=()) -> bool:
    """Whether ``head``'s fit uses the training spots' ``transcriptome`` (a ridge ensemble reducing its targets to
    the spot factors; with a reference it reduces them to the shared axes instead)."""
    return isinstance(head, RidgeEnsembleHead) and head.transcriptome_factors > 0 and not len(reference)


def chosen_params(head) -> dict:
    """The hyper-parameters a fitted head chose (a ridge's alpha), to refit the same head on other rows."""
    if isinstance(head, RidgeEnsembleHead):
        return {"n_pcs": head.n_pcs, "blocks": head.blocks, "members": head.members, "member_alphas": head.alpha,
                "programs": head.programs, "programs_weight": head.programs_weight,
                "programs_alpha": head.programs_chosen_alpha, "reference_axes": head.reference_axes,
                "transcriptome_factors": head.transcriptome_factors}
    if isinstance(head, RidgeHead):
        return {"alphas": (head.alpha,)}
    return {}


HEADS = {"ridge": RidgeHead, "ridge-ensemble": RidgeEnsembleHead, "mlp": MLPHead, "mean": MeanHead,
         "finetune": FineTunedHead}
