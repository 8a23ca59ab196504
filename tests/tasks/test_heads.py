"""Regression heads: they learn a known linear signal, choose alpha by grouped CV, and round-trip their state."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from spafoundation.eval.metrics import pearson_per_gene
from spafoundation.tasks.heads import (
    HEADS,
    ExpressionPrograms,
    MeanHead,
    RidgeEnsembleHead,
    RidgeHead,
    build_head,
    chosen_params,
    ensemble_members,
    program_loadings,
    reduced_targets,
)


def _signal(n=240, d=20, g=6, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, g))
    Y = X @ W + noise * rng.normal(size=(n, g))
    groups = np.repeat(["a", "b", "c"], n // 3)
    return X.astype(np.float32), Y.astype(np.float32), groups


@pytest.mark.parametrize("kind", ["ridge", "ridge-ensemble", "mlp"])
def test_head_learns_and_round_trips(kind):
    X, Y, groups = _signal()
    params = {"max_epochs": 60, "patience": 10} if kind == "mlp" else {}
    head = HEADS[kind](**params).fit(X[:180], Y[:180], groups[:180])
    r = pearson_per_gene(Y[180:], head.predict(X[180:]))
    assert np.nanmean(r) > 0.8
    again = HEADS[kind].from_state(head.state(), head.hp)
    np.testing.assert_allclose(again.predict(X[180:]), head.predict(X[180:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 9])
@pytest.mark.parametrize("kind", ["ridge", "ridge-ensemble", "mlp"])
def test_too_few_training_spots_are_a_clear_input_error(kind, n):
    from spafoundation.errors import InputError

    X, Y, groups = _signal()
    with pytest.raises(InputError, match=rf"{n} training spot\(s\) with features \(sections: {groups[0]}\): at least 10"):
        HEADS[kind]().fit(X[:n], Y[:n], groups[:n])
    HEADS[kind]().fit(X[:10], Y[:10], groups[:10])  # the fewest it fits on


def test_ridge_alpha_tracks_noise():
    clean = RidgeHead().fit(*_signal(noise=0.05)).alpha
    # few spots, many features, weak signal: cross-validation must pick stronger shrinkage
    noisy = RidgeHead().fit(*_signal(n=60, d=50, noise=20.0)).alpha
    assert clean < noisy


def test_blocks_weight_each_source_equally():
    rng = np.random.default_rng(4)
    wide, narrow = rng.normal(size=(90, 60)), rng.normal(size=(90, 3))
    X = np.hstack([wide, narrow])
    head = RidgeHead(n_pcs=5)
    scaler = RidgeHead(blocks=[60, 3])._block_scaler(X)
    Z = scaler.transform(X)
    assert Z[:, :60].var(axis=0).sum() == pytest.approx(Z[:, 60:].var(axis=0).sum(), rel=1e-6)
    with pytest.raises(ValueError, match="blocks"):
        head.fit(X, rng.normal(size=(90, 2)), np.repeat([0, 1, 2], 30), blocks=[10, 3])


def test_mean_head_is_constant():
    X, Y, groups = _signal()
    pred = MeanHead().fit(X, Y, groups).predict(X[:5])
    np.testing.assert_allclose(pred, np.broadcast_to(Y.mean(0), pred.shape), rtol=1e-6)


def test_ridge_ensemble_is_the_mean_of_its_members():
    X, Y, groups = _signal(d=20)
    blocks = [12, 8]
    head = RidgeEnsembleHead(members=[None, [1]], programs=0).fit(X[:180], Y[:180], groups[:180], blocks)
    every = RidgeHead().fit(X[:180], Y[:180], groups[:180], blocks)
    second = RidgeHead().fit(X[:180, 12:], Y[:180], groups[:180], [8])
    assert head.alpha == [every.alpha, second.alpha]
    np.testing.assert_allclose(head.predict(X[180:]), (every.predict(X[180:]) + second.predict(X[180:, 12:])) / 2,
                               rtol=1e-5, atol=1e-5)
    assert len(head.cv_scores) == 1 and -1 <= head.cv_scores[0] <= 1
    again = RidgeEnsembleHead.from_state(head.state(), head.hp)
    np.testing.assert_allclose(again.predict(X[180:]), head.predict(X[180:]), rtol=1e-6, atol=1e-6)
    # refitted on other rows with the alphas it chose (per-gene cross-validated r)
    refit = RidgeEnsembleHead(**chosen_params(head)).fit(X[:120], Y[:120], groups[:120], blocks)
    assert [p.alphas for p in refit.parts] == [(a,) for a in head.alpha]
    with pytest.raises(ValueError, match="not a set of the 2 feature blocks"):
        RidgeEnsembleHead(members=[[2]]).fit(X, Y, groups, blocks)


def test_default_ensemble_adds_the_spot_colour_texture_and_nuclei_blocks():
    labels = ["encoder", "encoder@x2", "colour_texture", "colour_texture@x2"]
    assert ensemble_members(labels) == [None, [2]]
    assert ensemble_members([*labels, "nuclei"]) == [None, [2, 4]]
    assert ensemble_members(["encoder"]) == [None]  # nothing to add: one ridge
    assert ensemble_members(["colour_texture", "nuclei"]) == [None]
    recipe = {"source": "encoder+colour_texture+nuclei", "context": 2.0, "neighbours_um": 300.0}
    # nuclei at the spot's field of view only: blocks encoder, encoder@x2, colour_texture, colour_texture@x2, nuclei
    assert build_head("ridge-ensemble", None, recipe).members == [None, [2, 4]]
    assert build_head("ridge-ensemble", {"members": [[0]]}, recipe).members == [[0]]
    assert isinstance(build_head("ridge", None, recipe), RidgeHead)


def _programs_signal(n=150, genes=40, seed=0):
    """Three sections of spots whose genes all follow two latent programs (each gene its own loadings) that the
    features see through noise, plus much gene-specific noise: the setting where pooling genes pays."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3 * n, 30))
    latent = X[:, :2] @ rng.normal(size=(2, 2))
    Y = latent @ rng.normal(size=(2, genes)) + 3.0 * rng.normal(size=(3 * n, genes))
    return X.astype(np.float32), Y.astype(np.float32), np.repeat(["a", "b", "c"], n)


