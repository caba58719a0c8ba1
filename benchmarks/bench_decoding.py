"""Benchmark decoding (FavorAttention.step) and the cost of the sampled error estimate.

A script, not a test.  d = dv = 64, m = 256, float32 unless ``--dtype``; medians.

``decode`` table, per head count (1 and 12):

* ``step T=1``: microseconds per token of ``FavorAttention.step`` with one new token;
* ``floor T=1``: the step's own work in bare numpy at the same shapes, buffers
  preallocated: one token's feature map for the queries and for the keys
  (``x W^T``, max, subtract, ``exp``), the output product ``phi(q) S`` and the rank-1
  state update ``S += phi(k) v^T`` (``np.matmul`` into a buffer, then an add: numpy
  has no in-place rank-1 update); ratio = step / floor;
* ``step T=64``: microseconds per token when the tokens come in blocks of 64;
* ``recompute``: microseconds to get the next token's output without a state, by
  causal ``favor_attention`` over the whole prefix (``--prefix`` tokens) — what a
  generator without decoding pays;
* ``exact/KV``: exact attention of the new token against a cache of ``--prefix``
  keys and values (``O(prefix d)``, the softmax KV-cache baseline).

fast-transformers' per-token CPU recurrence is timed only when
``import fast_transformers`` works (it is not installed here: building it takes
several minutes).

``error`` table: ``favor_attention`` at L = 2^16 and, interleaved with it, the
estimate that ``return_error=True`` adds (64 sampled rows, one head), bidirectional
and causal.

``hybrid`` table (``--hybrid``): microseconds per token at prefixes 1k-32k, SmolLM2's
layout (9 query heads over 3 key/value heads, d = 64), one thread, CPU time:
``HybridAttention.step`` (window 64, one global key, top 16 of 128 candidates) and
``FavorAttention.step`` with one new token, against exact attention of the token over
the KV cache (torch SDPA with grouped-query heads; numpy where torch is missing).
The states are fed the prefix first (``step`` with blocks of tokens).

``floor`` table (``--floor``): microseconds per token at prefixes 1k-32k, 9 query
heads over 3 key/value heads and 12 heads, d = 64: ``FavorAttention.step`` and
``HybridAttention.step`` with one new token, each against its bare products
(:func:`favor_bare`, :func:`hybrid_bare`: the same products for all heads, one numpy
or numba call each on preallocated arrays), against exact attention of the token
over the KV cache (torch SDPA with one query; numpy without torch), and
fast-transformers' recurrent form in torch ops.

``prefill`` table (``--prefill [L ...]``): ``HybridAttention.step`` over a prompt
from an empty state against one causal call of the same length.

``--coverage N``: over N random problems, how often the 95% interval of the mean
relative row error covers the true mean (and the median's interval the true median).

Usage::

    python benchmarks/bench_decoding.py
    python benchmarks/bench_decoding.py --coverage 500 --skip-decode --skip-error
    FAVORKERN_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        python benchmarks/bench_decoding.py --hybrid --skip-decode --skip-error
    FAVORKERN_NUM_THREADS=1 ... python benchmarks/bench_decoding.py --floor --prefill \
        --skip-decode --skip-error
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

D = DV = 64
M = 256


def median_time(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def load():
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def decode_table(heads_list, dtype, prefix, repeats):
    from favorkern import FavorAttention, favor_attention
    from favorkern._parallel import blas_single_thread

    rng = np.random.default_rng(0)
    print(f"decode: d = dv = {D}, m = {M}, {np.dtype(dtype).name}, prefix {prefix}; {load()}")
    print(
        f"{'heads':>5} {'step T=1':>10} {'floor T=1':>10} {'ratio':>6} {'BLAS floor':>10} "
        f"{'ratio':>6} {'step T=64':>10} "
        f"{'recompute':>11} {'exact/KV':>10} {'fast-tf':>10}   (microseconds per token)"
    )
    for heads in heads_list:
        attention = FavorAttention(n_components=M, random_state=0).fit(D)
        batch = (heads,)
        q, k, v = (rng.standard_normal((heads, 1, D)).astype(dtype) * 0.5 for _ in range(3))
        state = attention.initial_state(batch, DV, dtype=dtype)
        for _ in range(prefix):  # a realistic state
            attention.step(q, k, v, state)
        one = median_time(lambda: attention.step(q, k, v, state), repeats * 200, warmup=50)

        # floor: the step's own products at the same shapes, buffers preallocated
        W_t = np.ascontiguousarray(attention.projection_.T.astype(dtype))
        S = state.S.copy()
        qf = np.empty((heads, M), dtype=dtype)
        kf = np.empty((heads, M), dtype=dtype)
        out = np.empty((heads, 1, DV), dtype=dtype)
        outer = np.empty((heads, M, DV), dtype=dtype)
        q2, k2, v2 = q.reshape(heads, D), k.reshape(heads, D), v.reshape(heads, 1, DV)

        def floor():
            for x, f in ((q2, qf), (k2, kf)):
                np.matmul(x, W_t, out=f)
                f -= f.max(axis=1)[:, np.newaxis]
                np.exp(f, out=f)
            np.matmul(qf[:, np.newaxis, :], S, out=out)
            np.matmul(kf[:, :, np.newaxis], v2, out=outer)
            np.add(S, outer, out=S)

        with blas_single_thread():  # BLAS threads on these sizes only add wake-ups
            base = median_time(floor, repeats * 200, warmup=50)

        # the same with BLAS level 2 per head: gemv for phi(q) S, an in-place ger for
        # S += phi(k) v^T (S^T is Fortran-ordered: no copies)
        from scipy.linalg import blas

        gemv, ger = (blas.sgemv, blas.sger) if dtype == np.float32 else (blas.dgemv, blas.dger)
        S_t = [S[h].T for h in range(heads)]
        v_rows = [v2[h, 0] for h in range(heads)]

        def blas_floor():
            for x, f in ((q2, qf), (k2, kf)):
                np.matmul(x, W_t, out=f)
                f -= f.max(axis=1)[:, np.newaxis]
                np.exp(f, out=f)
            for h in range(heads):
                gemv(1.0, S_t[h], qf[h])
                ger(1.0, v_rows[h], kf[h], a=S_t[h], overwrite_a=1)

        with blas_single_thread():
            blas_base = median_time(blas_floor, repeats * 200, warmup=50)

        Qb, Kb, Vb = (rng.standard_normal((heads, 64, D)).astype(dtype) * 0.5 for _ in range(3))
        block_state = attention.initial_state(batch, DV, dtype=dtype)
        block = median_time(lambda: attention.step(Qb, Kb, Vb, block_state), repeats * 20) / 64

        Qp, Kp, Vp = (rng.standard_normal((heads, prefix + 1, D)).astype(dtype) * 0.5
                      for _ in range(3))  # fmt: skip
        recompute = median_time(
            lambda: favor_attention(
                Qp, Kp, Vp, causal=True, projection_matrix=attention.projection_
            ),
            repeats,
        )
        gamma = dtype(1 / np.sqrt(D))

        def exact_kv():
            scores = np.matmul(Kp, q.reshape(heads, D, 1))[..., 0] * gamma
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            np.matmul(scores[:, np.newaxis, :], Vp) / scores.sum(axis=1)[:, None, None]

        exact = median_time(exact_kv, repeats * 20)
        fast = fast_transformers_token(heads, dtype, repeats)
        fast_text = "n/a" if fast is None else f"{1e6 * fast:.1f}"
        print(f"{heads:>5} {1e6 * one:>10.1f} {1e6 * base:>10.1f} {one / base:>6.2f} "
              f"{1e6 * blas_base:>10.1f} {one / blas_base:>6.2f} "
              f"{1e6 * block:>10.1f} {1e6 * recompute:>11.1f} {1e6 * exact:>10.1f} "
              f"{fast_text:>10}")  # fmt: skip
    print(f"after: {load()}")


def fast_transformers_token(heads, dtype, repeats):
    """Per-token time of fast-transformers' recurrent linear attention, if installed."""
    try:
        import fast_transformers  # noqa: F401
        import torch
        from fast_transformers.recurrent.attention import RecurrentLinearAttention
    except Exception:  # not installed here (building it takes minutes): skip cleanly
        return None
    torch.set_grad_enabled(False)
    attention = RecurrentLinearAttention(D)
    q, k, v = (torch.randn(1, heads, D, dtype=torch.float32) for _ in range(3))
    state = [None]

    def token():
        _, state[0] = attention(q, k, v, state=state[0])

    return median_time(token, repeats * 200, warmup=50)


