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