def test_programs_pool_the_genes_shared_axes():
    X, Y, groups = _programs_signal()
    train, test = groups != "c", groups == "c"
    alone = RidgeEnsembleHead(programs=0).fit(X[train], Y[train], groups[train])
    pooled = RidgeEnsembleHead(programs=2).fit(X[train], Y[train], groups[train])
    r_alone = np.nanmean(pearson_per_gene(Y[test], alone.predict(X[test])))
    r_pooled = np.nanmean(pearson_per_gene(Y[test], pooled.predict(X[test])))
    assert r_pooled > r_alone + 0.02
    # the programs' part: the leading axes of the section-standardised targets, predicted by a ridge on the features
    programs = ExpressionPrograms(2).fit(X[train], Y[train], groups[train])
    np.testing.assert_allclose(np.abs(programs.loadings), np.abs(pooled.programs_part.loadings), atol=1e-6)
    members = RidgeHead().fit(X[train], Y[train], groups[train])
    scale = members.predict(X[train]).std(0) / programs.predict(X[train]).std(0)
    np.testing.assert_allclose(pooled.predict(X[test]), members.predict(X[test]) + scale * programs.predict(X[test]),
                               rtol=1e-4, atol=1e-4)


def test_programs_round_trip_and_refit_at_the_alphas_chosen():
    X, Y, groups = _programs_signal(genes=12)
    head = RidgeEnsembleHead().fit(X, Y, groups)
    assert head.programs == 2 and head.programs_part.loadings.shape == (2, 12)
    assert head.programs_alpha is None and head.programs_chosen_alpha in head.alphas  # chosen, not fixed
    again = RidgeEnsembleHead.from_state(head.state(), head.hp)
    np.testing.assert_allclose(again.predict(X), head.predict(X), rtol=1e-6, atol=1e-6)
    refit = RidgeEnsembleHead(**chosen_params(head))
    assert refit.programs_alpha == head.programs_chosen_alpha and refit.programs == 2