def error_table(dtype, repeats):
    """favor_attention alone and the estimate alone (as return_error runs it), interleaved."""
    from favorkern import favor_attention
    from favorkern.attention.error import estimate_checked

    rng = np.random.default_rng(1)
    L = 1 << 16
    Q, K, V = (rng.standard_normal((L, D)).astype(dtype) * 0.5 for _ in range(3))
    print(
        f"error estimate: L = 2^16, d = dv = {D}, m = {M}, 64 rows, one head, "
        f"{np.dtype(dtype).name}; {load()}"
    )
    for causal in (False, True):
        favor_times, estimate_times = [], []
        out = favor_attention(Q, K, V, causal=causal, random_state=0)  # warm-up
        for r in range(repeats):
            start = time.perf_counter()
            out = favor_attention(Q, K, V, causal=causal, random_state=0)
            favor_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            estimate_checked(Q, K, V, out, causal=causal, gamma=None, key_padding_mask=None,
                             n_rows=64, warn_error=None, random_state=r)  # fmt: skip
            estimate_times.append(time.perf_counter() - start)
        plain, estimate = np.median(favor_times), np.median(estimate_times)
        name = "causal" if causal else "bidirectional"
        print(
            f"  {name:>13}: favor {1e3 * plain:7.1f} ms, estimate {1e3 * estimate:6.1f} ms "
            f"= {100 * estimate / plain:5.1f}% of the call (medians of {repeats}, interleaved)"
        )
    print(f"after: {load()}")


