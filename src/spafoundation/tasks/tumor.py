"""Tumour detection from H&E, two ways.

- Supervised: logistic regression on spot features (any recipe of tasks/spot_features.py), trained on spots with a
  label column (pathologist labels, or annotations derived from expression clusters); the inverse regularisation
  C is chosen by cross-validation over training sections on ROC AUC.
- Label-free: the mean of the z-scored *predicted* expression of tumour marker genes (an expression model fitted
  on sections with counts; no labels anywhere).
``tumor_maps`` runs either or both on target sections (spots and a tissue grid), scores in ``obs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import microns_per_pixel
from spafoundation.tasks.labels import TUMOR_PATTERN, tumor_labels
from spafoundation.tasks.spot_features import fit_recipe_stain, make_recipe, needs_encoder, spot_features
from spafoundation.utils.model_folder import fitted_on, read_model_folder, write_model_folder

# HER2+ breast cancer: the HER2 amplicon (ERBB2, GRB7, STARD3, PGAP3) and luminal epithelial genes (keratins,
# EPCAM, CDH1, MUC1, CD24), which mark tumour epithelium against stroma, immune cells and fat.
BREAST_TUMOR_MARKERS = ("ERBB2", "GRB7", "STARD3", "PGAP3", "KRT8", "KRT18", "KRT19", "EPCAM", "CDH1", "MUC1",
                        "CD24")
CS = (0.001, 0.01, 0.1, 1.0, 10.0)
N_PCS = 256
FORMAT = "spafoundation-tumor"
# The tumour map's features, chosen on leave-one-patient-out (BENCHMARKS.md, tumour): the encoder's embedding and the
# colour/texture statistics of the spot patch, z-scored within each section. The wider context patch and the
# expression pipeline's features (context, nuclei, neighbour mean) win within patient C but lose across patients
# (ROC AUC 0.768 and 0.761 against 0.832, mean of the directions C <-> A1), so they are not part of it.
TUMOR_FEATURES = {"source": "encoder+colour_texture", "tta": False, "context": 1.0, "neighbours_um": 0.0,
                  "standardize": "section"}


def _folds(groups: np.ndarray):
    uniq = np.unique(groups)
    return [(groups != g, groups == g) for g in uniq] if len(uniq) >= 2 else []


class TumorClassifier:
    """Standard scaling (feature blocks balanced as in the ridge head), PCA to at most ``n_pcs`` components, then
    L2 logistic regression with C chosen by leave-one-section-out ROC AUC on the training sections. PCA keeps the
    solver fast on ~1000 fused features and acts as a first regulariser."""

    def __init__(self, cs: Sequence[float] = CS, n_pcs: int = N_PCS):
        self.cs = tuple(float(c) for c in cs)
        self.n_pcs = int(n_pcs)

    def _reduce_fit(self, X: np.ndarray, blocks):
        scaler = StandardScaler().fit(X)
        if blocks:
            scaler.scale_ = scaler.scale_ * np.repeat(np.sqrt(blocks), blocks)
        Z = scaler.transform(X)
        k = min(self.n_pcs, Z.shape[0] - 1, Z.shape[1])
        pca = PCA(n_components=k, random_state=0).fit(Z) if k < Z.shape[1] else None
        return scaler, pca, (pca.transform(Z) if pca is not None else Z)

    @staticmethod
    def _reduce(scaler, pca, X):
        Z = scaler.transform(X)
        return pca.transform(Z) if pca is not None else Z

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, blocks=None) -> TumorClassifier:
        from sklearn.metrics import roc_auc_score

        keep = np.isfinite(y)
        X, y, groups = X[keep], y[keep].astype(int), groups[keep]
        if len(np.unique(y)) < 2:
            raise InputError(None, "labels", "training spots hold only one class; tumour detection needs both")
        scores = np.zeros(len(self.cs))
        for tr, va in _folds(groups):
            if len(np.unique(y[tr])) < 2 or len(np.unique(y[va])) < 2:
                continue
            scaler, pca, Ztr = self._reduce_fit(X[tr], blocks)
            Zva = self._reduce(scaler, pca, X[va])
            for i, c in enumerate(self.cs):
                clf = LogisticRegression(C=c, max_iter=2000).fit(Ztr, y[tr])
                scores[i] += roc_auc_score(y[va], clf.predict_proba(Zva)[:, 1])
        self.C = self.cs[int(np.argmax(scores))] if scores.any() else 1.0
        self.scaler, self.pca, Z = self._reduce_fit(X, blocks)
        self.clf = LogisticRegression(C=self.C, max_iter=2000).fit(Z, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(self._reduce(self.scaler, self.pca, X))[:, 1].astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        st = {"mean": self.scaler.mean_, "scale": self.scaler.scale_, "coef": self.clf.coef_,
              "intercept": self.clf.intercept_, "C": np.array([self.C])}
        if self.pca is not None:
            st.update(pca_components=self.pca.components_, pca_mean=self.pca.mean_)
        return st

    @classmethod
    def from_state(cls, st: dict[str, np.ndarray]) -> TumorClassifier:
        m = cls()
        m.C = float(st["C"][0])
        m.scaler = StandardScaler()
        m.scaler.mean_, m.scaler.scale_ = st["mean"], st["scale"]
        m.scaler.n_features_in_ = len(st["mean"])
        m.pca = None
        if "pca_components" in st:
            m.pca = PCA(n_components=len(st["pca_components"]))
            m.pca.components_, m.pca.mean_, m.pca.whiten = st["pca_components"], st["pca_mean"], False
        m.clf = LogisticRegression(C=m.C)
        m.clf.coef_, m.clf.intercept_, m.clf.classes_ = st["coef"], st["intercept"], np.array([0, 1])
        m.clf.n_features_in_ = st["coef"].shape[1]
        return m


class TumorModel:
    """A fitted tumour classifier with its feature recipe and encoder reference (a folder, like expression)."""

    def __init__(self, classifier: TumorClassifier, recipe: dict, encoder=None, training: dict | None = None,
                 encoder_ref: dict | None = None):
        self.classifier, self.recipe, self.encoder = classifier, recipe, encoder
        self.training = dict(training or {})
        from spafoundation.tasks.expression import _encoder_reference

        self.encoder_ref = encoder_ref or (_encoder_reference(encoder) if encoder is not None else None)

    def _encoder(self):
        if self.encoder is None and self.encoder_ref is not None:
            from spafoundation.tasks.expression import encoder_from_reference

            self.encoder = encoder_from_reference(self.encoder_ref)
        return self.encoder

    def __repr__(self) -> str:
        labels = self.training.get("label_column")
        return (f"TumorModel(logistic regression{f' on labels of obs[{labels!r}]' if labels else ''}, "
                f"{fitted_on(self.training, self.encoder_ref)})")

    def predict(self, adata: ad.AnnData, *, cache_dir=None, progress: bool = False) -> np.ndarray:
        feats = spot_features(adata, self.recipe, self._encoder(), cache_dir=cache_dir, progress=progress)
        return self.classifier.predict_proba(feats)

    def save(self, folder) -> Path:
        cfg = {"format": FORMAT, "version": 1, "recipe": self.recipe, "encoder": self.encoder_ref,
               "training": self.training}
        return write_model_folder(folder, cfg, "classifier.npz", self.classifier.state())

    @classmethod
    def load(cls, folder, encoder=None) -> TumorModel:
        from spafoundation.tasks.expression import resolve_encoder

        cfg, state = read_model_folder(folder, FORMAT, "classifier.npz", "tumour")
        return cls(TumorClassifier.from_state(state), cfg["recipe"], resolve_encoder(encoder), cfg.get("training"),
                   cfg.get("encoder"))


ROUTES = ("supervised", "markers")


def tumor_routes(route: str | None, labelled: bool) -> list[str]:
    """The routes a request runs: ``route`` ("supervised", "markers" or "both"); by default the supervised one when
    labels (or a fitted model) are given, else the label-free one."""
    if route == "both":
        return list(ROUTES)
    if route:
        return [route]
    return ["supervised"] if labelled else ["markers"]


def marker_list(markers) -> list[str]:
    """Marker genes from a comma-separated string or a list; none given: the HER2+ breast cancer markers."""
    if isinstance(markers, str):
        markers = [g.strip() for g in markers.split(",") if g.strip()]
    return list(markers) if markers else list(BREAST_TUMOR_MARKERS)


def held_out_models(targets: Sequence[str], train: Sequence[str], fit) -> tuple[dict, object]:
    """A model per target section: fitted without that section when it is a training section (so its scores are
    out-of-sample), otherwise the model of all training sections (out-of-sample too, unless the target is the only
    training section). Returns ({target: (model, the sections that model was fitted on)}, full)."""
    train = list(train)
    full = fit(train)
    models = {}
    for t in targets:
        if t in train and len(train) > 1:
            rest = [n for n in train if n != t]
            models[t] = (fit(rest), rest)
        else:
            models[t] = (full, train)
    return models, full


def sample_fields(section: str, trained_on: Sequence[str] | None) -> dict:
    """What a section's score metrics record about its model: ``held_out`` (True: out-of-sample, the section is
    not among the sections the model was fitted on, whether it was never in training or held out by refitting
    without it; None: the model does not record its training sections) and ``trained_on`` (those sections)."""
    if trained_on is None:
        return {"held_out": None, "trained_on": None}
    return {"held_out": section not in trained_on, "trained_on": list(trained_on)}


def sample_note(m: dict) -> str:
    """'out-of-sample (model trained on C3, C4)', 'in training (...)' or 'training sections unknown', from the
    fields of ``sample_fields``."""
    if m.get("held_out") is None:
        return "training sections unknown"
    return (f"{'out-of-sample' if m['held_out'] else 'in training'} "
            f"(model trained on {', '.join(m['trained_on'])})")


def marker_training(train: dict[str, ad.AnnData], markers: Sequence[str]) -> tuple[list[str], list[str]]:
    """What the label-free route trains on: (the training sections with counts of at least one marker, the markers
    that all of them measure)."""
    names = [n for n, a in train.items() if a.n_vars and any(g in a.var_names for g in markers)]
    return names, [g for g in markers if names and all(g in train[n].var_names for n in names)]


def _zscore_like(P: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean over genes of ``P`` z-scored with the mean and sd of ``ref`` (the section's spots)."""
    return ((P - ref.mean(0)) / (ref.std(0) + 1e-9)).mean(axis=1).astype(np.float32)


