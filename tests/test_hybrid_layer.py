"""HybridAttention: whole calls, token-by-token decoding and its HybridState."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from favorkern import HybridAttention, hybrid_attention
from favorkern.attention import HybridState


def _data(seed=0, heads=3, L=150, d=8, dv=6, scale=0.6):
    rng = np.random.default_rng(seed)
    Q, K = rng.normal(scale=scale, size=(2, 2, heads, L, d))
    V = rng.normal(size=(2, heads, L, dv))
    return Q, K, V


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


SETTINGS = [
    dict(window=16, n_global=1, n_top=4, n_candidates=20),
    dict(window=0),
    dict(window=5, n_global=3),
    dict(window=1, n_top=2, n_candidates=3),
    dict(window=200, n_global=2),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("feature_map", ["positive", "trigonometric", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_steps_equal_the_whole_causal_call(settings, feature_map, dtype):
    Q, K, V = (X.astype(dtype) for X in _data())
    layer = HybridAttention(n_components=32, feature_map=feature_map, causal=True,
                            random_state=0, **settings).fit(Q, K)  # fmt: skip
    whole = layer(Q, K, V)
    state = layer.initial_state(batch_shape=(2, 3), dv=6, dtype=dtype)
    parts, t = [], 0
    for T in (1, 1, 7, 1, 64, 3, 73):  # blocks of tokens of several sizes
        out, state = layer.step(
            Q[..., t : t + T, :], K[..., t : t + T, :], V[..., t : t + T, :], state
        )
        parts.append(out)
        t += T
    assert t == 150 and state.n_tokens == 150
    steps = np.concatenate(parts, axis=-2)
    assert steps.dtype == dtype
    assert _relative(steps, whole) < (1e-9 if dtype == np.float64 else 1e-5)


def test_grouped_query_heads_and_masks():
    rng = np.random.default_rng(1)
    L, d = 120, 8
    Q = rng.normal(scale=0.6, size=(9, L, d))  # 9 query heads over 3 key/value heads
    K = rng.normal(scale=0.6, size=(3, L, d))
    V = rng.normal(size=(3, L, 4))
    mask = rng.random((3, L)) < 0.2
    layer = HybridAttention(
        window=8, n_global=1, n_top=3, n_candidates=10, n_components=32, causal=True,
        random_state=0,
    ).fit(Q, np.repeat(K, 3, axis=0))  # fmt: skip
    whole = layer(Q, K, V, key_padding_mask=np.repeat(mask, 3, axis=0))
    state = layer.initial_state(batch_shape=(3,), dv=4, n_query_heads=9)
    steps = []
    for t in range(L):
        out, state = layer.step(Q[:, t : t + 1], K[:, t : t + 1], V[:, t : t + 1], state,
                                key_padding_mask=mask[:, t : t + 1])  # fmt: skip
        steps.append(out)
    assert _relative(np.concatenate(steps, axis=1), whole) < 1e-9


def test_state_size_is_independent_of_the_prefix():
    Q, K, V = _data(L=300)
    layer = HybridAttention(window=8, n_global=1, n_top=2, n_candidates=6, n_components=16,
                            causal=True, random_state=0).fit(Q, K)  # fmt: skip
    state = layer.initial_state(batch_shape=(2, 3), dv=6)
    sizes = []
    for t in (50, 300):
        layer.step(Q[..., :t, :][..., -50:, :], K[..., :t, :][..., -50:, :],
                   V[..., :t, :][..., -50:, :], state)  # fmt: skip
        sizes.append(sum(a.nbytes for a in state.arrays.values()))
    assert sizes[0] == sizes[1]


def test_state_pickles_saves_and_continues():
    Q, K, V = _data(L=60)
    layer = HybridAttention(window=4, n_global=1, n_top=2, n_candidates=5, n_components=16,
                            causal=True, random_state=0).fit(Q, K)  # fmt: skip
    whole = layer(Q, K, V)
    state = layer.initial_state(batch_shape=(2, 3), dv=6)
    first, state = layer.step(Q[..., :30, :], K[..., :30, :], V[..., :30, :], state)
    buffer = io.BytesIO()
    state.save(buffer)
    buffer.seek(0)
    for restored in (pickle.loads(pickle.dumps(state)), HybridState.load(buffer),
                     HybridState.from_dict(state.to_dict()), state.copy()):  # fmt: skip
        rest, _ = layer.step(Q[..., 30:, :], K[..., 30:, :], V[..., 30:, :], restored)
        assert _relative(np.concatenate([first, rest], axis=-2), whole) < 1e-9


def test_untrusted_states_are_refused():
    Q, K, V = _data(L=20)
    layer = HybridAttention(window=4, n_top=2, n_candidates=5, n_components=16, causal=True,
                            random_state=0).fit(Q, K)  # fmt: skip
    state = layer.initial_state(batch_shape=(2, 3), dv=6)
    layer.step(Q[..., :10, :], K[..., :10, :], V[..., :10, :], state)
    data = state.to_dict()
    narrow = dict(data, S=data["S"][..., :3, :])
    with pytest.raises(ValueError, match="S of a hybrid decoding state must be float64 of shape"):
        HybridState.from_dict(narrow)
    bad = dict(data, pool_psi=np.full_like(data["pool_psi"], np.nan))
    with pytest.raises(ValueError, match="pool_psi of a hybrid decoding state must be finite"):
        HybridState.from_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        HybridState.from_dict({"S": data["S"]})
    wrong_type = dict(data, win_hidden=data["win_hidden"].astype(np.float64))
    with pytest.raises(ValueError, match="win_hidden"):
        HybridState.from_dict(wrong_type)
    with pytest.raises(ValueError, match="not a hybrid decoding state file"):
        HybridState.load(io.BytesIO(b"not a zip file"))
    fortran = HybridState.from_dict(dict(data, win_k=np.asfortranarray(data["win_k"])))
    assert fortran.arrays["win_k"].flags.c_contiguous
    other = HybridAttention(window=4, n_top=2, n_candidates=5, n_components=16, causal=True,
                            random_state=1).fit(Q, K)  # fmt: skip
    with pytest.raises(ValueError, match="made by another attention"):
        other.step(Q[..., 10:, :], K[..., 10:, :], V[..., 10:, :], state)
    with pytest.raises(ValueError, match="the state holds float64"):
        layer.step(*(X[..., 10:, :].astype(np.float32) for X in (Q, K, V)), state)


def test_call_matches_hybrid_attention_and_refuses_unfitted_causal_top_keys():
    Q, K, V = _data(L=80)
    layer = HybridAttention(window=8, n_top=2, n_candidates=6, n_components=16,
                            random_state=0)  # fmt: skip
    out = layer(Q, K, V)  # bidirectional: the mean query of each head scores the keys
    ref = hybrid_attention(
        Q, K, V, window=8, n_top=2, n_candidates=6, n_components=16,
        projection_matrix=layer.projection_, random_state=layer._draw_seed,
    )  # fmt: skip
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    causal = HybridAttention(window=8, n_top=2, causal=True, random_state=0)
    with pytest.raises(ValueError, match="fit"):
        causal(Q, K, V)
    with pytest.raises(ValueError, match="fit"):
        causal.initial_state()
    per_head = HybridAttention(window=[2, 4, 8], causal=True, random_state=0).fit(Q, K)
    assert per_head(Q, K, V).shape == V.shape
    with pytest.raises(ValueError, match="decoding takes one window"):
        per_head.step(Q[..., :1, :], K[..., :1, :], V[..., :1, :])


def _token_by_token(layer, Q, K, V, mask, state, start, stop):
    outs = []
    for t in range(start, stop):
        out, state = layer.step(Q[..., t : t + 1, :], K[..., t : t + 1, :], V[..., t : t + 1, :],
                                state, key_padding_mask=mask[..., t : t + 1])  # fmt: skip
        outs.append(out)
    return np.concatenate(outs, axis=-2)


PREFILL_SETTINGS = [
    dict(window=8, n_global=2, n_top=3, n_candidates=6),
    dict(window=0, n_top=2, n_candidates=4),
    dict(window=5),
    dict(window=8, n_global=1),
]


@pytest.mark.parametrize("settings", PREFILL_SETTINGS)
@pytest.mark.parametrize(
    "feature_map, dtype",
    [("positive", np.float64), ("positive", np.float32), ("trigonometric", np.float64),
     ("hyperbolic", np.float32)],
)  # fmt: skip
def test_prompt_state_equals_token_by_token(settings, feature_map, dtype):
    """A prompt (T > 1 from an empty state) takes the block engine and builds the state
    at once: its outputs, its state and every later token equal stepping one token at a
    time, at the edges of the window, the candidates and the engine's blocks."""
    from favorkern import _config

    rng = np.random.default_rng(7)
    L, group = 60, 3
    Q = rng.normal(scale=0.7, size=(2, 2 * group, L, 8)).astype(dtype)
    K, V = rng.normal(scale=0.7, size=(2, 2, 2, L, 8)).astype(dtype)
    mask = rng.random((2, 2, L)) < 0.2
    layer = HybridAttention(n_components=16, feature_map=feature_map, causal=True,
                            random_state=0, **settings).fit(Q, np.repeat(K, group, 1))  # fmt: skip
    tol = 1e-9 if dtype == np.float64 else 1e-5

    def fresh():
        return layer.initial_state((2, 2), 8, dtype=dtype, n_query_heads=2 * group)

    reference = fresh()
    ref = _token_by_token(layer, Q, K, V, mask, reference, 0, L)
    with _config.override(HYBRID_CHUNK_ROWS=8, HYBRID_GROUP_ROWS=16):
        for T in (2, 4, 5, 7, 8, 9, 10, 11, 16, 17, 24, 33, 47):
            state = fresh()
            out, state = layer.step(Q[..., :T, :], K[..., :T, :], V[..., :T, :], state,
                                    key_padding_mask=mask[..., :T])  # fmt: skip
            assert state.n_tokens == T and out.dtype == dtype
            assert _relative(out, ref[..., :T, :]) < tol, T
            rest = _token_by_token(layer, Q, K, V, mask, state, T, L)
            assert _relative(rest, ref[..., T:, :]) < tol, T
    # the state after the whole prompt is the stepped one (the same keys in every slot)
    state = fresh()
    layer.step(Q, K, V, state, key_padding_mask=mask)
    for name in ("win_k", "win_v", "win_hidden", "glob_k", "glob_hidden", "pool_pos"):
        np.testing.assert_array_equal(state.arrays[name], reference.arrays[name], err_msg=name)
    np.testing.assert_allclose(state.arrays["B"], reference.arrays["B"], rtol=1e-6)
    scale = np.abs(reference.arrays["S"]).max()
    np.testing.assert_allclose(state.arrays["S"], reference.arrays["S"], atol=tol * 10 * scale)


