"""The one convention of ``sf.pp`` / ``sf.tl`` / ``sf.pl`` for several sections: a mapping of section -> AnnData (what
``sf.read`` returns), or one AnnData whose ``obs[library_key]`` names each spot's section and whose ``uns['spatial']``
holds every section's library (squidpy's layout, ``anndata.concat(..., uns_merge="unique")``).

A function splits its input into one AnnData per section (the task code's unit), works on those, and writes its
results back into the input's own objects: a mapping's AnnData, or the rows of the one AnnData."""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.errors import InputError

LIBRARY_KEY = "section"


class Sections:
    """``data`` seen as one AnnData per section: ``by_name`` (section -> AnnData), written back with ``set_obs``,
    ``set_obsm`` and ``set_uns``. ``images``: the caller reads the sections' H&E, so a library made by scanpy or
    squidpy is completed first (its pixel size, its image: io/h5ad.adopt_section), in the caller's own ``uns``."""

    def __init__(self, data, library_key: str = LIBRARY_KEY, *, images: bool = False):
        self._split(data, library_key)
        if images:
            from spafoundation.io.h5ad import adopt_section

            for name, part in self.by_name.items():
                adopt_section(part, name)

    def _split(self, data, library_key: str) -> None:
        self.data, self.library_key = data, library_key
        if isinstance(data, Mapping):
            bad = [k for k, a in data.items() if not isinstance(a, ad.AnnData)]
            if bad or not data:
                raise TypeError(f"expected a mapping of section -> AnnData, got {type(data).__name__} "
                                f"{'with non-AnnData values for ' + str(bad) if bad else 'that is empty'}")
            self.by_name, self.rows = {str(k): a for k, a in data.items()}, None
            return
        if not isinstance(data, ad.AnnData):
            raise TypeError(f"expected an AnnData or a mapping of section -> AnnData, got {type(data).__name__}")
        libraries = list(data.uns.get("spatial", {}))
        if library_key in data.obs:
            names = data.obs[library_key].astype(str).to_numpy()
            self.rows = {str(s): np.flatnonzero(names == s) for s in pd.unique(names)}
        elif len(libraries) == 1:
            self.rows = {libraries[0]: np.arange(data.n_obs)}
        else:
            raise InputError(None, f"obs['{library_key}']", f"{len(libraries)} libraries in uns['spatial'] and no "
                             f"obs['{library_key}'] to tell their spots apart (library_key=)")
        missing = [s for s in self.rows if s not in data.uns.get("spatial", {})]
        if missing:
            raise InputError(None, "uns['spatial']", f"no library for section(s) {missing}")
        if len(self.rows) == 1 and len(libraries) == 1:
            self.by_name = {next(iter(self.rows)): data}  # the AnnData itself: results go straight into it
            self.rows = None
            return
        self.by_name = {}
        for s, rows in self.rows.items():
            part = data[rows].copy()
            part.uns["spatial"] = {s: data.uns["spatial"][s]}
            self.by_name[s] = part

    @property
    def one(self) -> bool:
        """Whether results go into the input objects directly (a mapping, or an AnnData of one section)."""
        return self.rows is None

    def select(self, names) -> dict[str, ad.AnnData]:
        """The sections named (all for None), an InputError for an unknown one."""
        from spafoundation.io.readers import select_sections

        names = [names] if isinstance(names, str) else names
        return dict(select_sections(self.by_name, None if names is None else list(names), None))

    def set_obs(self, column: str, values: dict[str, np.ndarray | pd.Series]) -> None:
        """``obs[column]`` of each section's spots (``values``: section -> one value per spot), in the input; in a
        combined AnnData the spots of other sections get NaN, and categories are shared across sections."""
        for s, v in values.items():
            self.by_name[s].obs[column] = v
        if self.one:
            return
        parts = {s: self.by_name[s].obs[column] for s in values}
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts.values()):
            cats = list(dict.fromkeys(c for p in parts.values() for c in p.cat.categories))
            full = np.full(self.data.n_obs, None, dtype=object)
            for s, p in parts.items():
                full[self.rows[s]] = p.astype(object).to_numpy()
            self.data.obs[column] = pd.Categorical(full, categories=cats)
            return
        numeric = all(pd.api.types.is_numeric_dtype(p.dtype) and not pd.api.types.is_bool_dtype(p.dtype)
                      for p in parts.values())
        full = np.full(self.data.n_obs, np.nan if numeric else None, dtype=np.float64 if numeric else object)
        for s, p in parts.items():
            full[self.rows[s]] = p.to_numpy()
        self.data.obs[column] = full

    def set_obsm(self, key: str, values: dict[str, np.ndarray]) -> None:
        """``obsm[key]`` of each section's spots, in the input (NaN rows for the sections not given)."""
        for s, v in values.items():
            self.by_name[s].obsm[key] = v
        if self.one:
            return
        first = next(iter(values.values()))
        full = np.full((self.data.n_obs, *first.shape[1:]), np.nan, dtype=np.result_type(first.dtype, np.float32))
        for s, v in values.items():
            full[self.rows[s]] = v
        self.data.obsm[key] = full

    def set_uns(self, key: str, value_per_section: dict) -> None:
        """``uns[key]``: each section's value in its own AnnData; a combined AnnData gets ``{section: value}``."""
        for s, v in value_per_section.items():
            self.by_name[s].uns[key] = v
        if not self.one:
            self.data.uns[key] = dict(value_per_section)

    def merge(self, parts: dict[str, ad.AnnData]):
        """Per-section results in the input's shape: a mapping for a mapping, one AnnData (sections stacked, every
        library in ``uns['spatial']``) for an AnnData."""
        if isinstance(self.data, Mapping):
            return parts
        if len(parts) == 1:
            return next(iter(parts.values()))
        return ad.concat(list(parts.values()), merge="same", uns_merge="unique")


def copy_data(data):
    """A deep copy of a mapping of AnnData or of one AnnData (``copy=True``)."""
    if isinstance(data, Mapping):
        return {k: a.copy() for k, a in data.items()}
    return data.copy()
