"""``sf.tl``: the analyses, on AnnData (one section, several with ``obs['section']``) or a mapping of section ->
AnnData. Functions that annotate spots write into the input and return None (or a copy, ``copy=True``); functions
that predict return a new AnnData with the same ``obs``; ``fit_*`` return a model with ``save``/``load`` (the model
classes are here too, for ``load``)."""

from spafoundation.tasks.expression import ExpressionModel
from spafoundation.tasks.superres import SuperresModel
from spafoundation.tasks.tumor import TumorModel
from spafoundation.tl._domains import spatial_domains
from spafoundation.tl._embed import embed
from spafoundation.tl._expression import fit_expression, predict_expression
from spafoundation.tl._superres import fit_superres, superres
from spafoundation.tl._tumor import tumor_maps, tumor_score

__all__ = ["ExpressionModel", "SuperresModel", "TumorModel", "embed", "fit_expression", "fit_superres", "predict_expression", "spatial_domains", "superres",
           "tumor_maps", "tumor_score"]
