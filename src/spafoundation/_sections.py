"""The one convention of ``sf.pp`` / ``sf.tl`` / ``sf.pl`` for several sections: a mapping of section -> AnnData (what
``sf.read`` returns), or one AnnData whose ``obs[library_key]`` names each spot's section and whose ``uns['spatial']``
holds every section's library (squidpy's layout, ``anndata.concat(..., uns_merge="unique")``).

A function splits its input into one AnnData per section (the task code's unit), works on those, and writes its
results back into the input's own objects: a mapping's AnnData, or the rows of the one AnnData."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from spafoundation.errors import InputError
from spafoundation.io.anndata_spec import is_integral

log = logging.getLogger(__name__)

LIBRARY_KEY = "section"


class Sections:
    """``data`` seen as one AnnData per section: ``by_name`` (section -> AnnData), written back with ``set_obs``,
    ``set_obsm`` and ``set_uns``. ``images``: the caller reads the sections' H&E, so a library made by scanpy or
    squidpy is completed first (its pixel size, its image: io/h5ad.adopt_section), in the caller's own ``uns``.
    ``counts``: the caller reads counts, so a section whose ``X`` scanpy normalised is seen with the integer counts
    it keeps in ``layers['counts']`` or ``.raw`` (``section_counts``); results still go into the caller's objects."""

    def __init__(self, data, library_key: str = LIBRARY_KEY, *, images: bool = False, counts: bool = False):
        self._split(data, library_key)
        if images:
            from spafoundation.io.h5ad import adopt_section

            for name, part in self.by_name.items():
                adopt_section(part, name)
        self._own = dict(self.by_name)  # where results are written (set_obs, set_obsm, set_uns)
        if counts:
            self.by_name = {name: section_counts(part, name) for name, part in self.by_name.items()}

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
            from spafoundation._read import _is_spatialdata

            hint = " (sf.read(sdata) gives that mapping)" if _is_spatialdata(data) else ""
            raise TypeError(f"expected an AnnData or a mapping of section -> AnnData, got {type(data).__name__}{hint}")
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
            if self._own[s] is not self.by_name[s]:  # a counts view (``counts``): the caller's object too
                self._own[s].obs[column] = self.by_name[s].obs[column].values
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
            if self._own[s] is not self.by_name[s]:
                self._own[s].obsm[key] = v
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
            if self._own[s] is not self.by_name[s]:
                self._own[s].uns[key] = v
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


_warned_counts: set[int] = set()  # ids of the AnnData already warned about (one line per object, not per call)


def section_counts(adata: ad.AnnData, section: str) -> ad.AnnData:
    """``adata`` as the tasks read it, raw counts in ``X``: itself when ``X`` holds counts; a copy with the integer
    counts of ``layers['counts']`` or ``.raw`` when scanpy normalised ``X`` (``sc.pp.normalize_total`` +
    ``log1p``); itself with a warning when ``X`` holds other non-integer values and no integer counts are kept
    (spafoundation normalises counts itself: normalised values normalised again give other targets). A gene named
    twice is an InputError, as in a file."""
    from spafoundation.io.h5ad import raw_counts

    if adata.var_names.has_duplicates:  # which column would a gene named twice be fitted on?
        twice = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise InputError(None, "var_names", f"section {section}: gene names repeated, e.g. {twice} "
                         "(adata.var_names_make_unique() renames them)")
    if adata.n_vars == 0 or is_integral(adata.X):  # the usual case, decided by one pass over X
        return adata
    counted, source = raw_counts(adata)
    if source != "X":
        log.info("section %s: counts from %s (X holds normalised values)", section, source)
    elif id(adata) not in _warned_counts:
        _warned_counts.add(id(adata))
        log.warning("section %s: X holds non-integer values and no layers['counts'] or .raw of integer counts is "
                    "kept: they are taken as counts (if X was normalised, keep the raw counts in "
                    "layers['counts'])", section)
    return counted


def copy_data(data):
    """A deep copy of a mapping of AnnData or of one AnnData (``copy=True``)."""
    if isinstance(data, Mapping):
        return {k: a.copy() for k, a in data.items()}
    return data.copy()
