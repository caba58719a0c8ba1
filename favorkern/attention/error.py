"""An estimate of the relative row errors of any attention output, in O(s L d).

The exact attention of ``s`` randomly sampled query rows per (batch, head) costs
``O(s L d)``, a small fraction of the linear-time approximation for ``s << m``;
comparing it with the given output estimates the distribution of the relative
row errors ``|out_i - exact_i| / |exact_i|`` of all rows, with confidence
intervals.  The in-sample spread of the random features is no substitute: it
misses exactly the tail events that make the error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, norm
from sklearn.utils import check_random_state

from .. import _config
from .._parallel import blas_single_thread, n_threads
from .._validation import check_float_array, check_int, check_logit_scale
from .._warnings import ApproximationWarning
from .common import run_parallel

__all__ = ["AttentionErrorEstimate", "estimate_attention_error", "ApproximationWarning"]

# Bootstrap replicates of the stratified mean; beyond this many resampled values in
# total, the normal approximation of the same stratified estimator is used.
_N_BOOTSTRAP = 2000
_MAX_BOOTSTRAP_VALUES = 1 << 24


@dataclass(frozen=True)
class AttentionErrorEstimate:
    """Estimated relative row errors of an attention output (see the module docstring).

    Attributes
    ----------
    mean : float
        Estimated mean relative row error over all rows of all (batch, heads)
        (heads weighted by their number of rows with at least one visible key).
    mean_interval : tuple of float
        Confidence interval of ``mean``: studentized (bootstrap-t) bootstrap
        stratified by head (rows resampled within each head, deviations shrunk by
        the finite-population factor ``sqrt(1 - s_h / L_h)``, so sampling every row
        gives a zero-width interval); with more than ``2**24`` resampled values in
        total, the normal approximation of the same stratified estimator.
    median : float
        Median of the sampled relative row errors (pooled over heads).
    median_interval : tuple of float
        Distribution-free order-statistics interval of the median (binomial,
        treating the pooled sample as a simple random sample of rows).
    confidence : float
        Level of both intervals.
    per_head_mean, per_head_median : ndarray of shape (...)
        Per (batch, head) sample mean and median (NaN for a head without rows).
    worst_heads : list of (tuple, float)
        The (batch, head) indices with the largest ``per_head_mean``, largest first.
    n_rows : int
        Rows sampled per (batch, head) (fewer when the sequence is shorter).
    errors : list of ndarray
        The sampled relative errors of each (batch, head), in C order of the heads.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import favor_attention
    >>> from favorkern.attention import estimate_attention_error
    >>> rng = np.random.default_rng(1)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 2, 300, 8))
    >>> out = favor_attention(Q, K, V, n_components=32, random_state=0)
    >>> estimate = estimate_attention_error(Q, K, V, out, n_rows=32, random_state=0)
    >>> estimate.n_rows, len(estimate.errors)
    (32, 2)
    """

    mean: float
    mean_interval: tuple
    median: float
    median_interval: tuple
    confidence: float
    per_head_mean: np.ndarray
    per_head_median: np.ndarray
    worst_heads: list
    n_rows: int
    errors: list

    def __str__(self):
        level = f"{100 * self.confidence:g}%"
        lines = [
            f"relative row error: mean {self.mean:.3g} ({level} CI {self.mean_interval[0]:.3g}"
            f"-{self.mean_interval[1]:.3g}), median {self.median:.3g} ({level} CI "
            f"{self.median_interval[0]:.3g}-{self.median_interval[1]:.3g}); "
            f"{self.n_rows} rows per head"
        ]
        if self.worst_heads and self.per_head_mean.ndim:
            worst = ", ".join(f"{idx}: {err:.3g}" for idx, err in self.worst_heads)
            lines.append(f"worst heads (mean): {worst}")
        return "\n".join(lines)


def _kv_index(out_batch, kv_batch):
    """Maps an output (batch, head) index to the broadcast key/value index.

    The last leading axis may be grouped: ``g`` query heads per key/value head.
    """
    n = len(out_batch)
    kv = (1,) * (n - len(kv_batch)) + tuple(kv_batch)
    group = 1
    if n and kv[-1] not in (1, out_batch[-1]):
        group = out_batch[-1] // kv[-1]

    def index(idx):
        return tuple(
            0 if size == 1 else (i // group if a == n - 1 else i)
            for a, (i, size) in enumerate(zip(idx, kv, strict=True))
        )

    return index, kv


def _resolve_batch(q_lead, kv_lead, name="Q"):
    """The output batch of queries ``q_lead`` against keys ``kv_lead`` (grouped heads ok)."""
    n = max(len(q_lead), len(kv_lead))
    q = (1,) * (n - len(q_lead)) + tuple(q_lead)
    kv = (1,) * (n - len(kv_lead)) + tuple(kv_lead)
    if n and q[-1] != kv[-1] and kv[-1] != 1 and q[-1] != 1:
        if q[-1] % kv[-1]:
            raise ValueError(
                f"{name} has {q[-1]} heads (axis -3), not a multiple of the {kv[-1]} "
                "key/value heads"
            )
        return np.broadcast_shapes(q[:-1], kv[:-1]) + (q[-1],)
    return np.broadcast_shapes(q, kv)


def _lead_index(X, idx, n_trailing):
    lead = X.shape[: X.ndim - n_trailing]
    offset = len(idx) - len(lead)
    return X[tuple(0 if size == 1 else idx[offset + k] for k, size in enumerate(lead))]


def _partial_rows(q_rows, rows, k, v, bias, causal, start, stop, c=1.0):
    """Softmax pieces of the sorted query rows ``rows`` over the keys ``start:stop``.

    The logits are ``c q_rows.k``: ``q_rows`` already carries ``gamma`` (``c = 1``),
    or ``q_rows`` and ``k`` are unit-scaled and ``c`` is ``gamma`` times their scales
    (logits beyond the dtype: ``c`` may even be ``inf``, and ``c s`` is never formed).
    ``bias`` is 0 / -inf per key (mask) or None.  Returns ``(top, total, numerator)``:
    each row's largest ``q_rows.k`` (``-inf`` if it sees no key of the range),
    ``sum exp(c (s - top))`` and ``sum exp(c (s - top)) v``, in float64, for
    :func:`_merge_parts`.  In the inputs' dtype otherwise (float32 stays float32: its
    rounding is far below any error worth estimating).  Causal rows read only the keys
    up to the last row.
    """
    n = len(rows)
    if causal:
        stop = min(stop, int(rows[-1]) + 1)
    if stop <= start:
        return np.full(n, -np.inf), np.zeros(n), np.zeros((n, v.shape[1]))
    dtype = q_rows.dtype
    scores = q_rows @ k[start:stop].T
    if bias is not None:
        scores += bias[start:stop]
    if causal:
        for r in range(n):
            if rows[r] + 1 < stop:
                scores[r, max(0, rows[r] + 1 - start) :] = -np.inf
    top = scores.max(axis=1).astype(np.float64)
    seen = np.isfinite(top)
    scores -= np.where(seen, top, 0.0).astype(dtype)[:, np.newaxis]
    if c != 1.0:
        with np.errstate(over="ignore", invalid="ignore"):
            scores *= dtype.type(c)  # 0 * inf at each row's maximum: NaN, set back to 0
        scores[np.isnan(scores)] = 0.0
    np.exp(scores, out=scores)
    total = scores.sum(axis=1, dtype=np.float64)
    numerator = (scores @ v[start:stop]).astype(np.float64)
    return top, total, numerator


def _merge_parts(parts, c=1.0):
    """Exact rows from the pieces of :func:`_partial_rows` over key ranges (same ``c``)."""
    tops = np.stack([p[0] for p in parts])
    top = tops.max(axis=0)
    visible = np.isfinite(top)
    with np.errstate(over="ignore", invalid="ignore"):
        exponents = (tops - np.where(visible, top, 0.0)) * c
        exponents[np.isnan(exponents)] = 0.0  # 0 * inf: the range holding the maximum
        factors = np.where(np.isfinite(tops), np.exp(exponents), 0.0)
    total = sum(f * p[1] for f, p in zip(factors, parts, strict=True))
    numerator = sum(f[:, np.newaxis] * p[2] for f, p in zip(factors, parts, strict=True))
    total[~visible] = np.inf
    return numerator / total[:, np.newaxis], visible


def _logit_scales(Q, K, gamma):
    """``(a, b, c)``: divide ``Q`` by ``a`` and ``K`` by ``b`` and scale the logits by
    ``c = gamma a b`` where ``gamma q.k`` could exceed the dtype; else ``(None, None, 1)``.
    """
    a = float(np.abs(Q).max()) if Q.size else 0.0
    b = float(np.abs(K).max()) if K.size else 0.0
    limit = float(np.finfo(Q.dtype).max) / 4.0
    with np.errstate(over="ignore"):
        bound = gamma * a * b * Q.shape[-1]  # |gamma q.k| <= gamma d max|q| max|k|
    if bound < limit and a < limit and b < limit:
        return None, None, 1.0
    a, b = a or 1.0, b or 1.0
    with np.errstate(over="ignore"):
        return a, b, gamma * a * b


def _value_exponent(V, n_keys) -> int:
    """``e`` with ``V 2^-e`` summable over ``n_keys`` rows without overflow (0 if it is)."""
    peak = float(np.abs(V).max()) if V.size else 0.0
    limit = float(np.finfo(V.dtype).max) / (4.0 * max(1, n_keys))
    return int(np.ceil(np.log2(peak / limit))) if peak > limit else 0


def _row_norms(X):
    """Euclidean norms of the rows of ``X`` without overflow (``inf`` for inf rows)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        peak = np.abs(X).max(axis=1) if X.shape[1] else np.zeros(X.shape[0])
        safe = np.where((peak > 0) & np.isfinite(peak), peak, 1.0)
        norms = peak * np.linalg.norm(X / safe[:, np.newaxis], axis=1)
    norms[np.isnan(peak)] = np.nan
    norms[np.isinf(peak)] = np.inf
    norms[peak == 0] = 0.0
    return norms


