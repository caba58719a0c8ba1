"""hybrid_attention's exact top keys by logit among a scored candidate set (``n_top``)."""

from __future__ import annotations

import math

import naive
import numpy as np
import pytest

from favorkern import draw_projection, hybrid_attention, softmax_attention


def _case(seed, L=300, d=8, dv=5, scale=0.7):
    rng = np.random.default_rng(seed)
    Q, K = rng.normal(size=(2, L, d)) * scale
    V = rng.normal(size=(L, dv))
    return Q, K, V, rng.normal(size=d)


def _features(Q, K, n_projections=32, seed=0):
    W = draw_projection(n_projections, Q.shape[1], random_state=seed)
    gamma = 1 / math.sqrt(Q.shape[1])
    return (
        W,
        naive.favor_features(Q, W, "positive", gamma),
        naive.favor_features(K, W, "positive", gamma),
    )


# (window, n_global, n_top, n_candidates): no window, a window crossing the 128-row
# blocks, every key global, one candidate, more candidates than keys.
CONFIGS = [
    (5, 1, 3, 20),
    (0, 0, 4, 10),
    (40, 2, 8, 8),
    (129, 1, 5, 50),
    (7, 400, 2, 5),
    (1, 0, 1, 1),
    (3, 0, 10, 300),
    (16, 1, 1, 200),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,n_global,n_top,n_candidates", CONFIGS)
def test_top_keys_match_naive_oracle(causal, window, n_global, n_top, n_candidates):
    Q, K, V, u = _case(0)
    W, phi_q, phi_k = _features(Q, K)
    options = dict(window=window, n_global=n_global, n_top=n_top, n_candidates=n_candidates,
                   candidate_query=u, causal=causal)  # fmt: skip
    ref = naive.hybrid_top_attention(Q, K, V, phi_q, phi_k, **options)
    out = hybrid_attention(Q, K, V, projection_matrix=W, **options)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 127, 128, 129, 257])
def test_top_keys_match_oracle_at_block_boundaries(L):
    Q, K, V, u = _case(1, L=L)
    W, phi_q, phi_k = _features(Q, K)
    for causal in (False, True):
        options = dict(window=4, n_global=1, n_top=3, n_candidates=12, candidate_query=u,
                       causal=causal)  # fmt: skip
        ref = naive.hybrid_top_attention(Q, K, V, phi_q, phi_k, **options)
        out = hybrid_attention(Q, K, V, projection_matrix=W, **options)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


def test_top_keys_with_fewer_queries_than_keys_match_oracle():
    Q, K, V, u = _case(12, L=260)
    W, phi_q, phi_k = _features(Q[:70], K)
    for candidate_query in (u, None):
        options = dict(window=0, n_global=0, n_top=6, n_candidates=40,
                       candidate_query=candidate_query)  # fmt: skip
        ref = naive.hybrid_top_attention(Q[:70], K, V, phi_q, phi_k, **options)
        out = hybrid_attention(Q[:70], K, V, projection_matrix=W, **options)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_top_keys_with_a_data_map_match_oracle(causal):
    Q, K, V, u = _case(2, L=200)
    K = K * np.linspace(2.0, 0.3, 8)
    gamma = 0.4
    W = draw_projection(16, 8, random_state=1)
    c, phi_q, phi_k = naive.fitted_map_features("aderf", Q, K, W, gamma)
    options = dict(window=10, n_global=1, n_top=4, n_candidates=30, candidate_query=u,
                   causal=causal, gamma=gamma)  # fmt: skip
    ref = naive.hybrid_top_attention(Q, K, V, phi_q, phi_k, **options)
    out = hybrid_attention(Q, K, V, feature_map="aderf", projection_matrix=W, constants=c,
                           **options)  # fmt: skip
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_no_top_keys_is_the_plain_hybrid(causal):
    Q, K, V, _ = _case(3)
    W, phi_q, phi_k = _features(Q, K)
    plain = hybrid_attention(Q, K, V, window=9, n_global=1, causal=causal, projection_matrix=W)
    zero = hybrid_attention(Q, K, V, window=9, n_global=1, n_top=0, causal=causal,
                            projection_matrix=W)  # fmt: skip
    np.testing.assert_array_equal(zero, plain)
    ref = naive.hybrid_attention(Q, K, V, phi_q, phi_k, window=9, n_global=1, causal=causal)
    top_ref = naive.hybrid_top_attention(Q, K, V, phi_q, phi_k, window=9, n_global=1, n_top=0,
                                         n_candidates=1, causal=causal)  # fmt: skip
    np.testing.assert_array_equal(top_ref, ref)


