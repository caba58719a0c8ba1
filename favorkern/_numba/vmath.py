"""Vectorizable elementwise math that numpy does not vectorize on this stack.

numpy's float64 ``cos`` is scalar here (about 11 ns per element, against 0.6 ns
for its SIMD ``exp``); the kernel below is a branch-free polynomial that LLVM
vectorizes: Cody-Waite reduction by pi/2 (three-part constant), Taylor
polynomials of sin and cos on [-pi/4, pi/4] to below half an ulp, the quadrant
chosen by selects.  Arguments too large for the three-part reduction fall back to
``math.cos`` (exact reduction), so the result is within a few ulp of numpy's
everywhere; NaN stays NaN and +-inf gives NaN, as numpy does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import REDUCTION_JIT_OPTIONS as _OPTIONS

_TWO_OVER_PI = 0.63661977236758134308
# pi/2 in three parts of 33 bits (fdlibm): n * part is exact for |n| < 2^20.
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624871116645580e-21
# Beyond this the reduction error grows: fall back to math.cos.
COS_REDUCTION_LIMIT = 1.0e5

# Taylor coefficients (-1)^k / (2k+1)! and (-1)^k / (2k)!, enough for 1e-17 on pi/4.
_S3, _S5, _S7 = -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0
_S9, _S11, _S13, _S15 = (
    1.0 / 362880.0,
    -1.0 / 39916800.0,
    1.0 / 6227020800.0,
    -1.0 / 1307674368000.0,
)
_C2, _C4, _C6 = -0.5, 1.0 / 24.0, -1.0 / 720.0
_C8, _C10, _C12 = 1.0 / 40320.0, -1.0 / 3628800.0, 1.0 / 479001600.0
_C14, _C16 = -1.0 / 87178291200.0, 1.0 / 20922789888000.0


@njit(**_OPTIONS)
def _sin_cos(x):
    """``(sin x, cos x, exact)`` by the polynomial; ``exact`` False where x needs math.*."""
    n = math.floor(x * _TWO_OVER_PI + 0.5)
    fn = float(n)
    r = ((x - fn * _PIO2_1) - fn * _PIO2_2) - fn * _PIO2_3
    r2 = r * r
    s = r + r * r2 * (
        _S3 + r2 * (_S5 + r2 * (_S7 + r2 * (_S9 + r2 * (_S11 + r2 * (_S13 + r2 * _S15)))))
    )
    c = 1.0 + r2 * (
        _C2
        + r2 * (_C4 + r2 * (_C6 + r2 * (_C8 + r2 * (_C10 + r2 * (_C12 + r2 * (_C14 + r2 * _C16))))))
    )
    sin_x, cos_x = _quadrant(s, c, n)
    # n is garbage for NaN or huge x: those are redone by the caller
    return sin_x, cos_x, abs(x) <= COS_REDUCTION_LIMIT


@njit(**_OPTIONS)
def _quadrant(s, c, n):
    """``(sin x, cos x)`` from ``s, c = sin r, cos r`` with ``x = r + n pi / 2``.

    Quadrant ``q = n mod 4``: ``sin x = (s, c, -s, -c)[q]``, ``cos x = (c, -s, -c, s)[q]``.
    """
    q = n & 3
    odd = (q & 1) == 1
    sin_x = c if odd else s
    cos_x = s if odd else c
    sin_x = -sin_x if (q & 2) == 2 else sin_x
    cos_x = -cos_x if ((q + 1) & 2) == 2 else cos_x
    return sin_x, cos_x


@njit(**_OPTIONS)
def _exact_cos(x):
    return math.cos(x) if math.isfinite(x) else np.nan


@njit(**_OPTIONS)
def _exact_sin(x):
    return math.sin(x) if math.isfinite(x) else np.nan


@njit(**_OPTIONS)
def cos_scaled(a, original, scale):
    """``a = cos(a) * scale`` in place for a C-contiguous float64 ``(rows, n)`` array.

    ``original`` is a ``(n,)`` float64 scratch row (the inputs of a row, kept for
    the elements that need the exact reduction).
    """
    for i in range(a.shape[0]):
        row = a[i]
        original[:] = row
        n_inexact = 0
        for j in range(row.shape[0]):
            _, cos_x, exact = _sin_cos(row[j])
            n_inexact += 0 if exact else 1
            row[j] = cos_x * scale
        if n_inexact:
            for j in range(row.shape[0]):
                x = original[j]
                if not abs(x) <= COS_REDUCTION_LIMIT:
                    row[j] = _exact_cos(x) * scale


@njit(**_OPTIONS)
def sin_cos_pairs(a, n_pairs, row_scale):
    """``a[:, :p], a[:, p:2p] = cos(u) * r, sin(u) * r`` with ``u = a[:, :p]``, ``r`` the
    row's entry of ``row_scale``.

    ``a`` is a C-contiguous float64 ``(rows, n)`` array, ``n >= 2 p``; columns from
    ``2 p`` on are not touched.
    """
    for i in range(a.shape[0]):
        row = a[i]
        scale = row_scale[i]
        n_inexact = 0
        for j in range(n_pairs):
            sin_x, cos_x, exact = _sin_cos(row[j])
            n_inexact += 0 if exact else 1
            row[n_pairs + j] = sin_x * scale
            row[j] = cos_x * scale if exact else row[j]
        if n_inexact:
            for j in range(n_pairs):
                x = row[j]
                if not abs(x) <= COS_REDUCTION_LIMIT:
                    row[n_pairs + j] = _exact_sin(x) * scale
                    row[j] = _exact_cos(x) * scale


_F32 = np.float32
_S3f, _S5f, _S7f, _S9f = _F32(_S3), _F32(_S5), _F32(_S7), _F32(_S9)
_C2f, _C4f, _C6f, _C8f, _C10f = _F32(_C2), _F32(_C4), _F32(_C6), _F32(_C8), _F32(_C10)


@njit(**_OPTIONS)
def _sin_cos_f32(x):
    """float32 ``(sin x, cos x, exact)``: reduction in float64, polynomials in float32
    (Taylor to degree 9 and 10: below 2e-9 on pi/4)."""
    xd = np.float64(x)
    n = math.floor(xd * _TWO_OVER_PI + 0.5)
    fn = float(n)
    r = np.float32(((xd - fn * _PIO2_1) - fn * _PIO2_2) - fn * _PIO2_3)
    r2 = r * r
    s = r + r * r2 * (_S3f + r2 * (_S5f + r2 * (_S7f + r2 * _S9f)))
    c = _F32(1.0) + r2 * (_C2f + r2 * (_C4f + r2 * (_C6f + r2 * (_C8f + r2 * _C10f))))
    sin_x, cos_x = _quadrant(s, c, n)
    return sin_x, cos_x, abs(xd) <= COS_REDUCTION_LIMIT


@njit(**_OPTIONS)
def sin_cos_pairs_f32(a, n_pairs, row_scale):
    """:func:`sin_cos_pairs` for float32 ``a`` and ``row_scale``."""
    for i in range(a.shape[0]):
        row = a[i]
        scale = row_scale[i]
        n_inexact = 0
        for j in range(n_pairs):
            sin_x, cos_x, exact = _sin_cos_f32(row[j])
            n_inexact += 0 if exact else 1
            row[n_pairs + j] = sin_x * scale
            row[j] = cos_x * scale if exact else row[j]
        if n_inexact:
            for j in range(n_pairs):
                x = np.float64(row[j])
                if not abs(x) <= COS_REDUCTION_LIMIT:
                    row[n_pairs + j] = np.float32(_exact_sin(x)) * scale
                    row[j] = np.float32(_exact_cos(x)) * scale


def cos_inplace(a, scale=1.0):
    """``a = cos(a) * scale`` in place; ``a`` C-contiguous 2-D float64."""
    cos_scaled(a, np.empty(a.shape[1], dtype=np.float64), float(scale))
