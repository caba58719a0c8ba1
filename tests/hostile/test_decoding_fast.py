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


def _hybrid(feature_map, dtype, n=6):
    from favorkern import HybridAttention

    rng = np.random.default_rng(1)
    layer = HybridAttention(
        window=3, n_global=1, n_top=2, n_candidates=4, n_components=16,
        feature_map=feature_map, causal=True, random_state=0,
    )  # fmt: skip
    X = rng.standard_normal((2, 3, 20, 8))
    layer.fit(X, X)
    state = None
    for _ in range(n):
        _, state = layer.step(*_tokens(rng, (2, 3), dtype=dtype), state)
    return layer, state, rng


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "name, index", [("S", (0, 1, 0)), ("win_k", (0, 1, 0)), ("glob_k", (1, 0, 2)),
                    ("pool_k", (2, 0, 1)), ("pool_psi", (2,)), ("B", (1,))],
)  # fmt: skip
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_hybrid_step_refuses_a_state_with_non_finite_arrays(feature_map, dtype, name, index, bad):
    """An array of the state set to NaN/inf by hand: an error, never NaN outputs or a
    key silently left out (a NaN logit fails every comparison).  Pooled features are
    read where their key is among the top ones: the whole row is set."""
    layer, state, rng = _hybrid(feature_map, dtype)
    state.arrays[name][index] = bad
    with pytest.raises(ValueError, match="must be finite"):
        layer.step(*_tokens(rng, (2, 3), dtype=dtype), state)


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hybrid_step_keeps_its_state_finite_after_an_extreme_key(feature_map, dtype):
    """A finite key whose features overflow: refused where it enters or leaves the
    window (the state untouched), or absorbed with its features 0; never a NaN state."""
    layer, state, rng = _hybrid(feature_map, dtype, n=2)
    for t in range(6):
        q, k, v = _tokens(rng, (2, 3), dtype=dtype)
        if t == 0:
            k[1, 2] = np.finfo(dtype).max / 10
        before = {name: a.copy() for name, a in state.arrays.items()}
        try:
            out, state = layer.step(q, k, v, state)
        except ValueError as error:
            assert "finite" in str(error)
            assert all(np.array_equal(before[n], state.arrays[n]) for n in before)
            continue
        assert np.isfinite(out).all()
        assert all(np.isfinite(a).all() for a in state.arrays.values() if a.dtype.kind == "f"
                   if a is not state.arrays["B"] and a is not state.arrays["pool_r"]
                   and a is not state.arrays["pool_score"])  # fmt: skip


def test_hybrid_token_names_scoring_directions_of_other_heads():
    """Directions fitted for 3 query heads, a token of 6: the error of the whole call
    (naming candidate_query), not numpy's broadcast error."""
    from favorkern import HybridAttention

    rng = np.random.default_rng(0)
    layer = HybridAttention(window=2, n_top=1, n_candidates=2, n_components=8, causal=True,
                            random_state=0)  # fmt: skip
    X = rng.standard_normal((2, 3, 20, 8))
    layer.fit(X, X)
    q = rng.standard_normal((2, 6, 1, 8))
    k = rng.standard_normal((2, 3, 1, 8))
    with pytest.raises(ValueError, match="candidate_query"):
        layer.step(q, k, k)


def _layers(dtype):
    from favorkern import HybridAttention

    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 3, 20, 8))
    hybrid = HybridAttention(window=3, n_global=1, n_top=2, n_candidates=4, n_components=16,
                             causal=True, random_state=0).fit(X, X)  # fmt: skip
    favor = FavorAttention(n_components=16, random_state=0).fit(8)
    return favor, hybrid


def _sequence(layers, seed, dtype, n=12):
    """The outputs of ``n`` one-token steps of both layers on a sequence of ``seed``."""
    rng = np.random.default_rng(seed)
    states = [None, None]
    outs = []
    for _ in range(n):
        q, k, v = _tokens(rng, (2, 3), dtype=dtype)
        for i, layer in enumerate(layers):
            out, states[i] = layer.step(q, k, v, states[i])
            outs.append(out)
    return np.stack(outs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_steps_of_many_states_from_many_threads(dtype):
    """Per-thread scratch: sequences stepped at once from 4 threads, each state its own,
    give what they give one after another."""
    from concurrent.futures import ThreadPoolExecutor

    layers = _layers(dtype)
    alone = [_sequence(layers, seed, dtype) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda seed: _sequence(layers, seed, dtype), range(8)))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-6)


