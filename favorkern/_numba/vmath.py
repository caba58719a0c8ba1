"""Vectorizable elementwise math that numpy does not vectorize (or fuse) on this stack.

numpy's float64 ``cos`` is scalar here (about 11 ns per element, against 0.6 ns
for its SIMD ``exp``); the kernel below is a branch-free polynomial that LLVM
vectorizes: Cody-Waite reduction by pi/2 (three-part constant), Taylor
polynomials of sin and cos on [-pi/4, pi/4] to below half an ulp, the quadrant
chosen by selects.  Arguments too large for the three-part reduction fall back to
``math.cos`` (exact reduction), so the result is within a few ulp of numpy's
everywhere; NaN stays NaN and +-inf gives NaN, as numpy does.

A float32 ``exp`` (:func:`exp_shifted_f32`), optionally fused with a per-row or
per-column shift: Cody-Waite reduction by ln 2, the degree-5 minimax polynomial of
Cephes' ``expf``, the power of two built from its bits in two factors so that
results down to the subnormals are rounded once (within 1 ulp of the correctly
rounded result).  LLVM vectorizes it to 256-bit vectors here, so a plain ``exp``
measured about 10% slower than numpy's 512-bit one and the fused shift only as fast
as numpy's subtract-then-exp in attention; the library's paths keep numpy's, and
``benchmarks/bench_features.py --ideas`` times this one against it.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

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


# -- float32 sin/cos with the reduction in float32 -------------------------------------
# x = n pi/2 + r by three FMAs with pi/2 in three float32 parts (c1 + c2 + c3 within
# 1.1e-23 of pi/2): each FMA rounds once, relative to its result (at most pi/4 +
# |n| 4.4e-8), so |r - r_exact| <= 3 * 2^-25 (pi/4 + 0.003) + |n| 1.1e-23 for
# |x| <= COS_REDUCTION_LIMIT; n by the same bit trick as the exponential (an int32,
# no float64 and no float-to-int64 conversion, which AVX2 lacks, so the whole loop
# is 8 lanes wide).  The absolute error of the results is at most SIN_COS_F32_ERROR;
# near the zeros of sin and cos it is not relative to the result, unlike
# :func:`sin_cos_pairs_f32` (float64 reduction, about 4x slower).  Larger |x| take
# the exact path of :func:`sin_cos_pairs_f32`.

#: Bound of the absolute error of :func:`sin_cos_pairs_f32_fma` (before the row
#: factor), checked against float64 in tests/test_fast_kernels.py.
SIN_COS_F32_ERROR = 2.0**-22


@intrinsic
def _fma_f32(typingctx, a, b, c):
    """``a * b + c`` rounded once (llvm.fma: the FMA instruction where the CPU has one)."""
    signature = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return signature, codegen


@intrinsic
def _f32_bits(typingctx, x):
    signature = types.int32(types.float32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return signature, codegen


_TWO_OVER_PI_F = _F32(_TWO_OVER_PI)
_PIO2_1F, _PIO2_2F, _PIO2_3F = (
    _F32(-1.5707963705062866),
    _F32(4.371138828673793e-08),
    _F32(1.7151245100058819e-15),
)  # minus the three parts
_ROUND_1_5 = _F32(12582912.0)  # 1.5 * 2^23: the low bits of t + this hold round(t)
_ROUND_1_5_BITS = np.int32(0x4B400000)
_LIMIT_F = _F32(COS_REDUCTION_LIMIT)
_I1, _I2, _I3 = np.int32(1), np.int32(2), np.int32(3)


@njit(**_OPTIONS)
def _sin_cos_f32_fma(x):
    """float32 ``(sin x, cos x)`` for ``|x| <= COS_REDUCTION_LIMIT`` (see above)."""
    t = x * _TWO_OVER_PI_F + _ROUND_1_5
    fn = t - _ROUND_1_5
    n = _f32_bits(t) - _ROUND_1_5_BITS
    r = _fma_f32(fn, _PIO2_1F, x)
    r = _fma_f32(fn, _PIO2_2F, r)
    r = _fma_f32(fn, _PIO2_3F, r)
    r2 = r * r
    s = r + r * r2 * (_S3f + r2 * (_S5f + r2 * (_S7f + r2 * _S9f)))
    c = _F32(1.0) + r2 * (_C2f + r2 * (_C4f + r2 * (_C6f + r2 * (_C8f + r2 * _C10f))))
    odd = (n & _I1) == _I1
    sin_x = c if odd else s
    cos_x = s if odd else c
    sin_x = -sin_x if (n & _I2) == _I2 else sin_x
    cos_x = -cos_x if ((n + _I1) & _I2) == _I2 else cos_x
    return sin_x, cos_x


@njit(**_OPTIONS)
def sin_cos_pairs_f32_fma(a, n_pairs, row_scale):
    """:func:`sin_cos_pairs_f32` with the reduction in float32 (absolute error at most
    :data:`SIN_COS_F32_ERROR` times the row factor, plus the product's rounding)."""
    original = np.empty(n_pairs, dtype=a.dtype)  # a row's arguments, for the exact path
    for i in range(a.shape[0]):
        row = a[i]
        scale = row_scale[i]
        n_inexact = 0
        for j in range(n_pairs):
            x = row[j]
            original[j] = x
            n_inexact += 0 if abs(x) <= _LIMIT_F else 1
            sin_x, cos_x = _sin_cos_f32_fma(x)
            row[n_pairs + j] = sin_x * scale
            row[j] = cos_x * scale
        if n_inexact:  # NaN, inf and large |x|
            for j in range(n_pairs):
                x = np.float64(original[j])
                if not abs(x) <= COS_REDUCTION_LIMIT:
                    row[n_pairs + j] = np.float32(_exact_sin(x)) * scale
                    row[j] = np.float32(_exact_cos(x)) * scale


def cos_inplace(a, scale=1.0):
    """``a = cos(a) * scale`` in place; ``a`` C-contiguous 2-D float64."""
    cos_scaled(a, np.empty(a.shape[1], dtype=np.float64), float(scale))


# -- float32 exp ------------------------------------------------------------------


@intrinsic
def _bits_to_f32(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (a vectorizable bitcast)."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return signature, codegen


_LOG2E_F = _F32(1.4426950408889634)
# ln 2 in two parts: n * _LN2_HI_F is exact for the |n| <= 150 used here.
_LN2_HI_F, _LN2_LO_F = _F32(0.693359375), _F32(-2.12194440e-4)
_ROUND_F = _F32(12582912.0)  # 1.5 * 2^23: t + _ROUND_F - _ROUND_F rounds t to an integer
_EXP_P = tuple(
    _F32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1)
)
_EXP_P5 = _F32(5.0000001201e-1)
# Above: inf; below: 0 (exp(-104) is below half the smallest subnormal).
_EXP_HIGH_F, _EXP_LOW_F = _F32(88.8), _F32(-104.0)


@njit(**_OPTIONS)
def _exp_f32(x):
    """float32 ``exp(x)``: NaN stays NaN, overflow gives inf, underflow 0 or a subnormal."""
    c = min(max(x, _EXP_LOW_F), _EXP_HIGH_F)
    t = c * _LOG2E_F + _ROUND_F
    fn = t - _ROUND_F
    n = np.int32(t) - np.int32(12582912)
    r = (c - fn * _LN2_HI_F) - fn * _LN2_LO_F
    p = (
        (((_EXP_P[0] * r + _EXP_P[1]) * r + _EXP_P[2]) * r + _EXP_P[3]) * r + _EXP_P[4]
    ) * r + _EXP_P5
    p = p * (r * r) + r + _F32(1.0)
    # 2^n as two normal factors: n in [-150, 128]
    half = n >> np.int32(1)
    y = p * _bits_to_f32((half + np.int32(127)) << np.int32(23))
    y = y * _bits_to_f32((n - half + np.int32(127)) << np.int32(23))
    y = _F32(0.0) if x < _EXP_LOW_F else y
    y = _F32(np.inf) if x > _EXP_HIGH_F else y
    return x if x != x else y


@njit(**_OPTIONS)
def _exp_rows_f32(a, offset, clip):
    """``a[i, j] = exp(a[i, j] - offset[i])`` (``min(., 0)`` first if ``clip``), in place."""
    for i in range(a.shape[0]):
        row = a[i]
        shift = offset[i]
        if clip:
            for j in range(row.shape[0]):
                row[j] = _exp_f32(min(row[j] - shift, _F32(0.0)))
        else:
            for j in range(row.shape[0]):
                row[j] = _exp_f32(row[j] - shift)


@njit(**_OPTIONS)
def _exp_columns_f32(a, offset, clip):
    """``a[i, j] = exp(a[i, j] - offset[j])`` (``min(., 0)`` first if ``clip``), in place."""
    for i in range(a.shape[0]):
        row = a[i]
        if clip:
            for j in range(row.shape[0]):
                row[j] = _exp_f32(min(row[j] - offset[j], _F32(0.0)))
        else:
            for j in range(row.shape[0]):
                row[j] = _exp_f32(row[j] - offset[j])


@njit(**_OPTIONS)
def _exp_flat_f32(a):
    for i in range(a.shape[0]):
        a[i] = _exp_f32(a[i])


def exp_shifted_f32(out, offset=None, clip=False) -> bool:
    """``out = exp(out - offset[:, None])`` in place for a float32 ``(rows, n)`` array.

    ``offset``: one float32 per row (None: plain ``exp``); ``clip``: exponents are
    clipped at 0 after the subtraction.  ``out`` may be C-contiguous or the
    transpose of a C-contiguous array (a feature-major buffer).  Returns False,
    doing nothing, for layouts or dtypes it does not handle (the caller then uses
    numpy).  Never warns: overflow gives inf, as ``np.exp`` under ``errstate``.
    """
    if out.dtype != np.float32 or out.ndim != 2:
        return False
    if offset is None:
        flat = out.reshape(-1) if out.flags.c_contiguous else None
        if flat is None and out.T.flags.c_contiguous:
            flat = out.T.reshape(-1)
        if flat is None:
            return False
        _exp_flat_f32(flat)
        return True
    offset = np.ascontiguousarray(offset, dtype=np.float32)
    if out.flags.c_contiguous:
        _exp_rows_f32(out, offset, bool(clip))
    elif out.T.flags.c_contiguous:
        _exp_columns_f32(out.T, offset, bool(clip))
    else:
        return False
    return True