def tumor_maps(targets: dict[str, ad.AnnData], train: dict[str, ad.AnnData], *, routes: Sequence[str],
               label_column: str | None = None, positive: str = TUMOR_PATTERN,
               markers: Sequence[str] = BREAST_TUMOR_MARKERS, model: TumorModel | None = None, encoder=None,
               grid_um: float | None = None, cache_dir=None, progress: bool = False, **feature_options) -> dict:
    """Tumour scores of every target section's spots (and of a tissue grid of pitch ``grid_um``), by the
    supervised route (``obs['tumor_probability']``) and/or the label-free one (``obs['tumor_marker_score']``).

    Training sections are those of ``train`` with known labels in ``label_column`` (supervised) or with counts of
    at least one marker (markers); a target that is also a training section is scored by a model fitted without
    it. ``model``: a saved ``TumorModel`` replaces the supervised fit (its own recipe and encoder). Each scored
    section's metrics say whether its score is out-of-sample (``held_out``) and which sections its model was fitted
    on (``trained_on``; for ``model``, the sections it records, else None for both). Returns
    ``{"spots": {name: AnnData}, "grid": {name: AnnData}, "metrics": {route: {name: {...}}}, "model": TumorModel,
    "marker_model": ExpressionModel}``.
    """
    from spafoundation.eval.metrics import classification_metrics
    from spafoundation.io.patches import tissue_grid
    from spafoundation.pp.genes import TARGET_SUM, expression_matrix
    from spafoundation.tasks.expression import DEFAULT_ENCODER, ExpressionModel, resolve_encoder
    from spafoundation.tasks.heads import RidgeHead
    from spafoundation.tasks.spot_features import locations_adata

    unknown = set(routes) - set(ROUTES)
    if unknown or not routes:
        raise InputError(None, "--route", f"unknown route {sorted(unknown)}; choose from {ROUTES}")
    if model is not None:
        recipe, enc = model.recipe, model._encoder()
    else:
        recipe = make_recipe(**{**TUMOR_FEATURES, **{k: v for k, v in feature_options.items() if v is not None}})
        enc = resolve_encoder(encoder or DEFAULT_ENCODER) if needs_encoder(recipe) else None
    sections = {**train, **targets}
    if model is None:  # a stain reference fitted on the training sections, saved with the model
        recipe = fit_recipe_stain(recipe, train.values())
    labels = {n: tumor_labels(a, label_column, positive) for n, a in sections.items()
              if label_column and label_column in a.obs}
    lab_train = [n for n in train if n in labels and np.isfinite(labels[n]).any()]
    if "supervised" in routes and model is None and not lab_train:
        raise InputError(None, f"obs['{label_column}']", "no training section has known labels in this column "
                         "(name one with --label-column, or use --route markers)")
    memo: dict[str, tuple[np.ndarray, list[int]]] = {}

    def feats(name: str):
        if name not in memo:
            memo[name] = spot_features(sections[name], recipe, enc, cache_dir=cache_dir, progress=progress,
                                       with_blocks=True)
        return memo[name]

    spots = {n: a.copy() for n, a in targets.items()}
    grids = {}
    if grid_um:
        for n, a in targets.items():
            g = locations_adata(a, tissue_grid(a, grid_um))
            g.uns["grid"] = {"step_um": float(grid_um), "mpp": microns_per_pixel(a), "section": n}
            grids[n] = g
    grid_feats = {n: spot_features(g, recipe, enc, cache_dir=cache_dir, progress=progress,
                                   standardize_with=targets[n]) for n, g in grids.items()}
    metrics: dict[str, dict] = {}
    out = {"spots": spots, "grid": grids, "metrics": metrics, "model": model, "marker_model": None}

    if "supervised" in routes:
        if model is None:
            def fit(names):
                return TumorClassifier().fit(np.concatenate([feats(n)[0] for n in names]),
                                             np.concatenate([labels[n] for n in names]),
                                             np.concatenate([[n] * sections[n].n_obs for n in names]),
                                             feats(names[0])[1])

            per_target, full = held_out_models(list(targets), lab_train, fit)
            out["model"] = TumorModel(full, recipe, enc, {"sections": lab_train, "label_column": label_column,
                                                          "positive": positive, "C": full.C})
        else:
            recorded = model.training.get("sections")
            per_target = {n: (model.classifier, None if recorded is None else list(recorded)) for n in targets}
        metrics["supervised"] = {}
        for n, (clf, trained_on) in per_target.items():
            spots[n].obs["tumor_probability"] = clf.predict_proba(feats(n)[0])
            if n in grids:
                grids[n].obs["tumor_probability"] = clf.predict_proba(grid_feats[n])
            if n in labels:
                metrics["supervised"][n] = {**classification_metrics(labels[n], spots[n].obs["tumor_probability"]),
                                            **sample_fields(n, trained_on)}

    if "markers" in routes:
        count_train, genes = marker_training(train, markers)
        if not genes:
            raise InputError(None, "--markers", f"no marker gene among {list(markers)} is measured in every "
                             "training section with counts: give markers of this tissue, or labels with --label-column")

        def fit_ridge(names):
            return RidgeHead().fit(np.concatenate([feats(n)[0] for n in names]),
                                   np.concatenate([expression_matrix(sections[n], genes, TARGET_SUM) for n in names]),
                                   np.concatenate([[n] * sections[n].n_obs for n in names]), feats(names[0])[1])

        per_target, full = held_out_models(list(targets), count_train, fit_ridge)
        out["marker_model"] = ExpressionModel(genes, full, recipe, enc, target_sum=TARGET_SUM,
                                              training={"sections": count_train, "markers": genes})
        metrics["markers"] = {}
        for n, (head, trained_on) in per_target.items():
            P = head.predict(feats(n)[0])
            spots[n].obs["tumor_marker_score"] = _zscore_like(P, P)
            if n in grids:
                grids[n].obs["tumor_marker_score"] = _zscore_like(head.predict(grid_feats[n]), P)
            if n in labels:
                metrics["markers"][n] = {**classification_metrics(labels[n], spots[n].obs["tumor_marker_score"]),
                                         **sample_fields(n, trained_on)}
    for n in spots:
        if n in labels:
            spots[n].obs["tumor_label"] = labels[n]
        spots[n].uns["spafoundation_tumor"] = {"routes": list(routes), "recipe": recipe,
                                               "encoder": enc.identity if enc is not None else None,
                                               "label_column": label_column, "markers": list(markers)}
    return out
