"""Values near the largest float: exact power-of-two scaling of their columns.

Every attention output row is a weighted mean of value rows, so it is finite for
finite values; its sums are not.  Sums of ``n`` weighted values with weights at most
1 (every stabilized weight and feature is) stay below ``n max|v|``, which overflows
for values within a factor ``n`` of the dtype's largest number.  Such columns are
divided by a power of two before the sums and the outputs multiplied back: both are
exact, and the columns' relative precision is unchanged.
"""

from __future__ import annotations

import numpy as np

__all__ = ["scaled_values", "unscale", "check_state_values"]


def _limit(dtype, n_terms) -> float:
    # a margin of 4: the sums' own rounding and the normalizer's division
    return float(np.finfo(dtype).max) / (4.0 * max(1, n_terms))


def _peak(V, extremes) -> float:
    lo, hi = (float(V.min()), float(V.max())) if extremes is None else extremes
    return max(hi, -lo)


def scaled_values(V, n_terms, extremes=None, *, unit=False):
    """``(V', exponents)``: ``V' = V 2^-e`` per column where sums of ``n_terms`` of its
    values could overflow, else ``(V, None)`` (no copy).

    ``extremes``: ``(V.min(), V.max())`` when the caller has them (saves a pass).
    ``unit``: for weights without a bound (features of a map other than exp and cos),
    bring every column above 1 in magnitude to at most 1.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.array([[3e38, 1.0], [1e38, 2.0]], dtype=np.float32)
    >>> scaled, e = scaled_values(V, 1000)
    >>> e.tolist()  # the first column's sums would reach 1000 * 3e38
    [12, 0]
    >>> bool(np.all(unscale(scaled.copy(), e) == V))
    True
    >>> scaled_values(V[:, 1:], 1000)[1] is None
    True
    """
    limit = 1.0 if unit else _limit(V.dtype, n_terms)
    if V.size == 0 or _peak(V, extremes) <= limit:
        return V, None
    peak = np.abs(V).max(axis=tuple(range(V.ndim - 1)))
    with np.errstate(divide="ignore"):
        exponents = np.maximum(np.ceil(np.log2(peak / limit)), 0.0).astype(np.int32)
    # ldexp: exact, also where 2^e itself is beyond the dtype (e up to 1024 + 149)
    return np.ldexp(V, -exponents).astype(V.dtype, copy=False), exponents


def unscale(out, exponents):
    """``out`` (the attention of :func:`scaled_values`'s values) times ``2^e`` per column,
    in place; returns ``out``."""
    if exponents is not None:
        np.ldexp(out, exponents, out=out)
    return out


def check_state_values(V, n_terms, extremes=None) -> None:
    """A ``ValueError`` where sums of ``n_terms`` values of ``V`` could overflow: a key
    state carried between calls holds those sums in ``V``'s dtype."""
    if not V.size:
        return
    peak = _peak(V, extremes)
    # non-finite values are the finiteness check's to report
    if np.isfinite(peak) and peak > _limit(V.dtype, n_terms):
        wider = " (or pass float64 values)" if V.dtype == np.float32 else ""
        raise ValueError(
            f"V has values up to {peak:.3g}: the key state's sums of "
            f"{n_terms} terms (keys times features) would overflow {V.dtype}. Outputs "
            "scale with V, so divide V by "
            f"a power of two and multiply the outputs back{wider}"
        )