def test_one_token_refuses_bad_input_before_changing_the_state():
    Q, K, V = _data(L=20)
    layer = HybridAttention(window=4, n_global=1, n_top=2, n_candidates=5, n_components=16,
                            causal=True, random_state=0).fit(Q, K)  # fmt: skip
    state = layer.initial_state(batch_shape=(2, 3), dv=6)
    layer.step(Q[..., :10, :], K[..., :10, :], V[..., :10, :], state)
    before = state.copy()
    bad = K[..., 10:11, :].copy()
    bad[0, 1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        layer.step(Q[..., 10:11, :], bad, V[..., 10:11, :], state)
    state.arrays["win_k"] = state.arrays["win_k"][:, :2].copy()  # changed by hand
    with pytest.raises(ValueError, match="do not fit its configuration"):
        layer.step(Q[..., 10:11, :], K[..., 10:11, :], V[..., 10:11, :], state)
    state.arrays["win_k"] = before.arrays["win_k"].copy()
    state.arrays["S"] = np.asfortranarray(state.arrays["S"])
    with pytest.raises(ValueError, match="do not fit its configuration"):
        layer.step(Q[..., 10:11, :], K[..., 10:11, :], V[..., 10:11, :], state)
    state.arrays["S"] = np.ascontiguousarray(state.arrays["S"])
    assert state.n_tokens == 10
    for name, value in before.arrays.items():
        np.testing.assert_array_equal(state.arrays[name], value, err_msg=name)
    out, _ = layer.step(Q[..., 10:11, :], K[..., 10:11, :], V[..., 10:11, :], state)
    assert np.isfinite(out).all() and state.n_tokens == 11


def test_one_token_takes_the_compiled_features_for_exp_maps():
    Q, K, V = _data(L=12)
    for feature_map, fast in (("positive", True), ("hyperbolic", True), ("trigonometric", False),
                              ("saderf", False)):  # fmt: skip
        layer = HybridAttention(window=4, n_components=16, feature_map=feature_map, causal=True,
                                random_state=0).fit(Q, K)  # fmt: skip
        out, state = layer.step(Q[..., :1, :], K[..., :1, :], V[..., :1, :])
        decoder = layer._decoder(8, np.float64, layer.gamma_)
        assert (decoder.finish is not None) == fast, feature_map


def test_threads_step_their_own_sequences_with_one_layer():
    """Per-token scratch is per thread: concurrent steps of one layer on two
    sequences give what each gives alone; the layer pickles after stepping."""
    from concurrent.futures import ThreadPoolExecutor

    Q, K, V = _data(L=60)
    layer = HybridAttention(window=4, n_global=1, n_top=2, n_candidates=5, n_components=16,
                            causal=True, random_state=0).fit(Q, K)  # fmt: skip
    sequences = [(Q, K, V), (Q[..., ::-1, :].copy(), K[..., ::-1, :].copy(), V)]

    def run(arrays):
        q, k, v = arrays
        state = layer.initial_state(batch_shape=(2, 3), dv=6)
        return _token_by_token(layer, q, k, v, np.zeros((2, 3, 60), bool), state, 0, 60)

    alone = [run(arrays) for arrays in sequences]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, sequences * 3))
    for i, out in enumerate(together):
        np.testing.assert_array_equal(out, alone[i % 2])
    restored = pickle.loads(pickle.dumps(layer))
    state = restored.initial_state(batch_shape=(2, 3), dv=6)
    again = _token_by_token(restored, Q, K, V, np.zeros((2, 3, 60), bool), state, 0, 60)
    np.testing.assert_array_equal(again, alone[0])


