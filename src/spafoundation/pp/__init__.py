"""``sf.pp``: the expression the tasks fit and score (library-size normalisation + log1p) and the genes they
predict (chosen on training sections only). The arrays-level functions are in ``spafoundation.pp.genes``."""

from __future__ import annotations

from collections.abc import Mapping

from spafoundation import defaults
from spafoundation._sections import LIBRARY_KEY, Sections, copy_data, section_counts
from spafoundation.pp.genes import TARGET_SUM, library_size, normalize_log1p
from spafoundation.pp.genes import select_genes as _select_genes

__all__ = ["normalize", "select_genes"]


def normalize(data, target_sum: float | None = TARGET_SUM, *, key_added: str = "lognorm", copy: bool = False):
    """log1p(counts / library size * ``target_sum``) of every spot: the targets of ``sf.tl.fit_expression``.

    Parameters
    ----------
    data
        One AnnData or a mapping of section -> AnnData, with counts in ``X`` (which stays as it is), or in
        ``layers['counts']`` / ``.raw`` where ``X`` was normalised by scanpy.
    target_sum
        Counts per spot after scaling; None: log1p of the raw counts.
    key_added
        Layer that receives the values.
    copy
        Work on a copy and return it, instead of writing into ``data``.

    Returns
    -------
    None, or a copy of ``data`` with ``copy=True``. Writes ``layers[key_added]``: dense float32 (spots x genes).
    """
    data = copy_data(data) if copy else data
    for name, a in (data.items() if isinstance(data, Mapping) else [("", data)]):
        counted = section_counts(a, name)  # .raw may hold more genes: the library size counts them all
        X = a.X if counted is a else counted[:, a.var_names].X
        a.layers[key_added] = normalize_log1p(X, target_sum, lib=library_size(counted.X))
    return data if copy else None


def select_genes(data, genes=defaults.EXPRESSION_GENES, *, sections=None, library_key: str = LIBRARY_KEY,
                 target_sum: float | None = TARGET_SUM, candidates=None) -> list[str]:
    """The genes a model predicts, chosen on training sections only (what ``sf.tl.fit_expression`` selects).

    Parameters
    ----------
    data
        One AnnData, or a mapping of section -> AnnData; an AnnData of several sections tells them apart by
        ``obs[library_key]``.
    genes
        ``"hvg:K"``: the K most variable genes (Seurat rule, dispersion z-scored in bins of mean expression) among
        those detected in >= 10% of the spots of every section; ``"mean:K"``: the K highest mean expression; a
        ``.npy``/``.txt`` gene-list file, or a list of symbols (kept where every section measures them).
    sections
        The training sections (default: all of ``data``).
    library_key
        Column of ``obs`` naming each spot's section, in an AnnData of several sections.
    target_sum
        Normalisation of the expression the selection looks at (``normalize``).
    candidates
        Restrict the choice to these genes (e.g. those the sections to predict also measure).

    Returns
    -------
    list[str]
        Gene symbols, in order of selection.
    """
    train = Sections(data, library_key, counts=True).select(sections)
    return _select_genes(list(train.values()), genes, target_sum, candidates)


def __dir__() -> list[str]:
    # tab completion shows the functions (and the arrays-level module), as scanpy's sc.pp does, not the imports
    return [*__all__, "genes"]
