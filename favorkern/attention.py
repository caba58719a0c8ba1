"""Softmax attention: the exact reference and FAVOR+ linear attention in bounded memory.

``softmax_attention`` is the O(L^2) reference, computed over query chunks.
``favor_attention`` replaces ``exp(scale q.k)`` by ``phi(q).phi(k)`` with the random
feature maps of :mod:`favorkern.features` (same specs, same projection code) and
never holds more than a chunk of features per worker thread:

* bidirectional: pass 1 streams over key chunks and accumulates ``S = phi(K)^T V``
  and ``z = phi(K)^T 1`` with an online key stabilizer (rescaling S, z when it
  grows, as flash attention does); pass 2 emits ``phi(Q) S / phi(Q) z``;
* causal: the same state carried through the sequence, either by chunked matrix
  products (``tril(phi(Qc) phi(Kc)^T)`` inside a chunk) or by a numba recurrence
  over tokens, parallel over blocks of value columns.

Stabilizers (THEORY.md section 7): each query's features are divided by their own
maximum (a per-query factor cancels in the normalized output); keys share one
constant per (batch, head), which also cancels.  In causal mode the key constant
of output ``i`` is the running maximum over keys ``0..i`` only, so no output
depends on a later token, not even through rounding or underflow.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
from sklearn.utils import check_random_state

from ._feature_maps import (
    apply_block,
    generalized_spec,
    homogeneity_sum_sq,
    hyperbolic_spec,
    optimal_gerf_a,
    optimal_positive_spec,
    positive_spec,
    trigonometric_spec,
)
from ._parallel import blas_single_thread, executor, n_threads
from ._validation import check_float_array, check_int, check_option, check_positive_real
from .projections import PROJECTION_KINDS, draw_projection

__all__ = ["softmax_attention", "favor_attention", "FavorAttention", "FEATURES"]

FEATURES = ("positive", "hyperbolic", "trigonometric", "relu", "optimal", "saderf")
# Maps whose constants are fitted on the current Q and K (per (batch, head)); the
# statistics look at every token, so they are not available in causal mode.
ADAPTIVE_FEATURES = ("optimal", "saderf")

# Feature buffers of ~512 KiB per worker: large enough for efficient GEMMs,
# small enough to stay in L2 between the product and the elementwise passes.
_CHUNK_BYTES = 1 << 19
# The recurrent kernel amortizes one thread-pool round trip per chunk.
_RECURRENT_CHUNK_BYTES = 1 << 21
# Below this many feature evaluations, threads cost more than they save.
_PARALLEL_MIN_WORK = 1 << 18
# Exact attention: at most this many scores per query chunk.
_EXACT_CHUNK_ELEMENTS = 1 << 20


# -- validation -------------------------------------------------------------------


def _check_inputs(Q, K, V, causal, key_padding_mask):
    """Validated (Q, K, V, mask, batch_shape) with one float dtype."""
    Q = check_float_array(Q, "Q", min_ndim=2)
    K = check_float_array(K, "K", min_ndim=2)
    V = check_float_array(V, "V", min_ndim=2)
    dtype = np.result_type(Q.dtype, K.dtype, V.dtype)
    Q, K, V = (X.astype(dtype, copy=False) for X in (Q, K, V))
    if K.shape[-1] != Q.shape[-1]:
        raise ValueError(
            f"K must have the feature dimension d = {Q.shape[-1]} of Q, got shape {K.shape}"
        )
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(f"V must have as many rows as K ({K.shape[-2]} keys), got shape {V.shape}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if causal and Q.shape[-2] != K.shape[-2]:
        raise ValueError(
            "causal=True needs as many queries as keys, got "
            f"Lq = {Q.shape[-2]} and Lk = {K.shape[-2]}"
        )
    shapes = {"Q": Q.shape[:-2], "K": K.shape[:-2], "V": V.shape[:-2]}
    mask = None
    if key_padding_mask is not None:
        mask = np.asarray(key_padding_mask)
        if mask.dtype != np.bool_:
            raise ValueError(
                f"key_padding_mask must be a boolean array (True = ignore), got dtype {mask.dtype}"
            )
        if mask.ndim < 1 or mask.shape[-1] != K.shape[-2]:
            raise ValueError(
                f"key_padding_mask must have shape (..., Lk) with Lk = {K.shape[-2]}, "
                f"got shape {mask.shape}"
            )
        mask = np.ascontiguousarray(mask)
        shapes["key_padding_mask"] = mask.shape[:-1]
    try:
        batch = np.broadcast_shapes(*shapes.values())
    except ValueError:
        detail = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        name = "key_padding_mask" if mask is not None else "Q, K and V"
        raise ValueError(
            f"the leading (batch, head) dimensions of {name} do not broadcast: {detail}"
        ) from None
    return Q, K, V, mask, batch


def _check_scale(scale, d):
    if scale is None:
        return 1.0 / math.sqrt(d)
    return check_positive_real(scale, "scale")


def _head(X, index, n_trailing):
    """The 2-D (or 1-D for masks) slice of ``X`` for one broadcast batch index."""
    if X is None:
        return None
    lead = X.shape[: X.ndim - n_trailing]
    offset = len(index) - len(lead)
    return X[tuple(0 if size == 1 else index[offset + k] for k, size in enumerate(lead))]


def _heads(Q, K, V, mask, batch):
    """One (q, k, v, mask, out_index) tuple per (batch, head)."""
    return [
        (_head(Q, idx, 2), _head(K, idx, 2), _head(V, idx, 2), _head(mask, idx, 1), idx)
        for idx in np.ndindex(*batch)
    ]


# -- scheduling -------------------------------------------------------------------


def _run_parallel(tasks, workers):
    """Run the callables ``tasks``, interleaved over ``workers`` pool threads."""
    if workers <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    workers = min(workers, len(tasks))

    def work(w):
        return [(i, tasks[i]()) for i in range(w, len(tasks), workers)]

    pool = executor(n_threads())
    results = [None] * len(tasks)
    for future in [pool.submit(work, w) for w in range(workers)]:
        for i, value in future.result():
            results[i] = value
    return results


def _split(n, parts):
    """``parts`` contiguous (start, stop) ranges covering ``range(n)``."""
    parts = max(1, min(parts, n))
    edges = [n * p // parts for p in range(parts + 1)]
    return [(edges[p], edges[p + 1]) for p in range(parts)]


def _normalize(numerator, denominator):
    """``numerator / denominator`` in place; rows with a zero denominator become 0.

    The guard: no epsilon is added anywhere.  A denominator of exactly 0 (every key
    masked, or every feature product underflowed) gives a zero output row.
    """
    denominator[denominator == 0] = np.inf
    numerator /= denominator[:, np.newaxis]


# -- exact attention --------------------------------------------------------------


def _exact_rows(q, k, v, mask, out, start, stop, scale, causal):
    scores = q[start:stop] @ k.T
    scores *= scores.dtype.type(scale)
    if mask is not None:
        scores[:, mask] = -np.inf
    if causal:
        future = np.arange(k.shape[0])[np.newaxis, :] > np.arange(start, stop)[:, np.newaxis]
        scores[future] = -np.inf
    row_max = scores.max(axis=1)
    row_max[~np.isfinite(row_max)] = 0.0  # rows with every key masked
    scores -= row_max[:, np.newaxis]
    np.exp(scores, out=scores)
    block = out[start:stop]
    np.matmul(scores, v, out=block)
    _normalize(block, scores @ np.ones(scores.shape[1], dtype=scores.dtype))


def softmax_attention(Q, K, V, *, causal=False, scale=None, key_padding_mask=None):
    """Exact softmax attention ``softmax(scale Q K^T) V``, the O(L^2) reference.

    Computed over query chunks, so the extra memory is O(chunk x Lk) per worker
    thread; each row subtracts its maximum score before ``exp``.

    Parameters
    ----------
    Q : array-like of shape (..., Lq, d)
        Queries.  Leading dimensions (batch, heads) broadcast against those of K, V.
    K : array-like of shape (..., Lk, d)
        Keys.
    V : array-like of shape (..., Lk, dv)
        Values.
    causal : bool, default=False
        If True, query ``i`` attends to keys ``0..i`` only (requires ``Lq == Lk``).
    scale : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    key_padding_mask : array-like of bool, shape (..., Lk), default=None
        True marks a key to ignore.  A row whose keys are all ignored is 0.

    Returns
    -------
    out : ndarray of shape (..., Lq, dv)
        float32 if Q, K and V are float32, else float64.

    See Also
    --------
    favor_attention : the linear-time approximation.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(size=(3, 2, 5, 4))      # 2 heads, 5 tokens, d = 4
    >>> softmax_attention(Q, K, V).shape
    (2, 5, 4)
    >>> out = softmax_attention(Q, K, V, causal=True)
    >>> bool(np.allclose(out[:, 0], V[:, 0]))        # the first token sees only itself
    True
    """
    Q, K, V, mask, batch = _check_inputs(Q, K, V, causal, key_padding_mask)
    scale = _check_scale(scale, Q.shape[-1])
    n_queries, n_keys = Q.shape[-2], K.shape[-2]
    out = np.empty(batch + (n_queries, V.shape[-1]), dtype=Q.dtype)
    rows = max(1, min(n_queries, _EXACT_CHUNK_ELEMENTS // n_keys))
    if out.size // max(1, V.shape[-1]) == n_queries:  # one head: a chunk per thread at least
        rows = min(rows, -(-n_queries // n_threads()))
    tasks = []
    for q, k, v, m, idx in _heads(Q, K, V, mask, batch):
        for start in range(0, n_queries, rows):
            stop = min(n_queries, start + rows)
            tasks.append(
                lambda q=q, k=k, v=v, m=m, o=out[idx], a=start, b=stop: _exact_rows(
                    q, k, v, m, o, a, b, scale, causal
                )
            )
    work = out.size // max(1, V.shape[-1]) * n_keys
    workers = n_threads() if work > _PARALLEL_MIN_WORK else 1
    # BLAS always on one thread: the parallelism is ours (BLAS threads next to our
    # threads, or on a busy machine, measured up to 10x slower).
    with blas_single_thread():
        _run_parallel(tasks, workers)
    return out


# -- feature maps for attention -----------------------------------------------------


def _relu(u):
    return np.maximum(u, 0, out=u)


class _AttentionFeatures:
    """One feature map, evaluated with the stabilizers of attention.

    ``queries`` writes features up to a positive per-row factor (it cancels);
    ``key_logits`` + ``key_finish`` write ``phi(k_j) exp(-c_j)`` where ``c_j`` is the
    caller's key constant and ``key_logits`` returns ``log`` of each key's largest
    feature magnitude (exp maps) or of its row factor (trigonometric), from which the
    caller chooses ``c_j``.
    """

    def __init__(self, features, projection, scale, dtype, A=0.0):
        input_scale = math.sqrt(scale)
        n_proj = projection.shape[0]
        if features == "positive":
            spec = positive_spec(projection, input_scale)
        elif features in ADAPTIVE_FEATURES:
            spec = optimal_positive_spec(projection, input_scale, A)
        elif features == "hyperbolic":
            spec = hyperbolic_spec(projection, input_scale, 2 * n_proj)
        elif features == "trigonometric":
            spec = trigonometric_spec(projection, input_scale, 2 * n_proj, np.zeros(0), True)
        else:
            spec = generalized_spec(projection, input_scale, _relu)
        self.kind = "exp" if spec.func == "exp" else ("cos" if spec.func == "cos" else "relu")
        self.spec = spec
        # For cos and relu maps the per-row factor and the constant scale cancel or are
        # applied by key_finish; the plain spec evaluates only f(w.x' + b).
        self.plain = replace(spec, row_log_coef=0.0, log_scale=0.0)
        self.n_out = spec.weights.shape[0]
        self.dtype = np.dtype(dtype)
        self.weights = np.ascontiguousarray(spec.weights, dtype=dtype)
        self.weights_t = np.ascontiguousarray(self.weights.T)
        # Exp maps: log s_j = log_const + column_log[j]; GERF's A |w_j|^2 makes it vary.
        log_scale = np.asarray(spec.log_scale, dtype=np.float64)
        self.log_const = float(log_scale.max()) if log_scale.ndim else float(log_scale)
        self.column_log = None
        if self.kind == "exp" and log_scale.ndim:
            self.column_log = (log_scale - self.log_const).astype(self.dtype)

    def empty(self, size, rows=False):
        """A (size, n_out) feature buffer.

        Exp maps use a transposed (feature-major) buffer unless ``rows``: the
        reductions over features per token then run along contiguous rows, which numpy
        vectorizes (measured 3.5x faster than a row-wise max); BLAS takes either layout.
        """
        if self.kind == "exp" and not rows:
            return np.empty((self.n_out, size), dtype=self.dtype).T
        return np.empty((size, self.n_out), dtype=self.dtype)

    def _product(self, X, out):
        """``out = X @ W.T (+ column log-scales)`` for a row- or feature-major ``out``."""
        if out.flags.c_contiguous:
            np.matmul(X, self.weights_t, out=out)
        else:
            np.matmul(self.weights, X.T, out=out.T)
        if self.column_log is not None:
            out += self.column_log

    def queries(self, X, out):
        if self.kind == "exp":
            # exp(w.x' - a|x'|^2 + log s - max): the last three terms are one per-row
            # constant, so the row maximum of the bare product is the same stabilizer.
            self._product(X, out)
            out -= out.max(axis=1)[:, np.newaxis]
            np.exp(out, out=out)
        else:
            apply_block(X, out, self.plain, self.weights_t)

    def key_logits(self, X, out):
        """Write the key pre-features into ``out``; return ``(row_log, shift)``.

        Exp maps: ``out = X W^T`` and ``shift = a |x|^2 - log s`` (the logits of
        :func:`favorkern._feature_maps.projection_logits` are ``out - shift``), so
        ``row_log`` is each key's largest logit.  Others: ``out = f(w.x' + b)``,
        ``row_log`` the log of the row factor, ``shift`` None.
        """
        if self.kind == "exp":
            self._product(X, out)
            shift = np.einsum("ij,ij->i", X, X).astype(np.float64)
            shift *= self.spec.sq_coef
            shift -= self.log_const
            return out.max(axis=1) - shift, shift
        apply_block(X, out, self.plain, self.weights_t)
        if self.kind == "cos":
            sq = np.einsum("ij,ij->i", X, X).astype(np.float64)
            return sq * self.spec.row_log_coef + self.log_const, None
        return np.zeros(X.shape[0]), None

    def key_finish(self, out, row_log, shift, const):
        """Turn ``key_logits`` output into ``phi(k_j) exp(-c_j)``; ``const`` finite."""
        if self.kind == "exp":
            out -= (shift + const).astype(self.dtype)[:, np.newaxis]
            with np.errstate(over="ignore"):
                np.exp(out, out=out)
        elif self.kind == "cos":
            with np.errstate(over="ignore"):
                out *= np.exp(np.minimum(row_log - const, 0.0)).astype(self.dtype)[:, np.newaxis]


def _masked_row_log(fmap, k, mask, start, stop, buf):
    """Key logits of rows ``start:stop`` into ``buf``; masked keys get ``-inf``."""
    row_log, shift = fmap.key_logits(k[start:stop], buf)
    masked = None
    if mask is not None:
        masked = mask[start:stop]
        if masked.any():
            row_log[masked] = -np.inf
        else:
            masked = None
    return row_log, shift, masked


class _Buffers:
    """Feature buffers per chunk size (only the last chunk differs) and ones vectors."""

    def __init__(self, fmap):
        self._fmap = fmap
        self._cache = {}

    def __call__(self, size, slot=0):
        key = (size, slot)
        if key not in self._cache:
            self._cache[key] = self._fmap.empty(size)
        return self._cache[key]

    def ones(self, size):
        key = (size, "ones")
        if key not in self._cache:
            self._cache[key] = np.ones(size, dtype=self._fmap.dtype)
        return self._cache[key]


# -- bidirectional ----------------------------------------------------------------


def _key_state(fmap, k, v, mask, start, stop, chunk):
    """(S, z, c) of keys ``start:stop``: ``S = sum phi(k) v^T exp(-c)``, online max ``c``."""
    dtype = fmap.dtype
    state = np.zeros((fmap.n_out, v.shape[1]), dtype=dtype)
    normalizer = np.zeros(fmap.n_out, dtype=np.float64)
    const = -np.inf
    buffers = _Buffers(fmap)
    product = np.empty_like(state)
    for a in range(start, stop, chunk):
        b = min(stop, a + chunk)
        features = buffers(b - a)
        row_log, shift, masked = _masked_row_log(fmap, k, mask, a, b, features)
        chunk_max = float(row_log.max())
        if chunk_max == -np.inf:
            continue  # every key of the chunk is masked
        if chunk_max > const:
            if const > -np.inf:
                factor = math.exp(const - chunk_max)
                state *= dtype.type(factor)
                normalizer *= factor
            const = chunk_max
        fmap.key_finish(features, row_log, shift, const)
        if masked is not None:
            features[masked] = 0.0
        np.matmul(features.T, v[a:b], out=product)
        state += product
        normalizer += features.T @ buffers.ones(b - a)
    return state, normalizer, const


def _merge_states(parts, dtype):
    """Sum partial (S, z, c) states after rescaling them to their largest ``c``."""
    const = max(c for _, _, c in parts)
    state = np.zeros_like(parts[0][0], dtype=np.float64)
    normalizer = np.zeros_like(parts[0][1])
    if const > -np.inf:
        for s, z, c in parts:
            if c > -np.inf:
                factor = math.exp(c - const)
                state += s * factor
                normalizer += z * factor
    return state.astype(dtype), normalizer.astype(dtype)


def _emit(fmap, q, state, normalizer, out, start, stop, chunk):
    """Pass 2: ``out = phi(Q) S / phi(Q) z`` for query rows ``start:stop``."""
    buffers = _Buffers(fmap)
    for a in range(start, stop, chunk):
        b = min(stop, a + chunk)
        features = buffers(b - a)
        fmap.queries(q[a:b], features)
        block = out[a:b]
        np.matmul(features, state, out=block)
        _normalize(block, features @ normalizer)


def _bidirectional(fmap, heads, out, chunk, workers):
    if len(heads) >= workers:

        def head_task(q, k, v, m, idx):
            state, normalizer, _ = _key_state(fmap, k, v, m, 0, k.shape[0], chunk)
            state, normalizer = _merge_states([(state, normalizer, 0.0)], fmap.dtype)
            _emit(fmap, q, state, normalizer, out[idx], 0, q.shape[0], chunk)

        _run_parallel([lambda h=h: head_task(*h) for h in heads], workers)
        return
    for q, k, v, m, idx in heads:
        parts = _run_parallel(
            [
                partial(_key_state, fmap, k, v, m, a, b, chunk)
                for a, b in _split(k.shape[0], workers)
            ],
            workers,
        )
        state, normalizer = _merge_states(parts, fmap.dtype)
        _run_parallel(
            [
                partial(_emit, fmap, q, state, normalizer, out[idx], a, b, chunk)
                for a, b in _split(q.shape[0], workers)
            ],
            workers,
        )


# -- causal -----------------------------------------------------------------------


def _causal_key_features(fmap, k, mask, start, stop, buf, carried):
    """Causally stabilized key features of rows ``start:stop`` into ``buf``.

    Key ``j`` is divided by ``exp(c_j)`` with ``c_j`` the running maximum over keys
    ``0..j`` (``carried`` is that maximum before ``start``).  Returns ``c`` (float64,
    ``-inf`` while every key so far is masked).
    """
    row_log, shift, masked = _masked_row_log(fmap, k, mask, start, stop, buf)
    const = np.maximum.accumulate(row_log)
    np.maximum(const, carried, out=const)
    finite = np.where(const > -np.inf, const, 0.0)
    fmap.key_finish(buf, row_log, shift, finite)
    if masked is not None:
        buf[masked] = 0.0
    return const


def _causal_chunked(fmap, q, k, v, mask, out, chunk, start=0, stop=None, initial=None):
    """Causal attention of rows ``start:stop`` of one head by chunked matrix products.

    ``out_c = (phi(Qc) S + tril(phi(Qc) phi(Kc)^T) Vc) / (phi(Qc) z + tril(...) 1)``,
    every term rescaled to the running key maximum of its own query row; then
    ``S += phi(Kc)^T Vc``.  ``initial`` is the (S, z, c) state of the rows before
    ``start`` (zero state if None).
    """
    dtype = fmap.dtype
    n = q.shape[0] if stop is None else stop
    if initial is None:
        state = np.zeros((fmap.n_out, v.shape[1]), dtype=dtype)
        normalizer = np.zeros(fmap.n_out, dtype=dtype)
        carried = -np.inf
    else:
        state, normalizer, carried = initial
    buffers = _Buffers(fmap)
    scores_buf = np.empty((chunk, chunk), dtype=dtype)
    lower = np.tril(np.ones((chunk, chunk), dtype=dtype))
    for a in range(start, n, chunk):
        b = min(n, a + chunk)
        size = b - a
        qf, kf = buffers(size, 0), buffers(size, 1)
        fmap.queries(q[a:b], qf)
        const = _causal_key_features(fmap, k, mask, a, b, kf, carried)
        finite = np.where(const > -np.inf, const, 0.0)
        varying = const[0] != const[-1]
        scores = scores_buf[:size, :size]
        np.matmul(qf, kf.T, out=scores)
        scores *= lower[:size, :size]
        if varying:
            # key j < i was stabilized by c_j <= c_i: bring it to row i's constant
            scores *= np.exp(np.minimum(finite[np.newaxis, :] - finite[:, np.newaxis], 0.0)).astype(
                dtype
            )
        block = out[a:b]
        np.matmul(scores, v[a:b], out=block)
        denominator = scores @ buffers.ones(size)
        if carried > -np.inf:
            past, past_norm = qf @ state, qf @ normalizer
            if carried != const[-1]:
                carry = np.exp(carried - finite).astype(dtype)
                past *= carry[:, np.newaxis]
                past_norm *= carry
            block += past
            denominator += past_norm
        _normalize(block, denominator)
        new_const = float(const[-1])
        if new_const > -np.inf:
            if carried > -np.inf and new_const != carried:
                factor = dtype.type(math.exp(carried - new_const))
                state *= factor
                normalizer *= factor
            if varying:
                kf *= np.exp(np.minimum(finite - new_const, 0.0)).astype(dtype)[:, np.newaxis]
            state += kf.T @ v[a:b]
            normalizer += kf.T @ buffers.ones(size)
            carried = new_const


def _recurrent_features(fmap, q, k, mask, a, b, query_buf, key_buf, carried, queries=True):
    """Features of one chunk for the recurrent kernel, and the per-token decay."""
    size = b - a
    qf, kf = query_buf[:size], key_buf[:size]
    if queries:
        fmap.queries(q[a:b], qf)
    const = _causal_key_features(fmap, k, mask, a, b, kf, carried)
    previous = np.concatenate(([carried], const[:-1]))
    with np.errstate(invalid="ignore"):
        decay = np.exp(previous - const)
    decay[np.isnan(decay)] = 1.0  # no key yet: the state is zero, any factor will do
    return qf, kf, decay, float(const[-1])


def _causal_recurrent(fmap, q, k, v, mask, out, chunk, column_blocks, workers):
    """Causal attention of one head by the numba recurrence, columns split in blocks."""
    from ._numba.attention import causal_recurrence

    dtype = fmap.dtype
    n, dv = v.shape
    columns = _split(dv, column_blocks)
    states = [np.zeros((fmap.n_out, c1 - c0), dtype=dtype) for c0, c1 in columns]
    normalizers = [np.zeros(fmap.n_out, dtype=dtype) for _ in columns]
    query_buf = fmap.empty(chunk, rows=True)
    key_buf = fmap.empty(chunk, rows=True)
    value_buf = np.empty((chunk, dv), dtype=dtype)
    carried = -np.inf
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        if workers > 1:
            # queries on one thread while the keys are mapped on another
            query_task = executor(n_threads()).submit(fmap.queries, q[a:b], query_buf[: b - a])
            qf, kf, decay, carried = _recurrent_features(
                fmap, q, k, mask, a, b, query_buf, key_buf, carried, queries=False
            )
            query_task.result()
        else:
            qf, kf, decay, carried = _recurrent_features(
                fmap, q, k, mask, a, b, query_buf, key_buf, carried
            )
        values = value_buf[: b - a]
        values[...] = v[a:b]
        block = out[a:b]
        _run_parallel(
            [
                partial(
                    causal_recurrence,
                    qf,
                    kf,
                    values,
                    decay,
                    states[i],
                    normalizers[i],
                    block,
                    c0,
                    c1,
                )
                for i, (c0, c1) in enumerate(columns)
            ],
            workers,
        )


# Causal rule, measured with benchmarks/bench_attention.py --methods (d = 64, m = 256,
# float32, 2 threads; table in the issue note): the two algorithms are within noise of
# each other for one head on 2 threads and the chunked products never lose by much,
# need no compilation and run whole heads on one thread each; "auto" takes "chunked".
# Chunks of 256 rows measured faster than 64, 128 and 512 (one thread, L = 65536).
_CAUSAL_CHUNK_ROWS = 256


def _causal_scan(fmap, q, k, v, mask, out, chunk, workers):
    """Causal attention of one head split over ``workers`` contiguous ranges.

    Phase 1 computes the key state of each range but the last, in parallel; an
    exclusive prefix merge gives each range the state of all earlier keys (its
    constant is their maximum: no future key enters); phase 2 runs the ranges in
    parallel from those states.
    """
    ranges = _split(q.shape[0], workers)
    parts = _run_parallel(
        [partial(_key_state, fmap, k, v, mask, a, b, chunk) for a, b in ranges[:-1]],
        workers,
    )
    initials = [None]
    for w in range(1, len(ranges)):
        prefix = parts[:w]
        carried = max(c for _, _, c in prefix)
        state, normalizer = _merge_states(prefix, fmap.dtype)
        initials.append((state, normalizer, carried))
    _run_parallel(
        [
            partial(_causal_chunked, fmap, q, k, v, mask, out, chunk, a, b, initial)
            for (a, b), initial in zip(ranges, initials, strict=True)
        ],
        workers,
    )


def _causal(fmap, heads, out, workers, method):
    if method == "auto":
        method = "chunked"
    if method == "chunked":
        chunk = _CAUSAL_CHUNK_ROWS
        if len(heads) >= workers:
            _run_parallel(
                [
                    partial(_causal_chunked, fmap, q, k, v, m, out[idx], chunk)
                    for q, k, v, m, idx in heads
                ],
                workers,
            )
        else:
            for q, k, v, m, idx in heads:
                _causal_scan(fmap, q, k, v, m, out[idx], chunk, workers)
        return
    chunk = max(64, _RECURRENT_CHUNK_BYTES // (fmap.n_out * fmap.dtype.itemsize))
    if len(heads) >= workers:
        _run_parallel(
            [
                partial(_causal_recurrent, fmap, q, k, v, m, out[idx], chunk, 1, 1)
                for q, k, v, m, idx in heads
            ],
            workers,
        )
        return
    for q, k, v, m, idx in heads:
        blocks = max(1, min(workers, v.shape[1]))
        _causal_recurrent(fmap, q, k, v, m, out[idx], chunk, blocks, workers)


# -- public API -------------------------------------------------------------------


def _resolve_projection(projection_matrix, n_features, d, projection, random_state):
    """The (m, d) projection: ``projection_matrix`` checked, or a fresh draw."""
    if projection_matrix is None:
        n_features = check_int(n_features, "n_features")
        check_option(projection, "projection", PROJECTION_KINDS)
        return draw_projection(n_features, d, kind=projection, random_state=random_state)
    W = check_float_array(projection_matrix, "projection_matrix", ndim=2, dtype=np.float64)
    if W.shape[1] != d:
        raise ValueError(
            f"projection_matrix must have shape (n_features, d) with d = {d}, got {W.shape}"
        )
    return W


def favor_attention(
    Q,
    K,
    V,
    *,
    causal=False,
    n_features=256,
    features="positive",
    projection="orthogonal",
    scale=None,
    projection_matrix=None,
    key_padding_mask=None,
    random_state=None,
    method="auto",
):
    """FAVOR+ attention: softmax attention by random features in linear time and memory.

    Approximates ``softmax(scale Q K^T) V`` by ``D^-1 phi(Q) (phi(K)^T V)`` with
    ``D = diag(phi(Q) phi(K)^T 1)`` (Performer, eq. 4; causal: prefix sums, eq. 11),
    where ``phi(x).phi(y)`` estimates ``exp(scale x.y)``; each of q and k enters the
    feature map as ``scale^(1/2) x``.  Time O(L m (d + dv)); extra memory O(chunk x m
    + m x dv) per worker thread, independent of L.

    Parameters
    ----------
    Q : array-like of shape (..., Lq, d)
        Queries.  Leading dimensions (batch, heads) broadcast against those of K, V
        and key_padding_mask.
    K : array-like of shape (..., Lk, d)
        Keys.
    V : array-like of shape (..., Lk, dv)
        Values.
    causal : bool, default=False
        If True, output ``i`` uses keys ``0..i`` only (requires ``Lq == Lk``).  No
        output depends on a later token: the key stabilizer of row ``i`` is the
        running maximum over keys ``0..i``.
    n_features : int, default=256
        Number of random projections ``m`` (ignored if ``projection_matrix`` is given).
        The positive and relu maps have ``m`` features, the hyperbolic and
        trigonometric maps ``2m``.
    features : {"positive", "hyperbolic", "trigonometric", "relu", "optimal", "saderf"}, \