def _sample_rows(rng, n, size):
    """``size`` distinct sorted indices of ``range(n)`` (Floyd's algorithm: O(size))."""
    if size >= n:
        return np.arange(n)
    chosen = set()
    for j in range(n - size, n):
        t = int(rng.integers(0, j + 1))
        chosen.add(j if t in chosen else t)
    return np.array(sorted(chosen))


def _visible_rows(n_queries, keep, causal):
    """Number of query rows that see at least one key."""
    if keep is None:
        return n_queries
    if not causal:
        return n_queries if keep.any() else 0
    first = np.flatnonzero(keep[:n_queries])
    return 0 if first.size == 0 else n_queries - int(first[0])


def _weighted_median(values, weights):
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def estimate_attention_error(
    Q,
    K,
    V,
    out,
    *,
    causal=False,
    gamma=None,
    key_padding_mask=None,
    n_rows=64,
    confidence=0.95,
    warn_error=0.5,
    n_worst=5,
    random_state=None,
    _stacklevel=2,
):
    """Estimate the relative row errors of an attention output from sampled exact rows.

    For each (batch, head), ``n_rows`` query rows are sampled without replacement,
    their exact softmax attention is computed (``O(n_rows L d)``, causal-aware and
    masked) and compared with the rows of ``out``:
    ``e_i = |out_i - exact_i|_2 / |exact_i|_2`` (the absolute error where an exact
    row is 0; ``inf`` where ``out_i`` is not finite).  Works for any output
    (FAVOR, another approximation, a truncated exact computation).

    Parameters
    ----------
    Q : array-like of shape (..., Lq, d)
        Queries.
    K : array-like of shape (..., Lk, d)
        Keys.  The head axis (-3) may hold a divisor of the query heads
        (grouped-query attention: query head ``i`` reads key head ``i // g``);
        other leading axes broadcast.
    V : array-like of shape (..., Lk, dv)
        Values.
    out : array-like of shape (..., Lq, dv)
        The output to assess.
    causal : bool, default=False
        Query ``i`` sees keys ``0..i`` only.
    gamma : float or None, default=None
        Logit scale (``1 / sqrt(d)`` if None).
    key_padding_mask : array-like of bool, shape (..., Lk), default=None
        True marks a key to ignore.  Rows that see no key are left out.
    n_rows : int, default=64
        Query rows sampled per (batch, head) (all rows when ``Lq`` is smaller).
    confidence : float, default=0.95
        Level of the confidence intervals.
    warn_error : float or None, default=0.5
        Emit an :class:`~favorkern._warnings.ApproximationWarning` when the
        estimated median relative row error exceeds it; None never warns.  The
        default 0.5 flags outputs whose typical row is off by half its norm.
    n_worst : int, default=5
        Heads listed in ``worst_heads``.
    random_state : int, Generator, RandomState instance or None, default=None
        Seed of the sampled rows and of the bootstrap.

    Returns
    -------
    estimate : AttentionErrorEstimate
        Mean and median with confidence intervals (the mean: studentized bootstrap
        stratified by head with a finite-population correction; the median:
        distribution-free order statistics), per-head summaries and the worst heads.

    Notes
    -----
    Relative row errors of random features are right-skewed, with rare very large
    rows (the trigonometric map's normalizer near 0, peaked attention).  No sample of
    64 rows bounds a mean dominated by a handful of rows out of ``L``: on such
    outputs the interval of the mean covers less often than its level (the median
    and its interval stay reliable); the estimate still shows the output is poor.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import favor_attention
    >>> from favorkern.attention.error import estimate_attention_error
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 4, 500, 16))
    >>> out = favor_attention(Q, K, V, n_components=64, random_state=0)
    >>> estimate = estimate_attention_error(Q, K, V, out, random_state=0)
    >>> low, high = estimate.mean_interval
    >>> bool(low <= estimate.mean <= high), estimate.per_head_mean.shape
    (True, (4,))
    """
    Q = check_float_array(Q, "Q", min_ndim=2)
    K = check_float_array(K, "K", min_ndim=2)
    V = check_float_array(V, "V", min_ndim=2)
    dtype = np.result_type(Q.dtype, K.dtype, V.dtype)
    Q, K, V = (X.astype(dtype, copy=False) for X in (Q, K, V))
    return estimate_checked(
        Q, K, V, out, causal=causal, gamma=gamma, key_padding_mask=key_padding_mask,
        n_rows=n_rows, confidence=confidence, warn_error=warn_error, n_worst=n_worst,
        random_state=random_state, _stacklevel=_stacklevel + 1,
    )  # fmt: skip


