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

``--coverage N``: over N random problems, how often the 95% interval of the mean
relative row error covers the true mean (and the median's interval the true median).

Usage::

    python benchmarks/bench_decoding.py
    python benchmarks/bench_decoding.py --coverage 500 --skip-decode --skip-error
    FAVORKERN_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        python benchmarks/bench_decoding.py --hybrid --skip-decode --skip-error
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
    parser.add_argument("--prefixes", type=int, nargs="+",
                        default=[1024, 2048, 4096, 8192, 16384, 32768])  # fmt: skip
    args = parser.parse_args()
    dtype = np.dtype(args.dtype).type
    if not args.skip_decode:
        decode_table(args.heads, dtype, args.prefix, args.repeats)
    if args.hybrid:
        hybrid_table(dtype, args.prefixes, args.repeats)
    if not args.skip_error:
        error_table(dtype, args.repeats)
    if args.coverage:
        coverage(args.coverage, args.seed)


if __name__ == "__main__":
    main()
