"""Spatial clustering benchmark: ARI and NMI per section against reference regions, every contender in one run.

Each section is clustered on its own with k = the number of reference regions it holds (unknown spots left out of
the scores, not of the clustering). Contenders differ by features (hand-crafted colour, image features of an
encoder, expression predicted from the image by a model fitted without the section, observed expression), by
method (k-means, Leiden with k found by bisection) and by spatial smoothing over the spot graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.eval.expression_benchmark import Contender, FeatureStore
from spafoundation.eval.metrics import clustering_agreement
from spafoundation.pp.genes import TARGET_SUM, expression_matrix, select_genes
from spafoundation.tasks.clustering import (
    EXPRESSION_GENES,
    IMAGE_RECIPE,
    cluster_features,
    smooth,
    spatial_graph,
)
from spafoundation.tasks.heads import RidgeHead
from spafoundation.tasks.labels import UNKNOWN_PATTERN

PREDICTED_GENES = "hvg:100"


@dataclass
class ClusterContender:
    """Features: ``expression`` (observed), ``predicted`` (from ``image`` features, held out) or ``image``
    (the Contender's recipe); then ``method`` and smoothing weight."""

    name: str
    features: str
    image: Contender | None = None
    method: str = "kmeans"
    smooth: float = 0.5


def image_contender(name: str, encoder: str | None, source: str = "encoder+colour_texture") -> Contender:
    recipe = {**IMAGE_RECIPE, "source": source}
    return Contender(name, encoder=encoder, **recipe)


def clustering_contenders(default_encoder: str, random_encoder: str, *, with_images: bool = True,
                          smooth_weight: float = 0.5) -> list[ClusterContender]:
    rows = []
    if with_images:
        colour = image_contender("mean colour", None, "mean_colour")
        texture = image_contender("colour/texture", None, "colour_texture")
        rnd = image_contender(random_encoder, random_encoder)
        ours = image_contender(default_encoder, default_encoder)
        rows += [
            ClusterContender("k-means on mean colour (baseline)", "image", colour, "kmeans", 0.0),
            ClusterContender("k-means on colour/texture, smoothed", "image", texture, "kmeans", smooth_weight),
            ClusterContender(f"k-means on {random_encoder} + colour/texture, smoothed", "image", rnd, "kmeans",
                             smooth_weight),
            ClusterContender(f"k-means on {default_encoder} + colour/texture", "image", ours, "kmeans", 0.0),
            ClusterContender(f"k-means on {default_encoder} + colour/texture, smoothed", "image", ours, "kmeans",
                             smooth_weight),
            ClusterContender("k-means on predicted expression (held-out model), smoothed", "predicted", ours,
                             "kmeans", smooth_weight),
        ]
    rows += [
        ClusterContender("Leiden on observed expression (baseline)", "expression", None, "leiden", 0.0),
        ClusterContender("Leiden on observed expression, smoothed", "expression", None, "leiden", smooth_weight),
        ClusterContender("k-means on observed expression", "expression", None, "kmeans", 0.0),
        ClusterContender("k-means on observed expression, smoothed", "expression", None, "kmeans", smooth_weight),
    ]
    return rows


def _n_regions(reference: pd.Series) -> int:
    known = reference.astype(str).str.strip()
    known = known[~known.str.match(UNKNOWN_PATTERN, case=False)]
    return max(2, known.nunique())


def run_clustering_benchmark(sections: dict[str, ad.AnnData], contenders: Sequence[ClusterContender], *,
                             reference: str, cache_dir=None, progress: bool = False, seed: int = 0) -> pd.DataFrame:
    """Per (contender, section) ARI and NMI against ``obs[reference]``."""
    scored = {n: a for n, a in sections.items() if reference in a.obs}
    store = FeatureStore(scored, cache_dir, progress)
    expr = {}
    if any(c.features == "expression" for c in contenders):
        genes = select_genes(list(scored.values()), EXPRESSION_GENES, TARGET_SUM)
        expr = {n: expression_matrix(a, genes, TARGET_SUM) for n, a in scored.items()}
    rows = []
    for n, a in scored.items():
        conn = spatial_graph(a)
        k = _n_regions(a.obs[reference])
        for c in contenders:
            blocks = None
            if c.features == "expression":
                F = expr[n]
            elif c.features == "image":
                F, blocks = store.get(c.image, n)
            else:  # predicted: a ridge fitted on the other sections' counts, applied to this section's image
                train = [m for m in scored if m != n]
                genes = select_genes([scored[m] for m in train], PREDICTED_GENES, TARGET_SUM,
                                     sorted(a.var_names))
                head = RidgeHead().fit(np.concatenate([store.get(c.image, m)[0] for m in train]),
                                       np.concatenate([expression_matrix(scored[m], genes, TARGET_SUM)
                                                       for m in train]),
                                       np.concatenate([[m] * scored[m].n_obs for m in train]),
                                       store.get(c.image, n)[1])
                F = head.predict(store.get(c.image, n)[0])
            labels = cluster_features(smooth(np.asarray(F, dtype=np.float64), conn, c.smooth), method=c.method,
                                      n_clusters=k, seed=seed, blocks=blocks)
            rows.append({"contender": c.name, "test": n, "k": k, "n_found": len(np.unique(labels)),
                         **clustering_agreement(a.obs[reference], labels)})
    return pd.DataFrame(rows)


def summarize_clustering(rows: pd.DataFrame, contenders: Sequence[ClusterContender]) -> pd.DataFrame:
    order = {c.name: i for i, c in enumerate(contenders)}
    agg = rows.groupby("contender", sort=False)[["ari", "nmi"]].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["n_sections"] = rows.groupby("contender", sort=False).size()
    agg = agg.reset_index()
    return agg.sort_values("contender", key=lambda s: s.map(order)).reset_index(drop=True)


def clustering_markdown(summary: pd.DataFrame) -> str:
    lines = ["| contender | ARI (mean ± sd) | NMI (mean ± sd) | sections |", "|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['contender']} | {r['ari_mean']:.3f} ± {r['ari_std']:.3f} | "
                     f"{r['nmi_mean']:.3f} ± {r['nmi_std']:.3f} | {int(r['n_sections'])} |")
    return "\n".join(lines)