def test_shared_transforms_change_no_prediction_and_a_refit_chooses_nothing(monkeypatch):
    """An ensemble fit shares the scaling + PCA of identical training rows between its members' folds, its programs
    and its own score: its predictions are those of fitting every transform afresh, with far fewer PCA fits. A
    refit at the settings it chose cross-validates nothing."""
    from sklearn.decomposition import PCA

    from spafoundation.tasks import heads

    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 300)).astype(np.float32)  # wider than N_PCS: every fit of every block runs a PCA
    Y = X[:, :8] @ rng.normal(size=(8, 10)) + rng.normal(size=(150, 10))
    groups = np.repeat(["a", "b", "c"], 50)
    calls = []
    fit = PCA.fit
    monkeypatch.setattr(PCA, "fit", lambda self, Z, y=None: calls.append(len(Z)) or fit(self, Z))
    kwargs = {"blocks": [150, 150], "members": [None, [1]]}
    shared = RidgeEnsembleHead(**kwargs).fit(X, Y, groups)
    n_shared = len(calls)
    refit = RidgeEnsembleHead(**chosen_params(shared)).fit(X, Y, groups)
    assert refit.cv_scores is None and len(calls) - n_shared == 2  # each member once (the programs share the first's)
    np.testing.assert_allclose(refit.predict(X), shared.predict(X), rtol=1e-5, atol=1e-5)
    del calls[n_shared:]

    @contextlib.contextmanager
    def nothing_shared():
        yield

    monkeypatch.setattr(heads, "shared_transforms", nothing_shared)
    afresh = RidgeEnsembleHead(**kwargs).fit(X, Y, groups)
    # the same arithmetic; only BLAS's rounding on differently laid out copies of the rows tells them apart
    assert shared.alpha == afresh.alpha
    np.testing.assert_allclose(shared.cv_scores, afresh.cv_scores, rtol=1e-6)
    np.testing.assert_allclose(shared.predict(X), afresh.predict(X), rtol=1e-6, atol=1e-6)
    # a member's 3 folds and its fit on every row, for each of the 2 members: 8; afresh also the programs' 4 (on
    # the first member's rows) and the ensemble score's 3 folds x (2 members + programs)
    assert n_shared == 8 and len(calls) - n_shared == 8 + 4 + 9


def test_a_head_saved_before_programs_loads_without_them():
    X, Y, groups = _programs_signal(genes=12)
    old = RidgeEnsembleHead(programs=0).fit(X, Y, groups)
    hp = {k: v for k, v in old.hp.items() if not k.startswith("programs")}  # as such a model's config.json has it
    again = RidgeEnsembleHead.from_state(old.state(), hp)
    assert again.programs == 0 and again.programs_part is None
    np.testing.assert_allclose(again.predict(X), old.predict(X), rtol=1e-6, atol=1e-6)


def test_programs_need_two_genes_and_a_weight():
    X, Y, groups = _programs_signal(genes=3)
    assert RidgeEnsembleHead().fit(X, Y[:, :1], groups).programs_part is None
    assert RidgeEnsembleHead().fit(X, Y[:, :2], groups).programs_part.loadings.shape == (1, 2)
    assert RidgeEnsembleHead(programs_weight=0).fit(X, Y, groups).programs_part is None
    with pytest.raises(ValueError, match="must be >= 0"):
        RidgeEnsembleHead(programs=-1)


@pytest.mark.parametrize("kind", ["ridge", "ridge-ensemble"])
def test_one_gene_is_a_column(kind):
    """A model of one gene (``--genes ERBB2``): scikit-learn's ridge returns a vector there; heads keep (spots, 1)."""
    X, Y, groups = _signal(g=1)
    head = HEADS[kind]().fit(X, Y, groups)
    assert head.predict(X[:7]).shape == (7, 1)
    assert HEADS[kind].from_state(head.state(), head.hp).predict(X[:7]).shape == (7, 1)


