"""Decoding (FavorAttention.step, continued favor_attention) and fitted constants."""

import io
import pickle

import naive
import numpy as np
import pytest

from favorkern import FavorAttention, _config, favor_attention
from favorkern.attention import plan as plan_module
from favorkern.attention.decoding import DecodingState
from favorkern.feature_maps import get_feature_map

FEATURES = ("positive", "hyperbolic", "trigonometric", "relu")  # the maps tests/naive.py knows
TOL = {np.float64: 1e-6, np.float32: 1e-4}


@pytest.fixture
def small_chunks():
    """Chunks of 16 rows and threads for every size: blocks straddle chunk edges."""
    with _config.override(
        ATTENTION_CHUNK_BYTES=16 * 32 * 8,
        CAUSAL_CHUNK_ROWS=16,
        CAUSAL_GROUP_ROWS=32,  # groups of 2 chunks
        CAUSAL_PIPELINED_GROUP_ROWS=32,
        ATTENTION_PARALLEL_MIN_WORK=0,
    ):
        yield


def _assert_close(got, ref, dtype):
    scale = max(float(np.abs(ref).max()), 1e-300)
    err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]}"


def _oracle(Q, K, V, W, feature_map, mask=None, group=1):
    """naive causal FAVOR per (batch, head); query head i reads key/value head i // group."""
    out = np.empty(Q.shape[:-1] + (V.shape[-1],))
    for idx in np.ndindex(*Q.shape[:-2]):
        kv = idx[:-1] + (idx[-1] // group,) if idx else ()
        m = None if mask is None else mask[kv]
        out[idx] = naive.favor_attention(
            Q[idx], K[kv], V[kv], W, feature_map=feature_map, causal=True, key_padding_mask=m
        )
    return out


def _run_steps(attention, Q, K, V, state, sizes, mask=None):
    """Feed the tokens in blocks of ``sizes`` (cycled) and concatenate the outputs."""
    outs, t, i = [], 0, 0
    L = Q.shape[-2]
    while t < L:
        T = min(sizes[i % len(sizes)], L - t)
        m = None if mask is None else mask[..., t : t + T]
        out, state = attention.step(
            Q[..., t : t + T, :], K[..., t : t + T, :], V[..., t : t + T, :], state,
            key_padding_mask=m,
        )  # fmt: skip
        outs.append(out)
        t, i = t + T, i + 1
    return np.concatenate(outs, axis=-2), state


@pytest.mark.parametrize("feature_map", FEATURES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", [(1,), (1, 5, 17, 1, 2), (40,)])
def test_step_matches_causal_oracle(small_chunks, feature_map, dtype, sizes):
    rng = np.random.default_rng(len(sizes))
    Q, K = rng.normal(scale=0.6, size=(2, 2, 3, 40, 8))
    V = rng.normal(size=(2, 3, 40, 5))
    attention = FavorAttention(n_components=16, feature_map=feature_map, random_state=1).fit(8)
    ref = _oracle(Q, K, V, attention.projection_, feature_map)
    state = attention.initial_state(batch_shape=(2, 3), dv=5, dtype=dtype)
    got, state = _run_steps(attention, *(X.astype(dtype) for X in (Q, K, V)), state, sizes)
    assert got.dtype == dtype and state.n_tokens == 40
    assert state.S.shape == (2, 3, 16, 5) and state.S.dtype == dtype  # O(m dv) per head
    _assert_close(got, ref, dtype)


@pytest.mark.parametrize("sizes", [(1,), (3, 1, 16)])
def test_step_with_key_padding_mask(small_chunks, sizes):
    rng = np.random.default_rng(5)
    Q, K, V = rng.normal(scale=0.6, size=(3, 2, 33, 8))
    mask = rng.random((2, 33)) < 0.3
    mask[0, :4] = True  # rows 0..3 of head 0 see only masked keys: zero outputs
    attention = FavorAttention(n_components=24, random_state=2).fit(8)
    ref = _oracle(Q, K, V, attention.projection_, "positive", mask)
    got, _ = _run_steps(attention, Q, K, V, attention.initial_state((2,), 8), sizes, mask)
    _assert_close(got, ref, np.float64)
    assert np.all(got[0, :4] == 0)
    whole = attention(Q, K, V, causal=True, key_padding_mask=mask)
    _assert_close(whole, ref, np.float64)


@pytest.mark.parametrize("sizes", [(1,), (7,)])
def test_grouped_query_heads_share_key_value_states(small_chunks, sizes):
    rng = np.random.default_rng(6)
    Q = rng.normal(scale=0.6, size=(2, 6, 25, 8))  # 6 query heads
    K, V = rng.normal(scale=0.6, size=(2, 2, 2, 25, 8))  # 2 key/value heads
    attention = FavorAttention(n_components=16, feature_map="hyperbolic", random_state=3).fit(8)
    ref = _oracle(Q, K, V, attention.projection_, "hyperbolic", group=3)
    state = attention.initial_state(batch_shape=(2, 2), dv=8)
    got, state = _run_steps(attention, Q, K, V, state, sizes)
    assert got.shape == (2, 6, 25, 8) and state.S.shape == (2, 2, 16, 8)
    _assert_close(got, ref, np.float64)
    out, fresh = attention(Q, K, V, causal=True, return_state=True)
    _assert_close(out, ref, np.float64)
    np.testing.assert_allclose(fresh.S, state.S, rtol=1e-10)
    # one query head for all key/value heads broadcasts
    one = attention(Q[:, :1], K, V, causal=True, return_state=True)[0]
    _assert_close(one, _oracle(np.repeat(Q[:, :1], 2, 1), K, V, attention.projection_,
                               "hyperbolic"), np.float64)  # fmt: skip


def test_favor_attention_in_pieces_and_saved_states(tmp_path):
    rng = np.random.default_rng(7)
    Q, K, V = rng.normal(scale=0.6, size=(3, 4, 300, 8))
    kwargs = dict(causal=True, n_components=32, feature_map="trigonometric", random_state=0)
    whole = favor_attention(Q, K, V, **kwargs)
    first, state = favor_attention(Q[:, :120], K[:, :120], V[:, :120], return_state=True, **kwargs)
    path = tmp_path / "state.npz"
    state.save(path)
    restored = DecodingState.load(path)
    unpickled = pickle.loads(pickle.dumps(state))
    buffer = io.BytesIO()
    np.savez(buffer, **state.to_dict())
    buffer.seek(0)
    from_dict = DecodingState.from_dict(np.load(buffer))
    rest = [Q[:, 120:], K[:, 120:], V[:, 120:]]
    second, state = favor_attention(*rest, initial_state=state, return_state=True, **kwargs)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=1e-9, atol=1e-12)
    assert state.n_tokens == 300
    for other in (restored, unpickled, from_dict):
        assert other.n_tokens == 120
        again = favor_attention(*rest, initial_state=other, return_state=True, **kwargs)[0]
        np.testing.assert_array_equal(again, second)


def test_copy_branches_a_sequence():
    rng = np.random.default_rng(8)
    Q, K, V = rng.normal(size=(3, 10, 8))
    attention = FavorAttention(n_components=16, random_state=0).fit(8)
    _, state = attention.step(Q[:5], K[:5], V[:5], None)
    branch = state.copy()
    a, _ = attention.step(Q[5:6], K[5:6], V[5:6], state)
    b, _ = attention.step(Q[5:6], K[5:6], V[5:6], branch)
    np.testing.assert_array_equal(a, b)
    assert state.n_tokens == branch.n_tokens == 6


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_large_norms_and_a_dominant_later_key_stay_exact(dtype):
    """The running key stabilizer: huge logits neither overflow nor leak backwards."""
    rng = np.random.default_rng(9)
    Q, K, V = rng.normal(scale=0.5, size=(3, 30, 8))
    K[17] *= 60.0  # exp(w.k) overflows without the stabilizer, in float32 and float64
    Q[20:] *= 20.0
    attention = FavorAttention(n_components=32, random_state=4).fit(8)
    Qd, Kd, Vd = (X.astype(dtype) for X in (Q, K, V))
    whole = attention(Qd, Kd, Vd, causal=True)
    got, _ = _run_steps(attention, Qd, Kd, Vd, None, (1,))
    assert np.isfinite(got).all()
    _assert_close(got, whole.astype(np.float64), dtype)
    prefix, _ = _run_steps(attention, Qd[:17], Kd[:17], Vd[:17], None, (1,))
    np.testing.assert_array_equal(got[:17], prefix)


def _naive_gerf(Q, K, V, W, A, gamma, psi=None, causal=True):
    """Materialized GERF features with the constants given (causal: lower triangle)."""
    q, k = Q * np.sqrt(gamma), K * np.sqrt(gamma)
    if psi is not None:
        q, k = q * psi, k / psi
    d = Q.shape[-1]
    B = np.sqrt(1 - 4 * A)
    wsq = np.sum(W**2, axis=1)

    def phi(X):
        return np.exp(B * X @ W.T - 0.5 * np.sum(X**2, 1, keepdims=True) + A * wsq) * (
            (1 - 4 * A) ** (d / 4) / np.sqrt(W.shape[0])
        )

    kernel = phi(q) @ phi(k).T
    if causal:
        kernel = np.tril(kernel)
    return (kernel @ V) / kernel.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("feature_map", ["optimal", "saderf"])
def test_fitted_adaptive_maps_are_causal_and_decodable(small_chunks, feature_map):
    rng = np.random.default_rng(10)
    scales = np.geomspace(0.3, 1.5, 8)
    calib_q = rng.normal(size=(5, 2, 60, 8)) * scales  # 5 calibration sequences, 2 heads
    calib_k = rng.normal(size=(5, 2, 60, 8)) * scales[::-1] + 0.2
    attention = FavorAttention(n_components=24, feature_map=feature_map, random_state=0)
    with pytest.raises(ValueError, match="fit"):
        attention.fit(8)(calib_q[0], calib_k[0], calib_k[0], causal=True)
    attention.fit(calib_q, calib_k)
    gamma = 1 / np.sqrt(8)
    fmap = get_feature_map(feature_map)
    for h in range(2):
        expected = fmap.fit(calib_q[:, h].reshape(-1, 8), calib_k[:, h].reshape(-1, 8),
                            input_scale=np.sqrt(gamma))  # fmt: skip
        got = attention.frozen_constants(head=h)
        for key in fmap.data_constants:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-12)
            np.testing.assert_allclose(attention.constants_[key][h], expected[key], rtol=1e-12)
    Q, K, V = rng.normal(scale=0.7, size=(3, 2, 37, 8))
    out = attention(Q, K, V, causal=True)
    W = attention.projection_
    for h in range(2):
        c = attention.frozen_constants(head=h)
        ref = _naive_gerf(Q[h], K[h], V[h], W, c["A"], gamma, c.get("psi"))
        _assert_close(out[h], ref, np.float64)
    stepped, _ = _run_steps(attention, Q, K, V, attention.initial_state((2,), 8), (1, 4))
    _assert_close(stepped, out, np.float64)
    # bidirectional calls use the frozen constants too
    bi = attention(Q, K, V)
    c = attention.frozen_constants(head=1)
    ref = _naive_gerf(Q[1], K[1], V[1], W, c["A"], gamma, c.get("psi"), causal=False)
    _assert_close(bi[1], ref, np.float64)


