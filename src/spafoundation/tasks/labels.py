"""Binary tumour labels from annotation columns (pathologist labels or expression-cluster annotations)."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np

from spafoundation.errors import InputError

TUMOR_PATTERN = r"cancer|tumou?r|carcinoma|malignan"
# Annotations that say nothing about the tissue: left out of training and scoring.
UNKNOWN_PATTERN = r"^(unknown|undetermined|nan|none|)$"


def tumor_labels(adata: ad.AnnData, column: str, positive: str = TUMOR_PATTERN,
                 unknown: str = UNKNOWN_PATTERN) -> np.ndarray:
    """1.0 where ``obs[column]`` matches ``positive`` (case-insensitive), 0.0 elsewhere, NaN where unknown."""
    if column not in adata.obs:
        raise InputError(None, f"obs['{column}']", f"no such label column (have: {', '.join(adata.obs.columns)})")
    values = adata.obs[column].astype(str).str.strip()
    pos, unk = re.compile(positive, re.I), re.compile(unknown, re.I)
    out = np.array([np.nan if unk.search(v) else float(bool(pos.search(v))) for v in values])
    return out


def label_columns(spec) -> list[str]:
    """Label columns in order of preference, from a comma-separated string ("label,cluster_annotation") or a list."""
    if isinstance(spec, str):
        spec = spec.split(",")
    return [c.strip() for c in spec or [] if c and c.strip()]


def label_source(adata: ad.AnnData, columns, unknown: str = UNKNOWN_PATTERN) -> str | None:
    """The label column of a section: the first of ``columns`` (in order of preference) that it has with at least
    one known value, so each section can be labelled by the best source it has (pathologist labels where there
    are some, else e.g. annotations of expression clusters); None when it has none of them."""
    unk = re.compile(unknown, re.I)
    for column in label_columns(columns):
        if column in adata.obs:
            values = adata.obs[column].astype(str).str.strip()
            if any(not unk.search(v) for v in values):
                return column
    return None
