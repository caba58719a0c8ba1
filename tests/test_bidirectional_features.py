"""The stabilized features of bidirectional attention against the naive oracles."""

import naive
import numpy as np
import pytest

from favorkern import _config, draw_projection, favor_attention
from favorkern._validation import check_float_array
from favorkern.attention import bidirectional as bidirectional_module
from favorkern.attention import plan as plan_module
from favorkern.attention.plan import AttentionProjection, attention_features
from favorkern.feature_maps import get_feature_map

GAMMA = 8**-0.5


def _features(feature_map, W, dtype):
    fmap = get_feature_map(feature_map)
    return attention_features(
        fmap, AttentionProjection(W, naive.width(feature_map, len(W))), GAMMA, dtype
    )


@pytest.mark.parametrize("feature_map", ["positive", "hyperbolic"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sigma", [0.3, 6.0])
def test_key_parts_are_the_features_up_to_the_returned_scale(feature_map, dtype, sigma):
    """``out exp(scale_log)`` is phi(k); small logits skip the shift (row maxima above 1),
    large ones are divided by their row maximum (every row maximum exactly 1)."""
    rng = np.random.default_rng(5)
    W = draw_projection(32, 8, random_state=5)
    fmap = _features(feature_map, W, dtype)
    K = rng.normal(scale=sigma, size=(40, 8))
    out = fmap.empty(40)
    row_log, scale_log = fmap.key_parts(K.astype(dtype), out)
    ref = naive.favor_features(K, W, feature_map, GAMMA)
    got = out.astype(np.float64) * np.exp(scale_log)[:, np.newaxis]
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=0)
    np.testing.assert_allclose(row_log, np.log(ref.max(axis=1)), rtol=0, atol=10 * rtol)
    if sigma == 6.0:
        np.testing.assert_array_equal(out.max(axis=1), 1.0)
        np.testing.assert_array_equal(scale_log, row_log)
    else:
        assert np.all(out.max(axis=1) >= 1.0) and np.all(out.max(axis=1) <= np.exp(16.0))
        assert not np.array_equal(out.max(axis=1), np.ones(40))
    # the weight of a key at any constant c >= row_log is at most 1
    for c in (row_log.max(), row_log.max() + 30.0):
        assert np.all(np.exp(scale_log - c) <= 1.0 + 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sigma", [0.1, 1.0, 5.0, 100.0])
def test_logits_inside_only_where_every_logit_is_inside(dtype, sigma):
    rng = np.random.default_rng(6)
    W = draw_projection(64, 16, random_state=6)
    fmap = _features("positive", W, dtype)
    X = rng.normal(scale=sigma, size=(50, 16)).astype(dtype)
    window = fmap.query_window(np.ones((64, 4), dtype=dtype), np.ones(64, dtype=dtype))
    logits = fmap.empty(50)
    fmap._product(X, logits)
    within = window[0] <= logits.min() and logits.max() <= window[1]
    inside = fmap.logits_inside(X, window)
    assert within or not inside
    if sigma <= 1.0:
        assert inside  # the bound holds by far for small norms
    if sigma == 100.0:
        assert not inside
    # the features do not depend on it beyond the per-row factor
    shifted, fast = fmap.empty(50), fmap.empty(50)
    fmap.queries(X, shifted)
    fmap.queries(X, fast, window, inside)
    if sigma == 100.0:  # row maxima far outside the window: shifted
        np.testing.assert_array_equal(fast, shifted)
        return
    ratio = fast.astype(np.float64) / shifted
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_keys_inside_and_outside_the_window_in_one_call(dtype):
    """Chunks whose row maxima lie in [0, 16] and chunks beyond it (keys 40 times as
    large) share one state: the output is the oracle's."""
    rng = np.random.default_rng(7)
    W = draw_projection(32, 8, random_state=7)
    Q = rng.normal(scale=0.4, size=(70, 8))
    K = rng.normal(scale=0.4, size=(70, 8))
    K[32:48] *= 6.0  # one chunk of sharp keys raises the constant halfway through
    V = rng.normal(size=(70, 3))
    mask = rng.random(70) < 0.2
    with _config.override(ATTENTION_CHUNK_BYTES=16 * 32 * 8):  # 16 rows at m = 32
        got = favor_attention(
            *(X.astype(dtype) for X in (Q, K, V)), projection_matrix=W, key_padding_mask=mask
        )
    ref = naive.favor_attention(Q, K, V, W, key_padding_mask=mask)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("workers", [2, 3])
def test_heads_over_threads_match_one_thread(monkeypatch, workers):
    """Several heads per thread (interleaved over the threads): the answer of one thread,
    bit for bit, and the oracle's."""
    rng = np.random.default_rng(8)
    W = draw_projection(32, 8, random_state=8)
    Q, K, V = (rng.normal(scale=0.5, size=(2, 5, 37, 8)) for _ in range(3))
    monkeypatch.setattr(plan_module, "n_threads", lambda: 1)
    with _config.override(ATTENTION_PARALLEL_MIN_WORK=0):
        one = favor_attention(Q, K, V, projection_matrix=W)
    monkeypatch.setattr(plan_module, "n_threads", lambda: workers)
    calls = []
    real = bidirectional_module.run_parallel
    monkeypatch.setattr(
        bidirectional_module,
        "run_parallel",
        lambda tasks, w: calls.append(len(tasks)) or real(tasks, w),
    )
    with _config.override(ATTENTION_PARALLEL_MIN_WORK=0):
        many = favor_attention(Q, K, V, projection_matrix=W)
    assert calls == [workers]  # one task per thread, not one per head
    np.testing.assert_array_equal(many, one)
    for idx in np.ndindex(2, 5):
        ref = naive.favor_attention(Q[idx], K[idx], V[idx], W)
        np.testing.assert_allclose(many[idx], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, (1 << 18) - 1, 1 << 18, (1 << 18) + 6])
def test_finiteness_is_checked_in_every_block(bad, where):
    X = np.zeros((1 << 18) + 7, dtype=np.float32)
    assert check_float_array(X, "X") is X
    X[where] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        check_float_array(X, "X")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_numba", [False, True])
def test_emission_divides_by_the_normalizer_column_and_zeroes_lost_rows(dtype, use_numba):
    """``out = block[:, :dv] / block[:, dv]`` to an ulp of the division, 0 where the
    normalizer is 0 (or subnormal in float32), NaN where it is NaN."""
    rng = np.random.default_rng(9)
    block = rng.uniform(0.1, 2.0, size=(40, 9)).astype(dtype)
    block[3, 8] = 0.0
    block[5, 8] = np.float32(1e-39) if dtype == np.float32 else 0.0
    block[7, 8] = np.nan
    if dtype == np.float64:  # a subnormal normalizer of subnormal sums: their ratio
        block[9] *= 1e-310
    out = np.empty((40, 8), dtype=dtype)
    bidirectional_module.divide_by_last_column(block, 8, out, use_numba)
    ref = block[:, :8] / block[:, 8:]
    keep = np.ones(40, dtype=bool)
    keep[[3, 5, 7]] = False
    np.testing.assert_allclose(out[keep], ref[keep], rtol=2 * np.finfo(dtype).eps)
    assert np.all(out[[3, 5]] == 0.0) and np.all(np.isnan(out[7]))
    assert np.all(np.isfinite(out[9]))
