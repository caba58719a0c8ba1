"""FAVOR++ ("optimal") and SADERF ("saderf") attention against a naive numpy oracle."""

import numpy as np
import pytest

from favorkern import draw_projection, favor_attention, softmax_attention
from favorkern.feature_maps import get_feature_map


def adaptive_constants(q, k, mask, feature_map, gamma):
    """(psi, A) fitted by the registered map on one head (masked keys left out)."""
    keys = k if mask is None else k[~mask]
    constants = get_feature_map(feature_map).fit(q, keys, input_scale=np.sqrt(gamma))
    return constants.get("psi"), constants["A"]


def _naive_gerf_attention(Q, K, V, W, A, scale, mask=None):
    """Materialized GERF features, exact normalization (no stabilizers): small inputs only."""
    d = Q.shape[-1]
    q = Q * np.sqrt(scale)
    k = K * np.sqrt(scale)
    B = np.sqrt(1 - 4 * A)
    wsq = np.sum(W**2, axis=1)

    def phi(X):
        return np.exp(B * X @ W.T - 0.5 * np.sum(X**2, 1, keepdims=True) + A * wsq) * (
            (1 - 4 * A) ** (d / 4) / np.sqrt(W.shape[0])
        )

    kernel = phi(q) @ phi(k).T
    if mask is not None:
        kernel[:, mask] = 0.0
    return (kernel @ V) / kernel.sum(axis=1, keepdims=True)


def _a_star(q, k, scale):
    d = q.shape[1]
    pairs = scale * np.sum((q[:, None, :] + k[None, :, :]) ** 2, axis=2).mean()
    return (d - 2 * pairs - np.sqrt((2 * pairs + d) ** 2 + 8 * d * pairs)) / (16 * d)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-6), (np.float32, 1e-4)])
@pytest.mark.parametrize("L_q, L_k", [(1, 1), (17, 31), (97, 64)])
def test_optimal_matches_oracle(dtype, rtol, L_q, L_k):
    rng = np.random.default_rng(L_q + L_k)
    d = 16
    Q = rng.normal(scale=0.8, size=(L_q, d))
    K = rng.normal(scale=0.8, size=(L_k, d)) + 0.3
    V = rng.normal(size=(L_k, 5))
    W = draw_projection(48, d, random_state=1)
    scale = 1 / np.sqrt(d)
    A = _a_star(Q, K, scale)
    psi, fitted = adaptive_constants(Q, K, None, "optimal", scale)
    assert psi is None and fitted == pytest.approx(A, rel=1e-10)
    expected = _naive_gerf_attention(Q, K, V, W, A, scale)
    out = favor_attention(*(x.astype(dtype) for x in (Q, K, V)), feature_map="optimal",
                          projection_matrix=W)  # fmt: skip
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_saderf_is_optimal_on_balanced_inputs():
    rng = np.random.default_rng(3)
    d = 8
    scales_q = np.geomspace(0.2, 2.0, d)
    scales_k = scales_q[::-1]
    Q = rng.normal(size=(40, d)) * scales_q
    K = rng.normal(size=(50, d)) * scales_k
    V = rng.normal(size=(50, 3))
    W = draw_projection(32, d, random_state=0)
    scale = 0.3
    psi, A = adaptive_constants(Q, K, None, "saderf", scale)
    np.testing.assert_allclose(psi, (np.sum(K**2, 0) / np.sum(Q**2, 0)) ** 0.25)
    Qs, Ks = Q * psi, K / psi
    np.testing.assert_allclose(Qs @ Ks.T, Q @ K.T)  # the kernel is unchanged
    # balanced: per-dimension energies of the rescaled queries and keys agree (up to L)
    np.testing.assert_allclose(np.sum(Qs**2, 0) / np.sum(Ks**2, 0), 1.0, rtol=1e-10)
    assert A == pytest.approx(_a_star(Qs, Ks, scale), rel=1e-10)
    expected = _naive_gerf_attention(Qs, Ks, V, W, A, scale)
    out = favor_attention(Q, K, V, feature_map="saderf", projection_matrix=W, gamma=scale)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-9)


