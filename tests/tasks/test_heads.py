"""Regression heads: they learn a known linear signal, choose alpha by grouped CV, and round-trip their state."""

from __future__ import annotations

import numpy as np
import pytest

from spafoundation.eval.metrics import pearson_per_gene
from spafoundation.tasks.heads import (
    HEADS,
    MeanHead,
    RidgeEnsembleHead,
    RidgeHead,
    build_head,
    chosen_params,
    ensemble_members,
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
    head = RidgeEnsembleHead(members=[None, [1]]).fit(X[:180], Y[:180], groups[:180], blocks)
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
