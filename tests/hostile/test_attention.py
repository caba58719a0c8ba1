"""favorkern.attention under hostile conditions: logits beyond the dtype, values near
its largest number, sharp logits, masked and zero rows, keys far below an earlier
chunk.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from favorkern import (
    FavorAttention,
    draw_projection,
    favor_attention,
    softmax_attention,
)
from favorkern._warnings import FeatureUnderflowWarning

from .shared import no_warnings, qkv


def _one_hot_reference(Q, K, V, causal=False, mask=None):
    """Softmax at infinite temperature: the value of each row's largest score (float64)."""
    Q, K = (X.astype(np.float64) / np.abs(X).max() for X in (Q, K))  # no overflow here
    scores = np.einsum("...qd,...kd->...qk", Q, K)
    if mask is not None:
        scores[..., mask] = -np.inf
    if causal:
        scores[..., np.triu(np.ones(scores.shape[-2:], dtype=bool), 1)] = -np.inf
    return np.take_along_axis(V.astype(np.float64), scores.argmax(-1)[..., None], axis=-2)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_float32_overflowing_logits_is_finite_and_exact(causal):
    Q, K, V = qkv(scale=1e19, dtype=np.float32)  # q.k ~ 1e39 > float32 max
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning either
        out = softmax_attention(Q, K, V, causal=causal)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, _one_hot_reference(Q, K, V, causal).astype(np.float32))


def _huge_values(dtype, L=600, d=8):
    """Q, K and values within a factor L of the dtype's max (one column small, one of
    alternating sign), and the values over their scale."""
    rng = np.random.default_rng(11)
    Q, K = (rng.standard_normal((L, d)).astype(dtype) * 0.3 for _ in range(2))
    big = float(np.finfo(dtype).max) * 0.9
    unit = rng.uniform(0.5, 1.0, (L, 4))
    unit[:, 1] = rng.standard_normal(L) * 1e-3  # a column of small values stays exact
    unit[::2, 2] *= -1
    V = (unit * [big, 1.0, big, big]).astype(dtype)
    return Q, K, V, unit, np.array([big, 1.0, big, big])


def _attention_of_huge_values():
    from favorkern import hybrid_attention

    yield "favor", lambda Q, K, V: favor_attention(Q, K, V, method="favor", random_state=0)
    yield "favor-causal", lambda Q, K, V: favor_attention(Q, K, V, causal=True, method="favor",
                                                          random_state=0)  # fmt: skip
    yield "recurrent", lambda Q, K, V: favor_attention(Q, K, V, causal=True, method="recurrent",
                                                       random_state=0)  # fmt: skip
    yield "relu", lambda Q, K, V: favor_attention(10 * Q, 10 * K, V, feature_map="relu",
                                                  n_components=8, random_state=0)  # fmt: skip
    yield "relu-recurrent", lambda Q, K, V: favor_attention(
        10 * Q, 10 * K, V, feature_map="relu", causal=True, method="recurrent",
        n_components=8, random_state=0,
    )  # fmt: skip
    yield "exact", lambda Q, K, V: softmax_attention(Q, K, V)
    yield "exact-causal", lambda Q, K, V: softmax_attention(Q, K, V, causal=True)
    yield "hybrid", lambda Q, K, V: hybrid_attention(Q, K, V, causal=True, window=4,
                                                     n_components=64, random_state=0)  # fmt: skip
    yield "hybrid-bidir", lambda Q, K, V: hybrid_attention(Q, K, V, window=4, n_components=64,
                                                           random_state=0)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "attend"), list(_attention_of_huge_values()))
def test_values_near_the_dtype_max_give_finite_outputs(name, attend, dtype):
    """The sums of values within a factor L of the max overflowed (inf, NaN outputs),
    though every output is a weighted mean of values."""
    Q, K, V, unit, scale = _huge_values(dtype)
    out = attend(Q, K, V)
    assert out.dtype == dtype and np.isfinite(out).all()
    # the same call on values of order 1, scaled back (powers of two: exact)
    expected = attend(Q, K, unit.astype(dtype)).astype(np.float64) * scale
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    # error relative to each column's largest output
    error = np.abs(out - expected) / np.abs(expected).max(axis=0)
    assert error.max() < rtol