def test_masks_heads_and_errors():
    rng = np.random.default_rng(5)
    Q = rng.normal(scale=0.6, size=(2, 3, 20, 8))
    K = rng.normal(scale=0.6, size=(2, 1, 25, 8))
    V = rng.normal(size=(25, 4))
    mask = rng.random((2, 1, 25)) < 0.3
    mask[1, 0, :] = True  # every key masked in batch 1: zeros, not NaN
    W = draw_projection(32, 8, random_state=0)
    for features in ("optimal", "saderf"):
        out = favor_attention(
            Q, K, V, feature_map=features, projection_matrix=W, key_padding_mask=mask
        )
        assert out.shape == (2, 3, 20, 4)
        assert np.all(out[1] == 0)
        for h in range(3):
            psi, A = adaptive_constants(Q[0, h], K[0, 0], mask[0, 0], features, 1 / np.sqrt(8))
            q, k = (Q[0, h], K[0, 0]) if psi is None else (Q[0, h] * psi, K[0, 0] / psi)
            expected = _naive_gerf_attention(q, k, V, W, A, 1 / np.sqrt(8), mask=mask[0, 0])
            np.testing.assert_allclose(out[0, h], expected, rtol=1e-6, atol=1e-9)
        with pytest.raises(ValueError, match="causal"):
            favor_attention(Q[0, 0], K[0, 0, :20], V[:20], feature_map=features, causal=True)


def test_large_norms_stay_finite():
    rng = np.random.default_rng(1)
    Q = rng.normal(size=(30, 16))
    Q *= 30 / np.linalg.norm(Q, axis=1, keepdims=True)
    K = rng.normal(size=(30, 16))
    K *= 30 / np.linalg.norm(K, axis=1, keepdims=True)
    V = rng.normal(size=(30, 2))
    for dtype in (np.float64, np.float32):
        for features in ("optimal", "saderf"):
            out = favor_attention(*(x.astype(dtype) for x in (Q, K, V)), feature_map=features,
                                  random_state=0)  # fmt: skip
            assert np.isfinite(out).all()


def test_saderf_reduces_attention_error_on_anisotropic_inputs():
    # Queries and keys with per-dimension scales spread 10x in different orders: SADERF's
    # rescaling balances |q + k|^2 (measured ~0.55x the FAVOR+ error at |q|/d^(1/4) = 1.5).
    rng = np.random.default_rng(0)
    d, L = 64, 256
    errors = {"positive": [], "saderf": []}
    for trial in range(3):

        def draw():
            X = rng.normal(size=(L, d)) * rng.permutation(np.geomspace(0.1, 1.0, d))
            return X / np.sqrt(np.mean(np.sum(X**2, 1))) * 1.5 * d**0.25

        Q, K, V = draw(), draw(), rng.normal(size=(L, d))
        exact = softmax_attention(Q, K, V)
        W = draw_projection(256, d, random_state=trial)
        for features in errors:
            out = favor_attention(Q, K, V, feature_map=features, projection_matrix=W)
            errors[features].append(
                np.mean(np.linalg.norm(out - exact, axis=1) / np.linalg.norm(exact, axis=1))
            )
    assert np.mean(errors["saderf"]) < 0.75 * np.mean(errors["positive"])


def test_favor_attention_class_uses_the_adaptive_maps():
    from favorkern import FavorAttention

    rng = np.random.default_rng(9)
    Q, K, V = rng.normal(scale=0.5, size=(3, 40, 16))
    for features in ("optimal", "saderf"):
        layer = FavorAttention(features, 64, random_state=0)
        out = layer(Q, K, V)
        expected = favor_attention(
            Q, K, V, feature_map=features, projection_matrix=layer.projection_
        )
        np.testing.assert_array_equal(out, expected)
        with pytest.raises(ValueError, match="causal"):
            FavorAttention(features, 64, causal=True, random_state=0)(Q, K, V)
