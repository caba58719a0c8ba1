"""hybrid_attention's block engine against the row-by-row oracle ``naive_hybrid_attention``."""

from __future__ import annotations

import math

import naive
import numpy as np
import pytest

from favorkern import draw_projection, favor_attention, hybrid_attention, softmax_attention


def _case(seed, L=150, d=8, dv=5, scale=0.7, heads=None):
    rng = np.random.default_rng(seed)
    lead = () if heads is None else (heads,)
    Q, K = rng.normal(size=(2,) + lead + (L, d)) * scale
    V = rng.normal(size=lead + (L, dv))
    return Q, K, V


def _oracle(Q, K, V, W, feature_map="positive", gamma=None, mask=None, **options):
    gamma = 1 / math.sqrt(Q.shape[-1]) if gamma is None else gamma
    phi_q, phi_k, _ = naive.map_features(feature_map, Q, K, W, gamma)
    return naive.naive_hybrid_attention(
        Q, K, V, phi_q, phi_k, gamma=gamma, key_padding_mask=mask, **options
    )


def _relative(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("feature_map", naive.FEATURE_MAPS)
@pytest.mark.parametrize("causal", [False, True])
def test_no_window_is_favor_attention_for_every_map(feature_map, causal):
    # regression: the exp of the projection logits was applied to every map, so
    # trigonometric and relu heads were 0.13 (0.34 causal) away from favor_attention
    Q, K, V = _case(0)
    W = draw_projection(16, 8, random_state=0)
    options = dict(causal=causal, feature_map=feature_map, projection_matrix=W, random_state=0)
    out = hybrid_attention(Q, K, V, window=0, **options)
    ref = favor_attention(Q, K, V, **options)
    assert _relative(out, ref) < 1e-10


# (window, n_global, n_top, n_candidates): window crossing the 64-row blocks, every
# key global, a window of one, no window with top keys, more candidates than keys.
CONFIGS = [
    (7, 1, 0, None),
    (0, 0, 0, None),
    (65, 2, 0, None),
    (1, 0, 0, None),
    (5, 200, 0, None),
    (5, 1, 3, 20),
    (0, 0, 4, 10),
    (40, 2, 8, 8),
    (70, 1, 5, 300),
]


@pytest.mark.parametrize("feature_map", naive.FEATURE_MAPS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,n_global,n_top,n_candidates", CONFIGS)
def test_matches_oracle_float64(feature_map, causal, window, n_global, n_top, n_candidates):
    Q, K, V = _case(1)
    u = np.linspace(-1, 1, 8)
    W = draw_projection(16, 8, random_state=1)
    options = dict(window=window, n_global=n_global, causal=causal)
    if n_top:
        options.update(n_top=n_top, n_candidates=n_candidates, candidate_query=u)
    ref = _oracle(Q, K, V, W, feature_map, **options)
    out = hybrid_attention(Q, K, V, feature_map=feature_map, projection_matrix=W,
                           random_state=0, **options)  # fmt: skip
    assert _relative(out, ref) < 1e-6


@pytest.mark.parametrize("L", [1, 2, 63, 64, 65, 129, 200])
@pytest.mark.parametrize("causal", [False, True])
def test_block_edges_and_masks(L, causal):
    Q, K, V = _case(2, L=L)
    rng = np.random.default_rng(L)
    mask = rng.random(L) < 0.3
    W = draw_projection(16, 8, random_state=2)
    u = np.ones(8)
    for options in (
        dict(window=9, n_global=1),
        dict(window=64, n_global=0, n_top=3, n_candidates=7, candidate_query=u),
    ):
        ref = _oracle(Q, K, V, W, mask=mask, causal=causal, **options)
        out = hybrid_attention(Q, K, V, projection_matrix=W, key_padding_mask=mask,
                               causal=causal, **options)  # fmt: skip
        if np.abs(ref).max() > 0:
            assert _relative(out, ref) < 1e-6
        assert np.all(out[np.abs(ref).sum(axis=1) == 0] == 0)


@pytest.mark.parametrize("causal", [False, True])
def test_float32_stays_float32_and_close(causal):
    Q, K, V = _case(3, L=300, heads=2)
    W = draw_projection(32, 8, random_state=3)
    u = np.ones(8)
    options = dict(window=16, n_global=1, n_top=4, n_candidates=16, candidate_query=u,
                   causal=causal, projection_matrix=W)  # fmt: skip
    out64 = hybrid_attention(Q, K, V, **options)
    out32 = hybrid_attention(*(X.astype(np.float32) for X in (Q, K, V)), **options)
    assert out32.dtype == np.float32
    assert _relative(out32, out64) < 1e-4
    for h in range(2):
        ref = _oracle(Q[h], K[h], V[h], W, **{k: v for k, v in options.items()
                                              if k != "projection_matrix"})  # fmt: skip
        assert _relative(out64[h], ref) < 1e-6


def test_per_head_window_and_n_top_equal_single_heads():
    Q, K, V = _case(4, L=140, heads=3)
    W = draw_projection(16, 8, random_state=4)
    u = np.ones(8)
    windows, tops = np.array([0, 8, 70]), np.array([2, 0, 5])
    for causal in (False, True):
        out = hybrid_attention(Q, K, V, window=windows, n_top=tops, n_candidates=12,
                               candidate_query=u, causal=causal, projection_matrix=W)  # fmt: skip
        for h in range(3):
            extra = dict(n_top=int(tops[h]), n_candidates=12, candidate_query=u) if tops[h] else {}
            ref = _oracle(Q[h], K[h], V[h], W, window=int(windows[h]), causal=causal, **extra)
            assert _relative(out[h], ref) < 1e-6


def test_per_head_settings_are_checked():
    Q, K, V = _case(5, L=20, heads=3)
    with pytest.raises(ValueError, match="window has 2 entries but the inputs have 3 heads"):
        hybrid_attention(Q, K, V, window=[1, 2])
    with pytest.raises(ValueError, match="n_top must be >= 0"):
        hybrid_attention(Q, K, V, n_top=[1, -1, 0])
    with pytest.raises(TypeError, match="window"):
        hybrid_attention(Q, K, V, window=[1.5, 2.0, 3.0])


def test_n_top_above_the_default_candidates_is_refused():
    # regression: n_top=300 silently took only the 256 default candidates
    Q, K, V = _case(6, L=20)
    with pytest.raises(ValueError, match="n_top=300 exceeds the default n_candidates=256"):
        hybrid_attention(Q, K, V, n_top=300)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_are_finite_and_near_exact(causal, dtype):
    # regression: inputs of norm ~1e3 gave NaN where exact attention is finite; with
    # logits this sharp every row's mass sits on its own largest logit
    rng = np.random.default_rng(7)
    Q, K = rng.normal(size=(2, 200, 8)) * 300.0
    V = rng.normal(size=(200, 4))
    Q, K, V = (X.astype(dtype) for X in (Q, K, V))
    out = hybrid_attention(Q, K, V, window=200, causal=causal, random_state=0)
    assert np.all(np.isfinite(out))
    exact = softmax_attention(Q, K, V, causal=causal)
    np.testing.assert_allclose(out, exact, atol=1e-3 if dtype == np.float32 else 1e-9)
    out = hybrid_attention(Q, K, V, window=8, n_global=1, causal=causal, random_state=0)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("window,n_top", [(0, 0), (16, 0), (8, 4)])
def test_no_lookahead(window, n_top):
    Q, K, V = _case(8, L=260)
    options = dict(window=window, n_global=1, causal=True, n_components=32, random_state=0)
    if n_top:
        options.update(n_top=n_top, n_candidates=16, candidate_query=np.ones(8))
    out = hybrid_attention(Q, K, V, **options)
    for X in (Q, K, V):
        X[200:] = X[200:] * 50.0 + 3.0
    changed = hybrid_attention(Q, K, V, **options)
    np.testing.assert_array_equal(out[:200], changed[:200])
    assert not np.allclose(out[200:], changed[200:])


@pytest.mark.parametrize("feature_map", naive.FEATURE_MAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_give_no_nan_for_any_map(feature_map, dtype):
    # products of unbounded (relu) features of norm-1e18 rows overflowed float32
    rng = np.random.default_rng(9)
    Q, K = rng.normal(size=(2, 150, 8)) * 1e18
    V = rng.normal(size=(150, 4))
    Q, K, V = (X.astype(dtype) for X in (Q, K, V))
    for causal in (False, True):
        out = hybrid_attention(Q, K, V, window=8, n_global=1, n_top=3, n_candidates=10,
                               candidate_query=np.ones(8), causal=causal,
                               feature_map=feature_map, random_state=0)  # fmt: skip
        assert not np.isnan(out).any()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,n_global", [(9, 1), (70, 3), (1, 0)])
def test_long_sequences_cross_groups(causal, window, n_global):
    # groups of 512 rows made of full blocks take the strided band products
    L = 1100
    Q, K, V = _case(12, L=L)
    mask = np.random.default_rng(12).random(L) < 0.05
    W = draw_projection(16, 8, random_state=12)
    u = np.ones(8)
    for top in ({}, dict(n_top=3, n_candidates=9, candidate_query=u)):
        options = dict(window=window, n_global=n_global, causal=causal, **top)
        ref = _oracle(Q, K, V, W, mask=mask, **options)
        out = hybrid_attention(Q, K, V, projection_matrix=W, key_padding_mask=mask, **options)
        assert _relative(out, ref) < 1e-6
        out32 = hybrid_attention(*(X.astype(np.float32) for X in (Q, K, V)), projection_matrix=W,
                                 key_padding_mask=mask, **options)  # fmt: skip
        assert _relative(out32, ref) < 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_per_head_constant_sets_equal_single_heads(causal):
    import math as _math

    from favorkern.feature_maps import get_feature_map

    Q, K, V = _case(13, L=90, heads=2)
    fmap = get_feature_map("aderf")
    W = draw_projection(16, 8, random_state=13)
    gamma = 1 / _math.sqrt(8)
    sets = [fmap.fit(Q[h], K[h], input_scale=_math.sqrt(gamma)) for h in range(2)]
    options = dict(window=6, n_global=1, causal=causal, feature_map="aderf", projection_matrix=W)
    out = hybrid_attention(Q, K, V, constants=sets, **options)
    for h in range(2):
        ref = hybrid_attention(Q[h], K[h], V[h], constants=sets[h], **options)
        assert _relative(out[h], ref) < 1e-12
    with pytest.raises(ValueError, match="per-head sets"):
        hybrid_attention(Q, K, V, constants=sets * 2 + sets[:1], **options)


def test_causal_ranges_balance_and_cover():
    from favorkern.attention.hybrid_engine import causal_ranges

    assert causal_ranges(1000, 512, 4) == [(0, 1000)]
    for L, workers in ((4096, 2), (10000, 3), (65536, 8)):
        ranges = causal_ranges(L, 64, workers)
        assert len(ranges) == workers
        assert ranges[0][0] == 0 and ranges[-1][1] == L
        assert all(a % 64 == 0 and b > a for a, b in ranges)
        assert all(r[1] == s[0] for r, s in zip(ranges[:-1], ranges[1:], strict=True))
        # later ranges first build the state of more keys: they hold fewer rows
        sizes = [b - a for a, b in ranges]
        assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("n_top", [0, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_head_split_over_threads_matches_oracle(n_top, dtype):
    # one head over ranges of rows: each range starts from the far state and the
    # candidate pool of the keys before it
    from favorkern import _config
    from favorkern.attention.hybrid_engine import TopKeys, hybrid_head
    from favorkern.attention.plan import plan_attention

    L = 700
    Q, K, V = _case(14, L=L)
    mask = np.random.default_rng(14).random(L) < 0.1
    W = draw_projection(16, 8, random_state=14)
    u = np.linspace(-1, 1, 8)
    options = dict(window=9, n_global=1, causal=True)
    if n_top:
        options.update(n_top=n_top, n_candidates=12, candidate_query=u)
    ref = _oracle(Q, K, V, W, mask=mask, **options)
    plan = plan_attention("positive", 8, projection_matrix=W, causal=True)
    feat = plan.features(np.dtype(dtype), {})
    q, k, v = (np.ascontiguousarray(X, dtype=dtype) for X in (Q, K, V))
    top = TopKeys(n_top, 12, K @ u) if n_top else None
    outs = [hybrid_head(feat, q, k, v, mask, plan.gamma, 9, 1, True, top, chunk=16, group=64,
                        workers=workers) for workers in (1, 3)]  # fmt: skip
    assert outs[1].dtype == dtype
    assert _relative(outs[1], ref) < (1e-6 if dtype == np.float64 else 1e-4)
    assert _relative(outs[1], outs[0]) < (1e-12 if dtype == np.float64 else 1e-5)
    with _config.override(HYBRID_GROUP_ROWS=64, ATTENTION_PARALLEL_MIN_WORK=0):
        out = hybrid_attention(Q, K, V, projection_matrix=W, key_padding_mask=mask, **options)
    assert _relative(out, ref) < 1e-6