def estimate_checked(
    Q, K, V, out, *, causal, gamma, key_padding_mask, n_rows, confidence=0.95,
    warn_error=0.5, n_worst=5, random_state=None, _stacklevel=2,
):  # fmt: skip
    """:func:`estimate_attention_error` for Q, K, V already checked (one float dtype)."""
    out = np.asarray(out)
    if out.dtype.kind != "f":
        raise TypeError(f"out must be a float array, got dtype {out.dtype}")
    n_rows = check_int(n_rows, "n_rows")
    n_worst = check_int(n_worst, "n_worst", min_value=0)
    if not isinstance(confidence, float | int) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    if warn_error is not None:
        bad = isinstance(warn_error, bool) or not isinstance(warn_error, float | int)
        if bad or warn_error < 0:
            raise ValueError(f"warn_error must be a number >= 0 or None, got {warn_error!r}")
    d = Q.shape[-1]
    gamma = check_logit_scale(gamma, d)
    n_queries, n_keys = Q.shape[-2], K.shape[-2]
    if K.shape[-1] != d:
        raise ValueError(f"K must have the feature dimension d = {d} of Q, got shape {K.shape}")
    if V.shape[-2] != n_keys:
        raise ValueError(f"V must have as many rows as K ({n_keys}), got shape {V.shape}")
    if causal and n_queries != n_keys:
        raise ValueError(f"causal=True needs Lq == Lk, got {n_queries} and {n_keys}")
    mask = None
    leads = [K.shape[:-2], V.shape[:-2]]
    if key_padding_mask is not None:
        mask = np.asarray(key_padding_mask)
        if mask.dtype != np.bool_ or mask.ndim < 1 or mask.shape[-1] != n_keys:
            raise ValueError(
                f"key_padding_mask must be a boolean array of shape (..., {n_keys}), got "
                f"{mask.dtype} {mask.shape}"
            )
        leads.append(mask.shape[:-1])
    try:
        kv_batch = np.broadcast_shapes(*leads)
        batch = _resolve_batch(Q.shape[:-2], kv_batch)
    except ValueError as exc:
        raise ValueError(f"the leading dimensions of Q, K, V and key_padding_mask: {exc}") from None
    expected = batch + (n_queries, V.shape[-1])
    if out.shape != expected:
        raise ValueError(f"out must have shape {expected}, got {out.shape}")
    kv_index, _ = _kv_index(batch, kv_batch)
    rng = random_state if isinstance(random_state, np.random.Generator) else None
    if rng is None:
        seed = check_random_state(random_state).randint(2**31) if random_state is not None else None
        rng = np.random.default_rng(seed)

    size = min(n_rows, n_queries)
    n_heads = int(np.prod(batch, dtype=np.int64))
    work = size * n_heads * n_keys * (Q.shape[-1] + V.shape[-1])
    workers = n_threads() if work >= _config.ERROR_PARALLEL_MIN_WORK else 1
    # Keys in ranges of at most ERROR_KEY_RANGE (the scores of a task stay in cache; at least
    # one range per thread when there are fewer heads than threads), the pieces merged
    # as in flash attention.  Causal: blocks of rows, each reading the keys up to its
    # last row; otherwise all rows at once (the most efficient products).
    n_ranges = max(-(-n_keys // _config.ERROR_KEY_RANGE), workers if n_heads < workers else 1)
    n_ranges = min(n_ranges, n_keys)
    ranges = [(n_keys * p // n_ranges, n_keys * (p + 1) // n_ranges) for p in range(n_ranges)]
    longest = max(b - a for a, b in ranges)
    block = max(1, _config.ERROR_BLOCK_SCORES // max(1, longest))
    if causal:
        block = min(block, _config.ERROR_CAUSAL_BLOCK_ROWS)
    heads, tasks = [], []
    # Huge inputs: logits c q~.k~ of unit-scaled q~, k~, and values (and the output,
    # by the same power of two: relative errors do not change) brought below the
    # largest float over the sums of n_keys terms.  Exact scalings: the estimate of a
    # finite exact answer stays finite.
    q_scale, k_scale, c = _logit_scales(Q, K, gamma)
    exponent = _value_exponent(V, n_keys)
    scale = Q.dtype.type(gamma if q_scale is None else 1.0 / q_scale)
    for idx in np.ndindex(*batch):
        kv_idx = kv_index(idx)
        q = _lead_index(Q, idx, 2)
        k, v = _lead_index(K, kv_idx, 2), _lead_index(V, kv_idx, 2)
        if k_scale is not None:
            k = k * k.dtype.type(1.0 / k_scale)
        if exponent:
            v = np.ldexp(v, -exponent).astype(v.dtype, copy=False)
        keep = None if mask is None else ~_lead_index(mask, kv_idx, 1)
        bias = None if keep is None else np.where(keep, 0.0, -np.inf).astype(Q.dtype)
        rows = _sample_rows(rng, n_queries, size)
        heads.append((idx, rows, keep))
        for a in range(0, size, block):
            r = rows[a : a + block]
            q_rows = q[r] * scale
            for start, stop in ranges:
                tasks.append(lambda q=q_rows, r=r, k=k, v=v, b=bias, s0=start, s1=stop:
                             _partial_rows(q, r, k, v, b, causal, s0, s1, c))  # fmt: skip
    with blas_single_thread():  # multithreaded BLAS on these shapes measured 100x slower
        parts = iter(run_parallel(tasks, workers))
    errors, weights, sizes = [], [], []
    for idx, rows, keep in heads:
        pieces = [_merge_parts([next(parts) for _ in ranges], c) for _ in range(0, size, block)]
        exact = np.concatenate([p[0] for p in pieces])
        visible = np.concatenate([p[1] for p in pieces])
        got = np.ldexp(np.asarray(out[idx][rows], dtype=np.float64), -exponent)
        rows_seen = _visible_rows(n_queries, keep, causal)
        exact, got = exact[visible], got[visible]
        with np.errstate(invalid="ignore", over="ignore"):
            # norms of rows scaled by their largest entry: |x| = t |x / t| (no overflow)
            diff = _row_norms(got - exact)
            scale = _row_norms(exact)
            err = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), diff)
        err[~np.isfinite(err)] = np.inf
        errors.append(err)
        sizes.append(rows_seen)
        weights.append(float(rows_seen) if err.size else 0.0)

    return _summarize(
        errors, np.array(weights), np.array(sizes), batch, confidence, warn_error, n_worst,
        min(n_rows, n_queries), rng, _stacklevel + 1,
    )  # fmt: skip


def _summarize(errors, weights, sizes, batch, confidence, warn_error, n_worst, n_rows, rng, level):
    alpha = 1.0 - confidence
    n_heads = len(errors)
    per_mean = np.array([e.mean() if e.size else np.nan for e in errors])
    per_median = np.array([np.median(e) if e.size else np.nan for e in errors])
    total = weights.sum()
    nan = float("nan")
    if total == 0:
        mean = median = nan
        mean_ci = median_ci = (nan, nan)
    else:
        w = weights / total
        used = [h for h in range(n_heads) if errors[h].size]
        with np.errstate(invalid="ignore"):
            mean = float(sum(w[h] * per_mean[h] for h in used))
        mean_ci = _mean_interval(errors, w, sizes, used, mean, alpha, rng)
        pooled = np.concatenate([errors[h] for h in used])
        sample_w = np.concatenate([np.full(errors[h].size, w[h] / errors[h].size) for h in used])
        median = _weighted_median(pooled, sample_w)
        median_ci = _median_interval(pooled, alpha)
    order = [h for h in np.argsort(-np.nan_to_num(per_mean, nan=-np.inf)) if errors[h].size]
    indices = list(np.ndindex(*batch))
    worst = [(indices[h], float(per_mean[h])) for h in order[:n_worst]]
    estimate = AttentionErrorEstimate(
        mean=mean,
        mean_interval=mean_ci,
        median=median,
        median_interval=median_ci,
        confidence=float(confidence),
        per_head_mean=per_mean.reshape(batch),
        per_head_median=per_median.reshape(batch),
        worst_heads=worst,
        n_rows=n_rows,
        errors=errors,
    )
    if warn_error is not None and median > warn_error:
        warnings.warn(
            f"estimated median relative row error of the attention output is {median:.3g} "
            f"(> warn_error={warn_error:g}; mean {mean:.3g}); more features (n_components), "
            "another feature map or exact attention for the worst heads "
            f"{[idx for idx, _ in worst[:3]]} may be needed",
            ApproximationWarning,
            stacklevel=level,
        )
    return estimate


def _mean_interval(errors, w, sizes, used, mean, alpha, rng):
    """Stratified bootstrap-t interval of the weighted mean (normal approx when large).

    Rows are resampled within each head; each replicate's stratified mean is
    studentized by its own standard error, which widens the upper end for the
    right-skewed row errors of random features (a replicate that misses the rare
    large errors has a small mean *and* a small standard error).  Deviations are
    shrunk by the finite-population factor ``sqrt(1 - s_h / L_h)``.
    """
    if not np.isfinite(mean):
        return (mean, mean)
    fpc = {h: np.sqrt(max(0.0, 1.0 - errors[h].size / max(sizes[h], 1))) for h in used}
    var = 0.0
    for h in used:
        s = errors[h].size
        if s > 1:
            var += (w[h] * fpc[h]) ** 2 * errors[h].var(ddof=1) / s
    se = np.sqrt(var)
    if se == 0:
        return (mean, mean)
    n_values = sum(errors[h].size for h in used) * _N_BOOTSTRAP
    if n_values > _MAX_BOOTSTRAP_VALUES:
        half = norm.ppf(1 - alpha / 2) * se
        return (max(0.0, mean - half), mean + half)
    centred = np.zeros(_N_BOOTSTRAP)
    replicate_var = np.zeros(_N_BOOTSTRAP)
    for h in used:
        e = errors[h]
        if e.size < 2:
            continue
        draws = e[rng.integers(0, e.size, size=(_N_BOOTSTRAP, e.size))]
        centred += w[h] * fpc[h] * (draws.mean(axis=1) - e.mean())
        replicate_var += (w[h] * fpc[h]) ** 2 * draws.var(axis=1, ddof=1) / e.size
    replicate_se = np.sqrt(replicate_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(replicate_se > 0, centred / replicate_se, 0.0)
    t_low, t_high = np.quantile(t, [alpha / 2, 1 - alpha / 2])
    return (max(0.0, float(mean - t_high * se)), float(mean - t_low * se))


def _median_interval(values, alpha):
    """Order-statistics interval of the median: ``x_(l) <= median <= x_(n+1-l)``."""
    x = np.sort(values)
    n = x.size
    if n == 0:
        return (float("nan"), float("nan"))
    lower = int(binom.ppf(alpha / 2, n, 0.5))  # P(B <= lower - 1) <= alpha / 2
    lower = max(lower, 1)
    if binom.cdf(lower - 1, n, 0.5) > alpha / 2:
        lower -= 1
    if lower < 1:
        return (float(x[0]), float(x[-1]))
    return (float(x[lower - 1]), float(x[n - lower]))
