"""favorkern.attention.plan: the plan every attention entry point builds and runs."""

import warnings

import numpy as np
import pytest

from favorkern import FavorAttention, draw_projection, favor_attention
from favorkern._validation import check_attention_inputs
from favorkern._warnings import FeatureUnderflowWarning
from favorkern.attention.plan import AttentionPlan, head_groups, plan_attention, run_plan


def _sharp_last_query(s=30.0, L=64, d=8, seed=0):
    """Keys along ``u`` at norm ``s`` and a last query along ``-u``: every feature product
    of that query is about ``exp(-s (max w.u - min w.u))``, below float32's range (not
    float64's); the other queries are moderate."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    Q = rng.normal(size=(L, d))
    K = s * u + 0.3 * rng.normal(size=(L, d))
    V = rng.normal(size=(L, 4))
    Q[-1] = -s * u
    return (X.astype(np.float32) for X in (Q, K, V))


def test_float32_fallback_keeps_causality():
    """Rows lost to float32's range come from float64 one by one: changing only the last
    query left every earlier row moved (the whole call was recomputed in float64)."""
    Q, K, V = _sharp_last_query()
    W = draw_projection(64, 8, random_state=0)
    kwargs = dict(causal=True, projection_matrix=W, gamma=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureUnderflowWarning)  # float64 keeps the row
        lost = favor_attention(Q, K, V, **kwargs)
    other = Q.copy()
    other[-1] = Q[0]
    kept = favor_attention(other, K, V, **kwargs)
    assert lost.dtype == np.float32
    # the same shapes take the same chunks and threads: earlier rows are bit-identical
    np.testing.assert_array_equal(lost[:-1], kept[:-1])
    # the oracle's unstabilized features underflow here: float64 FAVOR is the reference
    wide = favor_attention(*(X.astype(np.float64) for X in (Q, K, V)), **kwargs)
    np.testing.assert_allclose(lost[-1], wide[-1], rtol=1e-5, atol=1e-6)


def test_float32_fallback_replaces_only_the_lost_rows():
    """Rows float32 computed are its own (not float64's cast back)."""
    Q, K, V = _sharp_last_query()
    W = draw_projection(64, 8, random_state=0)
    kwargs = dict(causal=False, projection_matrix=W, gamma=1.0)
    got = favor_attention(Q, K, V, **kwargs)
    alone = favor_attention(Q[:-1], K, V, **kwargs)  # no lost row: no fallback
    np.testing.assert_allclose(got[:-1], alone, rtol=1e-6, atol=1e-7)
    wide = favor_attention(*(X.astype(np.float64) for X in (Q, K, V)), **kwargs)
    np.testing.assert_allclose(got[-1], wide[-1], rtol=1e-5, atol=1e-6)


def test_plan_runs_as_favor_attention():
    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 3, 30, 8))
    Q, K, V, mask, batch = check_attention_inputs(Q, K, V, True)
    plan = plan_attention("hyperbolic", 8, n_components=32, causal=True, random_state=3)
    assert isinstance(plan, AttentionPlan) and plan.n_components == 32
    with pytest.raises(AttributeError):
        plan.gamma = 1.0  # frozen
    ref = favor_attention(
        Q, K, V, causal=True, feature_map="hyperbolic", n_components=32, random_state=3
    )
    np.testing.assert_array_equal(run_plan(plan, Q, K, V, mask, batch), ref)


def test_head_groups_cover_the_heads_once():
    sets = [{"A": 0.0}, {"A": 1.0}, {"A": 2.0}]
    x = np.arange(2 * 6 * 1 * 1).reshape(2, 6, 1, 1)
    seen = np.concatenate([x[sl] for sl, _ in head_groups(6, sets)], axis=1)
    np.testing.assert_array_equal(seen, x)
    assert [c["A"] for _, c in head_groups(6, sets)] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="multiple"):
        list(head_groups(4, sets))
    with pytest.raises(ValueError, match="no head axis"):
        list(head_groups(None, sets))


def test_favor_attention_takes_constants_like_the_layer():
    """favor_attention takes frozen constants (shared or per head), as FavorAttention
    and favorkern.dask do; with them an adaptive map is causal-safe."""
    rng = np.random.default_rng(2)
    Q, K, V = rng.normal(scale=0.5, size=(3, 4, 40, 8))
    layer = FavorAttention("optimal", 32, random_state=0).fit(Q[:2], K[:2])
    per_head = [layer.frozen_constants(h) for h in range(2)]
    for causal in (False, True):
        got = favor_attention(
            Q[:2], K[:2], V[:2], causal=causal, feature_map="optimal",
            projection_matrix=layer.projection_, constants=per_head,
        )  # fmt: skip
        np.testing.assert_allclose(got, layer(Q[:2], K[:2], V[:2], causal=causal), rtol=1e-12)
    shared = {"A": -0.1}
    out = favor_attention(Q, K, V, causal=True, feature_map="optimal", constants=shared,
                          n_components=32, random_state=0)  # fmt: skip
    assert out.shape == V.shape
    with pytest.raises(TypeError, match="constants must be a dict"):
        favor_attention(Q, K, V, feature_map="optimal", constants="A", random_state=0)
    with pytest.raises(ValueError, match="multiple"):
        favor_attention(Q, K, V, feature_map="optimal", constants=per_head + per_head[:1])
    with pytest.raises(ValueError, match="causal"):
        favor_attention(Q, K, V, causal=True, feature_map="optimal")
