"""Exact softmax attention, the O(L^2) reference, computed over query chunks."""

from __future__ import annotations

import numpy as np

from .. import _config
from .._parallel import blas_single_thread, n_threads
from .._validation import check_attention_inputs, check_logit_scale
from .common import heads, normalize, run_parallel
from .values import scaled_values, unscale

__all__ = ["softmax_attention"]


def _hidden(scores, mask, start, stop, causal):
    """Set the scores of masked and (if causal) future keys to ``-inf`` in place."""
    if mask is not None:
        scores[:, mask] = -np.inf
    if causal:
        future = np.arange(scores.shape[1])[np.newaxis, :] > np.arange(start, stop)[:, np.newaxis]
        scores[future] = -np.inf


def _exact_rows_rescaled(q, k, v, mask, start, stop, gamma, causal):
    """Softmax rows whose scores overflow the dtype: in float64 on unit-scaled inputs.

    With ``q = a q~`` and ``k = b k~`` (``a``, ``b`` the largest magnitudes) the
    scores are ``c q~.k~`` with ``c = gamma a b``; ``exp(c (s - max s))`` is then
    evaluated without forming ``c s`` (which may exceed float64 as well).
    """
    qs, ks = q[start:stop].astype(np.float64), k.astype(np.float64)
    a = float(np.abs(qs).max()) or 1.0
    b = float(np.abs(ks).max()) or 1.0
    scores = (qs / a) @ (ks / b).T
    _hidden(scores, mask, start, stop, causal)
    row_max = scores.max(axis=1)
    row_max[~np.isfinite(row_max)] = 0.0
    scores -= row_max[:, np.newaxis]
    with np.errstate(over="ignore", invalid="ignore"):
        scores *= gamma * a * b  # 0 * inf at each row's maximum: NaN, set back to 0
    scores[np.isnan(scores)] = 0.0
    np.exp(scores, out=scores)
    block = scores @ v.astype(np.float64)
    normalize(block, scores.sum(axis=1))
    return block


def _exact_rows(q, k, v, mask, out, start, stop, gamma, causal):
    with np.errstate(over="ignore", invalid="ignore"):
        scores = q[start:stop] @ k.T
        scores *= scores.dtype.type(gamma)
    _hidden(scores, mask, start, stop, causal)
    row_max = scores.max(axis=1)
    if not np.all(row_max < np.inf):
        # q.k beyond the dtype (or an inf - inf product): the finite answer from
        # rescaled float64 scores, cast back to the output dtype.
        out[start:stop] = _exact_rows_rescaled(q, k, v, mask, start, stop, gamma, causal)
        return
    row_max[~np.isfinite(row_max)] = 0.0  # rows with every key masked
    scores -= row_max[:, np.newaxis]
    np.exp(scores, out=scores)
    block = out[start:stop]
    np.matmul(scores, v, out=block)
    normalize(block, scores @ np.ones(scores.shape[1], dtype=scores.dtype))


def softmax_attention(Q, K, V, *, causal=False, gamma=None, key_padding_mask=None):
    """Exact softmax attention ``softmax(gamma Q K^T) V``, the O(L^2) reference.

    Computed over query chunks, so the extra memory is O(chunk x Lk) per worker
    thread; each row subtracts its maximum score before ``exp``.  Where a score
    ``gamma q.k`` overflows the dtype, that chunk is recomputed in float64 from
    unit-scaled ``Q`` and ``K`` (the result is finite for finite input and keeps
    the dtype of the inputs).  Value columns whose sums could overflow (values within
    a factor ``Lk`` of the dtype's largest number) are divided by a power of two
    before the sums and the outputs multiplied back, which is exact.

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
    gamma : float or None, default=None
        Logit scale: ``softmax(gamma Q K^T) V``; ``1 / sqrt(d)`` if None.
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
    Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal, key_padding_mask)
    gamma = check_logit_scale(gamma, Q.shape[-1])
    n_queries, n_keys = Q.shape[-2], K.shape[-2]
    V, exponents = scaled_values(V, n_keys)
    out = np.empty(batch + (n_queries, V.shape[-1]), dtype=Q.dtype)
    rows = max(1, min(n_queries, _config.EXACT_CHUNK_SCORES // n_keys))
    if out.size // max(1, V.shape[-1]) == n_queries:  # one head: a chunk per thread at least
        rows = min(rows, -(-n_queries // n_threads()))
    tasks = []
    for q, k, v, m, idx in heads(Q, K, V, mask, batch):
        for start in range(0, n_queries, rows):
            stop = min(n_queries, start + rows)
            tasks.append(
                lambda q=q, k=k, v=v, m=m, o=out[idx], a=start, b=stop: _exact_rows(
                    q, k, v, m, o, a, b, gamma, causal
                )
            )
    work = out.size // max(1, V.shape[-1]) * n_keys
    workers = n_threads() if work > _config.EXACT_PARALLEL_MIN_SCORES else 1
    # BLAS always on one thread: the parallelism is ours (BLAS threads next to our
    # threads, or on a busy machine, measured up to 10x slower).
    with blas_single_thread():
        run_parallel(tasks, workers)
    return unscale(out, exponents)