default="positive"
        The feature map, as in :mod:`favorkern.features`: ``"positive"``
        ``exp(w.x - |x|^2/2)`` (FAVOR+); ``"hyperbolic"`` ``exp(+-w.x - |x|^2/2)``;
        ``"trigonometric"`` ``exp(|x|^2/2) [cos w.x, sin w.x]`` (can be negative: its
        normalizer ``D`` can be <= 0, giving sign flips or huge values, THEORY.md
        section 7.7); ``"relu"`` ``max(w.x, 0)`` (generalized attention, which does
        *not* estimate softmax attention); ``"optimal"`` GERF / OPRF (FAVOR++,
        :class:`favorkern.OptimalPositiveRandomFeatures`) with ``A*`` from the
        homogeneity heuristic on the current Q and K of each (batch, head);
        ``"saderf"`` (FAVOR#'s SADERF) first rescales ``q_l -> psi_l q_l``,
        ``k_l -> k_l / psi_l`` with ``psi_l = (sum_j k_jl^2 / sum_i q_il^2)^(1/4)``
        per dimension (``q.k`` unchanged, ``|q + k|^2`` balanced), then ``"optimal"``.
        Both fit statistics on all tokens, so they are bidirectional only.
    projection : {"orthogonal", "gaussian", "simplex", "structured"}, default="orthogonal"
        Kind of the drawn projection (:func:`favorkern.draw_projection`).
    scale : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    projection_matrix : array-like of shape (m, d), default=None
        Use these projections instead of drawing them.
    key_padding_mask : array-like of bool, shape (..., Lk), default=None
        True marks a key to ignore.  A row whose keys are all ignored is 0.
    random_state : int, RandomState instance or None, default=None
        Seed of the drawn projection.
    method : {"auto", "chunked", "recurrent"}, default="auto"
        Causal algorithm: chunked matrix products, or the numba recurrence over
        tokens parallel over value columns; "auto" picks by a measured rule (see
        Notes).  Both are exact implementations of the same estimate.

    Returns
    -------
    out : ndarray of shape (..., Lq, dv)
        float32 if Q, K and V are float32, else float64.

    See Also
    --------
    softmax_attention : the exact O(L^2) reference.
    FavorAttention : holds one projection across calls.

    Notes
    -----
    Stabilizers (cancel exactly in the normalized output): query features are
    divided by their row maximum; keys by one constant per (batch, head), the
    running maximum (bidirectional: over all keys, rescaling the state when it grows;
    causal: over keys ``0..i`` for output ``i``).  The trigonometric map has no
    sign-safe stabilizer; its ``exp(|k|^2/2)`` factor uses the same key constant.

    No epsilon is added to the features.  The only guard: where the normalizer
    ``phi(q_i) . sum_j phi(k_j)`` is exactly 0 (every key masked, or every feature
    product underflowed, e.g. for huge norms in float32), the output row is 0.

    Causal ``method="auto"`` uses the chunked products (256-row chunks): with at
    least one (batch, head) per worker thread each thread runs whole heads;
    otherwise each head is split into one contiguous range per thread, the ranges'
    key states are computed in parallel and prefix-merged (each range starts from
    the state of the keys before it), and the ranges then run in parallel.
    ``method="recurrent"`` runs the numba recurrence, heads one after the other with
    the value columns split over threads (or whole heads per thread).

    References
    ----------
    K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import favor_attention, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(scale=0.5, size=(2, 100, 16))
    >>> V = rng.normal(size=(100, 8))
    >>> exact = softmax_attention(Q, K, V)
    >>> approx = favor_attention(Q, K, V, n_features=1024, random_state=0)
    >>> approx.shape
    (100, 8)
    >>> bool(np.abs(approx - exact).max() < 0.2)
    True
    """
    Q, K, V, mask, batch = _check_inputs(Q, K, V, causal, key_padding_mask)
    d = Q.shape[-1]
    check_option(features, "features", FEATURES)
    check_option(method, "method", ("auto", "chunked", "recurrent"))
    scale = _check_scale(scale, d)
    W = _resolve_projection(projection_matrix, n_features, d, projection, random_state)
    return _dispatch(Q, K, V, mask, batch, W, features, scale, causal, method)


def _dispatch(Q, K, V, mask, batch, W, features, scale, causal, method):
    """Validated inputs to the right algorithm (shared by favor_attention and FavorAttention)."""
    if features in ADAPTIVE_FEATURES:
        if causal:
            raise ValueError(
                f"features={features!r} fits its constants on all tokens of Q and K, so "
                "outputs would depend on later tokens: use it with causal=False"
            )
        return _favor_adaptive(Q, K, V, mask, batch, W, features, scale, method)
    return _favor(Q, K, V, mask, batch, W, features, scale, causal, method)


def adaptive_constants(q, k, mask, features, scale):
    """``(psi, A)`` of the adaptive maps for one (batch, head).

    ``psi`` (``None`` for ``"optimal"``) is SADERF's per-dimension rescaling
    (Likhosherstov et al. 2023, THEORY.md 6.2); ``A`` is GERF's ``A*`` for the mean
    ``|q' + k'|^2`` over all (query, key) pairs of the rescaled, scaled inputs
    (the homogeneity heuristic of THEORY.md 6.1).  Masked keys are left out.
    """
    keys = k if mask is None else k[~mask]
    psi = None
    q64 = q.astype(np.float64)
    k64 = keys.astype(np.float64)
    if features == "saderf":
        q_sq = np.einsum("ij,ij->j", q64, q64)
        k_sq = np.einsum("ij,ij->j", k64, k64)
        with np.errstate(divide="ignore", invalid="ignore"):
            psi = np.sqrt(np.sqrt(k_sq / q_sq))
        # Dimensions that are zero on one side carry no kernel mass: leave them alone.
        psi = np.where(np.isfinite(psi) & (psi > 0), psi, 1.0)
        psi = np.clip(psi, 1e-4, 1e4)
        q64 = q64 * psi
        k64 = k64 / psi
    if k64.shape[0] == 0:
        return psi, 0.0
    sum_sq = scale * homogeneity_sum_sq(q64, k64)
    return psi, float(optimal_gerf_a(sum_sq, q.shape[-1]))


def _favor_adaptive(Q, K, V, mask, batch, W, features, scale, method):
    """One feature map per (batch, head), with that head's fitted constants."""
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    for q, k, v, m, idx in _heads(Q, K, V, mask, batch):
        psi, A = adaptive_constants(q, k, m, features, scale)
        if psi is not None:
            q = np.ascontiguousarray(q * psi.astype(q.dtype))
            k = np.ascontiguousarray(k / psi.astype(k.dtype))
        out[idx] = _favor(q, k, v, m, (), W, features, scale, False, method, A=A)
    return out


def _favor(Q, K, V, mask, batch, W, features, scale, causal, method, A=0.0):
    fmap = _AttentionFeatures(features, W, scale, Q.dtype, A=A)
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    heads = _heads(Q, K, V, mask, batch)
    work = len(heads) * (Q.shape[-2] + K.shape[-2]) * fmap.n_out
    workers = n_threads() if work >= _PARALLEL_MIN_WORK else 1
    chunk = max(16, _CHUNK_BYTES // (fmap.n_out * Q.dtype.itemsize))
    with blas_single_thread():  # the parallelism is ours, see softmax_attention
        if causal:
            if method != "chunked" and not V.flags.writeable:
                heads = _heads(Q, K, V.copy(), mask, batch)
            _causal(fmap, heads, out, workers, method)
        else:
            _bidirectional(fmap, heads, out, chunk, workers)
    return out


class FavorAttention:
    """FAVOR+ attention holding one random projection across calls.

    The projection is drawn on the first call for the ``d`` it sees (or by
    :meth:`fit`) and kept until :meth:`redraw`; calls then take the arguments of
    :func:`favor_attention`.

    Parameters
    ----------
    n_features : int, default=256
        Number of random projections ``m``.
    features : {"positive", "hyperbolic", "trigonometric", "relu", "optimal", "saderf"}, \
default="positive"
        The feature map (see :func:`favor_attention`).
    projection : {"orthogonal", "gaussian", "simplex", "structured"}, default="orthogonal"
        Kind of projection (:func:`favorkern.draw_projection`).
    causal : bool, default=False
        Default for the ``causal`` argument of calls.
    random_state : int, RandomState instance or None, default=None
        Seed; redraws continue the same random stream, so a seeded instance gives
        the same sequence of projections.

    Attributes
    ----------
    projection_ : ndarray of shape (n_features, d)
        The current projection (after the first call or :meth:`fit`).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import FavorAttention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 2, 50, 16))
    >>> attention = FavorAttention(n_features=64, causal=True, random_state=0)
    >>> out = attention(Q, K, V)
    >>> out.shape, attention.projection_.shape
    ((2, 50, 16), (64, 16))
    >>> bool(np.array_equal(out, attention(Q, K, V)))    # same projection
    True
    >>> bool(np.array_equal(out, attention.redraw()(Q, K, V)))
    False
    """

    def __init__(
        self,
        n_features=256,
        features="positive",
        projection="orthogonal",
        causal=False,
        random_state=None,
    ):
        self.n_features = n_features
        self.features = features
        self.projection = projection
        self.causal = causal
        self.random_state = random_state

    def fit(self, d):
        """Draw a projection for inputs of dimension ``d``; returns ``self``."""
        d = check_int(d, "d")
        check_int(self.n_features, "n_features")
        check_option(self.features, "features", FEATURES)
        check_option(self.projection, "projection", PROJECTION_KINDS)
        self._rng = check_random_state(self.random_state)
        self._draw(d)
        return self

    def redraw(self):
        """Draw a new projection for the same ``d``; returns ``self``."""
        if not hasattr(self, "projection_"):
            raise ValueError("FavorAttention has no projection yet: call it or fit(d) first")
        self._draw(self.projection_.shape[1])
        return self

    def _draw(self, d):
        self.projection_ = draw_projection(
            self.n_features, d, kind=self.projection, random_state=self._rng
        )

    def __call__(self, Q, K, V, *, causal=None, scale=None, key_padding_mask=None, method="auto"):
        """Attention of ``Q, K, V`` with the held projection (see :func:`favor_attention`).

        ``causal=None`` uses the instance's ``causal``.
        """
        causal = self.causal if causal is None else causal
        Q, K, V, mask, batch = _check_inputs(Q, K, V, causal, key_padding_mask)
        d = Q.shape[-1]
        if not hasattr(self, "projection_"):
            self.fit(d)
        elif self.projection_.shape[1] != d:
            raise ValueError(
                f"Q has d = {d} features but the projection was drawn for "
                f"d = {self.projection_.shape[1]}; call fit({d}) to draw a new one"
            )
        check_option(method, "method", ("auto", "chunked", "recurrent"))
        scale = _check_scale(scale, d)
        return _dispatch(
            Q, K, V, mask, batch, self.projection_, self.features, scale, causal, method
        )

    def __repr__(self):
        return (
            f"FavorAttention(n_features={self.n_features}, features={self.features!r}, "
            f"projection={self.projection!r}, causal={self.causal}, "
            f"random_state={self.random_state!r})"
        )