@pytest.mark.parametrize("causal", [False, True])
def test_every_key_taken_is_exact_softmax(causal):
    Q, K, V, u = _case(4, L=150, scale=1.5)
    out = hybrid_attention(Q, K, V, window=0, n_top=150, n_candidates=150, candidate_query=u,
                           causal=causal, n_components=16, random_state=0)  # fmt: skip
    exact = softmax_attention(Q, K, V, causal=causal)
    np.testing.assert_allclose(out, exact, rtol=1e-9, atol=1e-11)


def test_default_direction_is_each_heads_mean_query():
    rng = np.random.default_rng(5)
    Q, K = rng.normal(size=(2, 2, 3, 90, 8))
    V = rng.normal(size=(2, 3, 90, 4))
    W = draw_projection(16, 8, random_state=0)
    out = hybrid_attention(Q, K, V, window=5, n_top=3, n_candidates=10, projection_matrix=W)
    given = hybrid_attention(Q, K, V, window=5, n_top=3, n_candidates=10, projection_matrix=W,
                             candidate_query=Q.mean(axis=-2))  # fmt: skip
    np.testing.assert_array_equal(out, given)
    # Each head scores by its own mean query: a shared one changes the result.
    shared = hybrid_attention(Q, K, V, window=5, n_top=3, n_candidates=10, projection_matrix=W,
                              candidate_query=Q[0, 0].mean(axis=0))  # fmt: skip
    assert not np.allclose(shared[1], out[1])


def test_batched_heads_match_single_heads():
    rng = np.random.default_rng(6)
    Q, K = rng.normal(size=(2, 2, 3, 140, 8))
    V = rng.normal(size=(2, 3, 140, 4))
    U = rng.normal(size=(3, 8))  # one direction per head, broadcast over the batch
    options = dict(window=9, n_global=1, n_top=4, n_candidates=20, causal=True)
    out = hybrid_attention(Q, K, V, candidate_query=U, n_components=32, random_state=0, **options)
    W = draw_projection(32, 8, random_state=0)
    for b in range(2):
        for h in range(3):
            single = hybrid_attention(Q[b, h], K[b, h], V[b, h], candidate_query=U[h],
                                      projection_matrix=W, **options)  # fmt: skip
            np.testing.assert_array_equal(out[b, h], single)


@pytest.mark.parametrize("window", [0, 3, 17])
def test_causal_outputs_ignore_later_tokens(window):
    Q, K, V, u = _case(7, L=400, scale=1.5)
    options = dict(window=window, n_global=2, n_top=5, n_candidates=24, candidate_query=u,
                   causal=True, n_components=32, random_state=0)  # fmt: skip
    out = hybrid_attention(Q, K, V, **options)
    Q2, K2, V2 = Q.copy(), K.copy(), V.copy()
    # Later keys that would win any candidate score, logit and shared stabilizer.
    K2[250:] = 30.0 * u / np.linalg.norm(u) + K2[250:]
    Q2[250:] += 1.0
    V2[250:] = -V2[250:]
    out2 = hybrid_attention(Q2, K2, V2, **options)
    np.testing.assert_array_equal(out[:250], out2[:250])
    assert not np.allclose(out[250:], out2[250:])


