"""Tumour detection benchmark: leave-one-section-out ROC AUC and PR AUC per test section, all routes in one run.

Supervised contenders: logistic regression on each feature recipe. Label-free contenders: the marker score from
an expression model (ridge on the same features) fitted on the training sections' counts; labels are used only to
score. Per-section metrics are averaged over sections (sections with one class counted, not averaged)."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.eval.expression_benchmark import Contender, FeatureStore, benchmark_splits
from spafoundation.eval.genes import expression_matrix
from spafoundation.eval.metrics import classification_metrics
from spafoundation.tasks.heads import RidgeHead
from spafoundation.tasks.labels import TUMOR_PATTERN, tumor_labels
from spafoundation.tasks.tumor import BREAST_TUMOR_MARKERS, TumorClassifier

METRICS = ("roc_auc", "pr_auc", "prevalence")


def tumor_contenders(default_encoder: str, random_encoder: str) -> list[Contender]:
    """(contender, route): the head field says "logistic" (supervised) or "markers" (label-free)."""
    from spafoundation.eval.expression_benchmark import pipeline_contender

    default_pipe = pipeline_contender(f"pipeline: {default_encoder} + colour/texture, context, neighbours",
                                      default_encoder, head="logistic")
    markers = pipeline_contender(f"label-free markers: {default_encoder} pipeline -> predicted marker expression",
                                 default_encoder, head="markers")
    return [
        Contender("mean colour + logistic", head="logistic", source="mean_colour"),
        Contender("colour/texture + logistic", head="logistic", source="colour_texture"),
        Contender(f"{random_encoder} + logistic", head="logistic", encoder=random_encoder),
        Contender(f"{default_encoder} + logistic", head="logistic", encoder=default_encoder),
        default_pipe,
        markers,
    ]


def run_tumor_benchmark(sections: dict[str, ad.AnnData], contenders: Sequence[Contender], *, label_column: str,
                        positive: str = TUMOR_PATTERN, markers: Sequence[str] = BREAST_TUMOR_MARKERS,
                        cache_dir=None, progress: bool = False) -> pd.DataFrame:
    labelled = {n: a for n, a in sections.items() if label_column in a.obs}
    labels = {n: tumor_labels(a, label_column, positive) for n, a in labelled.items()}
    store = FeatureStore(labelled, cache_dir, progress)
    rows = []
    for kind, test, train in benchmark_splits(labelled):
        groups = np.concatenate([[n] * labelled[n].n_obs for n in train])
        genes = [g for g in markers if all(g in labelled[n].var_names for n in train)]
        for c in contenders:
            X = np.concatenate([store.get(c, n)[0] for n in train])
            if c.head == "markers":
                Y = np.concatenate([expression_matrix(labelled[n], genes) for n in train])
                model = RidgeHead().fit(X, Y, groups, store.get(c, train[0])[1])
            else:
                model = TumorClassifier().fit(X, np.concatenate([labels[n] for n in train]), groups,
                                              store.get(c, train[0])[1])
            for t in test:
                feats = store.get(c, t)[0]
                if c.head == "markers":
                    P = model.predict(feats)
                    score = ((P - P.mean(0)) / (P.std(0) + 1e-9)).mean(1)
                else:
                    score = model.predict_proba(feats)
                rows.append({"contender": c.name, "split": kind, "test": t, **classification_metrics(labels[t], score)})
    return pd.DataFrame(rows)


def summarize_tumor(rows: pd.DataFrame, contenders: Sequence[Contender]) -> pd.DataFrame:
    order = {c.name: i for i, c in enumerate(contenders)}
    agg = rows.groupby(["split", "contender"], sort=False)[list(METRICS)].mean().reset_index()
    agg["n_test"] = rows.groupby(["split", "contender"], sort=False).size().to_numpy()
    agg["_o"] = agg["contender"].map(order)
    return agg.sort_values(["split", "_o"]).drop(columns="_o").reset_index(drop=True)


def tumor_markdown(summary: pd.DataFrame) -> str:
    lines = ["| split | contender | ROC AUC | PR AUC | tumour prevalence | test sections |", "|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['split']} | {r['contender']} | {r['roc_auc']:.3f} | {r['pr_auc']:.3f} | "
                     f"{r['prevalence']:.2f} | {int(r['n_test'])} |")
    return "\n".join(lines)
