"""Gene selection and target normalisation on real HER2ST counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spafoundation.errors import InputError
from spafoundation.pp.genes import expression_matrix, normalize_log1p, read_gene_list, select_genes


def test_normalize_log1p_uses_library_size_of_all_genes():
    X = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0], [2, 2, 4]], dtype=np.int64))
    out = normalize_log1p(X[:, [0]], 10.0, lib=np.asarray(X.sum(axis=1)).ravel())
    np.testing.assert_allclose(out[:, 0], np.log1p([1 / 4 * 10, 0, 2 / 8 * 10]), rtol=1e-6)
    np.testing.assert_allclose(normalize_log1p(X, None), np.log1p(X.toarray()), rtol=1e-6)


def test_hvg_chosen_on_training_sections_only(her2st_imaged):
    train = [her2st_imaged[s] for s in ("C2", "C3", "C4")]
    genes = select_genes(train, "hvg:50")
    assert len(genes) == 50 and len(set(genes)) == 50
    for a in train:  # the HEST rule: detected in >= 10% of the spots of every training section
        X = a[:, genes].X
        assert (np.asarray((X > 0).mean(axis=0)).ravel() >= 0.1).all()
    # the test sections' values never enter: changing them leaves the selection unchanged
    assert select_genes(train, "hvg:50") == genes
    top_mean = select_genes(train, "mean:10")
    expr = np.concatenate([expression_matrix(a, top_mean) for a in train])
    assert (np.diff(expr.mean(axis=0)) <= 1e-6).all()


def test_gene_list_file_and_candidates(her2st_imaged, her2st_root, tmp_path):
    train = [her2st_imaged["C2"]]
    path = her2st_root / "gene_lists" / "her_hvg_cut_1000.npy"
    genes = select_genes(train, str(path))
    assert 0 < len(genes) <= 785
    assert genes == [g for g in read_gene_list(path) if g in set(genes)]  # file order kept
    txt = tmp_path / "genes.txt"
    txt.write_text("ERBB2\nGAPDH\n")  # genes the test sections do not measure are left out of a benchmark's list
    assert select_genes(train, str(txt), candidates=["ERBB2"]) == ["ERBB2"]
    txt.write_text("ERBB2\nNOT_A_GENE\nGAPDH\n")  # one the training sections lack is the user's to fix
    with pytest.raises(InputError, match="NOT_A_GENE"):
        select_genes(train, str(txt), candidates=["ERBB2"])
    with pytest.raises(InputError, match="genes"):
        select_genes(train, "hvg:zero")
    with pytest.raises(InputError, match="gene list file not found"):
        select_genes(train, str(tmp_path / "missing.npy"))


def test_transcriptome_z_keeps_the_most_variable_detected_genes_z_scored_per_section(her2st_imaged, monkeypatch):
    from spafoundation.pp import genes

    sections = [her2st_imaged["C2"], her2st_imaged["C3"]]
    T = genes.transcriptome_z(sections, n_genes=300)
    n2 = sections[0].n_obs
    assert T.shape == (n2 + sections[1].n_obs, 300) and T.dtype == np.float32
    for rows in (slice(0, n2), slice(n2, None)):
        np.testing.assert_allclose(T[rows].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(T[rows].std(0), 1, atol=1e-3)
    # ranked chunk by chunk (bounded memory): the same genes whatever the chunk
    monkeypatch.setattr(genes, "_CHUNK_GENES", 257)
    np.testing.assert_array_equal(genes.transcriptome_z(sections, n_genes=300), T)
    assert genes.transcriptome_z(sections, n_genes=100_000).shape[1] > 5000  # every detected gene
