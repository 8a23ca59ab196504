"""Spatial domains: cluster spots from image features, predicted or observed expression, optionally smoothed over
the spot neighbour graph (stored as squidpy does: ``obsp['spatial_connectivities']`` / ``['spatial_distances']``).

Smoothing replaces each spot's features by ``(1 - w) * own + w * mean(neighbours)``: neighbouring spots usually
share a domain, and averaging cuts the per-spot noise of counts and patches."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from spafoundation import defaults
from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import library_id, microns_per_pixel

N_PCS = 30
KNN = 15


def spatial_graph(adata: ad.AnnData, radius_um: float | None = None) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency of spots within ``radius_um`` (default 1.5 x the median nearest-spot distance, i.e.
    the ring of direct neighbours on an ST or Visium grid); stored in ``obsp`` as squidpy does."""
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64) * microns_per_pixel(adata)
    tree = cKDTree(xy)
    if radius_um is None:
        d, _ = tree.query(xy, k=2)
        radius_um = 1.5 * float(np.median(d[:, 1])) if len(xy) > 1 else 1.0
    dist = tree.sparse_distance_matrix(tree, max_distance=radius_um, output_type="coo_matrix").tocsr()
    dist.setdiag(0)
    dist.eliminate_zeros()
    conn = (dist > 0).astype(np.float32)
    adata.obsp["spatial_connectivities"] = conn
    adata.obsp["spatial_distances"] = dist.astype(np.float32)
    adata.uns["spatial_neighbors"] = {"connectivities_key": "spatial_connectivities",
                                      "distances_key": "spatial_distances",
                                      "params": {"radius_um": radius_um, "coord_type": "generic"}}
    return conn


def smooth(features: np.ndarray, conn: sp.spmatrix, weight: float = 0.5) -> np.ndarray:
    """``(1 - weight) * x + weight * mean of graph neighbours`` (isolated spots keep their own value)."""
    if weight <= 0:
        return features
    deg = np.asarray(conn.sum(axis=1)).ravel()
    mean_nb = conn @ features / np.maximum(deg, 1)[:, None]
    out = (1 - weight) * features + weight * mean_nb
    out[deg == 0] = features[deg == 0]
    return out


class Reducer:
    """Standard scaling then PCA to ``n_pcs``, fitted once and applied to other locations (a tissue grid).
    ``blocks`` (widths of concatenated feature blocks): each block is divided by sqrt(width) after scaling, so a
    192-d embedding and 40 colour statistics weigh the same in the distances (as in the ridge head)."""

    def __init__(self, n_pcs: int = N_PCS, seed: int = 0, blocks: list[int] | None = None):
        self.n_pcs, self.seed, self.blocks = n_pcs, seed, blocks

    def fit_transform(self, features: np.ndarray) -> np.ndarray:
        self.scaler = StandardScaler().fit(features)
        if self.blocks:
            self.scaler.scale_ = self.scaler.scale_ * np.repeat(np.sqrt(self.blocks), self.blocks)
        Z = self.scaler.transform(features)
        k = min(self.n_pcs, Z.shape[1], max(1, Z.shape[0] - 1))
        self.pca = PCA(n_components=k, random_state=self.seed).fit(Z) if k < Z.shape[1] else None
        return self.pca.transform(Z) if self.pca is not None else Z

    def transform(self, features: np.ndarray) -> np.ndarray:
        Z = self.scaler.transform(features)
        return self.pca.transform(Z) if self.pca is not None else Z


def _leiden(Z: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    import igraph as ig
    import leidenalg

    k = min(KNN, len(Z) - 1)
    _, idx = cKDTree(Z).query(Z, k=k + 1)
    edges = {(min(i, j), max(i, j)) for i, row in enumerate(idx) for j in row[1:]}
    g = ig.Graph(n=len(Z), edges=sorted(edges))
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, resolution_parameter=resolution,
                                    seed=seed)
    return np.asarray(part.membership)


