"""Continued attention calls and decoding steps under hostile conditions: what they
return and warn, one token broadcast like a block.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_continued_calls_return_and_warn_as_documented():
    """initial_state alone returns the output only; underflowed rows warn in every path."""
    from favorkern import FavorAttention, favor_attention
    from favorkern._warnings import FeatureUnderflowWarning

    Q, K, V = np.random.default_rng(2).standard_normal((3, 50, 8))
    W = FavorAttention(n_components=32, random_state=0).fit(8).projection_
    _, state = favor_attention(Q, K, V, causal=True, projection_matrix=W, return_state=True)
    out = favor_attention(Q, K, V, causal=True, projection_matrix=W, initial_state=state)
    assert isinstance(out, np.ndarray)
    with pytest.warns(FeatureUnderflowWarning):
        favor_attention(Q, K * 1e200, V, causal=True, random_state=0, return_state=True)
    layer = FavorAttention(n_components=64, causal=True, random_state=0).fit(8)
    with pytest.warns(FeatureUnderflowWarning):
        layer.step(Q, K * 1e200, V)
    with pytest.warns(FeatureUnderflowWarning):
        _, state = layer.step(Q[:5], K[:5] * 1e200, V[:5])
    with pytest.warns(FeatureUnderflowWarning):
        layer.step(Q[5:6], K[5:6] * 1e200, V[5:6], state)  # the one-token path


def test_step_broadcasts_one_token_like_a_block():
    """One token with broadcast leading dimensions gave a numba typing error."""
    from favorkern import FavorAttention

    layer = FavorAttention(n_components=32, causal=True, random_state=0).fit(8)
    rng = np.random.default_rng(3)
    Q, K, V = rng.standard_normal((3, 2, 10, 8))
    V = V[..., :4]
    for q, k, v in ((Q[:1, :1], K[:1, :1], V[:1, :1]), (Q[:, :1], K[:1, :1], V[:1, :1])):
        a, b = (
            layer.initial_state(batch_shape=(2,), dv=4),
            layer.initial_state(batch_shape=(2,), dv=4),
        )
        got, _ = layer.step(q, k, v, a)
        full = [np.ascontiguousarray(np.broadcast_to(X, (2, 1, X.shape[-1]))) for X in (q, k, v)]
        want, _ = layer.step(*full, b)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(a.keys.S, b.keys.S)
    with pytest.raises(TypeError, match="DecodingState"):
        layer.step(Q[:, :1], K[:, :1], V[:, :1], "x")