def test_shared_constants_from_two_dimensional_calibration():
    rng = np.random.default_rng(11)
    Qc, Kc = rng.normal(scale=0.8, size=(2, 100, 8))
    attention = FavorAttention(n_components=16, feature_map="optimal", random_state=0)
    attention.fit(Qc, Kc)
    assert np.ndim(attention.constants_["A"]) == 0
    assert attention.frozen_constants() == attention.frozen_constants(head=3)
    Q, K, V = rng.normal(scale=0.6, size=(3, 4, 20, 8))
    out = attention(Q, K, V, causal=True)
    stepped, _ = _run_steps(attention, Q, K, V, None, (1,))
    _assert_close(stepped, out, np.float64)


def test_data_free_fit_with_arrays_keeps_the_projection():
    rng = np.random.default_rng(12)
    Q, K = rng.normal(size=(2, 2, 10, 8))
    a = FavorAttention(n_components=16, random_state=0).fit(Q, K)
    b = FavorAttention(n_components=16, random_state=0).fit(8)
    np.testing.assert_array_equal(a.projection_, b.projection_)
    assert a.constants_ == {} and a.frozen_constants() == {}
    assert FavorAttention().frozen_constants() is None


def test_bad_decoding_input_is_a_clear_error():
    rng = np.random.default_rng(13)
    q, k, v = rng.normal(size=(3, 2, 1, 8))
    attention = FavorAttention(n_components=16, random_state=0).fit(8)
    state = attention.initial_state((2,), 8)
    with pytest.raises(ValueError, match="dv = 8"):
        attention.step(q, k, v[..., :4], state)
    with pytest.raises(ValueError, match="dtype=float32"):
        attention.step(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), state)
    with pytest.raises(ValueError, match="batch shape"):
        attention.step(q, k, v, attention.initial_state((3,), 8))
    with pytest.raises(ValueError, match="same number T"):
        attention.step(q, k[:, :0], v, state)
    other = FavorAttention(n_components=16, random_state=1).fit(8)
    with pytest.raises(ValueError, match="another attention"):
        other.step(q, k, v, state)
    with pytest.raises(ValueError, match="another attention"):
        attention.step(q, k, v, state, gamma=0.5)
    bad = k.copy()
    bad[1, 0, 3] = np.nan
    before = state.copy()
    with pytest.raises(ValueError, match="finite"):
        attention.step(q, bad, v, state)
    np.testing.assert_array_equal(state.S, before.S)
    assert state.n_tokens == 0
    with pytest.raises(ValueError, match="finite"):
        attention.step(q, k, v.reshape(2, 1, 8) * np.inf, state)
    with pytest.raises(ValueError, match="heads"):
        attention.step(rng.normal(size=(3, 1, 8)), k, v, state)
    with pytest.raises(ValueError, match="causal=True"):
        attention(q, k, v, causal=False, return_state=True)
    with pytest.raises(TypeError, match="initial_state"):
        favor_attention(q, k, v, causal=True, initial_state={"S": 1})
    with pytest.raises(ValueError, match="return_error"):
        attention(q, k, v, causal=True, initial_state=state, return_error=True)
    with pytest.raises(ValueError, match="fit"):
        FavorAttention(feature_map="saderf").step(q, k, v)
    with pytest.raises(ValueError, match="projection"):
        FavorAttention().initial_state((2,), 8)
    with pytest.raises(ValueError, match="missing"):
        DecodingState.from_dict({"S": state.S})


