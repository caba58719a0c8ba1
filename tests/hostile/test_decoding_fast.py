"""One-token decoding steps (FavorAttention.step, HybridAttention.step) under hostile
inputs and states: clear errors, no silent NaN, states never half-updated."""

from __future__ import annotations

import numpy as np
import pytest

from favorkern import FavorAttention

MAPS = ("positive", "trigonometric")  # the one-call exp path and the general path


def _tokens(rng, batch, d=8, dv=4, dtype=np.float64):
    q, k = rng.standard_normal((2,) + batch + (1, d)).astype(dtype)
    return q, k, rng.standard_normal(batch + (1, dv)).astype(dtype)


def _started(feature_map, dtype, batch=(2, 3), n=3):
    rng = np.random.default_rng(0)
    attention = FavorAttention(n_components=16, feature_map=feature_map, random_state=0).fit(8)
    state = attention.initial_state(batch_shape=batch, dv=4, dtype=dtype)
    for _ in range(n):
        attention.step(*_tokens(rng, batch, dtype=dtype), state)
    return attention, state, rng


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("where", ["S", "z"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_step_refuses_a_state_with_non_finite_sums(feature_map, dtype, where, bad):
    """S or z set to NaN/inf by hand: an error naming them, never NaN or silent 0 rows."""
    attention, state, rng = _started(feature_map, dtype)
    getattr(state.keys, where)[0, 1, 0] = bad
    n_tokens = state.n_tokens
    with pytest.raises(ValueError, match="S and z of a decoding state must be finite"):
        attention.step(*_tokens(rng, (2, 3), dtype=dtype), state)
    assert state.n_tokens == n_tokens
