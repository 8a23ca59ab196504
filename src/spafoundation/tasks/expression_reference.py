"""Sections with counts but no image that inform the shared axes of the expression head (issue #17).

The shared expression programs (tasks/heads.py) are the few axes along which a tissue's genes vary together. Their
loadings are a property of the genes, not of the images, and a model fitted on one or two imaged sections estimates
them from a few hundred spots. Sections with counts alone (other patients of the cohort, a public atlas of the same
tissue) estimate them better: fitted on A1 alone and scored on patient C, the default pipeline's mean r over the
785 genes rose from 0.045 to 0.075-0.084 with the count-only HER2ST sections of any one other patient, and to 0.092
with those of all of them (BENCHMARKS.md has the benchmark's rows). The head also reduces its members' training
targets to the leading axes they give (``heads.REFERENCE_AXES``), since a gene's own variation off them is mostly
noise: 0.104 with all of them. They only shape the axes and the targets' reduction; what the image predicts is still
learnt from the imaged training sections.

Each reference section is z-scored per gene within itself (as the training targets are), so library depth, batch and
patient offsets drop out; a gene it does not measure is 0 there (no co-variation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np

from spafoundation.errors import InputError
from spafoundation.eval.splits import section_patient
from spafoundation.io.anndata_spec import library_id
from spafoundation.pp.genes import TARGET_SUM, expression_matrix
from spafoundation.tasks.heads import section_z

MIN_SPOTS = 10  # fewer spots say nothing about how genes co-vary
MIN_GENE_SHARE = 0.5  # a section measuring fewer of the model's genes is another panel, not a reference


def named_sections(sections: Mapping[str, ad.AnnData] | Sequence[ad.AnnData]) -> dict[str, ad.AnnData]:
    return dict(sections) if isinstance(sections, Mapping) else {library_id(a): a for a in sections}


def check_reference_head(head: str, programs: int | None, path=None, field: str = "reference") -> None:
    """Reference sections inform the shared expression programs: only the ridge-ensemble head, with programs, has
    them."""
    from spafoundation.tasks.heads import PROGRAMS

    if head != "ridge-ensemble":
        raise InputError(path, field, "reference sections inform the shared expression programs of the "
                         f"ridge-ensemble head; the {head} head has none")
    if (PROGRAMS if programs is None else programs) < 1:
        raise InputError(path, field, "reference sections inform the shared expression programs, which programs 0 "
                         "turns off")


@dataclass(frozen=True)
class ExpressionReference:
    """Per section: its id, its patient and its z-scored expression of the model's genes (spots x genes)."""

    sections: tuple[str, ...]
    patients: tuple[str, ...]
    z: tuple[np.ndarray, ...]

    @classmethod
    def from_sections(cls, sections: Mapping[str, ad.AnnData] | Sequence[ad.AnnData], genes: Sequence[str],
                      target_sum: float | None = TARGET_SUM) -> ExpressionReference:
        """``sections``: by name, or a list (named by their library id)."""
        ids, patients, zs = [], [], []
        genes = list(genes)
        for name, a in named_sections(sections).items():
            if a.n_vars == 0:
                raise InputError(None, f"reference section {name}", "has no counts")
            if a.n_obs < MIN_SPOTS:
                raise InputError(None, f"reference section {name}", f"has {a.n_obs} spots; at least {MIN_SPOTS} "
                                 "are needed to see how genes vary together")
            have = [i for i, g in enumerate(genes) if g in a.var_names]
            if len(have) < MIN_GENE_SHARE * len(genes):
                raise InputError(None, f"reference section {name}", f"measures {len(have)} of the model's "
                                 f"{len(genes)} genes; a reference needs at least {MIN_GENE_SHARE:.0%} of them")
            z = np.zeros((a.n_obs, len(genes)))
            expr = expression_matrix(a, [genes[i] for i in have], target_sum)
            z[:, have] = section_z(np.asarray(expr, dtype=np.float64), np.zeros(a.n_obs))
            ids.append(name)
            patients.append(section_patient(a) or name)
            zs.append(z)
        return cls(tuple(ids), tuple(patients), tuple(zs))

    def without(self, names: Iterable[str]) -> ExpressionReference:
        """Less the sections named, or whose patient is named (a held-out fold of sections or of patients)."""
        names = set(map(str, names))
        keep = [i for i, (s, p) in enumerate(zip(self.sections, self.patients, strict=True))
                if s not in names and p not in names]
        return ExpressionReference(*(tuple(v[i] for i in keep) for v in (self.sections, self.patients, self.z)))

    @property
    def n_spots(self) -> int:
        return sum(len(z) for z in self.z)

    def describe(self) -> dict:
        return {"sections": list(self.sections), "patients": sorted(set(self.patients)), "n_spots": self.n_spots}

    def __len__(self) -> int:
        return len(self.sections)