def test_values_whose_sums_a_state_cannot_hold_are_refused():
    from favorkern import FavorAttention

    Q, K, V, _, _ = _huge_values(np.float32)
    layer = FavorAttention(n_components=64, causal=True, random_state=0).fit(8)
    with pytest.raises(ValueError, match="key state's sums of .* terms .* would overflow float32"):
        layer.step(Q, K, V)
    _, state = layer.step(Q, K, V.astype(np.float64))  # float64 holds them
    assert np.isfinite(state.S).all()


def test_softmax_attention_overflow_respects_the_mask():
    Q, K, V = qkv(shape=(16, 4), scale=1e19, dtype=np.float32)
    mask = np.zeros(16, dtype=bool)
    mask[_one_hot_reference(Q, K, np.arange(16.0)[:, None])[:, 0].astype(int)] = True
    out = softmax_attention(Q, K, V, key_padding_mask=mask)
    np.testing.assert_array_equal(out, _one_hot_reference(Q, K, V, mask=mask).astype(np.float32))


@pytest.mark.parametrize(("scale", "gamma"), [(1e200, None), (1.0, 1e300), (1e100, 1e200)])
def test_softmax_attention_float64_beyond_float64_logits(scale, gamma):
    Q, K, V = qkv(shape=(12, 4), scale=scale)
    out = softmax_attention(Q, K, V, gamma=gamma)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, _one_hot_reference(Q, K, V))


