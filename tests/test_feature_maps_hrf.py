"""Hybrid random features (``feature_map="hrf"`` and ``"hrf_gaussian"``)."""

import numpy as np
import pytest
from naive import naive_hrf_estimate

from favorkern import RandomFeatures, favor_attention, hybrid_attention, softmax_attention
from favorkern.diagnostics import empirical_mse, theoretical_mse
from favorkern.feature_maps import HybridFeatureMap, apply_feature_map, get_feature_map
from favorkern.feature_maps.hrf import hrf_layout, hrf_mse

MAPS = ["hrf", "hrf_gaussian"]


def _unit_pairs(d, angles):
    x = np.zeros((len(angles), d))
    y = np.zeros((len(angles), d))
    x[:, 0] = 1.0
    y[:, 0], y[:, 1] = np.cos(angles), np.sin(angles)
    return x, y


@pytest.mark.parametrize("name", MAPS)
def test_features_match_the_naive_estimator(name):
    fmap = get_feature_map(name)
    rng = np.random.default_rng(0)
    d, n_components, gamma = 5, 96, 0.7
    x, y = rng.normal(size=(2, 6, d)) * 0.5
    W = rng.normal(size=(fmap.n_projections(n_components), d))
    spec = fmap.spec(W, n_components=n_components, input_scale=np.sqrt(gamma))
    got = np.einsum(
        "ij,ij->i",
        apply_feature_map(fmap.prepare(x, "query"), spec),
        apply_feature_map(fmap.prepare(y, "key"), spec),
    )
    m, _, _ = hrf_layout(n_components, fmap.lambda_kind, fmap.n_lambda)
    expected = naive_hrf_estimate(x, y, W, m, fmap.n_lambda, gamma, fmap.lambda_kind, fmap.sigma)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("name", MAPS)
def test_unbiased_and_closed_form_by_monte_carlo(name):
    d = 8
    x, y = _unit_pairs(d, np.array([0.3, 1.2, 2.0, 2.9]))
    x, y = 0.8 * x, 0.8 * y
    mc = empirical_mse(x, y, feature_map=name, n_components=64, projection="gaussian",
                       n_trials=4000, random_state=0)  # fmt: skip
    assert np.all(np.abs(mc.mean - mc.kernel) < 4.5 * mc.mean_se)
    exact = theoretical_mse(x, y, feature_map=name, n_components=64, projection="gaussian")
    assert np.all(np.abs(mc.mse - exact) < 4.5 * mc.se)


def test_exact_at_the_extreme_angles():
    # angular weight: exactly 0 at theta = 0 (trigonometric, exact) and 1 at theta = pi
    x, y = _unit_pairs(6, np.array([0.0, np.pi]))
    y[1] = -x[1]
    mc = empirical_mse(x, y, feature_map="hrf", n_components=64, projection="gaussian",
                       n_trials=50, random_state=1)  # fmt: skip
    np.testing.assert_allclose(mc.mean, mc.kernel, rtol=1e-12)
    assert np.all(theoretical_mse(x, y, feature_map="hrf", n_components=64,
                                  projection="gaussian") == 0)  # fmt: skip


def test_worst_case_over_angles_below_positive_and_trigonometric():
    # |x| = |y| = 1, d = 16, equal output width 256: the largest relative MSE over
    # angles (closed forms) of HRF is below that of either base map
    d, width = 16, 256
    angles = np.linspace(0.0, np.pi, 181)
    x, y = _unit_pairs(d, angles)
    k2 = np.exp(2 * np.cos(angles))
    rel = {
        name: theoretical_mse(x, y, feature_map=name, n_components=width,
                              projection="gaussian") / k2  # fmt: skip
        for name in ("positive", "trigonometric", "hrf")
    }
    assert rel["hrf"].max() < min(rel["positive"].max(), rel["trigonometric"].max())


def test_attention_bidirectional_and_causal():
    rng = np.random.default_rng(3)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 24, 4))
    for causal in (False, True):
        exact = softmax_attention(Q, K, V, causal=causal)
        for name in MAPS:
            out = favor_attention(Q, K, V, feature_map=name, n_components=512, causal=causal,
                                  projection="gaussian", random_state=0)  # fmt: skip
            assert np.abs(out - exact).mean() < 0.05


def test_refused_where_features_must_be_symmetric():
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match="different features"):
        RandomFeatures("hrf", n_components=64).fit(X)


@pytest.mark.parametrize("causal", [False, True])
def test_hybrid_attention_without_exact_keys_is_favor_attention(causal):
    rng = np.random.default_rng(5)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 12, 4))
    kwargs = dict(feature_map="hrf", n_components=64, causal=causal, random_state=0)
    np.testing.assert_allclose(
        hybrid_attention(Q, K, V, window=0, **kwargs), favor_attention(Q, K, V, **kwargs),
        rtol=1e-9, atol=1e-12,
    )  # fmt: skip


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="lambda_kind"):
        HybridFeatureMap("cosine")
    with pytest.raises(ValueError, match="n_lambda"):
        HybridFeatureMap(n_lambda=0)
    with pytest.raises(ValueError, match="sigma"):
        HybridFeatureMap("gaussian", sigma=-1.0)
    with pytest.raises(ValueError, match="n_components must be at least"):
        theoretical_mse(np.ones(3), np.ones(3), feature_map="hrf", n_components=8,
                        projection="gaussian")  # fmt: skip


def test_closed_form_helper_matches_registry():
    x, y = _unit_pairs(4, np.array([0.5, 2.5]))
    np.testing.assert_allclose(
        hrf_mse(x, y, n_components=128),
        theoretical_mse(x, y, feature_map="hrf", n_components=128, projection="gaussian"),
        rtol=1e-12,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_dask_attention_matches_in_memory(causal):
    da = pytest.importorskip("dask.array")
    from favorkern.dask import favor_attention as dask_attention

    rng = np.random.default_rng(4)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 40, 4))
    blocks = [da.from_array(X, chunks=(2, 16, 4)) for X in (Q, K, V)]
    kw = dict(feature_map="hrf", n_components=256, projection="gaussian", causal=causal,
              random_state=0)  # fmt: skip
    got = dask_attention(*blocks, **kw).compute()
    np.testing.assert_allclose(got, favor_attention(Q, K, V, **kw), rtol=1e-10, atol=1e-12)


def test_float32_features_too_large_for_products_warn():
    from favorkern.feature_maps import FeatureOverflowWarning

    rng = np.random.default_rng(6)
    Q, K, V = rng.normal(size=(3, 12, 4)).astype(np.float32)
    Q *= 6.0  # |q'|^2 ~ 140: exp(|q'|^2 / 2) beyond 2^56, below the float32 range
    with pytest.warns(FeatureOverflowWarning, match="hybrid random features reach"):
        favor_attention(Q, K, V, feature_map="hrf", n_components=256, gamma=1.0,
                        projection="gaussian", random_state=0)  # fmt: skip