def coverage(n_problems, seed=0):
    from favorkern import favor_attention, softmax_attention
    from favorkern.attention.error import estimate_attention_error

    rng = np.random.default_rng(seed)
    mean_hits = median_hits = 0
    for p in range(n_problems):
        H = int(rng.integers(1, 5))
        L = int(rng.choice([128, 256, 512]))
        d = int(rng.choice([8, 16, 32]))
        sigma = float(rng.uniform(0.3, 1.2))
        causal = bool(rng.integers(2))
        feature_map = str(rng.choice(["positive", "hyperbolic", "trigonometric", "relu"]))
        m = int(rng.choice([16, 32, 64, 128]))
        Q, K = rng.normal(scale=sigma, size=(2, H, L, d))
        V = rng.normal(size=(H, L, d))
        if rng.random() < 0.3:  # keys off-centre: a few dominant keys
            K = K + rng.normal(scale=sigma, size=(H, 1, d))
        mask = (rng.random((H, L)) < 0.2) if rng.random() < 0.3 else None
        out = favor_attention(Q, K, V, causal=causal, n_components=m, feature_map=feature_map,
                              random_state=p, key_padding_mask=mask)  # fmt: skip
        exact = softmax_attention(Q, K, V, causal=causal, key_padding_mask=mask)
        diff = np.linalg.norm(out - exact, axis=-1)
        scale = np.linalg.norm(exact, axis=-1)
        err = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), diff)
        err[~np.isfinite(err)] = np.inf
        if mask is None:
            visible = np.ones((H, L), dtype=bool)
        elif causal:
            visible = np.cumsum(~mask, axis=1) > 0
        else:
            visible = np.broadcast_to((~mask).any(axis=1, keepdims=True), (H, L))
        true_mean, true_median = err[visible].mean(), np.median(err[visible])
        est = estimate_attention_error(Q, K, V, out, causal=causal, key_padding_mask=mask,
                                       random_state=p, warn_error=None)  # fmt: skip
        mean_hits += est.mean_interval[0] <= true_mean <= est.mean_interval[1]
        median_hits += est.median_interval[0] <= true_median <= est.median_interval[1]
    print(
        f"coverage over {n_problems} random problems (seed {seed}): 95% interval of the mean "
        f"{mean_hits / n_problems:.3f}, of the median {median_hits / n_problems:.3f}"
    )