def test_reference_sections_sharpen_the_programs_axes():
    """One small, noisy training section finds its genes' shared axis poorly; sections with counts alone (no
    features) that share the axis find it, and the programs' ridge still learns only from the training spots."""
    rng = np.random.default_rng(3)
    genes = 40
    axis = rng.normal(size=genes)
    axis /= np.linalg.norm(axis)

    def section(n):
        return np.outer(rng.normal(size=n), axis) * 2.0 + 1.5 * rng.normal(size=(n, genes))

    X = rng.normal(size=(40, 10)).astype(np.float32)
    Y, groups = section(40), np.repeat("a", 40)
    reference = [section(300) for _ in range(5)]
    own = ExpressionPrograms(1, alphas=(10.0,)).fit(X, Y, groups)
    shared = ExpressionPrograms(1, alphas=(10.0,)).fit(X, Y, groups, reference=reference)
    assert abs(shared.loadings[0] @ axis) > 0.98 > abs(own.loadings[0] @ axis) + 0.03
    # every section weighs the same: twice the spots of one reference section do not double its say
    heavy = ExpressionPrograms(1, alphas=(10.0,)).fit(X, Y, groups, reference=[np.vstack([r, r]) for r in reference])
    np.testing.assert_allclose(np.abs(heavy.loadings), np.abs(shared.loadings), atol=1e-8)
    # through the ensemble head, in its fit and its inner cross-validation
    head = RidgeEnsembleHead(programs=1).fit(np.tile(X, (3, 1)), np.vstack([Y, section(40), section(40)]),
                                             np.repeat(["a", "b", "c"], 40), reference=reference)
    assert abs(head.programs_part.loadings[0] @ axis) > 0.98 and head.cv_scores


def test_reference_axes_reduce_the_members_targets_to_the_shared_axes():
    """Genes that vary along two shared axes plus gene-specific noise: reduced to the leading axes of the training
    and reference sections, the targets lie closer to the shared signal, keep each section's mean, and the members
    fitted on them predict held-out spots better. Without a reference the targets are left as they are."""
    rng = np.random.default_rng(5)
    genes, d = 60, 12
    axes = np.linalg.qr(rng.normal(size=(genes, 2)))[0].T
    W = rng.normal(size=(d, 2))

    def section(n, offset):
        X = rng.normal(size=(n, d))
        signal = (X @ W) @ axes * 3.0 + offset
        return X.astype(np.float32), signal, signal + 2.0 * rng.normal(size=(n, genes))

    (X, S, Y), groups = section(60, 1.0), np.repeat("a", 60)
    reference = [(r - r.mean(0)) / r.std(0) for r in (section(300, 0.0)[2] for _ in range(5))]
    reduced = reduced_targets(Y, groups, 2, reference)
    np.testing.assert_allclose(reduced.mean(0), Y.mean(0), atol=1e-9)
    assert np.mean(pearson_per_gene(S, reduced)) > np.mean(pearson_per_gene(S, Y)) + 0.1
    assert reduced_targets(Y, groups, genes, reference) is Y and reduced_targets(Y, groups, 0, reference) is Y
    Xt, St, _ = section(200, 1.0)
    fits = {k: RidgeEnsembleHead(programs=0, alphas=(10.0,), reference_axes=k).fit(X, Y, groups,
                                                                                  reference=reference)
            for k in (0, 2)}
    r = {k: np.mean(pearson_per_gene(St, head.predict(Xt))) for k, head in fits.items()}
    assert r[2] > r[0] + 0.05
    assert chosen_params(fits[2])["reference_axes"] == 2 and fits[2].hp["reference_axes"] == 2
    # the training sections' own axes are not used: without a reference the members learn the targets as they are
    np.testing.assert_array_equal(RidgeEnsembleHead(programs=0, alphas=(10.0,), reference_axes=2).fit(X, Y, groups)
                                  .predict(Xt), fits[0].predict(Xt))


