"""The fast elementwise kernels and paired products against numpy and the naive oracles."""

from dataclasses import replace

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from favorkern import HyperbolicRandomFeatures, TrigonometricRandomFeatures
from favorkern.feature_maps import apply_feature_map


def _ulp_error(got, ref):
    return np.abs(got - ref) / np.spacing(np.maximum(np.abs(ref), np.finfo(ref.dtype).tiny))


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e3, 1e5, 1e8])
def test_vectorized_cos_and_sin_match_numpy_to_2_ulp(scale):
    from favorkern._numba.vmath import cos_inplace, sin_cos_pairs

    x = np.random.default_rng(0).uniform(-scale, scale, size=(64, 96))
    got = x.copy()
    cos_inplace(got)
    # within 2 ulp of the output, or 2 ulp of 1 near the zeros of cos
    assert np.all(np.minimum(_ulp_error(got, np.cos(x)), np.abs(got - np.cos(x)) / 2**-53) <= 2)
    pairs = np.concatenate([x[:, :40], np.zeros((64, 40)), x[:, 80:]], axis=1)
    sin_cos_pairs(pairs, 40, np.ones(64))
    for got, ref in ((pairs[:, :40], np.cos(x[:, :40])), (pairs[:, 40:80], np.sin(x[:, :40]))):
        assert np.all(np.minimum(_ulp_error(got, ref), np.abs(got - ref) / 2**-53) <= 2)
    np.testing.assert_array_equal(pairs[:, 80:], x[:, 80:])  # unpaired columns untouched


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e5, 1e7])
def test_float32_sin_cos_pairs_are_correctly_rounded_to_1_ulp(scale):
    from favorkern._numba.vmath import sin_cos_pairs_f32

    x = np.random.default_rng(1).uniform(-scale, scale, size=(64, 96)).astype(np.float32)
    got = x.copy()
    sin_cos_pairs_f32(got, 48, np.full(64, 0.5, dtype=np.float32))
    u = x[:, :48].astype(np.float64)
    for out, ref in ((got[:, :48], np.cos(u)), (got[:, 48:], np.sin(u))):
        ref = (0.5 * ref).astype(np.float32)
        error = np.abs(out.astype(np.float64) - ref)
        ulp = np.spacing(np.maximum(np.abs(ref), np.float32(2**-24)))
        assert np.all(error <= ulp)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (3, 7), elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_vectorized_cos_special_values_follow_numpy(x):
    from favorkern._numba.vmath import cos_inplace

    got = x.copy()
    cos_inplace(got)
    with np.errstate(invalid="ignore"):
        ref = np.cos(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    finite = ~np.isnan(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("cls", "name", "kernel"),
    [
        (HyperbolicRandomFeatures, "hyperbolic", "softmax"),
        (TrigonometricRandomFeatures, "trigonometric", "softmax"),
        (TrigonometricRandomFeatures, "trigonometric", "rbf"),
        (HyperbolicRandomFeatures, "hyperbolic", "rbf"),
    ],
)
@pytest.mark.parametrize("n_components", [64, 65])
def test_paired_products_match_the_full_product(cls, name, kernel, dtype, n_components):
    """One product per (w, -w) or (cos, sin) pair equals the stacked-weights evaluation."""
    rng = np.random.default_rng(1)
    X = rng.normal(scale=0.4, size=(300, 8)).astype(dtype)
    est = cls(n_components, kernel=kernel, random_state=0).fit(X)
    spec = est._spec()
    assert spec.pairs == n_components // 2
    fast = apply_feature_map(X, spec)
    full = apply_feature_map(X, replace(spec, pairs=0))
    assert fast.dtype == dtype
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fast, full, rtol=rtol, atol=rtol * np.abs(full).max())
    if kernel == "softmax" and n_components % 2 == 0:
        W = est.projection_
        ref = naive.favor_features(X, W, name, gamma=1.0)
        np.testing.assert_allclose(fast, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm", [0.5, 3.0, 300.0])
def test_unshifted_query_features_are_the_shifted_ones_times_a_row_factor(dtype, norm):
    """Inside the window the shift is skipped; the features differ by a per-row factor only
    (which cancels in attention), and outside it they are the shifted ones."""
    from favorkern.attention.favor import AttentionProjection, attention_features
    from favorkern.feature_maps import get_feature_map

    rng = np.random.default_rng(3)
    W = rng.normal(size=(64, 16))
    fmap = attention_features(get_feature_map("positive"), AttentionProjection(W, 64), 0.25, dtype)
    X = (rng.normal(size=(50, 16)) * norm / 4).astype(dtype)
    S = rng.normal(size=(64, 8)).astype(dtype)
    z = rng.random(64).astype(dtype)
    window = fmap.query_window(S, z)
    shifted, unshifted = fmap.empty(50), fmap.empty(50)
    fmap.queries(X, shifted)
    fmap.queries(X, unshifted, window)
    np.testing.assert_array_equal(shifted.max(axis=1), 1.0)
    if norm == 300.0:  # row maxima far outside the window: shifted
        np.testing.assert_array_equal(unshifted, shifted)
        return
    assert not np.array_equal(unshifted, shifted)
    ratio = unshifted / shifted
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=rtol)
    assert np.all(np.isfinite(unshifted @ S)) and np.all(unshifted @ z > 0)