def cpu_median(fn, repeats, warmup=20):
    """Median CPU seconds (``time.process_time``) of ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return float(np.median(times))


def kv_cache_attention(q, K, V):
    """Exact attention of one token over a KV cache: torch SDPA (grouped-query heads),
    or numpy where torch is not installed.  ``q`` (Hq, 1, d), ``K, V`` (H, P, d)."""
    group = q.shape[0] // K.shape[0]
    try:
        import torch
    except ImportError:
        Kg, Vg = np.repeat(K, group, axis=0), np.repeat(V, group, axis=0)

        def run():
            s = np.matmul(q, Kg.transpose(0, 2, 1)) / np.sqrt(q.shape[-1])
            w = np.exp(s - s.max(axis=-1, keepdims=True))
            return np.matmul(w, Vg) / w.sum(axis=-1, keepdims=True)

        return run, "numpy"
    torch.set_num_threads(1)
    tq, tk, tv = (torch.from_numpy(X[np.newaxis]) for X in (q, K, V))

    def run():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)

    return run, "sdpa"


def hybrid_table(dtype, prefixes, repeats):
    from favorkern import FavorAttention, HybridAttention

    rng = np.random.default_rng(0)
    Hq, H = 9, 3
    print(f"hybrid decoding: {Hq} query heads over {H} key/value heads, d = dv = {D}, m = {M}, "
          f"{np.dtype(dtype).name}, one thread, CPU time; {load()}")  # fmt: skip
    calibration = rng.standard_normal((2, Hq, 512, D)).astype(dtype) * 0.5
    hybrid = HybridAttention(window=64, n_global=1, n_top=16, n_candidates=128, n_components=M,
                             causal=True, random_state=0).fit(*calibration)  # fmt: skip
    favor = FavorAttention(n_components=M, random_state=0).fit(D)
    longest = max(prefixes)
    K = rng.standard_normal((H, longest, D)).astype(dtype) * 0.5
    V = rng.standard_normal((H, longest, DV)).astype(dtype)
    Q = rng.standard_normal((Hq, longest, D)).astype(dtype) * 0.5
    h_state = hybrid.initial_state((H,), DV, dtype=dtype, n_query_heads=Hq)
    f_state = favor.initial_state((H,), DV, dtype=dtype)
    q, k, v = Q[:, :1], K[:, :1], V[:, :1]
    print(f"{'prefix':>7} {'hybrid step':>12} {'favor step':>11} {'exact/KV':>10} "
          f"{'exact/hybrid':>13} {'exact/favor':>12}   (microseconds per token)")  # fmt: skip
    seen = 0
    for prefix in sorted(prefixes):
        for start in range(seen, prefix, 256):  # feed the states up to the prefix
            stop = min(prefix, start + 256)
            hybrid.step(Q[:, start:stop], K[:, start:stop], V[:, start:stop], h_state)
            favor.step(Q[:, start:stop], K[:, start:stop], V[:, start:stop], f_state)
        seen = prefix
        # a step advances the state: time on copies, so every step sees the same prefix
        h_copies = [h_state.copy() for _ in range(repeats * 40 + 20)]
        f_copies = [f_state.copy() for _ in range(repeats * 40 + 20)]
        h_next, f_next = iter(h_copies), iter(f_copies)
        t_h = cpu_median(lambda: hybrid.step(q, k, v, next(h_next)), repeats * 40)
        t_f = cpu_median(lambda: favor.step(q, k, v, next(f_next)), repeats * 40)
        exact, name = kv_cache_attention(q, K[:, :prefix], V[:, :prefix])
        t_e = cpu_median(exact, repeats * 40)
        print(f"{prefix:>7} {t_h * 1e6:>12.0f} {t_f * 1e6:>11.0f} {t_e * 1e6:>10.0f} "
              f"{t_e / t_h:>13.2f} {t_e / t_f:>12.2f}   ({name})", flush=True)  # fmt: skip


# -- one token at the floor: each step against its own bare products ---------------


def _rank_one_kernel():
    """``S_n += a_n b_n^T`` and ``z_n += a_n`` for every head: one compiled call."""
    import numba

    @numba.njit(cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
    def rank_one(S, z, a, b):
        for n in range(S.shape[0]):
            for f in range(S.shape[1]):
                x = a[n, f]
                z[n, f] += x
                for c in range(b.shape[1]):
                    S[n, f, c] += x * b[n, c]

    return rank_one


def favor_bare(N, group, dtype, rng):
    """The bare products of one FAVOR token for all heads (``N`` key/value heads,
    ``group`` query heads each), one numpy or numba call each on preallocated arrays:
    ``phi(q) = exp(q W^T)``, ``phi(k)`` alike (2 products, 2 exponentials), the state
    update ``S += phi(k) v^T, z += phi(k)`` (one compiled call), the emission
    ``phi(q) S`` and ``phi(q) z`` (2 batched products) and the division: 8 calls."""
    rank_one = _rank_one_kernel()
    Nq = N * group
    W_t = (rng.standard_normal((D, M)) * 0.1).astype(dtype)
    q, k = (rng.standard_normal((n, D)).astype(dtype) * 0.5 for n in (Nq, N))
    v = rng.standard_normal((N, DV)).astype(dtype)
    S, z = rng.random((N, M, DV)).astype(dtype), rng.random((N, M)).astype(dtype)
    qf, kf = np.empty((Nq, M), dtype), np.empty((N, M), dtype)
    num, den = np.empty((N, group, DV), dtype), np.empty((N, group, 1), dtype)
    qg, zc = qf.reshape(N, group, M), z.reshape(N, M, 1)

    def bare():
        np.matmul(q, W_t, out=qf)
        np.matmul(k, W_t, out=kf)
        np.exp(qf, out=qf)
        np.exp(kf, out=kf)
        rank_one(S, z, kf, v)
        np.matmul(qg, S, out=num)
        np.matmul(qg, zc, out=den)
        np.divide(num, den, out=num)

    return bare


def hybrid_bare(N, group, dtype, rng, window=64, n_global=1, n_top=16, n_pool=128):
    """The bare products of one hybrid token for all heads, one numpy or numba call
    each: the query features and those of the key leaving the window (2 products, 2
    exponentials), the far state's rank-1 update (one compiled call), the exact
    logits of the window and global keys and their exponentials (one batched product
    each), the candidates' logits (one batched product), the top keys (one
    ``argpartition`` and their rows), their features, values and logits gathered (3
    ``take``), their estimates (one product), the sums ``phi(q) S`` (the normalizer a
    column of ``S``), ``p V`` and the top keys' ``(exact - estimate) V`` (3 products,
    2 adds, one subtraction, one exponential) and the division: 23 calls."""
    rank_one = _rank_one_kernel()
    Nq, E = N * group, window + n_global
    W_t = (rng.standard_normal((D, M)) * 0.1).astype(dtype)
    q, k = (rng.standard_normal((n, D)).astype(dtype) * 0.5 for n in (Nq, N))
    v1 = np.ones((N, DV + 1), dtype)
    v1[:, :DV] = rng.standard_normal((N, DV))
    S = rng.random((N, M, DV + 1)).astype(dtype)
    keys = (rng.standard_normal((N, E, D)) * 0.5).astype(dtype)
    values = np.ones((N, E, DV + 1), dtype)
    values[..., :DV] = rng.standard_normal((N, E, DV))
    pool_k = (rng.standard_normal((Nq, n_pool, D)) * 0.5).astype(dtype)
    pool_v = np.ones((Nq, n_pool, DV + 1), dtype)
    pool_v[..., :DV] = rng.standard_normal((Nq, n_pool, DV))
    pool_psi = rng.random((Nq, n_pool, M)).astype(dtype)
    qf, kf = np.empty((Nq, M), dtype), np.empty((N, M), dtype)
    exact = np.empty((N, group, E), dtype)
    logits = np.empty((Nq, 1, n_pool), dtype)
    nd, part = np.empty((N, group, DV + 1), dtype), np.empty((N, group, DV + 1), dtype)
    est = np.empty((Nq, 1, n_top), dtype)
    top_part = np.empty((Nq, 1, DV + 1), dtype)
    qg, q3, qf3 = q.reshape(N, group, D), q.reshape(Nq, 1, D), qf.reshape(Nq, 1, M)
    offsets = (np.arange(Nq) * n_pool)[:, np.newaxis]
    pool_psi_rows, pool_v_rows = pool_psi.reshape(-1, M), pool_v.reshape(-1, DV + 1)
    zeros = np.zeros((N, M), dtype)  # the normalizer is the last column of S
    keys_t, pool_t = keys.transpose(0, 2, 1), pool_k.transpose(0, 2, 1)

    def bare():
        np.matmul(q, W_t, out=qf)
        np.matmul(k, W_t, out=kf)
        np.exp(qf, out=qf)
        np.exp(kf, out=kf)
        rank_one(S, zeros, kf, v1)
        np.matmul(qg, keys_t, out=exact)
        np.exp(exact, out=exact)
        np.matmul(q3, pool_t, out=logits)
        top = np.argpartition(logits, -n_top, axis=-1)[..., -n_top:]
        rows = np.add(top.reshape(Nq, n_top), offsets)  # rows of the flattened pools
        psi = np.take(pool_psi_rows, rows, axis=0)
        chosen = np.take(pool_v_rows, rows, axis=0)
        exact_top = np.exp(np.take(logits, rows)).reshape(Nq, 1, n_top)
        np.matmul(qf3, psi.transpose(0, 2, 1), out=est)
        np.matmul(qf.reshape(N, group, M), S, out=nd)
        np.matmul(exact, values, out=part)
        np.add(nd, part, out=nd)
        np.matmul(exact_top - est, chosen, out=top_part)
        np.add(nd, top_part.reshape(N, group, DV + 1), out=nd)
        return nd[..., :DV] / nd[..., DV:]

    return bare


def recurrent_torch(N, group, m, repeats):
    """Per-token CPU time of the recurrent form of fast-transformers'
    ``RecurrentLinearAttention`` in torch ops (features, ``S += phi(k) v^T``, ``z +=
    phi(k)``, ``phi(q) S / (phi(q) z + eps)`` by einsum), with its default map
    ``elu(x) + 1`` (``m = d``) or random features ``exp(x W^T)`` of width ``m``;
    None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    H = N * group
    q, k, v = (torch.randn(1, H, D) for _ in range(3))
    W = torch.randn(D, m) * 0.1
    S, z = torch.zeros(1, H, m, DV), torch.zeros(1, H, m)

    def features(x):
        return torch.nn.functional.elu(x) + 1 if m == D else torch.exp(x @ W)

    def token():
        nonlocal S, z
        Q, K = features(q), features(k)
        z = z + K
        S = S + torch.einsum("nhd,nhm->nhdm", K, v)
        Z = 1.0 / (torch.einsum("nhd,nhd->nh", Q, z) + 1e-6)
        return torch.einsum("nhd,nhdm,nh->nhm", Q, S, Z)

    return cpu_median(lambda: [token() for _ in range(20)], repeats, warmup=3) / 20