def test_many_genes_and_spots_take_the_leading_axes_by_a_randomised_svd(monkeypatch):
    """Over a thousand genes and spots (a reference of many sections, a whole-transcriptome gene list), the axes come
    from a randomised SVD: those of the exact decomposition, to the sign (|cos| > 0.999)."""
    from sklearn.utils import extmath

    from spafoundation.tasks import heads

    calls = []
    randomized_svd = extmath.randomized_svd
    monkeypatch.setattr(extmath, "randomized_svd", lambda *a, **kw: calls.append(a[1]) or randomized_svd(*a, **kw))
    rng = np.random.default_rng(2)
    spots, genes = 1200, 1100
    axes = np.linalg.qr(rng.normal(size=(genes, 5)))[0].T
    Z = rng.normal(size=(spots, 5)) * np.array([6.0, 5, 4, 3, 2]) @ axes + rng.normal(size=(spots, genes))
    groups = np.repeat(["a", "b"], spots // 2)
    fast = program_loadings(Z, groups, 5)
    assert calls == [5]
    monkeypatch.setattr(heads, "EXACT_AXES_UP_TO", 10**9)
    exact = program_loadings(Z, groups, 5)
    assert calls == [5] and fast.shape == exact.shape == (5, genes)
    np.testing.assert_allclose(np.abs(np.sum(fast * exact, axis=1)), 1.0, atol=1e-3)


def test_factor_reduced_targets_recover_the_shared_signal_and_keep_each_section_s_units():
    from spafoundation.tasks.heads import factor_reduced_targets, section_z

    rng = np.random.default_rng(0)
    groups = np.repeat(["s1", "s2"], 150)
    factors = rng.normal(size=(300, 3))
    # many genes place each spot surely on the factors; z-scored within each section, as transcriptome_z gives them
    transcriptome = section_z(factors @ rng.normal(size=(3, 400)) + 0.5 * rng.normal(size=(300, 400)), groups)
    signal = factors @ rng.normal(size=(3, 12))
    Y = signal + 2.0 * rng.normal(size=(300, 12))  # few noisy target genes
    Y[groups == "s2"] = 5.0 + 3.0 * Y[groups == "s2"]
    reduced = factor_reduced_targets(Y, groups, transcriptome, 3)
    for g in ("s1", "s2"):
        rows = groups == g
        np.testing.assert_allclose(reduced[rows].mean(0), Y[rows].mean(0), atol=1e-9)
        before = pearson_per_gene(signal[rows], Y[rows]).mean()
        after = pearson_per_gene(signal[rows], reduced[rows]).mean()
        assert after > before + 0.2, (before, after)
    assert factor_reduced_targets(Y, groups, transcriptome, 0) is Y
    assert factor_reduced_targets(Y, groups, np.zeros((300, 0)), 3) is Y
    with pytest.raises(ValueError, match="transcriptome has 10 spots"):
        factor_reduced_targets(Y, groups, transcriptome[:10], 3)


def test_ridge_ensemble_reduces_targets_by_the_transcriptome_only_without_a_reference():
    from spafoundation.tasks.heads import wants_transcriptome

    rng = np.random.default_rng(1)
    X, groups = rng.normal(size=(120, 8)), np.repeat(["a", "b", "c"], 40)
    T = rng.normal(size=(120, 50))
    Y = X[:, :3] @ rng.normal(size=(3, 6)) + rng.normal(size=(120, 6))
    plain = RidgeEnsembleHead(n_pcs=4, programs=1).fit(X, Y, groups)
    reduced = RidgeEnsembleHead(n_pcs=4, programs=1).fit(X, Y, groups, transcriptome=T)
    off = RidgeEnsembleHead(n_pcs=4, programs=1, transcriptome_factors=0).fit(X, Y, groups, transcriptome=T)
    assert not np.allclose(plain.predict(X), reduced.predict(X))
    np.testing.assert_allclose(off.predict(X), plain.predict(X))
    assert reduced.hp["transcriptome_factors"] == 10 and chosen_params(reduced)["transcriptome_factors"] == 10
    assert wants_transcriptome(reduced) and not wants_transcriptome(off)
    assert not wants_transcriptome(reduced, [rng.normal(size=(30, 6))])  # a reference shapes the targets instead
    with pytest.raises(ValueError, match="transcriptome_factors"):
        RidgeEnsembleHead(transcriptome_factors=-1)
