"""Spatial clustering benchmark: ARI and NMI against reference regions, every contender in one run.

Two protocols. Across patients (the headline, what ``cluster`` does by default): all sections clustered together
into ``N_DOMAINS`` domains, so a domain should mean the same tissue in every section whatever its scan, lab or
patient; scored per section, with the NMI between domains and patients (how far the domains split by patient rather
than by tissue: 0 when every domain is shared). Per section: each section clustered on its own with k = the number of
reference regions it holds. Unknown spots are left out of the scores, not of the clustering; every clustering is
repeated over ``seeds`` (k-means initialisation, Leiden's), its scores averaged. Contenders differ by features
(hand-crafted colour, image features of an encoder, expression predicted from the image by a model fitted without
the section, observed expression), per-section z-scoring, method (k-means, Leiden with k found by bisection) and
spatial smoothing over the spot graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation import defaults
from spafoundation.eval.expression_benchmark import Contender, FeatureStore
from spafoundation.eval.metrics import clustering_agreement
from spafoundation.pp.genes import TARGET_SUM, expression_matrix, select_genes
from spafoundation.tasks.clustering import (
    EXPRESSION_GENES,
    IMAGE_RECIPES,
    cluster_features,
    observed_features,
    smooth,
    spatial_clusters,
    spatial_graph,
)
from spafoundation.tasks.heads import RidgeHead
from spafoundation.tasks.labels import UNKNOWN_PATTERN

PREDICTED_GENES = "hvg:100"
SEEDS = 5
MAX_PATIENT_COLUMNS = 4  # the joint table's per-patient ARI columns, where the sections come from this few patients
DEFAULT_MARK = " (default)"


@dataclass
class ClusterContender:
    """Features: ``expression`` (observed; z-scored per section as ``cluster`` does unless ``standardize`` is
    false), ``predicted`` (from ``image`` features, held out) or ``image`` (the Contender's recipe); then ``method``
    and smoothing weight."""

    name: str
    features: str
    image: Contender | None = None
    method: str = "kmeans"
    smooth: float = 0.5
    standardize: bool = True


def image_contender(name: str, encoder: str | None, kind: str = "image", *, source: str | None = None,
                    standardize: str | None = None) -> Contender:
    """The recipe of ``cluster --features kind`` (tasks/clustering.py), its source or z-scoring replaced."""
    recipe = {**IMAGE_RECIPES[kind]}
    recipe["source"] = source or recipe["source"]
    recipe["standardize"] = standardize or recipe["standardize"]
    return Contender(name, encoder=encoder if "encoder" in recipe["source"] else None, **recipe)


def _expression_rows(smooth_weight: float) -> list[ClusterContender]:
    rows = []
    for method in ("leiden", "kmeans"):
        label = "Leiden" if method == "leiden" else "k-means"
        base = " (baseline)" if method == "leiden" else ""
        rows += [ClusterContender(f"{label} on observed expression{base}", "expression", None, method, 0.0),
                 ClusterContender(f"{label} on observed expression, smoothed", "expression", None, method,
                                  smooth_weight)]
    return rows


def clustering_contenders(default_encoder: str, random_encoder: str, *, with_images: bool = True,
                          smooth_weight: float = 0.5) -> list[ClusterContender]:
    """Contenders of the per-section protocol (per-section z-scoring is a no-op there)."""
    rows = []
    if with_images:
        colour = image_contender("mean colour", None, source="mean_colour")
        texture = image_contender("colour/texture", None, "colour_texture")
        rnd = image_contender(random_encoder, random_encoder)
        ours = image_contender(default_encoder, default_encoder)
        rows += [
            ClusterContender("k-means on mean colour (baseline)", "image", colour, "kmeans", 0.0),
            ClusterContender(f"k-means on colour/texture, smoothed{DEFAULT_MARK}", "image", texture, "kmeans",
                             smooth_weight),
            ClusterContender(f"k-means on {random_encoder} + colour/texture, smoothed", "image", rnd, "kmeans",
                             smooth_weight),
            ClusterContender(f"k-means on {default_encoder} + colour/texture", "image", ours, "kmeans", 0.0),
            ClusterContender(f"k-means on {default_encoder} + colour/texture, smoothed", "image", ours, "kmeans",
                             smooth_weight),
            ClusterContender("k-means on predicted expression (held-out model), smoothed", "predicted", ours,
                             "kmeans", smooth_weight),
        ]
    return rows + _expression_rows(smooth_weight)


def joint_contenders(default_encoder: str, random_encoder: str, *,
                     smooth_weight: float = defaults.DOMAIN_SMOOTH) -> list[ClusterContender]:
    """Contenders of the across-patients protocol: image features with and without per-section z-scoring."""
    def image(name, encoder, kind, standardize="section", mark=""):
        z = ", per-section z" if standardize == "section" else ""
        return ClusterContender(f"k-means on {name}{z}, smoothed{mark}", "image",
                                image_contender(name, encoder, kind, standardize=standardize), "kmeans",
                                smooth_weight)

    rows = [ClusterContender("k-means on mean colour, per-section z (baseline)", "image",
                             image_contender("mean colour", None, source="mean_colour"), "kmeans", 0.0),
            image("colour/texture", None, "colour_texture", "none"),
            image("colour/texture", None, "colour_texture", mark=DEFAULT_MARK),
            image(f"{random_encoder} + colour/texture", random_encoder, "image"),
            image(f"{default_encoder} + colour/texture", default_encoder, "image", "none"),
            image(f"{default_encoder} + colour/texture", default_encoder, "image")]
    observed = "k-means on observed expression"
    return [*rows,
            ClusterContender(f"{observed}, smoothed", "expression", None, "kmeans", smooth_weight, standardize=False),
            ClusterContender(f"{observed}, per-section z, smoothed", "expression", None, "kmeans", smooth_weight)]


def _n_regions(reference: pd.Series) -> int:
    known = reference.astype(str).str.strip()
    known = known[~known.str.match(UNKNOWN_PATTERN, case=False)]
    return max(2, known.nunique())


def _observed(sections: dict[str, ad.AnnData]) -> dict[bool, dict[str, np.ndarray]]:
    """Observed expression per section, as it is and z-scored per section (``cluster``'s)."""
    genes = select_genes(list(sections.values()), EXPRESSION_GENES, TARGET_SUM)
    return {False: {n: expression_matrix(a, genes, TARGET_SUM) for n, a in sections.items()},
            True: {n: observed_features(a, genes) for n, a in sections.items()}}


def _features(c: ClusterContender, n: str, store: FeatureStore, expr: dict) -> tuple[np.ndarray, list | None]:
    """(features, block widths) of section ``n`` for contender ``c``; ``predicted``: a ridge fitted on the other
    sections' counts, applied to this section's image."""
    if c.features == "expression":
        return expr[c.standardize][n], None
    if c.features == "image":
        return store.get(c.image, n)
    scored = store.sections
    train = [m for m in scored if m != n]
    genes = select_genes([scored[m] for m in train], PREDICTED_GENES, TARGET_SUM, sorted(scored[n].var_names))
    head = RidgeHead().fit(np.concatenate([store.get(c.image, m)[0] for m in train]),
                           np.concatenate([expression_matrix(scored[m], genes, TARGET_SUM) for m in train]),
                           np.concatenate([[m] * scored[m].n_obs for m in train]), store.get(c.image, n)[1])
    return head.predict(store.get(c.image, n)[0]), None


def run_clustering_benchmark(sections: dict[str, ad.AnnData], contenders: Sequence[ClusterContender], *,
                             reference: str, cache_dir=None, progress: bool = False,
                             seeds: int = SEEDS) -> pd.DataFrame:
    """Per (contender, section, seed) ARI and NMI against ``obs[reference]``, each section clustered on its own."""
    scored = {n: a for n, a in sections.items() if reference in a.obs}
    store = FeatureStore(scored, cache_dir, progress)
    expr = _observed(scored) if any(c.features == "expression" for c in contenders) else {}
    rows = []
    for n, a in scored.items():
        conn = spatial_graph(a)
        k = _n_regions(a.obs[reference])
        for c in contenders:
            F, blocks = _features(c, n, store, expr)
            smoothed = smooth(np.asarray(F, dtype=np.float64), conn, c.smooth)
            for seed in range(seeds):
                labels = cluster_features(smoothed, method=c.method, n_clusters=k, seed=seed, blocks=blocks)
                rows.append({"contender": c.name, "test": n, "seed": seed, "k": k,
                             "n_found": len(np.unique(labels)), **clustering_agreement(a.obs[reference], labels)})
    return pd.DataFrame(rows)


def _frame(a: ad.AnnData) -> ad.AnnData:
    """What clustering reads and writes of a section (spots, coordinates, scale), apart from the section itself."""
    return ad.AnnData(obs=pd.DataFrame(index=a.obs_names.copy()), obsm={"spatial": np.asarray(a.obsm["spatial"])},
                      uns={"spatial": a.uns["spatial"]})


def patient_of(a: ad.AnnData, section: str) -> str:
    """The section's patient (``obs['patient']``), else the section itself."""
    if "patient" in a.obs and a.obs["patient"].nunique() == 1:
        return str(a.obs["patient"].iloc[0])
    return section


def run_joint_clustering(sections: dict[str, ad.AnnData], contenders: Sequence[ClusterContender], *,
                         reference: str, n_clusters: int = defaults.N_DOMAINS, cache_dir=None,
                         progress: bool = False, seeds: int = SEEDS) -> pd.DataFrame:
    """All ``sections`` clustered together into ``n_clusters`` domains (as ``cluster`` does); per (contender,
    section, seed) ARI and NMI against ``obs[reference]``, and per (contender, seed) the NMI between domains and
    patients (``patient_nmi``)."""
    from sklearn.metrics import normalized_mutual_info_score

    scored = {n: a for n, a in sections.items() if reference in a.obs}
    store = FeatureStore(scored, cache_dir, progress)
    expr = _observed(scored) if any(c.features == "expression" for c in contenders) else {}
    frames = {n: _frame(a) for n, a in scored.items()}
    patients = {n: patient_of(a, n) for n, a in scored.items()}
    rows = []
    for c in contenders:
        feats = {n: _features(c, n, store, expr) for n in scored}
        blocks = next(iter(feats.values()))[1]
        for seed in range(seeds):
            labels = spatial_clusters(frames, {n: f for n, (f, _) in feats.items()}, method=c.method,
                                      n_clusters=n_clusters, smooth_weight=c.smooth, seed=seed, blocks=blocks)
            patient_nmi = normalized_mutual_info_score(
                np.concatenate([[patients[n]] * len(v) for n, v in labels.items()]),
                np.concatenate(list(labels.values())))
            rows += [{"contender": c.name, "test": n, "patient": patients[n], "seed": seed, "k": n_clusters,
                      "n_found": len(np.unique(v)), "patient_nmi": float(patient_nmi),
                      **clustering_agreement(scored[n].obs[reference], v)} for n, v in labels.items()]
    return pd.DataFrame(rows)


def summarize_clustering(rows: pd.DataFrame, contenders: Sequence[ClusterContender]) -> pd.DataFrame:
    """Per contender: ARI and NMI averaged over seeds per section, then mean and sd over sections; with
    ``patient`` rows (the joint protocol), the mean ARI of each patient's sections and the domains' patient NMI."""
    order = {c.name: i for i, c in enumerate(contenders)}
    extra = [c for c in ("patient_nmi",) if c in rows]
    per_section = rows.groupby(["contender", "test"], sort=False)[["ari", "nmi", *extra]].mean().reset_index()
    agg = per_section.groupby("contender", sort=False)[["ari", "nmi"]].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["n_sections"] = per_section.groupby("contender", sort=False).size()
    if "patient" in rows and rows["patient"].nunique() <= MAX_PATIENT_COLUMNS:
        by_patient = rows.groupby(["contender", "patient"], sort=False)["ari"].mean().unstack()
        agg = agg.join(by_patient.add_prefix("ari_patient_"))
    if "patient_nmi" in rows:
        agg["patient_nmi"] = per_section.groupby("contender", sort=False)["patient_nmi"].mean()
    agg = agg.reset_index()
    return agg.sort_values("contender", key=lambda s: s.map(order)).reset_index(drop=True)


def clustering_markdown(summary: pd.DataFrame) -> str:
    patients = [c for c in summary if c.startswith("ari_patient_")]
    head = ["contender", "ARI (mean ± sd)", *[f"ARI, patient {p[len('ari_patient_'):]}" for p in patients],
            "NMI (mean ± sd)", *(["domains ~ patient NMI"] if "patient_nmi" in summary else []), "sections"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [r["contender"], f"{r['ari_mean']:.3f} ± {r['ari_std']:.3f}", *[f"{r[p]:.3f}" for p in patients],
                 f"{r['nmi_mean']:.3f} ± {r['nmi_std']:.3f}",
                 *([f"{r['patient_nmi']:.3f}"] if "patient_nmi" in summary else []), str(int(r["n_sections"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