def floor_table(dtype, prefixes, repeats, layouts):
    """Per token at each prefix: FavorAttention.step and HybridAttention.step (T = 1)
    against their bare products and exact attention over the KV cache."""
    from favorkern import FavorAttention, HybridAttention

    print(f"one token at the floor: d = dv = {D}, m = {M}, {np.dtype(dtype).name}, window 64, "
          f"1 global, top 16 of 128; one thread, CPU time (medians of {repeats} x 20 steps); "
          f"{load()}")  # fmt: skip
    print(f"{'heads':>6} {'prefix':>7} {'favor':>7} {'bare':>6} {'ratio':>6} {'hybrid':>7} "
          f"{'bare':>6} {'ratio':>6} {'exact/KV':>9} {'KV/favor':>9} {'KV/hybrid':>10}"
          "   (microseconds per token)")  # fmt: skip
    for Hq, H in layouts:
        rng = np.random.default_rng(0)
        group = Hq // H
        calibration = rng.standard_normal((2, Hq, 512, D)).astype(dtype) * 0.5
        hybrid = HybridAttention(window=64, n_global=1, n_top=16, n_candidates=128,
                                 n_components=M, causal=True, random_state=0)  # fmt: skip
        hybrid.fit(*calibration)
        favor = FavorAttention(n_components=M, random_state=0).fit(D)
        longest = max(prefixes) + repeats * 20 + 40
        K = rng.standard_normal((H, longest, D)).astype(dtype) * 0.5
        V = rng.standard_normal((H, longest, DV)).astype(dtype)
        Q = rng.standard_normal((Hq, longest, D)).astype(dtype) * 0.5
        bare_favor, bare_hybrid = (
            favor_bare(H, group, dtype, rng),
            hybrid_bare(H, group, dtype, rng),
        )
        t_fb = cpu_median(lambda: [bare_favor() for _ in range(20)], repeats, warmup=3) / 20
        t_hb = cpu_median(lambda: [bare_hybrid() for _ in range(20)], repeats, warmup=3) / 20
        for prefix in sorted(prefixes):
            # the prompt in one call each (the hybrid's state built from the block engine)
            _, h_state = hybrid.step(Q[:, :prefix], K[:, :prefix], V[:, :prefix])
            _, f_state = favor.step(Q[:, :prefix], K[:, :prefix], V[:, :prefix])
            position = [prefix]

            def steps(layer, state):
                def run():  # 20 new tokens (the work of a step does not depend on the prefix)
                    t = position[0]
                    for j in range(t, t + 20):
                        layer.step(Q[:, j : j + 1], K[:, j : j + 1], V[:, j : j + 1], state)

                return run

            t_f = cpu_median(steps(favor, f_state), repeats, warmup=2) / 20
            t_h = cpu_median(steps(hybrid, h_state), repeats, warmup=2) / 20
            exact, name = kv_cache_attention(Q[:, :1], K[:, :prefix], V[:, :prefix])
            t_e = cpu_median(exact, repeats * 4)
            print(f"{Hq:>3}/{H:<2} {prefix:>7} {t_f * 1e6:>7.0f} {t_fb * 1e6:>6.0f} "
                  f"{t_f / t_fb:>6.2f} {t_h * 1e6:>7.0f} {t_hb * 1e6:>6.0f} {t_h / t_hb:>6.2f} "
                  f"{t_e * 1e6:>9.0f} {t_e / t_f:>9.1f} {t_e / t_h:>10.1f}   ({name})",
                  flush=True)  # fmt: skip
        for m in (D, M):
            t_r = recurrent_torch(H, group, m, repeats)
            # FavorAttention.step at the same width m (the same state size)
            same = FavorAttention(n_components=m, random_state=0).fit(D)
            _, state = same.step(Q[:, :1024], K[:, :1024], V[:, :1024])
            position[0] = 1024
            t_m = cpu_median(steps(same, state), repeats, warmup=2) / 20
            if t_r is not None:
                print(f"{Hq:>3}/{H:<2} m = {m}: fast-transformers' recurrent form in torch "
                      f"{t_r * 1e6:.0f} us per token, FavorAttention.step {t_m * 1e6:.0f} us "
                      f"({t_r / t_m:.2f}x faster)")  # fmt: skip
    print(f"after: {load()}")


