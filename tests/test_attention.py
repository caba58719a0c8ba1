"""favorkern.attention against the naive oracles of tests/naive.py."""

import doctest
import subprocess
import sys

import naive
import numpy as np
import pytest

import favorkern.attention as attention_module
from favorkern import FavorAttention, _config, draw_projection, favor_attention, softmax_attention
from favorkern.attention import causal as causal_module
from favorkern.attention import plan as plan_module

FEATURES = naive.FEATURE_MAPS
TOL = {np.float64: 1e-6, np.float32: 1e-4}


@pytest.fixture
def small_chunks():
    """Chunks of 16 rows and threads for every size: awkward sizes hit chunk edges."""
    with _config.override(
        ATTENTION_CHUNK_BYTES=16 * 32 * 8,  # 16 rows at m = 32
        RECURRENT_CHUNK_BYTES=16 * 32 * 8,
        CAUSAL_CHUNK_ROWS=16,
        CAUSAL_GROUP_ROWS=32,  # groups of 2 chunks
        CAUSAL_PIPELINED_GROUP_ROWS=32,
        ATTENTION_PARALLEL_MIN_WORK=0,
        EXACT_CHUNK_SCORES=64,
        EXACT_PARALLEL_MIN_SCORES=0,
    ):
        yield


def test_every_builtin_data_free_map_has_an_oracle():
    """A map added to the registry without an oracle in tests/naive.py fails here."""
    import favorkern.feature_maps as fm

    builtin = {
        name
        for name in fm.feature_map_names(data_free=True)
        if type(fm.get_feature_map(name)).__module__.startswith("favorkern.")
    }
    assert builtin <= set(naive.FEATURE_MAPS) | set(naive.OWN_ORACLES)


def _inputs(rng, q_shape, k_shape, d=8, dv=3, sigma=0.6):
    Q = rng.normal(scale=sigma, size=q_shape + (d,))
    K = rng.normal(scale=sigma, size=k_shape + (d,))
    V = rng.normal(size=k_shape + (dv,))
    return Q, K, V


def _assert_close(got, ref, dtype):
    scale = max(float(np.abs(ref).max()), 1e-300)
    err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]}"


def _oracle_heads(fn, Q, K, V, mask, batch, **kwargs):
    """Apply a one-head oracle over broadcast leading dimensions."""
    Qb = np.broadcast_to(Q, batch + Q.shape[-2:])
    Kb = np.broadcast_to(K, batch + K.shape[-2:])
    Vb = np.broadcast_to(V, batch + V.shape[-2:])
    Mb = None if mask is None else np.broadcast_to(mask, batch + mask.shape[-1:])
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]))
    for idx in np.ndindex(*batch):
        m = None if Mb is None else Mb[idx]
        out[idx] = fn(Qb[idx], Kb[idx], Vb[idx], key_padding_mask=m, **kwargs)
    return out


