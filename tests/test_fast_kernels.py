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


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e5, 1e7])
def test_float32_reduction_sin_cos_is_within_its_absolute_bound(scale):
    """The FMA reduction in float32 against float64 sin/cos (an extended reference for
    float32), with arguments at the multiples of pi/2 where the reduction cancels."""
    from favorkern._numba.vmath import SIN_COS_F32_ERROR, sin_cos_pairs_f32_fma

    rng = np.random.default_rng(2)
    x = rng.uniform(-scale, scale, size=(256, 96)).astype(np.float32)
    k = rng.integers(-int(scale / 1.6) - 1, int(scale / 1.6) + 2, size=(256, 8))
    x[:, :8] = (k * (np.pi / 2)).astype(np.float32)
    x[:, 8:12] = np.nextafter(x[:, :4], np.float32(np.inf))
    got = x.copy()
    sin_cos_pairs_f32_fma(got, 48, np.full(256, 0.5, dtype=np.float32))
    u = x[:, :48].astype(np.float64)
    for out, ref in ((got[:, :48], np.cos(u)), (got[:, 48:], np.sin(u))):
        error = np.abs(out.astype(np.float64) - 0.5 * ref)
        # the bound times the row factor, and the rounding of the product
        assert error.max() <= 0.5 * SIN_COS_F32_ERROR + 2.0**-25


def test_float32_reduction_sin_cos_special_values_follow_numpy():
    from favorkern._numba.vmath import sin_cos_pairs_f32_fma

    x = np.array([[np.nan, np.inf, -np.inf, 3e38, -0.0, 1e-30, 0.0, 1.0]], dtype=np.float32)
    got = x.copy()
    sin_cos_pairs_f32_fma(got, 4, np.ones(1, dtype=np.float32))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.isnan(got[0, :4]), np.isnan(np.cos(x[0, :4])))
        np.testing.assert_allclose(got[0, 4:], np.sin(x[0, :4]), rtol=1e-6, atol=0)
    np.testing.assert_allclose(got[0, 3], np.cos(x[0, 3].astype(np.float64)), rtol=1e-6)


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
    from favorkern.attention.plan import AttentionProjection, attention_features
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


def _exp_ulp_error_f32(got, x):
    """Error of float32 ``got`` against the correctly rounded ``exp(x)``, in ulp of it
    (subnormal results: in units of the smallest subnormal)."""
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
    with np.errstate(over="ignore"):
        ref = exact.astype(np.float32)
    finite = np.isfinite(ref)
    ulp = np.spacing(np.maximum(ref[finite], np.finfo(np.float32).smallest_subnormal))
    return np.abs(got[finite].astype(np.float64) - exact[finite]) / ulp.astype(np.float64)


def test_float32_exp_is_within_1_ulp_over_its_whole_range():
    from favorkern._numba.vmath import exp_shifted_f32

    x = np.linspace(-105.0, 89.0, 1_000_003, dtype=np.float32).reshape(1, -1)
    got = x.copy()
    assert exp_shifted_f32(got)
    # 1 ulp of the correctly rounded result (numpy's own float32 exp reaches 2.4 here)
    assert _exp_ulp_error_f32(got, x).max() <= 1.01
    with np.errstate(over="ignore"):
        ref = np.exp(x)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))  # same overflow threshold
    np.testing.assert_array_equal(got == 0, ref == 0)  # same underflow threshold


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, (4, 9), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
    arrays(np.float32, 4, elements=st.floats(-100, 100, width=32)),
    st.booleans(),
    st.booleans(),
)
def test_fused_shifted_exp_is_numpy_subtract_then_exp(x, offset, clip, transposed):
    """``exp(x - offset[:, None])`` (clipped at 0 if asked) in one pass: NaN, inf and
    the overflow and underflow thresholds as numpy's, values within 1 ulp."""
    from favorkern._numba.vmath import exp_shifted_f32

    got = np.asfortranarray(x) if transposed else x.copy()
    assert exp_shifted_f32(got, offset, clip)
    with np.errstate(all="ignore"):
        exponent = x - offset[:, np.newaxis]
        if clip:
            exponent = np.minimum(exponent, 0.0)
        ref = np.exp(exponent)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_array_equal(got == 0, ref == 0)
    assert _exp_ulp_error_f32(got, exponent).max(initial=0.0) <= 1.01