def test_softmax_attention_moderate_logits_unchanged_by_the_rescaled_path():
    from favorkern.attention.exact import _exact_rows_rescaled

    Q, K, V = qkv(shape=(20, 6), scale=2.0)
    direct = softmax_attention(Q, K, V)
    rescaled = _exact_rows_rescaled(Q, K, V, None, 0, 20, 1 / np.sqrt(6), False)
    np.testing.assert_allclose(rescaled, direct, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("feature_map", ["positive", "hyperbolic"])
def test_favor_attention_huge_gamma_no_nan_and_warned(feature_map, dtype, causal):
    Q, K, V = qkv(shape=(2, 64, 8), dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = favor_attention(Q, K, V, gamma=1e20, feature_map=feature_map, causal=causal,
                              n_components=32, random_state=0)  # fmt: skip
    assert out.dtype == dtype and np.isfinite(out).all()
    zero = int(np.count_nonzero(~out.any(axis=-1)))
    underflow = [w for w in caught if issubclass(w.category, FeatureUnderflowWarning)]
    if zero:
        assert len(underflow) == 1 and f"{zero} of 128" in str(underflow[0].message)
    else:
        assert not underflow


def test_favor_attention_optimal_at_huge_gamma_is_finite():
    Q, K, V = qkv(shape=(2, 32, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        out = favor_attention(Q, K, V, gamma=1e20, feature_map="optimal", n_components=32,
                              random_state=0)  # fmt: skip
    assert np.isfinite(out).all()


def test_favor_attention_sharp_logits_warn_with_the_zero_row_count():
    Q, K, V = qkv(shape=(2, 64, 8), scale=10.0)
    with pytest.warns(FeatureUnderflowWarning, match="attention output rows are 0") as caught:
        out = favor_attention(Q, K, V, gamma=1e4, n_components=64, random_state=0)
    zero = int(np.count_nonzero(~out.any(axis=-1)))
    assert zero > 0 and f"{zero} of 128 attention output rows" in str(caught[0].message)
    assert len([w for w in caught if issubclass(w.category, FeatureUnderflowWarning)]) == 1


def test_favor_attention_object_warns_like_the_function():
    Q, K, V = qkv(shape=(2, 64, 8), scale=10.0)
    with pytest.warns(FeatureUnderflowWarning, match="attention output rows are 0"):
        FavorAttention(n_components=64, random_state=0)(Q, K, V, gamma=1e4)


@pytest.mark.parametrize("feature_map", ["optimal", "saderf", "sderf"])
def test_float32_rows_lost_to_its_exponent_range_come_from_float64(feature_map):
    """Where float32 lost every feature product of some rows (zero rows, warned), float64
    keeps them: the call is made in float64 and cast back (GERF-family maps reached
    float32's range at input scale 20, d = 8)."""
    from favorkern import FavorAttention

    rng = np.random.default_rng(4)
    Q, K = rng.normal(scale=20.0, size=(2, 50, 8))
    V = rng.normal(size=(50, 4))
    W = draw_projection(32, 8, random_state=0)
    Q32, K32, V32 = (X.astype(np.float32) for X in (Q, K, V))
    Q, K, V = (X.astype(np.float64) for X in (Q32, K32, V32))  # the same values in float64
    expected = favor_attention(Q, K, V, feature_map=feature_map, projection_matrix=W)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureUnderflowWarning)
        got = favor_attention(Q32, K32, V32, feature_map=feature_map, projection_matrix=W)
        layer = FavorAttention(feature_map=feature_map, random_state=0)
        via_layer = layer(Q32, K32, V32)
    assert got.dtype == np.float32 and via_layer.dtype == np.float32
    atol = 1e-6 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(via_layer, layer(Q, K, V), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_are_zero_without_a_warning(causal):
    Q, K, V = qkv(shape=(2, 16, 4))
    mask = np.zeros((2, 16), dtype=bool)
    mask[0] = True  # head 0: every key ignored
    if causal:
        mask[1, :5] = True  # head 1: rows 0..4 see only ignored keys
    context = no_warnings()
    try:
        out = favor_attention(Q, K, V, causal=causal, key_padding_mask=mask, n_components=16,
                              random_state=0)  # fmt: skip
    finally:
        context.__exit__(None, None, None)
    assert not out[0].any()
    if causal:
        assert not out[1, :5].any() and out[1, 5:].any(axis=-1).all()


def test_zero_values_give_zero_rows_without_a_warning():
    Q, K, _ = qkv(shape=(16, 4))
    context = no_warnings()
    try:
        out = favor_attention(Q, K, np.zeros((16, 3)), n_components=16, random_state=0)
    finally:
        context.__exit__(None, None, None)
    assert not out.any()


@pytest.mark.parametrize("gap", [85.0, 90.0])
def test_window_keys_far_below_an_earlier_chunk_keep_their_precision(gap):
    """Keys inside the [0, 16] window after a chunk whose keys set the constant 85-90
    logs higher: their float32 weights were subnormal, so queries attending to them got
    1e-2 errors or zero rows (and the result depended on the keys' order)."""
    from favorkern import _config

    r = 20.0
    W = r * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    n = 64
    a = r - np.sqrt(r * r - 2 * (15.5 + gap))  # r a - a^2 / 2 = 15.5 + gap
    K = np.zeros((2 * n, 2))
    K[:n, 0] = a
    K[n:, 1] = 15.5 / r
    V = np.random.default_rng(0).uniform(0.5, 1.5, size=(2 * n, 3))
    Q = np.array([[0.0, 8.0], [0.0, 7.0]])  # they see the second half only
    expected = favor_attention(Q, K, V, projection_matrix=W, gamma=1.0)
    for keys in (slice(None), slice(None, None, -1)):  # both orders of the keys
        with warnings.catch_warnings(), _config.override(ATTENTION_CHUNK_BYTES=16 * 4 * 4):
            warnings.simplefilter("error", FeatureUnderflowWarning)  # 16-row key chunks above
            got = favor_attention(*(X.astype(np.float32) for X in (Q, K[keys], V[keys])),
                                  projection_matrix=W, gamma=1.0)  # fmt: skip
        np.testing.assert_allclose(got, expected, rtol=2e-5)


def test_fitted_map_constants_follow_their_projection():
    """redraw() and a hand-set projection_ silently kept constants fitted around the old
    projection (the outputs did not change)."""
    from favorkern import FavorAttention

    Q, K = np.random.default_rng(2).normal(size=(2, 30, 4))
    layer = FavorAttention(feature_map="fitted", n_components=8, random_state=3).fit(Q, K)
    with pytest.raises(ValueError, match="fitted around the old projection"):
        layer.redraw()
    layer.projection_ = layer.projection_ * 2.0
    with pytest.raises(ValueError, match="fitted around the old projection"):
        layer(Q, K, K)
    FavorAttention(feature_map="optimal", n_components=8, random_state=3).fit(Q, K).redraw()
