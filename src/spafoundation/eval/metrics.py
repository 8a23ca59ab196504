"""Metrics. Expression: per-gene Pearson across the spots of one section, NaN-safe (constant genes are excluded and
counted, never averaged as NaN); summaries are per section, then averaged over sections, never pooled."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

TOP_K = 50
ALPHA_FDR = 0.05


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r of each column (gene) across rows (spots); NaN where either vector is constant."""
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (spots, genes) arrays of one shape, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    na, nb = np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0))
    # relative tolerance: a vector whose spread is float noise is constant
    const = (na <= 1e-12 * (1 + np.abs(y_true).max(0))) | (nb <= 1e-12 * (1 + np.abs(y_pred).max(0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(0) / (na * nb)
    r[const] = np.nan
    return np.clip(r, -1.0, 1.0)


def pearson_pvalues(r: np.ndarray, n: int) -> np.ndarray:
    """One-sided p-values for r > 0 with n spots (t-test); NaN stays NaN."""
    r = np.asarray(r, dtype=np.float64)
    if n < 3:
        return np.full_like(r, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt((n - 2) / np.maximum(1e-300, 1 - r * r))
    return stats.t.sf(t, n - 2)


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries are ignored and stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok])
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    vals = np.empty(m)
    vals[order] = adj
    out[ok] = vals
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def summarize_pearson(r: np.ndarray, *, n_spots: int | None = None, top_variable: Sequence[int] | None = None,
                      top_expressed: Sequence[int] | None = None) -> dict:
    """Mean/median over genes with a defined r, the count of constant genes, means over the top-variable and
    top-expressed gene indices, and (given ``n_spots``) the number of genes significantly positive after BH."""
    r = np.asarray(r, dtype=np.float64)
    valid = np.isfinite(r)
    out = {
        "mean_r": _nanmean(r),
        "median_r": float(np.median(r[valid])) if valid.any() else float("nan"),
        "n_genes": len(r),
        "n_constant": int((~valid).sum()),
    }
    if top_variable is not None:
        out["mean_r_top_hvg"] = _nanmean(r[np.asarray(top_variable, dtype=int)])
    if top_expressed is not None:
        out["mean_r_top_expressed"] = _nanmean(r[np.asarray(top_expressed, dtype=int)])
    if n_spots is not None:
        q = bh_adjust(pearson_pvalues(r, n_spots))
        out["n_significant"] = int(np.sum(np.isfinite(q) & (q < ALPHA_FDR)))
    return out


def evaluate_expression(y_true: np.ndarray, y_pred: np.ndarray, top_k: int = TOP_K) -> dict:
    """Every expression metric of one test section: Pearson summaries (top-k variable / expressed genes ranked on
    the observed values of the section), RMSE, and the per-gene r."""
    y_true = np.asarray(y_true, dtype=np.float64)
    r = pearson_per_gene(y_true, y_pred)
    top_var = np.argsort(-y_true.var(axis=0), kind="stable")[:top_k]
    top_expr = np.argsort(-y_true.mean(axis=0), kind="stable")[:top_k]
    out = summarize_pearson(r, n_spots=len(y_true), top_variable=top_var, top_expressed=top_expr)
    out["rmse"] = float(np.sqrt(np.mean((y_true - np.asarray(y_pred, dtype=np.float64)) ** 2)))
    out["r"] = r
    return out


def average_over_sections(per_section: Sequence[dict]) -> dict:
    """Mean of each scalar metric over sections (sections where it is undefined are skipped and counted)."""
    keys = [k for k, v in per_section[0].items() if np.isscalar(v)] if per_section else []
    out = {}
    for k in keys:
        vals = np.array([s[k] for s in per_section], dtype=np.float64)
        out[k] = _nanmean(vals)
    out["n_sections"] = len(per_section)
    return out


def classification_metrics(y_true: np.ndarray, score: np.ndarray) -> dict:
    """ROC AUC and PR AUC (average precision) of a score against binary labels; NaN labels are left out, and
    both metrics are NaN when a section holds only one class (counted, not averaged)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true, score = np.asarray(y_true, dtype=np.float64), np.asarray(score, dtype=np.float64)
    keep = np.isfinite(y_true) & np.isfinite(score)
    y, s = y_true[keep].astype(int), score[keep]
    out = {"n_spots": int(keep.sum()), "n_positive": int(y.sum()), "prevalence": float(y.mean()) if len(y) else np.nan}
    if len(np.unique(y)) < 2:
        return {**out, "roc_auc": float("nan"), "pr_auc": float("nan")}
    return {**out, "roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s))}


def clustering_agreement(labels_true, labels_pred) -> dict:
    """ARI and NMI of a clustering against reference regions (spots with an unknown reference left out)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = np.asarray(labels_true).astype(str)
    p = np.asarray(labels_pred).astype(str)
    keep = ~np.isin(np.char.lower(t), ["unknown", "undetermined", "nan", "none", ""])
    return {"ari": float(adjusted_rand_score(t[keep], p[keep])),
            "nmi": float(normalized_mutual_info_score(t[keep], p[keep])), "n_spots": int(keep.sum())}


def ssim_grid(observed: np.ndarray, predicted: np.ndarray, window: int = 3) -> float:
    """Mean structural similarity of gene maps (genes, rows, cols) with NaN holes (no spot there).

    Both maps of a gene are scaled by the observed map's range (data range 1); local means, variances and the
    covariance come from a ``window`` x ``window`` box over the valid pixels only; SSIM is averaged over valid
    pixels, then over genes whose observed map is not constant."""
    from scipy.ndimage import uniform_filter

    c1, c2 = 0.01**2, 0.03**2
    scores = []
    for obs, pred in zip(observed, predicted, strict=True):
        valid = np.isfinite(obs) & np.isfinite(pred)
        if valid.sum() < 4:
            continue
        lo, hi = obs[valid].min(), obs[valid].max()
        if hi <= lo:
            continue
        x = np.where(valid, (obs - lo) / (hi - lo), 0.0)
        y = np.where(valid, (pred - lo) / (hi - lo), 0.0)
        m = valid.astype(np.float64)
        n = np.maximum(uniform_filter(m, window), 1e-12)

        def mean(a, m=m, n=n):
            return uniform_filter(a * m, window) / n

        mx, my = mean(x), mean(y)
        vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(float(s[valid].mean()))
    return float(np.mean(scores)) if scores else float("nan")
