"""The second-order Taylor map (``feature_map="taylor"``)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import naive_taylor_features
from sklearn.utils.estimator_checks import parametrize_with_checks

from favorkern import RandomFeatures, favor_attention, hybrid_attention
from favorkern.diagnostics import empirical_mse, theoretical_mse
from favorkern.feature_maps.taylor import taylor_log_abs_remainder, taylor_width


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 9),
    gamma=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_is_the_truncated_series(d, gamma, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(5, d))
    Y = rng.normal(size=(4, d))
    rf = RandomFeatures("taylor", n_components=taylor_width(d), gamma=gamma).fit(X)
    s = gamma * X @ Y.T
    expected = 1 + s + s**2 / 2
    np.testing.assert_allclose(rf.transform(X) @ rf.transform(Y).T, expected, rtol=1e-12,
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(rf.transform(X), naive_taylor_features(X, gamma), rtol=1e-12,
                               atol=1e-15)  # fmt: skip


def test_width_and_validation():
    assert taylor_width(16) == 153 and taylor_width(64) == 2145
    X = np.ones((2, 4))
    with pytest.raises(ValueError, match="n_components must be at least .* = 15"):
        RandomFeatures("taylor", n_components=14).fit(X).transform(X)
    Z = RandomFeatures("taylor", n_components=20).fit_transform(X)
    assert Z.shape == (2, 20) and not Z[:, 15:].any()  # beyond the width: zero


def test_float32_in_float32_out():
    X = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    Z = RandomFeatures("taylor", n_components=21).fit_transform(X)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z, naive_taylor_features(X.astype(np.float64), 1.0), rtol=1e-5)


def test_theoretical_mse_is_squared_truncation_error():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 30, 6))
    for gamma in (0.01, 0.3, 2.0):
        s = gamma * np.einsum("ij,ij->i", x, y)
        expected = np.array([_remainder(v) for v in s]) ** 2
        got = theoretical_mse(x, y, feature_map="taylor", n_components=28, gamma=gamma)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-300)
        mc = empirical_mse(x, y, feature_map="taylor", n_components=28, gamma=gamma)
        np.testing.assert_allclose(mc.mse, expected, rtol=1e-6, atol=1e-24)
        assert np.all(mc.se == 0)
    # QMC projections do not matter for a deterministic map
    assert theoretical_mse(x[0], y[0], feature_map="taylor", n_components=28,
                           projection="sobol") >= 0  # fmt: skip


def _remainder(s):
    """``sum_{k >= 3} s^k / k!`` by an exactly rounded sum of its terms."""
    terms, term = [], s**3 / 6.0
    for k in range(4, 200):
        terms.append(term)
        term = term * s / k
    return math.fsum(terms)


def test_remainder_without_cancellation():
    s = np.array([-50.0, -1.0, -1e-4, 0.0, 1e-6, 0.5, 1.0, 40.0, 800.0])
    got = taylor_log_abs_remainder(s)
    assert got[3] == -np.inf
    np.testing.assert_allclose(np.exp(got[4]), 1e-18 / 6, rtol=1e-5)
    assert np.isclose(got[-1], 800.0)  # e^s dominates, no overflow
    for value, log in zip(s[[0, 1, 5, 6, 7]], got[[0, 1, 5, 6, 7]], strict=True):
        exact = abs(np.expm1(value) - value - value**2 / 2)
        assert np.isclose(np.exp(log), exact, rtol=1e-10)


def test_attention_bidirectional_causal_and_hybrid():
    rng = np.random.default_rng(2)
    Q, K, V = rng.normal(size=(3, 2, 10, 4)) * np.array([0.5, 0.5, 1.0])[:, None, None, None]
    n = taylor_width(4)
    gamma = 0.5
    logits = gamma * Q @ np.swapaxes(K, -1, -2)
    A = 1 + logits + logits**2 / 2
    expected = A @ V / A.sum(-1, keepdims=True)
    out = favor_attention(Q, K, V, feature_map="taylor", n_components=n, gamma=gamma)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    Ac = np.tril(A)
    expected_causal = Ac @ V / Ac.sum(-1, keepdims=True)
    causal = favor_attention(Q, K, V, feature_map="taylor", n_components=n, gamma=gamma,
                             causal=True)  # fmt: skip
    np.testing.assert_allclose(causal, expected_causal, rtol=1e-9, atol=1e-12)
    # hybrid: exact exp(gamma q.k) inside the window, the Taylor weights outside
    L = Q.shape[-2]
    i, j = np.arange(L)[:, None], np.arange(L)[None]
    for is_causal, near, allowed in (
        (False, abs(i - j) < 3, np.ones((L, L), dtype=bool)),
        (True, (i - j >= 0) & (i - j < 3), j <= i),
    ):
        weights = np.where(near, np.exp(logits), A) * allowed
        hybrid = hybrid_attention(
            Q, K, V, window=3, feature_map="taylor", n_components=n, gamma=gamma,
            causal=is_causal,
        )  # fmt: skip
        np.testing.assert_allclose(
            hybrid, weights @ V / weights.sum(-1, keepdims=True), rtol=1e-10, atol=1e-12
        )


def test_dask_transform_matches():
    da = pytest.importorskip("dask.array")
    from favorkern.dask import transform

    X = np.random.default_rng(3).normal(size=(40, 3))
    rf = RandomFeatures("taylor", n_components=10).fit(X)
    got = transform(rf, da.from_array(X, chunks=(15, 3))).compute()
    np.testing.assert_allclose(got, rf.transform(X), rtol=1e-13)


def _expected_failures(estimator):
    # these checks set n_components = 1, below any Taylor width (which is refused)
    reason = "the check sets n_components=1, below the map's width 1 + d + d(d+1)/2"
    return dict.fromkeys(_SETS_WIDTH_ONE, reason)


_SETS_WIDTH_ONE = (
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
)


@parametrize_with_checks(
    [RandomFeatures("taylor", n_components=256)], expected_failed_checks=_expected_failures
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_dask_attention_matches_in_memory():
    da = pytest.importorskip("dask.array")
    from favorkern.dask import favor_attention as dask_attention

    rng = np.random.default_rng(5)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 40, 4))
    blocks = [da.from_array(X, chunks=(2, 16, 4)) for X in (Q, K, V)]
    for causal in (False, True):
        got = dask_attention(*blocks, feature_map="taylor", n_components=15, causal=causal)
        expected = favor_attention(Q, K, V, feature_map="taylor", n_components=15, causal=causal)
        np.testing.assert_allclose(got.compute(), expected, rtol=1e-10, atol=1e-12)


def test_variance_study_rows_are_the_exact_error():
    from favorkern.diagnostics import variance_study

    study = variance_study(n_components=[160], feature_maps=["taylor"], projection="gaussian",
                           n_trials=20)  # fmt: skip
    np.testing.assert_allclose(study["empirical_mse"], study["theoretical_mse"], rtol=1e-6,
                               atol=1e-25)  # fmt: skip
    assert study["z"].isna().all() and (study["se"] == 0).all()
