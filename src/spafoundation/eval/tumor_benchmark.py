"""Tumour detection benchmark: ROC AUC and PR AUC per test section on held-out patients and sections, all routes
in one run.

Splits (``eval.splits.benchmark_splits``): leave-one-patient-out when two or more patients are present (each patient's sections
scored by models trained on the other patients' sections; one row per direction, then their mean: the headline),
and leave-one-section-out within each patient (trained on the patient's other sections). Labels come per section
from the first of several label columns it has (``tasks.labels.label_source``), so a patient with pathologist
labels and one with only expression-cluster annotations can train and score each other.

Supervised contenders: logistic regression on each feature recipe, trained on the training sections' labels.
Label-free contenders: the marker score from an expression model (ridge on the same features) fitted on the
training sections' counts; labels are used only to score. Per-section metrics are averaged over the test sections
of a split (sections with one class counted, not averaged)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.eval.expression_benchmark import Contender, FeatureStore, seed_name, seed_rows, seeded
from spafoundation.eval.metrics import classification_metrics
from spafoundation.eval.splits import benchmark_splits, summarize_splits
from spafoundation.pp.genes import expression_matrix
from spafoundation.tasks.heads import RidgeHead
from spafoundation.tasks.labels import TUMOR_PATTERN, label_source, tumor_labels
from spafoundation.tasks.tumor import BREAST_TUMOR_MARKERS, TumorClassifier

METRICS = ("roc_auc", "pr_auc", "prevalence")


def tumor_contenders(default_encoder: str, random_encoder: str, random_seeds: int = 1) -> list[Contender]:
    """(contender, route): the head field says "logistic" (supervised) or "markers" (label-free). The default
    features (tasks.tumor.TUMOR_FEATURES) beside single sources and the expression pipeline's wider features.
    ``random_seeds`` > 1: the random-init encoder's rows are each the mean over that many seeds of its weights."""
    from spafoundation.eval.expression_benchmark import PIPELINE_FEATURES, pipeline_contender
    from spafoundation.tasks.tumor import TUMOR_FEATURES

    fused = {"head": "logistic", "source": "encoder+colour_texture", "encoder": default_encoder}
    pipe = pipeline_contender(f"expression pipeline: {default_encoder} + {PIPELINE_FEATURES}, "
                              "per-section z", default_encoder, head="logistic")
    default = Contender(f"{default_encoder} + colour/texture + logistic, per-section z (default)", head="logistic",
                        encoder=default_encoder, **TUMOR_FEATURES)
    return [
        Contender("mean colour + logistic", head="logistic", source="mean_colour"),
        Contender("colour/texture + logistic", head="logistic", source="colour_texture"),
        seeded(Contender(f"{random_encoder} + logistic", head="logistic", encoder=random_encoder), random_seeds),
        # the default route on random-init weights: what pre-training adds to it
        seeded(replace(default, name=f"{random_encoder} + colour/texture + logistic, per-section z",
                       encoder=random_encoder), random_seeds),
        Contender(f"{default_encoder} + logistic", head="logistic", encoder=default_encoder),
        Contender(f"{default_encoder} + colour/texture + logistic", **fused),
        Contender(f"{default_encoder} + colour/texture, context + logistic, per-section z", **fused, context=2.0,
                  standardize="section"),
        replace(pipe, name=pipe.name.replace(", per-section z", ""), standardize="none"),
        pipe,
        default,
        replace(default, name=f"label-free markers: {default_encoder} + colour/texture, per-section z -> predicted "
                              "marker expression", head="markers"),
    ]


def run_tumor_benchmark(sections: dict[str, ad.AnnData], contenders: Sequence[Contender], *, label_column,
                        positive: str = TUMOR_PATTERN, markers: Sequence[str] = BREAST_TUMOR_MARKERS,
                        cache_dir=None, progress: bool = False) -> pd.DataFrame:
    """Per (contender, split, test section) metrics. ``label_column``: a column or several (a list, or
    comma-separated) in order of preference; each section is labelled by the first it has with known values and
    sections with none are left out. Rows record the test section's label column (``label_column``) and the
    training sections' (``train_label_columns``)."""
    sources = {n: label_source(a, label_column) for n, a in sections.items()}
    labelled = {n: a for n, a in sections.items() if sources[n] is not None}
    labels = {n: tumor_labels(a, sources[n], positive) for n, a in labelled.items()}
    store = FeatureStore(labelled, cache_dir, progress)
    rows = []
    for kind, direction, test, train in benchmark_splits(labelled):
        groups = np.concatenate([[n] * labelled[n].n_obs for n in train])
        genes = [g for g in markers if all(g in labelled[n].var_names for n in train)]
        train_sources = ",".join(dict.fromkeys(sources[n] for n in train))
        for c in contenders:
            if c.head == "markers" and not genes:
                continue
            per_seed = []
            for seed in c.seeds or (None,):
                X = np.concatenate([store.get(c, n, seed=seed)[0] for n in train])
                blocks = store.get(c, train[0], seed=seed)[1]
                if c.head == "markers":
                    Y = np.concatenate([expression_matrix(labelled[n], genes) for n in train])
                    model = RidgeHead().fit(X, Y, groups, blocks)
                else:
                    model = TumorClassifier().fit(X, np.concatenate([labels[n] for n in train]), groups, blocks)
                scored = []
                for t in test:
                    feats = store.get(c, t, seed=seed)[0]
                    if c.head == "markers":
                        P = model.predict(feats)
                        score = ((P - P.mean(0)) / (P.std(0) + 1e-9)).mean(1)
                    else:
                        score = model.predict_proba(feats)
                    scored.append({"contender": c.name if seed is None else seed_name(c, seed), "split": kind,
                                   "direction": direction, "test": t, "label_column": sources[t],
                                   "train_label_columns": train_sources, "train_sections": ",".join(train),
                                   **classification_metrics(labels[t], score)})
                per_seed.append(scored)
            rows += seed_rows(c, per_seed)
    return pd.DataFrame(rows)


def _labels_text(group: pd.DataFrame) -> str:
    train = ",".join(dict.fromkeys(",".join(group["train_label_columns"]).split(",")))
    test = ",".join(dict.fromkeys(group["label_column"]))
    return f"{train} -> {test}"


def summarize_tumor(rows: pd.DataFrame, contenders: Sequence[Contender]) -> pd.DataFrame:
    """``eval.splits.summarize_splits`` with the label sources of each direction (train -> test)."""
    return summarize_splits(rows, [c.name for c in contenders], METRICS,
                            lambda g: {"labels": _labels_text(g) if len(g) else ""})


def tumor_markdown(summary: pd.DataFrame) -> str:
    def f(v, fmt="{:.3f}"):
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    lines = ["| split | train -> test patient | labels (train -> test) | contender | ROC AUC | PR AUC | "
             "tumour prevalence | test sections |", "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['split']} | {r['direction']} | {r['labels']} | {r['contender']} | {f(r['roc_auc'])} | "
                     f"{f(r['pr_auc'])} | {f(r['prevalence'], '{:.2f}')} | {int(r['n_test'])} |")
    return "\n".join(lines)