def _cluster(Z: np.ndarray, method: str, n_clusters: int | None, resolution: float | None, seed: int) -> np.ndarray:
    if method == "kmeans":
        k = int(n_clusters or defaults.N_DOMAINS)
        if k > len(Z):
            raise InputError(None, "--n-clusters", f"{k} domains asked of {len(Z)} spots")
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(Z)
    if method != "leiden":
        raise InputError(None, "--method", f"unknown clustering method {method!r}; use kmeans or leiden")
    if resolution is not None or not n_clusters:
        return _leiden(Z, resolution if resolution is not None else 1.0, seed)
    lo, hi, best = 0.01, 5.0, None
    for _ in range(20):  # bisection on the resolution (log scale) for the requested number of clusters
        mid = (lo * hi) ** 0.5
        labels = _leiden(Z, mid, seed)
        n = len(np.unique(labels))
        if best is None or abs(n - n_clusters) < abs(len(np.unique(best)) - n_clusters):
            best = labels
        if n == n_clusters:
            break
        lo, hi = (mid, hi) if n < n_clusters else (lo, mid)
    return best


def cluster_features(features: np.ndarray, *, method: str = defaults.DOMAIN_METHOD,
                     n_clusters: int | None = defaults.N_DOMAINS,
                     resolution: float | None = None, seed: int = 0, blocks: list[int] | None = None) -> np.ndarray:
    """Cluster ids (0..k-1) of feature rows after scaling and PCA. k-means with ``n_clusters``; Leiden at
    ``resolution`` or, given ``n_clusters``, at the resolution (by bisection) that gives that many clusters."""
    if len(features) < 2:
        raise InputError(None, "spots", "clustering needs at least two spots")
    return _cluster(Reducer(seed=seed, blocks=blocks).fit_transform(features), method, n_clusters, resolution, seed)


def spatial_clusters(sections: dict[str, ad.AnnData], features: dict[str, np.ndarray], *, method: str = "kmeans",
                     n_clusters: int | None = defaults.N_DOMAINS, resolution: float | None = None,
                     smooth_weight: float = defaults.DOMAIN_SMOOTH,
                     radius_um: float | None = None, seed: int = 0, key: str = "spatial_domain",
                     grids: dict[str, ad.AnnData] | None = None,
                     grid_features: dict[str, np.ndarray] | None = None,
                     blocks: list[int] | None = None) -> dict[str, np.ndarray]:
    """Domains shared by all ``sections``: each section's features are smoothed over its own spot graph, then
    all spots are clustered together, so a domain means the same thing in every section. Writes ``obs[key]``
    (categorical) and the neighbour graph (``obsp``) of every section. ``grids``: other locations (a tissue grid),
    smoothed over their own graph and assigned to the nearest domain centre in the same reduced space."""
    import pandas as pd

    names = list(sections)
    smoothed = [smooth(np.asarray(features[n], dtype=np.float64), spatial_graph(sections[n], radius_um),
                       smooth_weight) for n in names]
    stacked = np.concatenate(smoothed)
    if len(stacked) < 2:
        raise InputError(None, "spots", "clustering needs at least two spots")
    reducer = Reducer(seed=seed, blocks=blocks)
    Z = reducer.fit_transform(stacked)
    labels = _cluster(Z, method, n_clusters, resolution, seed)
    order = np.unique(labels)
    categories = [str(c) for c in order]
    out, start = {}, 0
    for n, f in zip(names, smoothed, strict=True):
        out[n] = labels[start:start + len(f)]
        sections[n].obs[key] = pd.Categorical(out[n].astype(str), categories=categories)
        start += len(f)
    if grids:
        centres = np.stack([Z[labels == c].mean(axis=0) for c in order])
        for n, g in grids.items():
            gz = reducer.transform(smooth(np.asarray(grid_features[n], dtype=np.float64), spatial_graph(g),
                                          smooth_weight))
            nearest = order[((gz[:, None, :] - centres[None]) ** 2).sum(-1).argmin(axis=1)]
            g.obs[key] = pd.Categorical(nearest.astype(str), categories=categories)
    return out