# -- agreement with the oracle -----------------------------------------------------


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 33, 97, 200])
def test_causal_matches_oracle(small_chunks, features, dtype, length):
    rng = np.random.default_rng(length)
    Q, K, V = _inputs(rng, (length,), (length,))
    W = draw_projection(16, 8, random_state=1)
    ref = naive.favor_attention(Q, K, V, W, feature_map=features, causal=True)
    for method in ("chunked", "recurrent"):
        got = favor_attention(
            *(X.astype(dtype) for X in (Q, K, V)),
            causal=True,
            feature_map=features,
            projection_matrix=W,
            method=method,
        )
        assert got.dtype == dtype
        _assert_close(got, ref, dtype)


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lengths", [(1, 1), (2, 3), (16, 1), (17, 15), (31, 33), (97, 64)])
def test_bidirectional_matches_oracle(small_chunks, features, dtype, lengths):
    rng = np.random.default_rng(sum(lengths))
    Q, K, V = _inputs(rng, (lengths[0],), (lengths[1],))
    W = draw_projection(16, 8, random_state=2)
    ref = naive.favor_attention(Q, K, V, W, feature_map=features)
    got = favor_attention(
        *(X.astype(dtype) for X in (Q, K, V)), feature_map=features, projection_matrix=W
    )
    assert got.dtype == dtype
    _assert_close(got, ref, dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("method", ["chunked", "recurrent"])
def test_batch_heads_broadcast_and_mask(small_chunks, causal, method):
    rng = np.random.default_rng(3)
    length = 37
    Q, K, V = _inputs(rng, (2, 3, length), (1, 3, length))
    mask = rng.random((2, 1, length)) < 0.3
    mask[0, 0, :5] = True  # causal rows 0..4 of batch 0 see only masked keys
    W = draw_projection(24, 8, random_state=3)
    batch = (2, 3)
    got = favor_attention(
        Q, K, V, causal=causal, projection_matrix=W, key_padding_mask=mask, method=method
    )
    assert got.shape == batch + (length, 3)
    ref = _oracle_heads(naive.favor_attention, Q, K, V, mask, batch, W=W, causal=causal)
    _assert_close(got, ref, np.float64)
    exact = softmax_attention(Q, K, V, causal=causal, key_padding_mask=mask)
    exact_ref = _oracle_heads(naive.softmax_attention, Q, K, V, mask, batch, causal=causal)
    _assert_close(exact, exact_ref, np.float64)
    if causal:
        assert np.all(got[0, :, :5] == 0) and np.all(exact[0, :, :5] == 0)


def test_default_chunks_and_threads_match_oracle():
    """Production chunk sizes, several chunks per worker, parallel scan (one head)."""
    rng = np.random.default_rng(4)
    length = 5000
    Q, K, V = _inputs(rng, (length,), (length,), d=16, dv=5)
    W = draw_projection(64, 16, random_state=4)
    for causal in (False, True):
        ref = naive.favor_attention(Q[:, :], K, V, W, causal=causal)
        for dtype in (np.float64, np.float32):
            got = favor_attention(
                *(X.astype(dtype) for X in (Q, K, V)), causal=causal, projection_matrix=W
            )
            _assert_close(got, ref, dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_exact_matches_oracle(small_chunks, causal):
    rng = np.random.default_rng(5)
    Q, K, V = _inputs(rng, (2, 29), (2, 29))
    ref = _oracle_heads(naive.softmax_attention, Q, K, V, None, (2,), causal=causal, gamma=0.3)
    for dtype in (np.float64, np.float32):
        got = softmax_attention(*(X.astype(dtype) for X in (Q, K, V)), causal=causal, gamma=0.3)
        assert got.dtype == dtype
        _assert_close(got, ref, dtype)


def test_scale_enters_as_square_root_on_both_sides():
    rng = np.random.default_rng(6)
    Q, K, V = _inputs(rng, (20,), (20,))
    W = draw_projection(32, 8, random_state=6)
    got = favor_attention(Q, K, V, projection_matrix=W, gamma=0.5)
    ref = naive.favor_attention(Q, K, V, W, gamma=0.5)
    _assert_close(got, ref, np.float64)
    # the default scale is 1/sqrt(d)
    _assert_close(
        favor_attention(Q, K, V, projection_matrix=W),
        favor_attention(Q, K, V, projection_matrix=W, gamma=8**-0.5),
        np.float64,
    )


# -- causality, convergence, robustness ---------------------------------------------


@pytest.mark.parametrize("method", ["chunked", "recurrent"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_causal_prefix_is_independent_of_later_tokens(small_chunks, method, dtype):
    """Perturbing tokens i+1.. (even to huge norms) leaves outputs 0..i unchanged."""
    rng = np.random.default_rng(7)
    length = 150  # 10 groups of chunks: the two-thread pipeline
    Q, K, V = (X.astype(dtype) for X in _inputs(rng, (length,), (length,)))
    W = draw_projection(32, 8, random_state=7)
    base = favor_attention(Q, K, V, causal=True, projection_matrix=W, method=method)
    for i in (0, 15, 16, 40, 68, 100, 148):
        Q2, K2, V2 = Q.copy(), K.copy(), V.copy()
        tail = (length - i - 1, 8)
        # later keys with norm ~30 would dominate any non-causal key stabilizer
        K2[i + 1 :] = rng.normal(scale=30 / np.sqrt(8), size=tail)
        Q2[i + 1 :] = rng.normal(scale=30 / np.sqrt(8), size=tail)
        V2[i + 1 :] = rng.normal(size=(length - i - 1, 3)) * 100
        out = favor_attention(Q2, K2, V2, causal=True, projection_matrix=W, method=method)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[: i + 1], base[: i + 1], rtol=1e-6, atol=0)
        # stronger: the key stabilizer of row i sees keys 0..i only, so the prefix is
        # bit-identical (a shared chunk- or sequence-wide maximum would change rounding)
        np.testing.assert_array_equal(out[: i + 1], base[: i + 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("masked", [False, True])
def test_causal_pipeline_matches_one_thread(small_chunks, dtype, masked):
    """The two-thread pipeline runs the same operations as one thread: bit-identical,
    with key constants that grow inside and across groups and with masked keys."""
    from favorkern.attention.plan import AttentionProjection, attention_features
    from favorkern.feature_maps import get_feature_map

    rng = np.random.default_rng(21)
    length = 301
    Q, K, V = (X.astype(dtype) for X in _inputs(rng, (length,), (length,)))
    K[::37] *= 6.0  # sharp keys raise the running maximum now and then
    mask = rng.random(length) < 0.2 if masked else None
    if masked:
        mask[:20] = True  # no key at all for the first rows
    W = draw_projection(32, 8, random_state=21)
    fmap = get_feature_map("positive")
    proj = AttentionProjection(W, 32, fmap.draw(32, np.random.default_rng(0)))
    features = attention_features(fmap, proj, 8**-0.5, dtype)
    outs, states = [], []
    for workers in (1, 2):
        out = np.empty((length, 3), dtype=dtype)
        states.append(
            causal_module.causal_chunked(features, Q, K, V, mask, out, 16, workers=workers)
        )
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(states[0].S, states[1].S)
    assert states[0].c == states[1].c
    ref = naive.favor_attention(Q, K, V, W, causal=True, key_padding_mask=mask)
    _assert_close(outs[1], ref, dtype)


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_causal_on_any_number_of_threads(small_chunks, monkeypatch, workers):
    """One thread, the two-thread pipeline and ranges over more threads: one answer."""
    monkeypatch.setattr(plan_module, "n_threads", lambda: workers)
    rng = np.random.default_rng(22)
    Q, K, V = _inputs(rng, (203,), (203,))
    mask = rng.random(203) < 0.1
    W = draw_projection(32, 8, random_state=22)
    ref = naive.favor_attention(Q, K, V, W, causal=True, key_padding_mask=mask)
    got = favor_attention(Q, K, V, causal=True, projection_matrix=W, key_padding_mask=mask)
    _assert_close(got, ref, np.float64)


def test_converges_to_exact_attention_as_features_grow():
    rng = np.random.default_rng(8)
    Q, K, V = _inputs(rng, (64,), (64,), d=8, sigma=0.5)
    for causal in (False, True):
        exact = softmax_attention(Q, K, V, causal=causal)
        errors = []
        for m in (8, 128, 2048):
            trials = [
                np.mean(
                    (
                        favor_attention(Q, K, V, causal=causal, n_components=m, random_state=s)
                        - exact
                    )
                    ** 2
                )
                for s in range(4)
            ]
            errors.append(np.mean(trials))
        # MSE ~ 1/m: each 16x more features cut it by ~16
        assert errors[1] < errors[0] / 4 and errors[2] < errors[1] / 4, errors
        assert errors[2] < 1e-4


@pytest.mark.parametrize("features", ["positive", "hyperbolic"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_large_norms_stay_finite(features, causal, dtype):
    rng = np.random.default_rng(9)
    length, d = 200, 16
    directions = rng.normal(size=(2, length, d))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    norms = rng.uniform(1, 30, size=(2, length, 1))
    norms[:, ::7] = 30.0
    Q, K = (directions * norms).astype(dtype)
    V = rng.normal(size=(length, 4)).astype(dtype)
    out = favor_attention(Q, K, V, causal=causal, feature_map=features, random_state=0)
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= np.abs(V).max() * (1 + 1e-5)  # convex combination of V


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_are_zero(causal):
    rng = np.random.default_rng(10)
    Q, K, V = _inputs(rng, (3, 12), (3, 12))
    mask = np.zeros((3, 12), dtype=bool)
    mask[1] = True  # head 1: every key masked
    mask[2, :4] = True  # head 2: the first 4 keys masked (causal rows 0..3 see none)
    for fn in (favor_attention, softmax_attention):
        with np.errstate(all="raise"):
            out = fn(Q, K, V, causal=causal, key_padding_mask=mask)
        assert np.isfinite(out).all()
        assert np.all(out[1] == 0)
        assert np.any(out[0] != 0)
        if causal:
            assert np.all(out[2, :4] == 0) and np.all(out[2, 4:] != 0)


def test_mask_equals_dropping_the_keys():
    rng = np.random.default_rng(11)
    Q, K, V = _inputs(rng, (10,), (30,))
    mask = rng.random(30) < 0.5
    W = draw_projection(16, 8, random_state=11)
    _assert_close(
        favor_attention(Q, K, V, projection_matrix=W, key_padding_mask=mask),
        favor_attention(Q, K[~mask], V[~mask], projection_matrix=W),
        np.float64,
    )


# -- API -------------------------------------------------------------------------


def test_dtypes_and_reproducibility():
    rng = np.random.default_rng(12)
    Q, K, V = _inputs(rng, (10,), (10,))
    assert favor_attention(Q.astype(np.float32), K, V).dtype == np.float64
    a = favor_attention(Q, K, V, random_state=3, projection="gaussian")
    b = favor_attention(Q, K, V, random_state=3, projection="gaussian")
    assert np.array_equal(a, b)
    W = draw_projection(256, 8, random_state=3)
    assert np.array_equal(
        favor_attention(Q, K, V, random_state=3), favor_attention(Q, K, V, projection_matrix=W)
    )


def test_favor_attention_class():
    rng = np.random.default_rng(13)
    Q, K, V = _inputs(rng, (2, 10), (2, 10))
    layer = FavorAttention(n_components=32, feature_map="hyperbolic", causal=True, random_state=0)
    out = layer(Q, K, V)
    W = layer.projection_
    assert W.shape == (16, 8)  # 32 outputs, two per projection
    expected = favor_attention(Q, K, V, causal=True, feature_map="hyperbolic", projection_matrix=W)
    assert np.array_equal(out, expected)
    assert np.array_equal(layer(Q, K, V), out)
    assert not np.array_equal(layer.redraw().projection_, W)
    # a seeded instance replays the same sequence of projections
    again = FavorAttention(n_components=16, random_state=0).fit(8)
    assert np.array_equal(again.projection_, W)
    assert np.array_equal(again.redraw().projection_, layer.projection_)
    with pytest.raises(ValueError, match="d = 5"):
        layer(Q[..., :5], K[..., :5], V)
    with pytest.raises(ValueError, match="no projection"):
        FavorAttention().redraw()
    assert "n_components=32" in repr(layer)


def _bad(**kwargs):
    rng = np.random.default_rng(14)
    args = dict(zip("QKV", _inputs(rng, (2, 6), (2, 6)), strict=True))
    args.update(kwargs)
    return args


@pytest.mark.parametrize("fn", [favor_attention, softmax_attention])
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"K": np.ones((2, 6, 5))}, "K"),
        ({"V": np.ones((2, 7, 3))}, "V"),
        ({"K": np.ones((2, 7, 8)), "V": np.ones((2, 7, 3)), "causal": True}, "causal"),
        ({"key_padding_mask": np.zeros((2, 5), dtype=bool)}, "key_padding_mask"),
        ({"key_padding_mask": np.zeros((3, 6), dtype=bool)}, "key_padding_mask"),
        ({"key_padding_mask": np.zeros((2, 6))}, "key_padding_mask"),
        ({"Q": np.full((2, 6, 8), np.nan)}, "Q"),
        ({"V": np.full((2, 6, 3), np.inf)}, "V"),
        ({"K": np.ones((3, 6, 8))}, "broadcast"),
        ({"Q": np.ones(8)}, "Q"),
        ({"gamma": -1.0}, "gamma"),
    ],
)
def test_bad_input_names_the_argument(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**_bad(**kwargs))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_components": 0}, "n_components"),
        ({"feature_map": "sigmoid"}, "feature_map"),
        ({"projection": "haar"}, "projection"),
        ({"projection_matrix": np.ones((4, 5))}, "projection_matrix"),
        ({"projection_matrix": np.full((4, 8), np.nan)}, "projection_matrix"),
        ({"method": "fast"}, "method"),
    ],
)
def test_bad_favor_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        favor_attention(**_bad(**kwargs))


def test_docstring_examples():
    failures, _ = doctest.testmod(attention_module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_numba_is_not_imported_by_default_paths():
    code = (
        "import sys, numpy as np, favorkern\n"
        "x = np.ones((4, 3))\n"
        "favorkern.favor_attention(x, x, x, causal=True)\n"
        "favorkern.favor_attention(x, x, x)\n"
        "favorkern.softmax_attention(x, x, x)\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method", ["chunked", "recurrent"])
def test_causal_prefix_survives_a_dominant_future_key(small_chunks, method):
    """A later key at the peak of the feature map (k' = w, logit |w|^2/2 ~ 128) would
    underflow every earlier float32 feature under a look-ahead key stabilizer."""
    rng = np.random.default_rng(15)
    length, d = 40, 256
    Q, K = rng.normal(scale=0.6, size=(2, length, d)).astype(np.float32)
    V = rng.normal(size=(length, 3)).astype(np.float32)
    W = draw_projection(32, d, random_state=15)
    peak = W[np.argmax(np.einsum("ij,ij->i", W, W))] * d**0.25  # k' = d^(-1/4) k = w
    base = favor_attention(Q, K, V, causal=True, projection_matrix=W, method=method)
    for i in (3, 16, 20):
        K2 = K.copy()
        K2[i + 1 :] = peak.astype(np.float32)
        out = favor_attention(Q, K2, V, causal=True, projection_matrix=W, method=method)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[: i + 1], base[: i + 1], rtol=1e-6, atol=0)


def test_command_line(capsys, tmp_path):
    from favorkern.cli import main

    assert (
        main(
            [
                "attention",
                "--lengths",
                "16",
                "33",
                "--d",
                "4",
                "--repeats",
                "1",
                "--no-progress",
                "--causal",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert "causal" in table[0] and "rel err" in table[1]
    assert [line.split()[0] for line in table[2:]] == ["16", "33"]
    rng = np.random.default_rng(16)
    for name in "QKV":
        np.save(tmp_path / f"{name}.npy", rng.normal(scale=0.3, size=(2, 20, 4)))
    files = [f"--{n}={tmp_path / (n[0].upper() + '.npy')}" for n in ("queries", "keys", "values")]
    assert main(["attention", *files, "--repeats", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "20"
    assert main(["attention", files[0], "--no-progress"]) == 2
    assert "together" in capsys.readouterr().err
    assert main(["attention", "--n-components", "0", "--no-progress"]) == 2