def test_docstring_examples():
    import doctest

    from favorkern.attention import decoding, favor

    for module in (decoding, favor, plan_module):
        assert doctest.testmod(module).failed == 0


def test_pickled_attention_and_threads_continue_the_same_sequence():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(14)
    Q, K, V = rng.normal(scale=0.6, size=(3, 2, 40, 8))
    attention = FavorAttention(n_components=16, random_state=0).fit(8)
    whole = attention(Q, K, V, causal=True)
    clone = pickle.loads(pickle.dumps(attention))
    stepped, _ = _run_steps(clone, Q, K, V, None, (1,))
    _assert_close(stepped, whole, np.float64)

    def sequence(_):
        return _run_steps(attention, Q, K, V, attention.initial_state((2,), 8), (1, 3))[0]

    with ThreadPoolExecutor(4) as pool:  # shared instance, one state per thread
        for got in pool.map(sequence, range(8)):
            _assert_close(got, whole, np.float64)


# --- states that cannot be trusted are refused, never run -------------------------------


def _stepped_state():
    attention = FavorAttention(n_components=32, random_state=0).fit(8)
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 1, 8))
    state = attention.initial_state(batch_shape=(2,), dv=8)
    attention.step(q, k, v, state)
    return attention, state, (q, k, v)


def _malformed(entries):
    """Stored states whose arrays disagree with their fingerprint or with each other."""
    S, z, c = entries["S"], entries["z"], entries["c"]
    yield "narrower than the map", {"S": S[:, :4].copy(), "z": z[:, :4].copy()}, "records m = 32"
    yield (
        "wider than the map",
        {"S": np.concatenate([S, S], 1), "z": np.concatenate([z, z], 1)},
        ("records m = 32"),
    )
    yield "c of +inf", {"c": np.full_like(c, np.inf)}, "-inf where no key"
    yield "c of NaN", {"c": np.full_like(c, np.nan)}, "-inf where no key"
    yield "S with NaN", {"S": np.where(S == S.max(), np.nan, S)}, "finite"
    yield "keys in an empty state", {"c": np.full_like(c, -np.inf)}, "S = 0 and z = 0"
    yield "integer S", {"S": S.astype(np.int64)}, "float32 or float64"
    yield "S and z of two dtypes", {"S": S.astype(np.float32)}, "one dtype"
    yield "n_tokens an array", {"n_tokens": np.array([1, 2])}, "n_tokens .* integer"
    yield "n_tokens negative", {"n_tokens": np.int64(-1)}, "n_tokens .* >= 0"
    yield "fingerprint a number", {"fingerprint": np.int64(3)}, "fingerprint .* string"
    yield "foreign fingerprint", {"fingerprint": np.str_("0123abcd")}, "not one of a favorkern"


