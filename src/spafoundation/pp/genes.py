"""Expression targets and gene selection: library-size normalisation + log1p, and the genes a model predicts.

Gene specs: ``"hvg:K"`` (top-K highly variable, Seurat rule), ``"mean:K"`` (top-K by mean expression), a path to a
``.npy``/``.txt`` list, or a Python list of symbols. Selection only ever sees training sections.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from spafoundation.defaults import TARGET_SUM
from spafoundation.errors import InputError

log = logging.getLogger(__name__)

MIN_EXPRESSED_FRAC = 0.1  # HEST rule: a candidate gene is detected in >= 10% of the spots of every section
N_HVG_BINS = 20


def library_size(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def normalize_log1p(X, target_sum: float | None = TARGET_SUM, lib: np.ndarray | None = None) -> np.ndarray:
    """Counts (spots x genes) -> log1p(counts / library size * target_sum), dense float32.

    ``lib``: library sizes when ``X`` holds only some of the genes (default: the row sums of ``X``).
    ``target_sum=None`` skips library-size scaling (log1p of raw counts). Empty spots stay zero.
    """
    lib = library_size(X) if lib is None else np.asarray(lib, dtype=np.float64)
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    if target_sum is not None:
        scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
        X = X * scale[:, None]
    return np.log1p(X).astype(np.float32)


def common_genes(adatas: Sequence[ad.AnnData]) -> list[str]:
    """Genes present in every section, in the order of the first."""
    shared = set(adatas[0].var_names)
    for a in adatas[1:]:
        shared &= set(a.var_names)
    return [g for g in adatas[0].var_names if g in shared]


def seurat_hvg(log_expr: np.ndarray, n_top: int, n_bins: int = N_HVG_BINS) -> np.ndarray:
    """Indices of the ``n_top`` most variable genes by the Seurat rule (scanpy ``flavor='seurat'``).

    Dispersion (variance / mean of the un-logged normalised values) is z-scored within bins of mean expression,
    so highly expressed genes do not win on variance alone.
    """
    x = np.expm1(log_expr.astype(np.float64))
    mean = x.mean(axis=0)
    var = x.var(axis=0, ddof=1) if len(x) > 1 else np.zeros_like(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(np.where(mean > 0, var / mean, np.nan))
    log_mean = np.log1p(mean)
    finite = np.isfinite(disp)
    edges = np.linspace(log_mean[finite].min(), log_mean[finite].max(), n_bins + 1) if finite.any() else [0, 1]
    bins = np.clip(np.digitize(log_mean, edges[1:-1]), 0, n_bins - 1)
    norm = np.full_like(disp, -np.inf)
    for b in np.unique(bins[finite]):
        m = finite & (bins == b)
        sd = disp[m].std(ddof=1) if m.sum() > 1 else np.nan
        # a bin with a single gene (or no spread) gets a z-score of 1, as in Seurat
        norm[m] = (disp[m] - disp[m].mean()) / sd if np.isfinite(sd) and sd > 0 else 1.0
    order = np.argsort(-norm, kind="stable")
    return order[: min(n_top, int(finite.sum()))]


def select_genes(train: Sequence[ad.AnnData], spec, target_sum: float | None = TARGET_SUM,
                 candidates: Sequence[str] | None = None, min_expressed_frac: float = MIN_EXPRESSED_FRAC) -> list[str]:
    """Gene symbols to predict, chosen on the training sections only (among ``candidates`` when given, e.g. the
    genes the test sections also measure: names only, no test values)."""
    if not train:
        raise InputError(None, "sections", "no training section with counts")
    measured = common_genes(train)
    keep = set(measured if candidates is None else candidates)
    genes = [g for g in measured if g in keep]
    if not genes:
        raise InputError(None, "var_names", "the training sections share no gene")

    def among_candidates(listed: list[str], source: str) -> list[str]:
        # a listed gene the training sections lack is the user's mistake; one outside the candidates (a gene the
        # test sections do not measure, in a benchmark) is left out in silence
        chosen = [g for g in listed if g in keep]
        if not chosen:
            raise InputError(source, "genes", "none of the requested genes is measured in the test sections")
        return chosen

    if isinstance(spec, (list, tuple, np.ndarray)):
        return among_candidates(_keep_known([str(g) for g in spec], measured, "genes"), "genes")
    spec = str(spec)
    kind, _, k = spec.partition(":")
    if kind in ("hvg", "mean") and k.isdigit() and int(k) > 0:
        genes = [g for g, ok in zip(genes, detected_everywhere(train, genes, min_expressed_frac), strict=True) if ok]
        if not genes:
            raise InputError(None, "genes", f"no gene is detected in {min_expressed_frac:.0%} of every section's spots")
        expr = np.concatenate([expression_matrix(a, genes, target_sum) for a in train])
        if kind == "hvg":
            idx = seurat_hvg(expr, int(k))
        else:
            idx = np.argsort(-expr.mean(axis=0), kind="stable")[: int(k)]
        return [genes[i] for i in idx]
    path = Path(spec)
    if path.suffix in (".npy", ".txt", ".csv", ".tsv") or path.exists():
        return among_candidates(_keep_known(read_gene_list(path), measured, str(path), strict=True), str(path))
    raise InputError(None, "genes", f"unknown gene spec {spec!r}: use hvg:K, mean:K or a gene-list file")


def detected_everywhere(sections: Sequence[ad.AnnData], genes: Sequence[str], min_frac: float) -> np.ndarray:
    """Boolean mask: gene detected (count > 0) in at least ``min_frac`` of the spots of every section."""
    ok = np.ones(len(genes), dtype=bool)
    for a in sections:
        X = a[:, list(genes)].X
        frac = np.asarray((X > 0).sum(axis=0)).ravel() / max(1, a.n_obs)
        ok &= frac >= min_frac
    return ok


def read_gene_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "genes", "gene list file not found")
    try:
        if path.suffix == ".npy":
            genes = [str(g) for g in np.load(path, allow_pickle=True).ravel()]
        else:
            genes = [ln.strip().split(",")[0].split("\t")[0] for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError) as e:
        raise InputError(path, "genes", f"unreadable gene list ({e})") from None
    if not genes:
        raise InputError(path, "genes", "empty gene list")
    return genes


def _keep_known(wanted: list[str], available: list[str], source: str, strict: bool = False) -> list[str]:
    """The genes of ``wanted`` measured in every training section. ``strict`` (a gene list file the user wrote):
    one that is not is an InputError naming it, rather than a model of fewer genes than asked for."""
    have = set(available)
    kept = [g for g in dict.fromkeys(wanted) if g in have]
    if not kept:
        raise InputError(source, "genes", "none of the requested genes is measured in all training sections")
    dropped = [g for g in dict.fromkeys(wanted) if g not in have]
    if dropped and strict:
        raise InputError(source, "genes", f"{len(dropped)} of the {len(dropped) + len(kept)} genes listed are not "
                         f"measured in every training section: {', '.join(dropped[:10])}"
                         f"{', ...' if len(dropped) > 10 else ''} (remove them from the list)")
    if dropped:
        log.warning("%s: %d requested genes not measured in every training section, left out: %s", source,
                    len(dropped), ", ".join(dropped[:10]))
    return kept


def expression_matrix(adata: ad.AnnData, genes: Sequence[str], target_sum: float | None = TARGET_SUM) -> np.ndarray:
    """Normalised log expression of ``genes`` (spots x genes); the library size uses all genes of the section."""
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise InputError(None, "var_names", f"the section lacks {len(missing)} of the model's genes, e.g. {missing[:5]}")
    idx = adata.var_names.get_indexer(list(genes))
    return normalize_log1p(adata.X[:, idx], target_sum, lib=library_size(adata.X))


TRANSCRIPTOME_GENES = 2000  # the most variable genes kept for the training sections' spot factors (tasks/heads.py)
_CHUNK_GENES = 2000  # genes densified at a time while ranking them: a Visium HD section has tens of thousands of spots


def transcriptome_z(sections: Sequence[ad.AnnData], target_sum: float | None = TARGET_SUM,
                    n_genes: int = TRANSCRIPTOME_GENES) -> np.ndarray:
    """The sections' spots (stacked in order) x their ``n_genes`` most variable genes, each gene z-scored within each
    section: of the genes all sections measure and detect in >= 10% of their spots, those whose normalised log
    expression varies most within a section (mean variance over sections). float32; the training targets' spot
    factors are estimated from it (``tasks/heads.factor_reduced_targets``)."""
    genes = common_genes(sections)
    genes = [g for g, ok in zip(genes, detected_everywhere(sections, genes, MIN_EXPRESSED_FRAC), strict=True) if ok]
    if len(genes) > n_genes:
        var = np.zeros(len(genes))
        for a in sections:
            lib = library_size(a.X)
            for start in range(0, len(genes), _CHUNK_GENES):
                chunk = genes[start : start + _CHUNK_GENES]
                idx = a.var_names.get_indexer(chunk)
                var[start : start + len(chunk)] += normalize_log1p(a.X[:, idx], target_sum, lib=lib).var(0)
        genes = [genes[i] for i in np.sort(np.argsort(-var, kind="stable")[:n_genes])]
    blocks = []
    for a in sections:
        E = expression_matrix(a, genes, target_sum).astype(np.float64)
        sd = E.std(0)
        blocks.append(((E - E.mean(0)) / np.where(sd > 1e-12, sd, 1.0)).astype(np.float32))
    return np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