@pytest.mark.parametrize("settings", [dict(window=8, n_global=1),
                                      dict(window=8, n_global=1, n_top=2, n_candidates=6)])
def test_prompt_outputs_do_not_look_ahead(settings):
    """Rows of a prompt step do not change when later tokens of the prompt change
    (bit for bit without top keys; the block engine's top-key products may round
    earlier rows differently, by ~1e-16), nor does the state when only queries do."""
    Q, K, V = _data(L=90)
    layer = HybridAttention(n_components=16, causal=True, random_state=0, **settings).fit(Q, K)
    out, state = layer.step(Q, K, V)
    rng = np.random.default_rng(5)
    later = [X.copy() for X in (Q, K, V)]
    for X in later:
        X[..., 50:, :] = rng.normal(size=X[..., 50:, :].shape)
    changed, _ = layer.step(*later)
    if settings.get("n_top"):
        assert _relative(changed[..., :50, :], out[..., :50, :]) < 1e-12
    else:
        np.testing.assert_array_equal(changed[..., :50, :], out[..., :50, :])
    _, same = layer.step(later[0], K, V)
    for name, value in state.arrays.items():
        np.testing.assert_array_equal(same.arrays[name], value, err_msg=name)


def test_one_token_checks_every_state_after_its_shapes_are_known():
    Q, K, V = _data(L=12)
    layer = HybridAttention(window=4, n_components=16, causal=True, random_state=0).fit(Q, K)
    other = HybridAttention(window=4, n_components=16, causal=True, random_state=1).fit(Q, K)
    state = layer.initial_state(batch_shape=(2, 3), dv=6)
    token = (Q[..., :1, :], K[..., :1, :], V[..., :1, :])
    for _ in range(3):  # the shapes are known after the first
        layer.step(*token, state)
    with pytest.raises(ValueError, match="made by another attention"):
        layer.step(*token, other.initial_state(batch_shape=(2, 3), dv=6))
    with pytest.raises(ValueError, match="the state holds batch shape"):
        layer.step(*token, layer.initial_state(batch_shape=(2, 3), dv=6, n_query_heads=6))
    with pytest.raises(ValueError, match="the state holds float32"):
        layer.step(*token, layer.initial_state(batch_shape=(2, 3), dv=6, dtype=np.float32))
    with pytest.raises(TypeError, match="HybridState"):
        layer.step(*token, {"S": 1})
    assert state.n_tokens == 3