@pytest.mark.parametrize("case", range(12))
def test_from_dict_and_load_refuse_states_that_disagree_with_their_fingerprint(case):
    attention, state, _ = _stepped_state()
    _, change, message = list(_malformed(state.to_dict()))[case]
    entries = {**state.to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        DecodingState.from_dict(entries)
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    buffer.seek(0)
    with pytest.raises(ValueError, match=f"does not hold a valid decoding state: .*{message}"):
        DecodingState.load(buffer)


def test_state_from_fortran_ordered_arrays_continues_like_the_original():
    attention, state, (q, k, v) = _stepped_state()
    entries = state.to_dict()
    entries["S"] = np.asfortranarray(entries["S"])
    restored = DecodingState.from_dict(entries)
    assert restored.S.flags.c_contiguous
    out, _ = attention.step(q, k, v, restored)
    ref, _ = attention.step(q, k, v, state)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_a_state_changed_by_hand_is_refused_before_the_compiled_step():
    attention, state, (q, k, v) = _stepped_state()
    for change, message in [
        (lambda s: setattr(s.keys, "S", s.keys.S[:, :4].copy()), "do not fit this attention"),
        (lambda s: setattr(s.keys, "z", s.keys.z[:, :4].copy()), "do not fit this attention"),
        (lambda s: setattr(s.keys, "S", np.asfortranarray(s.keys.S)), "C-contiguous"),
        (lambda s: s.keys.c.fill(np.inf), "-inf where no key"),
    ]:
        broken = state.copy()
        change(broken)
        for T in (1, 3):
            with pytest.raises(ValueError, match=message):
                attention.step(q.repeat(T, -2), k.repeat(T, -2), v.repeat(T, -2), broken)


def test_load_of_anything_but_a_saved_state_is_one_clear_error(tmp_path):
    attention, state, _ = _stepped_state()
    single = io.BytesIO()
    np.save(single, np.arange(3))
    objects = io.BytesIO()
    np.savez(objects, **{**state.to_dict(), "S": np.array([object()], dtype=object)})
    saved = io.BytesIO()
    state.save(saved)
    truncated = saved.getvalue()[: len(saved.getvalue()) // 2]
    for blob in [b"", b"garbage", b"PK\x03\x04broken", single.getvalue(), objects.getvalue(),
                 truncated]:  # fmt: skip
        with pytest.raises(ValueError, match="decoding state") as caught:
            DecodingState.load(io.BytesIO(blob))
        assert "pickle" not in str(caught.value)
    path = tmp_path / "state.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="state.npz.* is not a decoding state"):
        DecodingState.load(path)
    with pytest.raises(FileNotFoundError):
        DecodingState.load(tmp_path / "missing.npz")


def test_a_state_records_its_map_object_and_projection():
    from favorkern.feature_maps import (
        PositiveFeatureMap,
        register_feature_map,
        unregister_feature_map,
    )

    class First(PositiveFeatureMap):
        name = "replaced_positive"

    class Second(PositiveFeatureMap):  # same name, same width: another map
        name = "replaced_positive"

        def spec(self, projection, **kwargs):
            return super().spec(2 * projection, **kwargs)

    q, k, v = np.random.default_rng(1).normal(size=(3, 2, 3, 8))
    register_feature_map(First())
    try:
        attention = FavorAttention(n_components=16, feature_map="replaced_positive", random_state=0)
        _, state = attention.step(q, k, v)
        _, called = favor_attention(q, k, v, causal=True, feature_map="replaced_positive",
                                    n_components=16, random_state=0, return_state=True)  # fmt: skip
        assert state.fingerprint.startswith("replaced_positive#1:")
        assert "|m=16|projection=" in state.fingerprint
        register_feature_map(Second(), replace=True)
        with pytest.raises(ValueError, match="replaced under its name"):
            attention.step(q[..., :1, :], k[..., :1, :], v[..., :1, :], state)
        with pytest.raises(ValueError, match="replaced under its name"):
            favor_attention(q, k, v, causal=True, feature_map="replaced_positive",
                            n_components=16, random_state=0, initial_state=called)  # fmt: skip
        # the same map object passed directly: another identity than the registered one
        other = FavorAttention(n_components=16, feature_map=First(), random_state=0)
        _, unregistered = other.step(q, k, v)
        assert unregistered.fingerprint.split("|")[0] != state.fingerprint.split("|")[0]
        assert unregistered.fingerprint.split("|")[2] == state.fingerprint.split("|")[2]
    finally:
        unregister_feature_map("replaced_positive")


FUSED = {"positive", "hyperbolic", "optimal", "sderf"}  # exp maps with identity ``prepare``


@pytest.mark.parametrize("feature_map", ["positive", "hyperbolic", "trigonometric", "optimal",
                                         "saderf", "sderf", "hrf", "tensorsketch"])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_map_steps_like_the_whole_causal_call(feature_map, dtype):
    """Blocks of 1, 7, 64 and 73 tokens, grouped-query heads and a mask, against one
    causal call: 1e-9 relative in float64, 1e-5 in float32; one token of an exp map
    (per-head constants too) takes the one-call step."""
    rng = np.random.default_rng(21)
    L, group = 160, 3
    Q = rng.normal(scale=0.5, size=(2, 2 * group, L, 8))
    K, V = rng.normal(scale=0.5, size=(2, 2, 2, L, 8))
    mask = rng.random((2, 2, L)) < 0.15
    attention = FavorAttention(feature_map, n_components=32, random_state=0)
    attention.fit(Q, K)  # one set of constants per key/value head
    Qd, Kd, Vd = (X.astype(dtype) for X in (Q, K, V))
    whole, _ = attention(Qd, Kd, Vd, causal=True, key_padding_mask=mask, return_state=True)
    state = attention.initial_state((2, 2), 8, dtype=dtype)
    got, state = _run_steps(attention, Qd, Kd, Vd, state, (1, 7, 1, 64, 73), mask)
    assert got.dtype == dtype and state.n_tokens == L
    scale = float(np.abs(whole).max())
    err = float(np.abs(got.astype(np.float64) - whole).max()) / scale
    # signed maps' normalizers cancel in part: float32 rounding grows by their condition
    loose = 1e-5 if get_feature_map(feature_map).nonnegative else 1e-4
    assert err < (1e-9 if dtype == np.float64 else loose), err
    hf = attention._decoder(np.dtype(dtype), None)
    assert (hf.fused() is not None) == (feature_map in FUSED), feature_map


def test_one_token_refuses_values_that_could_overflow_before_changing_the_state():
    attention = FavorAttention(n_components=16, random_state=0).fit(8)
    state = attention.initial_state((2,), 4, dtype=np.float32)
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, 2, 1, 8)).astype(np.float32)
    v = np.full((2, 1, 4), 3e38, dtype=np.float32)
    with pytest.raises(ValueError, match="would overflow float32"):
        attention.step(q, k, v, state)
    assert state.n_tokens == 0 and not state.S.any() and np.all(state.c == -np.inf)
    out, _ = attention.step(q, k, v / 2**40, state)
    assert np.isfinite(out).all()