FEATURE_KINDS = defaults.DOMAIN_FEATURE_KINDS
# Image features for domains: what the spot and a twice-wider patch look like, z-scored per section so that sections
# of other scans or labs share domains rather than split by stain (a no-op for a section clustered on its own); no
# neighbour averaging in the features themselves, the graph smoothing does that (and can be switched off).
# "image" adds the encoder to the colour/texture of "colour_texture".
IMAGE_RECIPES = {
    "colour_texture": {"source": "colour_texture", "context": 2.0, "neighbours_um": 0.0, "standardize": "section"},
    "image": {"source": "encoder+colour_texture", "context": 2.0, "neighbours_um": 0.0, "standardize": "section"},
}
EXPRESSION_GENES = defaults.DOMAIN_EXPRESSION_GENES


def observed_features(adata: ad.AnnData, genes: list[str]) -> np.ndarray:
    """Observed log-normalised counts of ``genes``, z-scored within the section: sections clustered together then
    share domains instead of splitting by patient or batch (HER2ST A1 + C2-C6, 7 domains: NMI between domains and
    patients 0.50 without, 0.11 with; BENCHMARKS.md, "Spatial clustering")."""
    from spafoundation.pp.genes import TARGET_SUM, expression_matrix
    from spafoundation.tasks.spot_features import standardize_section

    return standardize_section(expression_matrix(adata, genes, TARGET_SUM), library_id(adata))


def domain_features(sections: dict[str, ad.AnnData], kind: str, *, encoder=None, expression_model=None,
                    genes: str | list = EXPRESSION_GENES, locations: dict[str, ad.AnnData] | None = None,
                    cache_dir=None, progress: bool = False,
                    stain_norm: str = "none") -> tuple[dict, dict, list[int] | None]:
    """Features per section to cluster on, the same for ``locations`` (a grid; not observed expression), and the
    widths of the feature blocks (colour/texture and image features; None otherwise).

    ``colour_texture``: colour/texture of the spot patch and of a twice-wider one, z-scored per section;
    ``image``: the same with the encoder's embeddings of both patches; ``expression``: observed log-normalised
    counts of highly variable genes (chosen over all sections), z-scored per section; ``predicted``: the expression a
    fitted ``ExpressionModel`` predicts from the image. ``stain_norm`` (image features): every section's patches
    normalised to one reference fitted over tissue patches of all ``sections``, so they share one look."""
    from spafoundation.pp.genes import TARGET_SUM, select_genes

    locations = locations or {}
    if kind == "expression":
        missing = [n for n, a in sections.items() if a.n_vars == 0]
        if missing:
            raise InputError(None, "--features", f"sections {', '.join(missing)} have no counts to cluster on; use "
                             "--features colour_texture, image or predicted")
        if locations:
            raise InputError(None, "--grid-um", "observed expression exists only at the spots")
        gene_list = select_genes(list(sections.values()), genes, TARGET_SUM)
        return {n: observed_features(a, gene_list) for n, a in sections.items()}, {}, None
    if kind == "predicted":
        if expression_model is None:
            raise InputError(None, "--expression-model", "clustering on predicted expression needs a fitted model")

        def f(a):
            return np.asarray(expression_model.predict(a, cache_dir=cache_dir, progress=progress).X)

        return {n: f(a) for n, a in sections.items()}, {n: f(a) for n, a in locations.items()}, None
    if kind in IMAGE_RECIPES:
        from spafoundation.tasks.expression import DEFAULT_ENCODER, resolve_encoder
        from spafoundation.tasks.spot_features import fit_recipe_stain, make_recipe, spot_features

        enc = resolve_encoder(encoder or DEFAULT_ENCODER) if kind == "image" else None
        recipe = fit_recipe_stain(make_recipe(**IMAGE_RECIPES[kind], stain_norm=stain_norm), sections.values())

        def f(a, section=None):
            return spot_features(a, recipe, enc, cache_dir=cache_dir, progress=progress, with_blocks=True,
                                 standardize_with=section)

        spots = {n: f(a) for n, a in sections.items()}
        # a grid is z-scored with its section's spot statistics, so it lands in the spots' space
        grid = {n: f(a, sections[n])[0] for n, a in locations.items()}
        return {n: v[0] for n, v in spots.items()}, grid, next(iter(spots.values()))[1]
    raise InputError(None, "--features", f"unknown features {kind!r}; choose from {FEATURE_KINDS}")