ALL_MAPS = ["positive", "hyperbolic", "optimal", "sderf", "saderf", "aderf", "whitened", "fitted",
            "hrf", "tensorsketch"]  # fmt: skip


@pytest.mark.parametrize("feature_map", ALL_MAPS)
def test_every_map_steps_like_the_whole_causal_call(feature_map):
    """A prompt, single tokens and blocks (1, 7, 64, 73) against one causal call."""
    Q, K, V = _data(L=160, d=8)
    layer = HybridAttention(window=8, n_global=1, n_top=2, n_candidates=6, n_components=32,
                            feature_map=feature_map, causal=True, random_state=0)  # fmt: skip
    layer = layer.fit(Q, K)
    whole = layer(Q, K, V)
    parts, t, state = [], 0, None
    for T in (20, 1, 7, 1, 64, 1, 66):
        out, state = layer.step(Q[..., t : t + T, :], K[..., t : t + T, :], V[..., t : t + T, :],
                                state)  # fmt: skip
        parts.append(out)
        t += T
    assert t == 160
    assert _relative(np.concatenate(parts, axis=-2), whole) < 1e-9


def test_read_only_inputs_step_like_writeable_ones():
    from favorkern import FavorAttention

    Q, K, V = _data(L=12)
    frozen = [X.copy() for X in (Q, K, V)]
    for X in frozen:
        X.setflags(write=False)
    hybrid = HybridAttention(window=4, n_components=16, causal=True, random_state=0).fit(Q, K)
    favor = FavorAttention(n_components=16, random_state=0).fit(8)
    for layer, state in ((hybrid, hybrid.initial_state((2, 3), 6)),
                         (favor, favor.initial_state((2, 3), 6))):  # fmt: skip
        reference = state.copy()
        for t in range(3):
            got, _ = layer.step(*(X[..., t : t + 1, :] for X in frozen), state)
            want, _ = layer.step(*(X[..., t : t + 1, :] for X in (Q, K, V)), reference)
            np.testing.assert_array_equal(got, want)