def prefill_table(dtype, lengths, repeats, layouts):
    """A prompt: ``HybridAttention.step`` over ``L`` tokens from an empty state (the
    block engine, then the state built at once) against one causal call."""
    from favorkern import HybridAttention

    print(f"hybrid prefill: d = dv = {D}, m = {M}, {np.dtype(dtype).name}, window 64, 1 global, "
          f"top 16 of 128; one thread, CPU time, medians of {repeats}; {load()}")  # fmt: skip
    print(f"{'heads':>6} {'L':>6} {'call s':>8} {'step s':>8} {'step/call':>10}")
    for Hq, H in layouts:
        rng = np.random.default_rng(0)
        calibration = rng.standard_normal((2, Hq, 512, D)).astype(dtype) * 0.5
        layer = HybridAttention(window=64, n_global=1, n_top=16, n_candidates=128,
                                n_components=M, causal=True, random_state=0)  # fmt: skip
        layer.fit(*calibration)
        for L in lengths:
            Q = rng.standard_normal((Hq, L, D)).astype(dtype) * 0.5
            K = rng.standard_normal((H, L, D)).astype(dtype) * 0.5
            V = rng.standard_normal((H, L, DV)).astype(dtype)
            t_call = cpu_median(lambda: layer(Q, K, V), repeats, warmup=1)
            t_step = cpu_median(lambda: layer.step(Q, K, V), repeats, warmup=1)
            print(f"{Hq:>3}/{H:<2} {L:>6} {t_call:>8.3f} {t_step:>8.3f} {t_step / t_call:>10.2f}",
                  flush=True)  # fmt: skip
    print(f"after: {load()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 12])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--prefix", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--coverage", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--skip-error", action="store_true")
    parser.add_argument("--hybrid", action="store_true", help="the hybrid decoding table")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="one token against its bare products (FavorAttention, HybridAttention)",
    )
    parser.add_argument(
        "--prefill",
        type=int,
        nargs="*",
        default=None,
        help="prompt lengths of the hybrid prefill table (2048 4096 8192 if none)",
    )
    parser.add_argument("--layouts", nargs="+", default=["9/3", "12/12"],
                        help="query/key-value heads of the --floor table")  # fmt: skip
    parser.add_argument("--prefixes", type=int, nargs="+",
                        default=[1024, 2048, 4096, 8192, 16384, 32768])  # fmt: skip
    args = parser.parse_args()
    dtype = np.dtype(args.dtype).type
    if not args.skip_decode:
        decode_table(args.heads, dtype, args.prefix, args.repeats)
    if args.hybrid:
        hybrid_table(dtype, args.prefixes, args.repeats)
    if args.prefill is not None:
        layouts = [tuple(int(x) for x in text.split("/")) for text in args.layouts]
        prefill_table(dtype, args.prefill or [2048, 4096, 8192], args.repeats, layouts)
    if args.floor:
        layouts = [tuple(int(x) for x in text.split("/")) for text in args.layouts]
        floor_table(dtype, args.prefixes, args.repeats, layouts)
    if not args.skip_error:
        error_table(dtype, args.repeats)
    if args.coverage:
        coverage(args.coverage, args.seed)


if __name__ == "__main__":
    main()
