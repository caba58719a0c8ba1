"""Estimators for sharp, anisotropic attention: SDERF/ADERF, whitening, hybrid, fitted maps."""

from __future__ import annotations

import math
from pathlib import Path

import naive
import numpy as np
import pytest
from scipy.optimize import approx_fprime

from favorkern import draw_projection, favor_attention, hybrid_attention, softmax_attention
from favorkern.attention.plan import plan_attention, resolve_projection, run_plan
from favorkern.diagnostics import empirical_mse
from favorkern.feature_maps import (
    FittedFeatureMap,
    apply_feature_map,
    feature_map_names,
    get_feature_map,
)
from favorkern.feature_maps.derf import balancing_transform, derf_log_second_moment
from favorkern.feature_maps.fitted import distillation_loss
from favorkern.feature_maps.optimal import optimal_positive_spec
from favorkern.feature_maps.whitened import whitening_transform

UNBIASED = ("sderf", "aderf", "whitened")
SMALL = Path(__file__).parent / "data" / "smollm2_qkv_small.npz"


def anisotropic_pairs(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(0.9, 0.1, d)
    y = rng.normal(size=(n, d)) * np.linspace(0.1, 0.7, d)
    return x, y


def test_registered():
    names = feature_map_names()
    for name in UNBIASED + ("fitted",):
        assert name in names
        assert get_feature_map(name).data_constants


@pytest.mark.parametrize("name", UNBIASED)
@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
def test_unbiased_by_monte_carlo_per_pair_fit(name, projection):
    # Small norms: e^{4|z|^2}/m is moderate, so the MC standard errors are trustworthy.
    x, y = anisotropic_pairs(6, 4, 1)
    mc = empirical_mse(x, y, feature_map=name, n_components=8, n_trials=4000,
                       projection=projection, random_state=0)  # fmt: skip
    z = (mc.mean - mc.kernel) / mc.mean_se
    assert np.all(np.abs(z) < 4.5), z


def _mc_estimates(fmap, constants, x, y, gamma, m, n_trials, seed):
    """Per-trial estimates of phi(x).phi(y) with one set of constants, iid Gaussian rows."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_trials * m, x.shape[1]))
    spec = fmap.spec(W, n_components=n_trials * m, input_scale=math.sqrt(gamma),
                     constants=constants)  # fmt: skip
    px = apply_feature_map(fmap.prepare(x, "query", constants), spec)
    py = apply_feature_map(fmap.prepare(y, "key", constants), spec)
    # The stacked spec normalizes by n_trials * m; one trial's estimate is n_trials x that.
    prod = (px * py).reshape(x.shape[0], n_trials, m).sum(axis=2) * n_trials
    return prod


@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_with_constants_fitted_on_a_set(name):
    X, Y = anisotropic_pairs(200, 5, 2)
    fmap = get_feature_map(name)
    gamma = 0.5
    constants = fmap.fit(X, Y * 0.5, input_scale=math.sqrt(gamma))
    x, y = X[:5], Y[:5] * 0.5
    est = _mc_estimates(fmap, constants, x, y, gamma, m=4, n_trials=20000, seed=3)
    kernel = np.exp(gamma * np.sum(x * y, axis=1))
    z = (est.mean(axis=1) - kernel) / (est.std(axis=1, ddof=1) / np.sqrt(est.shape[1]))
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.parametrize("name", ["sderf", "aderf"])
def test_closed_form_second_moment_matches_monte_carlo(name):
    X, Y = anisotropic_pairs(100, 4, 4)
    fmap = get_feature_map(name)
    gamma = 0.5
    constants = fmap.fit(X, Y, input_scale=math.sqrt(gamma))
    x, y = X[:4], Y[:4]
    m, n_trials = 2, 40000
    est = _mc_estimates(fmap, constants, x, y, gamma, m, n_trials, seed=5)
    kernel = np.exp(gamma * np.sum(x * y, axis=1))
    var1 = np.exp(derf_log_second_moment(x, y, constants, math.sqrt(gamma), name)) - kernel**2
    sq = (est - kernel[:, None]) ** 2
    z = (sq.mean(axis=1) - var1 / m) / (sq.std(axis=1, ddof=1) / np.sqrt(n_trials))
    assert np.all(np.abs(z) < 4.5), z


def test_derf_reduces_to_gerf_for_isotropic_a():
    # :ref:`theory-favor-sharp`: A = a I, B = sqrt(1 - 4a) I is the GERF of
    # :ref:`theory-favor-plus-plus`.
    W = draw_projection(16, 3, random_state=0)
    a = -0.2
    constants = {"rotation": np.eye(3), "A": np.full(3, a)}
    derf = get_feature_map("sderf").spec(W, n_components=16, input_scale=0.7, constants=constants)
    gerf = optimal_positive_spec(W, 0.7, a)
    X = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(apply_feature_map(X, derf), apply_feature_map(X, gerf), rtol=1e-12)


def test_sderf_at_zero_is_positive():
    W = draw_projection(16, 3, random_state=1)
    X = np.random.default_rng(1).normal(size=(5, 3))
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))[0]
    sderf = get_feature_map("sderf").spec(
        W, n_components=16, input_scale=0.5, constants={"rotation": rotation, "A": np.zeros(3)}
    )
    positive = get_feature_map("positive").spec(W, n_components=16, input_scale=0.5)
    # A = 0: the rotation acts on the projection only, i.e. another projection.
    np.testing.assert_allclose(
        apply_feature_map(X, sderf),
        apply_feature_map(X @ rotation.T, positive),
        rtol=1e-12,
    )


@pytest.mark.parametrize("name", ["aderf", "whitened"])
def test_prepare_keeps_logits(name):
    X, Y = anisotropic_pairs(50, 6, 6)
    fmap = get_feature_map(name)
    c = fmap.fit(X, 3.0 * Y, input_scale=0.5)
    np.testing.assert_allclose(
        fmap.prepare(X, "query", c) @ fmap.prepare(3.0 * Y, "key", c).T, X @ (3.0 * Y).T,
        rtol=1e-8, atol=1e-10,
    )  # fmt: skip


def test_balancing_transform_equalizes_second_moments():
    X, Y = anisotropic_pairs(300, 4, 7)
    T, Tk = balancing_transform(X, 5 * Y, ridge=0.0)
    Mx = T @ (X.T @ X / 300) @ T.T
    My = Tk @ (25 * Y.T @ Y / 300) @ Tk.T
    np.testing.assert_allclose(Mx, My, atol=1e-9)
    np.testing.assert_allclose(Mx, np.diag(np.diag(Mx)), atol=1e-9)


def test_whitening_whitens_the_chosen_side():
    X, Y = anisotropic_pairs(400, 4, 8)
    for side, Z in (("query", X), ("key", Y)):
        Tq, Tk = whitening_transform(X, Y, side=side, ridge=0.0)
        white = Z @ (Tq if side == "query" else Tk).T
        C = np.cov(white.T, bias=True)
        np.testing.assert_allclose(C / C[0, 0], np.eye(4), atol=1e-9)


def _log_second_moment_positive(x, y, gamma):
    x, y = math.sqrt(gamma) * x, math.sqrt(gamma) * y
    return np.sum(2 * (x + y) ** 2 - x**2 - y**2, axis=1)


def test_aderf_and_sderf_lower_the_pair_averaged_log_second_moment():
    X, Y = anisotropic_pairs(60, 5, 9)
    Y = 4 * Y
    gamma = 0.5
    pairs = np.array([(i, j) for i in range(60) for j in range(60)])
    x, y = X[pairs[:, 0]], Y[pairs[:, 1]]
    positive = _log_second_moment_positive(x, y, gamma).mean()
    results = {}
    for name in ("sderf", "aderf"):
        c = get_feature_map(name).fit(X, Y, input_scale=math.sqrt(gamma))
        results[name] = derf_log_second_moment(x, y, c, math.sqrt(gamma), name).mean()
    assert results["sderf"] < positive
    assert results["aderf"] < results["sderf"]


def test_one_input_set_is_symmetric():
    X, _ = anisotropic_pairs(50, 4, 10)
    a = get_feature_map("aderf").fit(X, input_scale=0.5)
    s = get_feature_map("sderf").fit(X, input_scale=0.5)
    np.testing.assert_array_equal(a["query_transform"], np.eye(4))
    np.testing.assert_allclose(a["A"], s["A"])
    w = get_feature_map("whitened").fit(X, input_scale=0.5)
    np.testing.assert_array_equal(w["key_transform"], np.eye(4))


def test_derf_maps_run_in_attention_with_frozen_constants_float32():
    rng = np.random.default_rng(11)
    Q, K = (rng.normal(size=(2, 40, 8)) * np.linspace(1.5, 0.2, 8)).astype(np.float32)
    V = rng.normal(size=(40, 4)).astype(np.float32)
    gamma = 1 / math.sqrt(8)
    exact = softmax_attention(Q, K, V, causal=True)
    for name in UNBIASED:
        fmap = get_feature_map(name)
        c = fmap.fit(Q.astype(np.float64), K.astype(np.float64), input_scale=math.sqrt(gamma))
        proj = resolve_projection(fmap, None, 2048, 8, "orthogonal", 0)
        plan = plan_attention(fmap, 8, gamma=gamma, causal=True, constants=c, drawn=proj)
        out = run_plan(plan, Q, K, V, None, ())
        assert out.dtype == np.float32
        assert np.median(np.linalg.norm(out - exact, axis=1) / np.linalg.norm(exact, axis=1)) < 0.2
        bidirectional = favor_attention(Q, K, V, feature_map=name, n_components=64, random_state=0)
        assert bidirectional.dtype == np.float32 and np.all(np.isfinite(bidirectional))


# -- hybrid attention ---------------------------------------------------------------


def _hybrid_case(seed, L=300, d=8, dv=5, scale=0.7):
    rng = np.random.default_rng(seed)
    Q, K = rng.normal(size=(2, L, d)) * scale
    V = rng.normal(size=(L, dv))
    return Q, K, V


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,n_global", [(0, 0), (1, 0), (5, 0), (40, 3), (0, 2), (129, 1),
                                             (300, 0), (7, 400)])  # fmt: skip
def test_hybrid_matches_naive_oracle(causal, window, n_global):
    Q, K, V = _hybrid_case(0)
    W = draw_projection(32, 8, random_state=0)
    gamma = 1 / math.sqrt(8)
    phi_q = naive.favor_features(Q, W, "positive", gamma)
    phi_k = naive.favor_features(K, W, "positive", gamma)
    ref = naive.hybrid_attention(Q, K, V, phi_q, phi_k, window=window, n_global=n_global,
                                 causal=causal, gamma=gamma)  # fmt: skip
    out = hybrid_attention(Q, K, V, window=window, n_global=n_global, causal=causal,
                           projection_matrix=W)  # fmt: skip
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_hybrid_with_a_data_map_matches_oracle(causal):
    Q, K, V = _hybrid_case(1, L=200)
    K = K * np.linspace(2.0, 0.3, 8)
    gamma = 0.4
    W = draw_projection(16, 8, random_state=1)
    c, phi_q, phi_k = naive.fitted_map_features("aderf", Q, K, W, gamma)
    ref = naive.hybrid_attention(Q, K, V, phi_q, phi_k, window=10, n_global=1, causal=causal,
                                 gamma=gamma)  # fmt: skip
    out = hybrid_attention(Q, K, V, window=10, n_global=1, causal=causal, gamma=gamma,
                           feature_map="aderf", projection_matrix=W, constants=c)  # fmt: skip
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)


def test_hybrid_limits_and_dtype():
    Q, K, V = (X.astype(np.float32) for X in _hybrid_case(2, L=150))
    exact = softmax_attention(Q, K, V, causal=True)
    full = hybrid_attention(Q, K, V, window=150, causal=True, random_state=0)
    assert full.dtype == np.float32
    np.testing.assert_allclose(full, exact, rtol=1e-4, atol=1e-5)
    W = draw_projection(64, 8, random_state=0)
    for causal in (False, True):
        pure = hybrid_attention(Q, K, V, window=0, causal=causal, projection_matrix=W)
        favor = favor_attention(Q, K, V, causal=causal, projection_matrix=W)
        np.testing.assert_allclose(pure, favor, rtol=2e-4, atol=1e-5)


def test_hybrid_batched_heads_match_single_heads():
    rng = np.random.default_rng(3)
    Q, K = rng.normal(size=(2, 2, 3, 70, 8))
    V = rng.normal(size=(2, 3, 70, 4))
    out = hybrid_attention(Q, K, V, window=9, n_global=1, causal=True, n_components=32,
                           random_state=0)  # fmt: skip
    W = draw_projection(32, 8, random_state=0)
    for b in range(2):
        for h in range(3):
            single = hybrid_attention(Q[b, h], K[b, h], V[b, h], window=9, n_global=1,
                                      causal=True, projection_matrix=W)  # fmt: skip
            np.testing.assert_allclose(out[b, h], single, rtol=1e-12)


def test_hybrid_causal_outputs_ignore_later_tokens():
    Q, K, V = _hybrid_case(4, L=400, scale=1.5)
    kwargs = dict(window=17, n_global=2, causal=True, n_components=32, random_state=0)
    out = hybrid_attention(Q, K, V, **kwargs)
    Q2, K2, V2 = Q.copy(), K.copy(), V.copy()
    K2[250:] *= 30.0  # huge later keys would change any shared stabilizer
    Q2[250:] += 1.0
    V2[250:] = -V2[250:]
    out2 = hybrid_attention(Q2, K2, V2, **kwargs)
    np.testing.assert_array_equal(out[:250], out2[:250])


def test_hybrid_large_norms_stay_finite():
    Q, K, V = _hybrid_case(5, L=120, d=8, scale=12.0)
    for causal in (False, True):
        out = hybrid_attention(Q, K, V, window=8, causal=causal, n_components=16,
                               random_state=0)  # fmt: skip
        assert np.all(np.isfinite(out))


def test_hybrid_beats_favor_on_a_local_head():
    # A head whose logits favour nearby keys: the window takes the sharp part exactly.
    rng = np.random.default_rng(6)
    L, d = 256, 16
    base = np.cumsum(rng.normal(size=(L, d)) * 0.5, axis=0) / 3
    Q, K = base + 0.1 * rng.normal(size=(L, d)), base + 0.1 * rng.normal(size=(L, d))
    V = rng.normal(size=(L, 8))
    exact = softmax_attention(Q, K, V, causal=True)
    err = lambda A: np.median(np.linalg.norm(A - exact, axis=1) / np.linalg.norm(exact, axis=1))  # noqa: E731
    hybrid = hybrid_attention(Q, K, V, window=16, causal=True, n_components=64, random_state=0)
    favor = favor_attention(Q, K, V, causal=True, n_components=64, random_state=0)
    assert err(hybrid) < 0.5 * err(favor)


def test_hybrid_bad_input():
    Q, K, V = _hybrid_case(7, L=20)
    with pytest.raises(ValueError, match="window"):
        hybrid_attention(Q, K, V, window=-1)
    with pytest.raises(TypeError, match="n_global"):
        hybrid_attention(Q, K, V, n_global=1.5)
    with pytest.raises(ValueError, match="same length"):
        hybrid_attention(Q[:10], K, V, window=3)
    with pytest.raises(ValueError, match="causal=False"):
        hybrid_attention(Q, K, V, feature_map="aderf", causal=True)
    with pytest.raises(ValueError, match="feature_map"):
        hybrid_attention(Q, K, V, feature_map="nope")


# -- fitted map -----------------------------------------------------------------------


def test_distillation_gradient_matches_finite_differences():
    rng = np.random.default_rng(8)
    L, d, m = 20, 4, 8
    Q, K = rng.normal(size=(2, L, d))
    W = draw_projection(m, d, random_state=0)
    rows = np.arange(0, L, 2)
    mask = np.arange(L)[None, :] <= rows[:, None]
    logits = np.where(mask, Q[rows] @ K.T, -np.inf)
    target = np.exp(logits - logits.max(axis=1, keepdims=True))
    target /= target.sum(axis=1, keepdims=True)
    theta = np.concatenate([np.eye(d).ravel()] * 2) + 0.1 * rng.normal(size=2 * d * d)
    args = (Q, K, W, target, mask, rows, 0.01)
    numeric = approx_fprime(theta, lambda t: distillation_loss(t, *args)[0], 1e-6)
    np.testing.assert_allclose(distillation_loss(theta, *args)[1], numeric, atol=1e-5)


def test_fitted_map_lowers_held_out_error_on_real_heads_and_is_deterministic():
    with np.load(SMALL) as data:
        q, k, v, gamma = data["q"], data["k"], data["v"], float(data["scaling"])
    fmap = FittedFeatureMap(n_components=32, max_iter=30, random_state=0)
    # text 0 calibration, text 1 evaluation; layer 0, query head 0 (kv head 0)
    qc, kc = q[0, 0, 0].astype(np.float64), k[0, 0, 0].astype(np.float64)
    c = fmap.fit(qc, kc, input_scale=math.sqrt(gamma))
    assert c["loss"] < c["initial_loss"]
    again = fmap.fit(qc, kc, input_scale=math.sqrt(gamma))
    np.testing.assert_array_equal(c["query_transform"], again["query_transform"])
    qe, ke, ve = (X[1, 0, 0].astype(np.float64) for X in (q, k, v))
    exact = softmax_attention(qe, ke, ve, causal=True, gamma=gamma)
    proj = resolve_projection(fmap, None, 32, qe.shape[1], "orthogonal", 0)

    def err(constants):
        plan = plan_attention(
            fmap, qe.shape[1], gamma=gamma, causal=True, constants=constants, drawn=proj
        )
        out = run_plan(plan, qe, ke, ve, None, ())
        return np.median(np.linalg.norm(out - exact, axis=1) / np.linalg.norm(exact, axis=1))

    identity = dict(c, query_transform=np.eye(64), key_transform=np.eye(64))
    assert err(c) < err(identity)


def test_fitted_map_rejects_another_width():
    fmap = FittedFeatureMap(n_components=8, max_iter=2)
    X = np.random.default_rng(0).normal(size=(10, 3))
    c = fmap.fit(X, X + 0.1)
    with pytest.raises(ValueError, match="n_components=8"):
        fmap.spec(draw_projection(16, 3, random_state=0), n_components=16, input_scale=1.0,
                  constants=c)  # fmt: skip
