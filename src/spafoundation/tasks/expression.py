"""Spot-level gene expression from histology: fit on sections with counts, predict on any imaged section.

A fitted model is a folder (``config.json`` + ``head.npz``): the encoder reference, the feature recipe, the head,
the gene list and the target normalisation. ``predict`` needs only an image and spot (or any) centres.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation import defaults
from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import image_path, library_id
from spafoundation.pp.genes import TARGET_SUM, expression_matrix, select_genes, transcriptome_z
from spafoundation.tasks.heads import HEADS, build_head, chosen_params, wants_transcriptome
from spafoundation.tasks.reliability import (
    LEVELS,
    RELIABLE_R,
    SHIFT_PREFIX,
    SINGLE_SECTION_STRIPES,
    FeatureShift,
    gene_cv_pearson,
    reliable_genes,
    spatial_stripes,
)
from spafoundation.tasks.spot_features import (
    HANDCRAFTED_PATCH_PX,
    HANDCRAFTED_PATCH_UM,
    fit_recipe_stain,
    make_recipe,
    needs_encoder,
    recipe_stain,
    spot_features,
)
from spafoundation.utils.model_folder import CONFIG_FILE, fitted_on, read_model_folder, write_model_folder

log = logging.getLogger(__name__)
FORMAT = "spafoundation-expression"
DEFAULT_ENCODER = defaults.ENCODER
# The default features (BENCHMARKS.md, chosen on leave-one-patient-out and checked on leave-one-section-out): the
# encoder's embedding and colour/stain/texture statistics of the spot patch and of a patch twice as wide, nuclear
# count/size/darkness of the spot patch, each also averaged over the spots within 300 um, every feature z-scored
# within its section (stain and scanner offsets out).
DEFAULT_FEATURES = {"source": "encoder+colour_texture+nuclei", "tta": False, "context": 2.0, "neighbours_um": 300.0,
                    "standardize": "section"}
HEAD_FILE, EMBEDDED_ENCODER = "head.npz", "encoder"


def _encoder_reference(encoder) -> dict:
    """How to rebuild the encoder at prediction time: its registry name or folder and precision, plus the identity
    to check."""
    source = encoder.config.get("source_ref") if hasattr(encoder, "config") else None
    return {"name": source or encoder.name, "identity": encoder.identity,
            "precision": getattr(encoder, "precision", "fp32")}


def resolve_encoder(encoder, device: str = "cpu", precision: str | None = None, weights=None,
                    seed: int | None = None):
    """An encoder object as is; a name or model folder (with ``weights``, a checkpoint, if given) built on ``device``
    at ``precision`` (default: the pipeline's, ``utils/precision.py``: int8 on CPU unless the user chose).
    ``seed``: the weights' seed of a random-init name (``random-*``)."""
    if encoder is None:
        return None
    if isinstance(encoder, (str, Path)):
        from spafoundation.models.registry import build_encoder
        from spafoundation.utils.precision import chosen_precision, default_precision

        automatic = precision is None and default_precision(device) != chosen_precision()
        precision = precision or default_precision(device)
        overrides = {"precision": precision} if precision else {}
        if seed is not None:
            overrides["seed"] = int(seed)
        enc = build_encoder(str(encoder), weights=weights, device=device, overrides=overrides or None)
        if automatic and precision:  # say so: the outputs differ (slightly) from the encoder's own precision
            log.info("encoder %s at %s precision on %s (sf.settings.precision='auto'; set 'fp32' to opt out)",
                     encoder, precision, device)
        enc.config["source_ref"] = str(Path(encoder).resolve()) if Path(str(encoder)).exists() else str(encoder)
        return enc
    return encoder


def merge_predictions(preds: dict[str, ad.AnnData]) -> ad.AnnData:
    """Several sections' predictions as one AnnData (every library in ``uns['spatial']``), with every section's
    image-shift report in ``uns['spafoundation_prediction']['shift']``."""
    merged = next(iter(preds.values())) if len(preds) == 1 else ad.concat(
        list(preds.values()), merge="same", uns_merge="unique")
    info = [p.uns["spafoundation_prediction"] for p in preds.values()]
    merged.uns["spafoundation_prediction"] = {**info[0], **({"shift": {k: v for i in info for k, v in i["shift"].items()}}
                                                             if "shift" in info[0] else {})}
    return merged


def encoder_from_reference(ref: dict, device: str = "cpu"):
    """The encoder a fitted model refers to, at the precision it was fitted with (models written before precision
    was recorded: int8 if the identity says so, else fp32) unless the user chose one; warns if it is not the same."""
    from spafoundation.utils.precision import chosen_precision

    recorded = ref.get("precision") or ("int8" if str(ref.get("identity", "")).endswith("+int8") else "fp32")
    name = str(ref["name"])
    if Path(name).is_absolute() and not Path(name).exists():
        raise InputError(name, "encoder", "the fitted model's config.json refers to this encoder folder, which is not "
                         "there (moved or deleted): give the encoder with --encoder FOLDER")
    enc = resolve_encoder(name, device=device, precision=chosen_precision() or recorded)
    if not ref.get("embedded") and enc.identity != ref.get("identity"):
        log.warning("encoder %s differs from the one this model was trained with (%s vs %s)", ref["name"],
                    enc.identity, ref.get("identity"))
    return enc


class ExpressionModel:
    """A fitted expression model. ``gene_cv``: each gene's cross-validated r over held-out training sections
    (``"sections"``) and patients (``"patients"``, where the training sections come from two or more), or, fitted on
    one section, over held-out stripes of it (``"stripes"``); ``shift``:
    the reference of the image-shift score (tasks/reliability.py)."""

    def __init__(self, genes: list[str], head, recipe: dict, encoder=None, *, target_sum: float | None = TARGET_SUM,
                 training: dict | None = None, encoder_ref: dict | None = None, gene_cv: dict | None = None,
                 shift: FeatureShift | None = None):
        self.genes, self.head, self.recipe, self.encoder = list(genes), head, recipe, encoder
        self.target_sum, self.training = target_sum, dict(training or {})
        self.encoder_ref = encoder_ref or (_encoder_reference(encoder) if encoder is not None else None)
        self.gene_cv, self.shift = dict(gene_cv or {}), shift

    # -- prediction -------------------------------------------------------------------------------------------
    def features(self, adata: ad.AnnData, *, cache_dir=None, progress: bool = False) -> np.ndarray:
        if not image_path(adata):
            raise InputError(None, f"uns['spatial']['{library_id(adata)}']", "section has no H&E image to predict from")
        return spot_features(adata, self.recipe, self._get_encoder(), cache_dir=cache_dir, progress=progress)

    def predict(self, adata: ad.AnnData, *, cache_dir=None, progress: bool = False) -> ad.AnnData:
        """Predicted log-normalised expression of ``self.genes`` for every spot of ``adata`` (counts not needed).

        ``var`` holds each gene's cross-validated r (``cv_pearson``, over patients where the model was fitted on
        two or more, else over sections, else over stripes of the one section) and ``reliable`` (``cv_pearson >=
        RELIABLE_R``); ``uns['spafoundation_prediction']['shift'][section]`` says how far the section's image lies from the training
        sections' (a warning is logged when further than any training section lay from the others)."""
        pred = self.head.predict(self.features(adata, cache_dir=cache_dir, progress=progress))
        info = {"model": self.describe()}
        if self.shift is not None:
            info["shift"] = {library_id(adata): self.shift_report(shift_features(adata, cache_dir), library_id(adata))}
        out = prediction_adata(adata, pred, self.genes, info)
        for col, values in self.gene_table().items():
            out.var[col] = values
        return out

    def shift_report(self, feats: np.ndarray, section: str) -> dict:
        score = self.shift.score(feats)
        report = {"score": round(score, 4), "training_limit": self.shift.limit,
                  "out_of_range": self.shift.out_of_range(score)}
        if report["out_of_range"]:
            log.warning("section %s: its colour/texture lies at %.2f from the training sections' (each training "
                        "section lay at most %.2f from the others): another stain, scanner or resolution; expect "
                        "lower accuracy than the cross-validated r of each gene", section, score, self.shift.limit)
        return report

    def gene_table(self) -> dict[str, np.ndarray]:
        """Per-gene reliability columns for ``var`` (empty for models fitted before they were recorded)."""
        cols = {f"cv_pearson_{k}": np.asarray(v, dtype=np.float64) for k, v in self.gene_cv.items() if v is not None}
        best = cols.get("cv_pearson_patients", cols.get("cv_pearson_sections", cols.get("cv_pearson_stripes")))
        if best is None:
            return {}
        return {"cv_pearson": best, **cols, "reliable": reliable_genes(best)}

    def reliable(self) -> list[str]:
        table = self.gene_table()
        return [g for g, ok in zip(self.genes, table["reliable"], strict=True) if ok] if table else []

    def reliability_summary(self, shown: int = 20) -> str | None:
        """One line for the user: how many genes are reliable, at which level, and the first ``shown`` of them."""
        if not self.gene_table():
            return None
        reliable = self.reliable()
        level = next((LEVELS[k] for k in LEVELS if k in self.gene_cv), LEVELS["sections"])
        names = f": {', '.join(reliable[:shown])}{' ...' if len(reliable) > shown else ''}" if reliable else ""
        return (f"{len(reliable)} of {len(self.genes)} genes reliable (cross-validated r >= {RELIABLE_R} over "
                f"{level}; var['cv_pearson'], var['reliable']){names}")

    def _get_encoder(self):
        if self.encoder is None and self.encoder_ref is not None:
            self.encoder = encoder_from_reference(self.encoder_ref)
        return self.encoder

    def __repr__(self) -> str:
        reliable = f"; {len(self.reliable())} reliable" if self.gene_table() else ""
        return (f"ExpressionModel({self.head.kind} head, {len(self.genes)} genes{reliable}, "
                f"{fitted_on(self.training, self.encoder_ref)})")

    def describe(self) -> dict:
        return {"head": self.head.kind, "recipe": self.recipe, "n_genes": len(self.genes),
                "encoder": (self.encoder_ref or {}).get("name"), "target_sum": self.target_sum, **self.training}

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        cfg = {"format": FORMAT, "version": 1, "genes": self.genes, "head": self.head.kind,
               "head_params": getattr(self.head, "hp", {}), "recipe": self.recipe, "encoder": self.encoder_ref,
               "target": {"normalize": "log1p", "target_sum": self.target_sum}, "training": self.training,
               "reliability": {"gene_cv_r": {k: [None if not np.isfinite(x) else float(x) for x in v]
                                             for k, v in self.gene_cv.items() if v is not None},
                               "reliable_r": RELIABLE_R,
                               "shift_reference": self.shift.reference if self.shift is not None else None}}
        arrays = {**self.head.state(), **(self.shift.arrays() if self.shift is not None else {})}

        def embed_encoder(tmp):
            if (self.encoder_ref or {}).get("embedded"):  # a fine-tuned encoder travels inside the model folder
                from spafoundation.models.weights import save_model_folder

                save_model_folder(self._get_encoder(), tmp / EMBEDDED_ENCODER, name=self.encoder.name)
                cfg["encoder"] = {**self.encoder_ref, "name": EMBEDDED_ENCODER}

        return write_model_folder(folder, cfg, HEAD_FILE, arrays, extra=embed_encoder)

    @classmethod
    def load(cls, folder: str | Path, encoder=None) -> ExpressionModel:
        folder = Path(folder)
        cfg, state = read_model_folder(folder, FORMAT, HEAD_FILE, "expression")
        if cfg.get("head") not in HEADS:
            raise InputError(folder / CONFIG_FILE, "head", f"unknown head {cfg.get('head')!r}")
        reliability = cfg.get("reliability") or {}
        genes = cfg.get("genes")
        if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
            raise InputError(folder / CONFIG_FILE, "genes", "expected a non-empty list of gene symbols")
        head_state = {k: v for k, v in state.items() if not k.startswith(SHIFT_PREFIX)}
        coef = next((v for k, v in head_state.items() if k.split(".")[-1] == "coef"), None)  # ensembles: member0.coef
        outputs = coef.shape[0] if coef is not None else (
            len(head_state["y_mean"]) if "y_mean" in head_state else None)
        if outputs is not None and outputs != len(genes):
            raise InputError(folder / HEAD_FILE, "genes", f"the head predicts {outputs} genes but config.json lists "
                             f"{len(genes)}: the two files are from different models")
        try:
            shift = FeatureShift.from_arrays(state, reliability.get("shift_reference") or {})
            head = HEADS[cfg["head"]].from_state(head_state, cfg.get("head_params"))
        except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as e:
            raise InputError(folder / HEAD_FILE, cfg["head"], f"not a complete {cfg['head']} head ({e})") from None
        gene_cv = {k: np.array([np.nan if x is None else x for x in v], dtype=np.float64)
                   for k, v in (reliability.get("gene_cv_r") or {}).items()}
        for k, v in gene_cv.items():
            if len(v) != len(cfg["genes"]):
                raise InputError(folder / CONFIG_FILE, f"reliability.gene_cv_r.{k}",
                                 f"{len(v)} values for {len(cfg['genes'])} genes")
        if not isinstance(cfg.get("recipe"), dict):
            raise InputError(folder / CONFIG_FILE, "recipe", "expected the feature recipe (a mapping)")
        recipe_stain(cfg["recipe"], folder / CONFIG_FILE)  # a damaged stored reference: an error naming the field
        ref = cfg.get("encoder")
        if ref and ref.get("embedded"):
            ref = {**ref, "name": str(folder / ref["name"])}
        return cls(cfg["genes"], head, cfg["recipe"], resolve_encoder(encoder),
                   target_sum=cfg["target"]["target_sum"], training=cfg.get("training"),
                   encoder_ref=ref, gene_cv=gene_cv, shift=shift)


def prediction_adata(adata: ad.AnnData, pred: np.ndarray, genes: Sequence[str], info: dict | None = None) -> ad.AnnData:
    """Predictions as a new AnnData with the input's obs, obsm['spatial'] and uns['spatial'] (sc.pl.spatial-ready)."""
    out = ad.AnnData(np.asarray(pred, dtype=np.float32), obs=adata.obs.copy(), var=pd.DataFrame(index=list(genes)))
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
    if "spatial" in adata.uns:
        out.uns["spatial"] = adata.uns["spatial"]
    out.uns["spafoundation_prediction"] = {"values": "log1p(counts / library size * target_sum)", **(info or {})}
    return out


def training_matrices(train: Sequence[ad.AnnData], genes, recipe, encoder, *, target_sum=TARGET_SUM, cache_dir=None,
                      progress=False):
    """(features, targets, section groups, feature block widths) stacked over training sections."""
    X, Y, groups = [], [], []
    for a in train:
        feats, blocks = spot_features(a, recipe, encoder, cache_dir=cache_dir, progress=progress, with_blocks=True)
        X.append(feats)
        Y.append(expression_matrix(a, genes, target_sum))
        groups += [library_id(a)] * a.n_obs
    return np.concatenate(X), np.concatenate(Y), np.asarray(groups), blocks


def shift_features(adata: ad.AnnData, cache_dir=None) -> np.ndarray:
    """The colour/texture statistics the shift score compares (the same patch geometry whatever the encoder)."""
    from spafoundation.models.embed_handcrafted import handcrafted_features

    return handcrafted_features(adata, "colour_texture", HANDCRAFTED_PATCH_UM, HANDCRAFTED_PATCH_PX,
                                cache_dir=cache_dir)


def section_patients(train: Sequence[ad.AnnData]) -> dict[str, str]:
    """{section: patient} from ``obs['patient']`` (the section itself where it is not recorded)."""
    return {library_id(a): str(a.obs["patient"].iloc[0]) if "patient" in a.obs and a.n_obs else library_id(a)
            for a in train}


def fit_expression(train: Sequence[ad.AnnData], encoder=DEFAULT_ENCODER, *, genes=defaults.EXPRESSION_GENES,
                   head: str = defaults.EXPRESSION_HEAD,
                   target_sum: float | None = TARGET_SUM, cache_dir=None, progress: bool = False,
                   head_params: dict | None = None, candidate_genes: Sequence[str] | None = None,
                   device: str = "cpu", reference: Sequence[ad.AnnData] | dict | None = None,
                   **feature_options) -> ExpressionModel:
    """Fit a head from spot features to normalised expression on ``train`` (sections with counts and images).

    ``feature_options``: ``source`` ("encoder", "mean_colour", "colour_texture" or several joined by "+"), ``tta``, ``context``,
    ``neighbours_um``, ``standardize``, ``stain_norm`` (see tasks/spot_features.py). With ``stain_norm`` "macenko"
    or "reinhard" and no ``stain_reference``, the reference is fitted over tissue patches of the training sections
    and saved in the model, so prediction maps any new section to it. ``candidate_genes`` limits gene selection (e.g.
    to the genes the sections to predict also measure, so they can be evaluated). ``device``: where an encoder given
    by name is built (only when the features need one). ``reference``: sections with counts (no image needed, e.g.
    other patients of the cohort) whose gene co-variation informs the ridge-ensemble head's expression programs
    (tasks/expression_reference.py); training sections among them are skipped, and the per-patient cross-validated
    r leaves the held-out patient's reference sections out too.
    """
    train = list(train)
    for a in train:
        if a.n_vars == 0:
            raise InputError(None, f"section {library_id(a)}", "has no counts to train on")
        if not image_path(a):
            raise InputError(None, f"section {library_id(a)}", "has no H&E image to train on")
    if head not in HEADS:
        raise InputError(None, "head", f"unknown head {head!r}; choose from {sorted(HEADS)}")
    if reference is not None:
        from spafoundation.tasks.expression_reference import check_reference_head

        check_reference_head(head, (head_params or {}).get("programs"))
    if head == "finetune":
        tuned_from = resolve_encoder(encoder, device=device, precision="fp32")  # training needs float weights
        return _fit_finetuned(train, tuned_from, select_genes(train, genes, target_sum, candidate_genes),
                              target_sum, head_params, progress, genes)
    recipe = make_recipe(**{**DEFAULT_FEATURES, **{k: v for k, v in feature_options.items() if v is not None}})
    # the reference is the training sections' look, stored in the model: a new patient is mapped to it
    recipe = fit_recipe_stain(recipe, train)
    enc = resolve_encoder(encoder, device=device) if needs_encoder(recipe) else None
    gene_list = select_genes(train, genes, target_sum, candidate_genes)
    X, Y, groups, blocks = training_matrices(train, gene_list, recipe, enc, target_sum=target_sum,
                                             cache_dir=cache_dir, progress=progress)
    ref = programs_reference(reference, train, gene_list, target_sum)
    unfitted = build_head(head, head_params, recipe)
    uses_transcriptome = wants_transcriptome(unfitted, () if ref is None else ref.z)
    patients = section_patients(train)

    def fit_options(held: str | None = None) -> dict:
        """The reference, and the training sections' whole transcriptome (whose spot factors shape the members'
        targets), as a head's fit takes them; in cross-validation less the held-out fold's section or patient,
        whose genes then have no say in the factors either."""
        options = {"reference": ref.without([held] if held else []).z} if ref is not None else {}
        if uses_transcriptome:
            kept = [a for a in train if held not in (library_id(a), patients[library_id(a)])]
            options["transcriptome"] = transcriptome_z(kept, target_sum)
        return options

    fitted = unfitted.fit(X, Y, groups, blocks, **fit_options())
    cv = getattr(fitted, "cv_scores", None)
    training = {"sections": [library_id(a) for a in train], "patients": patients, "n_spots": len(X),
                "genes_spec": "list" if isinstance(genes, (list, tuple)) else str(genes),
                "alpha": getattr(fitted, "alpha", None), "cv_mean_r": max(cv) if cv else None,
                **({"reference": ref.describe()} if ref is not None else {})}
    gene_cv = {}
    if head != "mean":
        # the fitted hyper-parameters again (ridge: its chosen alpha), refitted without each section / patient
        params = {**(head_params or {}), **chosen_params(fitted)}

        def make_head():
            return build_head(head, params, recipe)

        folds = {"sections": groups, "patients": np.array([patients[g] for g in groups])}
        gene_cv = {k: r for k, f in folds.items()
                   if (r := gene_cv_pearson(X, Y, groups, f, make_head, blocks, fit_options)) is not None}
        if not gene_cv and len(train) == 1:
            # one training section (one Xenium run, one Visium slide): its contiguous stripes held out in turn,
            # the only estimate there is, and an optimistic one (the same section's stain and biology)
            (section,) = train
            stripes = spatial_stripes(np.asarray(section.obsm["spatial"], float), SINGLE_SECTION_STRIPES)

            def stripe_options(held) -> dict:
                options = {"reference": ref.z} if ref is not None else {}
                if uses_transcriptome:
                    options["transcriptome"] = transcriptome_z([section[stripes != held]], target_sum)
                return options

            r = gene_cv_pearson(X, Y, groups, stripes, make_head, blocks, stripe_options)
            if r is not None:
                gene_cv["stripes"] = r
    return ExpressionModel(gene_list, fitted, recipe, enc, target_sum=target_sum, training=training,
                           gene_cv=gene_cv,
                           shift=FeatureShift.fit({library_id(a): shift_features(a, cache_dir) for a in train}))


def programs_reference(reference, train, genes, target_sum):
    """The reference sections (less the training ones) as an ``ExpressionReference`` on ``genes``; None without
    one."""
    if reference is None:
        return None
    from spafoundation.tasks.expression_reference import ExpressionReference, named_sections

    trained = {library_id(a) for a in train}
    sections = {n: a for n, a in named_sections(reference).items() if n not in trained}
    if not sections:
        log.warning("every reference section is a training section: the programs use the training sections alone")
    return ExpressionReference.from_sections(sections, genes, target_sum)


def _fit_finetuned(train, encoder, gene_list, target_sum, head_params, progress, genes_spec) -> ExpressionModel:
    """The authors' protocol: the whole encoder and a LayerNorm + Linear head trained together on spot patches."""
    import hashlib

    from spafoundation.io.patches import extract_patches
    from spafoundation.tasks.heads import FineTunedHead
    from spafoundation.train.finetune import DEFAULTS, finetune_encoder

    if encoder is None:
        raise InputError(None, "encoder", "fine-tuning needs an encoder")
    patches = np.concatenate([extract_patches(a, encoder.patch_um, encoder.input_size) for a in train])
    Y = np.concatenate([expression_matrix(a, gene_list, target_sum) for a in train])
    params = {**DEFAULTS, **(head_params or {})}
    tuned, module, y_mean, y_std, losses = finetune_encoder(encoder, patches, Y, params, progress)
    digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes()
                                     for v in tuned.model.state_dict().values())).hexdigest()[:12]
    object.__setattr__(tuned, "identity", f"{encoder.identity}|finetuned-{digest}")  # its own embedding cache key
    object.__setattr__(tuned, "name", f"{encoder.name}-finetuned")
    head = FineTunedHead.from_module(module, y_mean, y_std, params)
    training = {"sections": [library_id(a) for a in train], "n_spots": len(Y),
                "genes_spec": "list" if isinstance(genes_spec, (list, tuple)) else str(genes_spec),
                "finetune_losses": [round(v, 5) for v in losses], "base_encoder": _encoder_reference(encoder)}
    return ExpressionModel(gene_list, head, make_recipe(source="encoder"), tuned, target_sum=target_sum,
                           training=training, encoder_ref={"name": tuned.name, "identity": tuned.identity,
                                                           "embedded": True})
