"""Reference sections (counts, no image) for the expression programs' axes: z-scored per section, checked, and
left out by section or patient."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spafoundation.errors import InputError
from spafoundation.pp.genes import expression_matrix
from spafoundation.tasks.expression_reference import ExpressionReference, check_reference_head


def _counts(name: str, patient: str, genes: list[str], n: int = 30, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.poisson(5.0, size=(n, len(genes))).astype(np.float32),
                   obs=pd.DataFrame({"patient": patient}, index=[f"{name}_{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes))
    a.uns["spatial"] = {name: {"scalefactors": {}}}
    return a


def test_each_section_is_z_scored_on_the_model_genes_and_a_missing_gene_is_zero():
    genes = ["G1", "G2", "G3", "G4"]
    full, partial = _counts("S1", "P", genes, seed=1), _counts("S2", "Q", ["G1", "G2", "G4", "OTHER"], seed=2)
    ref = ExpressionReference.from_sections([full, partial], genes)
    assert ref.sections == ("S1", "S2") and ref.patients == ("P", "Q") and ref.n_spots == 60 and len(ref) == 2
    expected = expression_matrix(full, genes)
    np.testing.assert_allclose(ref.z[0], (expected - expected.mean(0)) / expected.std(0), atol=1e-5)
    np.testing.assert_allclose(ref.z[1][:, 2], 0.0)  # G3: not measured there, so it says nothing
    np.testing.assert_allclose(ref.z[1][:, [0, 1, 3]].mean(0), 0.0, atol=1e-9)
    assert ref.describe() == {"sections": ["S1", "S2"], "patients": ["P", "Q"], "n_spots": 60}


def test_a_held_out_section_or_patient_leaves_the_reference():
    genes = ["G1", "G2"]
    ref = ExpressionReference.from_sections([_counts(f"S{i}", p, genes, seed=i) for i, p in enumerate("PPQ")], genes)
    assert ref.without(["S0"]).sections == ("S1", "S2")
    assert ref.without(["P"]).sections == ("S2",)
    assert ref.without([]).sections == ref.sections and ref.without(["nobody"]).n_spots == 90


def test_sections_that_cannot_inform_the_axes_are_refused_by_name():
    genes = ["G1", "G2", "G3", "G4"]
    with pytest.raises(InputError, match=r"reference section S1.*no counts"):
        ExpressionReference.from_sections([_counts("S1", "P", genes)[:, []]], genes)
    with pytest.raises(InputError, match=r"reference section S1.*5 spots"):
        ExpressionReference.from_sections([_counts("S1", "P", genes, n=5)], genes)
    with pytest.raises(InputError, match=r"reference section S1.*measures 1 of the model's 4 genes"):
        ExpressionReference.from_sections([_counts("S1", "P", ["G1", "X", "Y"])], genes)


@pytest.mark.parametrize(("head", "programs", "message"), [("ridge", None, "the ridge head has none"),
                                                           ("ridge-ensemble", 0, "programs 0 turns off")])
def test_only_a_head_with_programs_takes_a_reference(head, programs, message):
    with pytest.raises(InputError, match=message):
        check_reference_head(head, programs)
    check_reference_head("ridge-ensemble", None)  # its default has programs
