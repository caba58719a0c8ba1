"""favorkern.attention.state: the key state (S, z, c) and its four operations.

A state stands for the unnormalized sums ``S e^c = sum_j phi(k_j) v_j^T`` and
``z e^c = sum_j phi(k_j)``; every operation must keep those sums, whatever the
stabilizers, and a causal prefix must never see a later key.  The oracle is the
direct float64 sum over all keys.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from favorkern.attention.state import KeyState, exclusive_scan, merge

M, DV = 5, 3


def _state_of(features, values, const):
    """The state of keys with these (unstabilized) features: divided by ``e^const``."""
    state = KeyState.empty(M, DV, np.float64)
    if len(features):
        state.rescale(const)
        state.add(features * np.exp(-const), values)
    return state


def _sums(state):
    """The unnormalized sums a state stands for (zeros for an empty state)."""
    if state.is_empty:
        return np.zeros((M, DV)), np.zeros(M)
    scale = np.exp(state.c)
    return state.S * scale, state.z * scale


def _pieces(seed, n_pieces, empty_every):
    """Key pieces with stabilizers far apart (up to e^-40 between pieces)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(n_pieces):
        n = 0 if empty_every and i % empty_every == 0 else int(rng.integers(1, 6))
        log_scale = float(rng.uniform(-40.0, 40.0))
        features = rng.uniform(0.1, 1.0, size=(n, M)) * np.exp(log_scale)
        values = rng.normal(size=(n, DV))
        pieces.append((features, values, log_scale))
    return pieces


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_pieces=st.integers(1, 6),
    empty_every=st.sampled_from([0, 2, 3]),
)
def test_merge_keeps_the_sums_of_all_keys(seed, n_pieces, empty_every):
    pieces = _pieces(seed, n_pieces, empty_every)
    states = [_state_of(*piece) for piece in pieces]
    total = merge(states)
    features = np.concatenate([f for f, _, _ in pieces])
    values = np.concatenate([v for _, v, _ in pieces])
    S, z = _sums(total)
    np.testing.assert_allclose(S, features.T @ values, rtol=1e-12, atol=1e-12 * np.abs(S).max())
    np.testing.assert_allclose(z, features.sum(axis=0), rtol=1e-12)
    live = [c for (f, _, c) in pieces if len(f)]
    assert total.c == (max(live) if live else -np.inf)
    assert isinstance(total.c, float)  # scalar states give a scalar stabilizer


def test_merge_of_states_without_keys_is_empty():
    total = merge([KeyState.empty(M, DV, np.float64) for _ in range(3)])
    assert total.is_empty
    assert not total.S.any() and not total.z.any()


def test_merge_returns_the_requested_dtype_and_accumulates_in_float64():
    # float32 states whose sum loses the small one in float32 arithmetic but not in float64
    big = KeyState(np.full((M, DV), 2.0**24, np.float32), np.full(M, 2.0**24, np.float32), 0.0)
    ones = [KeyState(np.ones((M, DV), np.float32), np.ones(M, np.float32), 0.0)] * 2
    total = merge([big, *ones], dtype=np.float32)
    assert total.S.dtype == np.float32 and total.z.dtype == np.float32
    assert np.all(total.S == 2.0**24 + 2.0)  # float32 summation in order gives 2^24


def test_merge_of_batched_states_is_per_head():
    rng = np.random.default_rng(3)
    c1, c2 = np.array([0.0, -np.inf, 5.0]), np.array([2.0, 1.0, -np.inf])
    a = KeyState(rng.random((3, M, DV)), rng.random((3, M)), c1)
    b = KeyState(rng.random((3, M, DV)), rng.random((3, M)), c2)
    a.S[1], a.z[1], b.S[2], b.z[2] = 0.0, 0.0, 0.0, 0.0  # empty heads hold zeros
    total = merge([a, b])
    np.testing.assert_array_equal(total.c, [2.0, 1.0, 5.0])
    for h in range(3):
        heads = [KeyState(s.S[h], s.z[h], float(s.c[h])) for s in (a, b)]
        one = merge(heads)
        np.testing.assert_allclose(total.S[h], one.S, rtol=1e-14)
        np.testing.assert_allclose(total.z[h], one.z, rtol=1e-14)


@pytest.mark.parametrize("const", [-30.0, 0.0, 0.5, 300.0])
def test_rescale_keeps_the_sums_and_an_empty_state_takes_the_constant(const):
    rng = np.random.default_rng(4)
    state = _state_of(rng.random((4, M)), rng.normal(size=(4, DV)), -31.0)
    before = _sums(state)
    state.rescale(const)
    assert state.c == const
    for got, ref in zip(_sums(state), before, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    empty = KeyState.empty(M, DV, np.float32)
    empty.rescale(const)
    assert empty.c == const and not empty.S.any() and empty.S.dtype == np.float32


def test_add_absorbs_features_times_values():
    rng = np.random.default_rng(5)
    F, V = rng.random((6, M)), rng.normal(size=(6, DV))
    state = KeyState.empty(M, DV, np.float64)
    state.c = 0.0
    state.add(F[:2], V[:2])
    state.add(F[2:], V[2:], ones=np.ones(4))
    np.testing.assert_allclose(state.S, F.T @ V, rtol=1e-14)
    np.testing.assert_allclose(state.z, F.sum(axis=0), rtol=1e-14)


def test_copy_is_independent_and_astype_keeps_the_stabilizer():
    state = KeyState(np.ones((M, DV)), np.ones(M), np.array([1.5]))
    other = state.copy()
    other.S[0, 0], other.z[0], other.c[0] = 7.0, 7.0, 9.0
    assert state.S[0, 0] == 1.0 and state.z[0] == 1.0 and state.c[0] == 1.5
    low = state.astype(np.float32)
    assert low.S.dtype == np.float32 and low.z.dtype == np.float32 and low.c is state.c


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_pieces=st.integers(1, 6), offset=st.booleans())
def test_exclusive_scan_is_the_merge_of_everything_before(seed, n_pieces, offset):
    pieces = _pieces(seed, n_pieces + 1, empty_every=3)
    start = _state_of(*pieces[0]) if offset else None
    states = [_state_of(*piece) for piece in pieces[1:]]
    prefixes = exclusive_scan(states, offset=start)
    assert len(prefixes) == len(states) + 1
    assert prefixes[0] is start
    for i in range(1, len(prefixes)):
        before = ([start] if offset else []) + states[:i]
        ref = merge(before)
        for got, want in zip(_sums(prefixes[i]), _sums(ref), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
        # causal: the stabilizer is the maximum over the states before i only
        assert prefixes[i].c == max(s.c for s in before)


def test_a_later_state_changes_no_earlier_prefix():
    """Prefixes of a sequence and of the same sequence with a huge last state are the
    same arrays: a causal output never depends on a later key, not even by rounding."""
    pieces = _pieces(6, 4, empty_every=0)
    states = [_state_of(*piece) for piece in pieces]
    rng = np.random.default_rng(7)
    later = _state_of(rng.random((3, M)) * np.exp(300.0), rng.normal(size=(3, DV)), 300.0)
    short = exclusive_scan(states)
    longer = exclusive_scan(states + [later])
    assert short[0] is None and longer[0] is None  # no offset
    for a, b in zip(short[1:], longer[1 : len(short)], strict=True):
        np.testing.assert_array_equal(a.S, b.S)
        np.testing.assert_array_equal(a.z, b.z)
        assert a.c == b.c