def _continue(args):
    layers, states, seed, dtype = args
    rng = np.random.default_rng(seed)
    outs = []
    for _ in range(4):
        q, k, v = _tokens(rng, (2, 3), dtype=dtype)
        for i, layer in enumerate(layers):
            out, states[i] = layer.step(q, k, v, states[i])
            outs.append(out)
    return np.stack(outs)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_steps_continue_alike_in_forked_and_spawned_processes(method):
    """Layers and states after some steps (buffers, caches built), continued in a child
    process: the same outputs as here."""
    import multiprocessing

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    layers = _layers(np.float64)
    rng = np.random.default_rng(4)
    states = [None, None]
    for _ in range(5):
        q, k, v = _tokens(rng, (2, 3))
        for i, layer in enumerate(layers):
            _, states[i] = layer.step(q, k, v, states[i])
    args = (layers, [s.copy() for s in states], 9, np.float64)
    with multiprocessing.get_context(method).Pool(1) as pool:
        child = pool.apply(_continue, (args,))
    np.testing.assert_allclose(child, _continue(args), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", ["favor", "hybrid"])
@pytest.mark.parametrize("n_tokens", [-1, -5, 2.5, "3"])
def test_step_refuses_a_token_count_changed_by_hand(layer, n_tokens):
    """n_tokens not a non-negative integer: a ValueError naming it before anything
    changes (a negative position wrote outside the state's arrays)."""
    if layer == "favor":
        attention, state, rng = _started("positive", np.float64)
    else:
        attention, state, rng = _hybrid("positive", np.float64)
    arrays = state.arrays if layer == "hybrid" else vars(state.keys)
    before = {name: np.array(a) for name, a in arrays.items() if isinstance(a, np.ndarray)}
    state.n_tokens = n_tokens
    with pytest.raises(ValueError, match="n_tokens"):
        attention.step(*_tokens(rng, (2, 3)), state)
    for name, a in before.items():
        np.testing.assert_array_equal(arrays[name], a)


@pytest.mark.parametrize("tokens", [1, 8])
def test_hybrid_step_refuses_values_whose_sums_would_overflow(tokens):
    """float32 values near the top of the range: the error of FavorAttention.step
    (divide V by a power of two) before anything changes, not an overflowed state."""
    layer, state, rng = _hybrid("positive", np.float32)
    for _ in range(6):
        q, k, v = rng.standard_normal((3, 2, 3, tokens, 8)).astype(np.float32)
        v[..., :4] = np.finfo(np.float32).max / 3
        before = {name: a.copy() for name, a in state.arrays.items()}
        with pytest.raises(ValueError, match="would overflow"):
            layer.step(q, k, v[..., :4], state)
        assert all(np.array_equal(before[n], state.arrays[n]) for n in before)
        layer.step(q, k, rng.standard_normal((2, 3, tokens, 4)).astype(np.float32), state)


def test_hybrid_prompt_refuses_values_whose_sums_would_overflow():
    """A prompt into an empty state: the same error, the state left empty."""
    layer, _, rng = _hybrid("positive", np.float32, n=0)
    state = layer.initial_state(batch_shape=(2, 3), dv=4, dtype=np.float32)
    before = {name: a.copy() for name, a in state.arrays.items()}
    q, k = rng.standard_normal((2, 2, 3, 9, 8)).astype(np.float32)
    v = np.full((2, 3, 9, 4), np.finfo(np.float32).max / 3, dtype=np.float32)
    with pytest.raises(ValueError, match="would overflow"):
        layer.step(q, k, v, state)
    assert state.n_tokens == 0
    assert all(np.array_equal(before[n], state.arrays[n]) for n in before)


@pytest.mark.parametrize("feature_map", ["positive", "hyperbolic", "trigonometric"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch, heads", [((), None), ((2,), None), ((2, 3), None), ((2, 3), 6)])
def test_token_steps_match_one_block_step(feature_map, dtype, batch, heads):
    """One-token steps (the one-call exp step, or the general one) against one step of
    the whole block (chunked causal attention), for batch shapes (), (2,), (2, 3) and
    grouped query heads; float32 stays float32.  Tolerances relative to the largest
    output."""
    rng = np.random.default_rng(5)
    L, d = 12, 8
    q_batch = batch if heads is None else batch[:-1] + (heads,)
    Q = (rng.standard_normal(q_batch + (L, d)) * 0.6).astype(dtype)
    K = (rng.standard_normal(batch + (L, d)) * 0.6).astype(dtype)
    V = rng.standard_normal(batch + (L, 4)).astype(dtype)
    attention = FavorAttention(n_components=16, feature_map=feature_map, random_state=0).fit(d)
    whole, _ = attention.step(Q, K, V, attention.initial_state(batch, dv=4, dtype=dtype))
    state = attention.initial_state(batch, dv=4, dtype=dtype)
    outs = []
    for t in range(L):
        out, state = attention.step(Q[..., t : t + 1, :], K[..., t : t + 1, :],
                                    V[..., t : t + 1, :], state)  # fmt: skip
        outs.append(out)
    got = np.concatenate(outs, axis=-2)
    assert got.dtype == dtype and whole.dtype == dtype
    scale = float(np.abs(whole).max())
    tol = 1e-9 if dtype == np.float64 else 1e-5
    assert float(np.abs(got.astype(np.float64) - whole).max()) <= tol * scale


@pytest.mark.parametrize("layer", ["favor", "hybrid"])
def test_query_heads_not_a_multiple_of_the_key_heads(layer):
    """4 query heads over 3 key/value heads: a ValueError about the heads, the state
    unchanged."""
    if layer == "favor":
        attention, state, rng = _started("positive", np.float64)
    else:
        attention, state, rng = _hybrid("positive", np.float64)
    n_tokens = state.n_tokens
    _, k, v = _tokens(rng, (2, 3))
    with pytest.raises(ValueError, match="heads"):
        attention.step(rng.standard_normal((2, 4, 1, 8)), k, v, state)
    assert state.n_tokens == n_tokens