def test_dtypes_and_reproducibility():
    Q, K, V, u = _case(8, L=160)
    options = dict(window=8, n_top=4, n_candidates=16, candidate_query=u, n_components=32)
    for causal in (False, True):
        out32 = hybrid_attention(*(X.astype(np.float32) for X in (Q, K, V)), causal=causal,
                                 random_state=3, **options)  # fmt: skip
        out64 = hybrid_attention(Q, K, V, causal=causal, random_state=3, **options)
        assert out32.dtype == np.float32 and out64.dtype == np.float64
        np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)
        again = hybrid_attention(Q, K, V, causal=causal, random_state=3, **options)
        np.testing.assert_array_equal(again, out64)
        other = hybrid_attention(Q, K, V, causal=causal, random_state=4, **options)
        assert not np.allclose(other, out64)


def test_large_norms_stay_finite():
    Q, K, V, u = _case(9, L=200, scale=12.0)
    for causal in (False, True):
        out = hybrid_attention(Q, K, V, window=8, n_top=4, n_candidates=32, candidate_query=u,
                               causal=causal, n_components=16, random_state=0)  # fmt: skip
        assert np.all(np.isfinite(out))


def test_top_keys_take_sharp_distant_keys():
    # Anchor keys every 37 positions share a direction the queries lean on: far from
    # the window, they carry much of the mass, which the top keys make exact.
    rng = np.random.default_rng(10)
    L, d = 400, 16
    Q, K = rng.normal(size=(2, L, d)) * 0.3
    e = np.zeros(d)
    e[0] = 1.0
    K[::37] += 6.0 * e
    Q += 2.0 * e
    V = rng.normal(size=(L, 8))
    exact = softmax_attention(Q, K, V, causal=True)

    def err(A):
        return np.median(np.linalg.norm(A - exact, axis=1) / np.linalg.norm(exact, axis=1))

    options = dict(window=16, n_global=1, causal=True, n_components=64, random_state=0)
    plain = hybrid_attention(Q, K, V, **options)
    top = hybrid_attention(Q, K, V, n_top=8, n_candidates=32, candidate_query=e, **options)
    assert err(top) < 0.2 * err(plain)  # measured: 0.06 against 0.81


def test_bad_input():
    Q, K, V, u = _case(11, L=20)
    with pytest.raises(ValueError, match="n_top"):
        hybrid_attention(Q, K, V, n_top=-1)
    with pytest.raises(TypeError, match="n_top"):
        hybrid_attention(Q, K, V, n_top=1.5)
    with pytest.raises(TypeError, match="n_candidates"):
        hybrid_attention(Q, K, V, n_top=2, n_candidates="8")
    with pytest.raises(ValueError, match="n_candidates must be at least n_top=4"):
        hybrid_attention(Q, K, V, n_top=4, n_candidates=3)
    with pytest.raises(ValueError, match="n_candidates is used only with n_top > 0"):
        hybrid_attention(Q, K, V, n_candidates=8)
    with pytest.raises(ValueError, match="candidate_query is used only with n_top > 0"):
        hybrid_attention(Q, K, V, candidate_query=u)
    with pytest.raises(ValueError, match="needs candidate_query"):
        hybrid_attention(Q, K, V, n_top=2, causal=True)
    with pytest.raises(ValueError, match="feature dimension d = 8"):
        hybrid_attention(Q, K, V, n_top=2, candidate_query=u[:5])
    with pytest.raises(ValueError, match="candidate_query contains NaN"):
        hybrid_attention(Q, K, V, n_top=2, candidate_query=np.full(8, np.nan))
    with pytest.raises(TypeError, match="candidate_query"):
        hybrid_attention(Q, K, V, n_top=2, candidate_query=["a"] * 8)
    with pytest.raises(ValueError, match="do not broadcast"):
        hybrid_attention(Q, K, V, n_top=2, candidate_query=np.ones((3, 8)))
