"""Held-out splits shared by every benchmark, and their summary per direction.

Leave-one-patient-out is the headline wherever two or more patients have imaged sections (what a user does:
predict a patient the model never saw); leave-one-section-out is kept within each patient, never with the other
patients' sections in training, so it reads as "another section of a patient the model has seen".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anndata as ad
import pandas as pd

LOPO, LOSO = "leave-one-patient-out", "leave-one-section-out"
MEAN_OF_DIRECTIONS = "mean of the directions"


def section_patient(adata: ad.AnnData) -> str | None:
    if "patient" not in adata.obs or not adata.n_obs or pd.isna(adata.obs["patient"].iloc[0]):
        return None
    return str(adata.obs["patient"].iloc[0])


def benchmark_splits(sections: dict[str, ad.AnnData]) -> list[tuple[str, str, list[str], list[str]]]:
    """(split kind, direction, test sections, training sections), leave-one-patient-out first.

    Leave-one-patient-out, when obs['patient'] names two or more patients: per patient, its sections against the
    other patients' (direction "A+B -> C"). Leave-one-section-out within each patient: per section, the other
    sections of its patient (direction "within C"); sections without a patient form one group."""
    patients = {n: section_patient(a) for n, a in sections.items()}
    known = sorted({p for p in patients.values() if p is not None})
    splits = []
    if len(known) >= 2:
        for p in known:
            test = [n for n in sections if patients[n] == p]
            train = [n for n in sections if patients[n] not in (None, p)]
            others = "+".join(q for q in known if q != p)
            splits.append((LOPO, f"{others} -> {p}", test, train))
    for t in sections:
        train = [n for n in sections if n != t and patients[n] == patients[t]]
        if train:
            splits.append((LOSO, f"within {patients[t]}" if patients[t] is not None else "within the sections",
                           [t], train))
    return splits


def summarize_splits(rows: pd.DataFrame, contenders: Sequence[str], metrics: Sequence[str],
                     describe: Callable[[pd.DataFrame], dict] | None = None) -> pd.DataFrame:
    """One row per (split, direction, contender): ``metrics`` averaged over the direction's test sections; after
    the leave-one-patient-out directions, their mean (each direction weighs the same, whatever its number of
    sections). Leave-one-patient-out rows first, then leave-one-section-out (averaged over every held-out
    section), then any other split kind per direction in the order met, contenders in their order.
    ``describe(rows of a direction)`` adds columns (e.g. the label source)."""
    order = [c for c in contenders if c in set(rows["contender"])]
    metrics = list(metrics)
    extra = list((describe(rows.iloc[:0]) if describe else {}).keys())
    out = []
    for kind in dict.fromkeys([LOPO, LOSO, *rows["split"]]):
        part = rows[rows["split"] == kind]
        if part.empty:
            continue
        directions = list(dict.fromkeys(part["direction"]))
        if kind == LOSO:  # one row per patient would repeat the table: every held-out section together
            directions = [" / ".join(directions)]
            part = part.assign(direction=directions[0])
        per_direction = []
        for d in directions:
            g = part[part["direction"] == d]
            cols = describe(g) if describe else {}
            for name in order:
                r = g[g["contender"] == name]
                if len(r):
                    per_direction.append({"split": kind, "direction": d, **cols, "contender": name,
                                          **r[metrics].mean().to_dict(), "n_test": len(r)})
        out += per_direction
        if kind == LOPO and len(directions) >= 2:
            by = pd.DataFrame(per_direction)
            for name in order:
                r = by[by["contender"] == name]
                out.append({"split": kind, "direction": f"{MEAN_OF_DIRECTIONS} ({len(r)})",
                            **{c: "per direction" for c in extra}, "contender": name, **r[metrics].mean().to_dict(),
                            "n_test": int(r["n_test"].sum())})
    return pd.DataFrame(out, columns=["split", "direction", *extra, "contender", *metrics, "n_test"])


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows a result is quoted from: the mean over leave-one-patient-out directions when there is one, else
    the single leave-one-patient-out direction, else leave-one-section-out."""
    for mask in (summary["direction"].str.startswith(MEAN_OF_DIRECTIONS), summary["split"] == LOPO,
                 summary["split"] == LOSO):
        if mask.any():
            return summary[mask]
    return summary