def test_fused_exp_declines_what_it_does_not_handle():
    from favorkern._numba.vmath import exp_shifted_f32

    x = np.zeros((4, 6))
    assert not exp_shifted_f32(x)  # float64: numpy's exp
    strided = np.zeros((4, 12), dtype=np.float32)[:, ::2]
    assert not exp_shifted_f32(strided, np.zeros(4, dtype=np.float32))
    np.testing.assert_array_equal(strided, 0.0)  # untouched


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("mask", [False, True])
def test_float32_bidirectional_matches_the_naive_oracle(mask, threads, monkeypatch):
    """float32 bidirectional attention (feature buffers shared by keys and queries)
    against the float64 naive estimate with the same projection; one head split over
    threads or not, large logits included (the stabilizers must keep everything
    finite)."""
    from favorkern import draw_projection, favor_attention

    monkeypatch.setenv("FAVORKERN_NUM_THREADS", threads)
    rng = np.random.default_rng(3)
    n_heads = 1 if threads == "2" else 2  # one head: its keys and queries split over threads
    Q, K, V = rng.normal(scale=0.6, size=(3, n_heads, 3000, 16))
    Q[:, :, :5] *= 8.0  # a few large query and key norms
    K[:, :, -5:] *= 8.0
    key_mask = rng.random((n_heads, 3000)) < 0.2 if mask else None
    W = draw_projection(64, 16, random_state=0)
    got = favor_attention(
        *(a.astype(np.float32) for a in (Q, K, V)), projection_matrix=W, key_padding_mask=key_mask
    )
    assert got.dtype == np.float32 and np.isfinite(got).all()
    for h in range(n_heads):
        oracle = naive.favor_attention(
            Q[h], K[h], V[h], W, key_padding_mask=None if key_mask is None else key_mask[h]
        )
        np.testing.assert_allclose(got[h], oracle, rtol=1e-3, atol=1e-4)


def test_zero_row_warning_counts_whole_zero_rows_only():
    """The zero-row check reads the first column first: rows that merely start with 0
    are not counted, whole zero rows are (also in batched outputs)."""
    import warnings

    from favorkern._warnings import FeatureUnderflowWarning
    from favorkern.attention.plan import warn_zero_rows
    from favorkern.feature_maps import get_feature_map

    out = np.ones((2, 3, 10, 4), dtype=np.float32)
    out[..., 0] = 0.0  # every row starts with 0 ...
    out[0, 1, [2, 7]] = 0.0  # ... three rows are 0 entirely
    out[1, 2, 5] = 0.0
    V = np.ones((2, 3, 10, 4), dtype=np.float32)
    with pytest.warns(FeatureUnderflowWarning, match="3 of 60 attention output rows are 0"):
        warn_zero_rows(get_feature_map("positive"), out, V, None, False)
    out[..., 0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_zero_rows(get_feature_map("positive"), out, V, None, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_underflowed_rows_are_found_in_every_row_block(dtype):
    """Rows whose features all underflow, spread over many row blocks (and threads):
    the warning counts each of them once and they are exactly 0; the other rows match
    the naive features."""
    from favorkern import PositiveRandomFeatures
    from favorkern._warnings import FeatureUnderflowWarning

    rng = np.random.default_rng(5)
    X = rng.normal(scale=0.1, size=(6000, 8))
    huge = np.array([3, 1500, 2999, 4100, 5999])
    X[huge] *= 400.0  # exp(-|x|^2 / 2) far below the smallest float
    est = PositiveRandomFeatures(256, random_state=0).fit(X[:100])
    with pytest.warns(FeatureUnderflowWarning, match=f"{huge.size} of 6000 rows"):
        phi = est.transform(X.astype(dtype))
    assert phi.dtype == dtype
    np.testing.assert_array_equal(phi[huge], 0.0)
    rest = np.setdiff1d(np.arange(6000), huge)
    ref = apply_feature_map(X[rest[:200]], est._spec())
    np.testing.assert_allclose(phi[rest[:200]], ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
