"""Polynomial ``exp`` and ``exp2`` that LLVM vectorizes (no transcendental call in a loop).

numba's ``math.exp`` is a scalar libm call on this stack (no SVML), so these are
written out: range reduction, a polynomial, and the power of two built from the
bits of the exponent, every step a SIMD instruction on AVX2 or AVX-512 (selects,
FMAs, integer shifts and bit casts; no float-to-int64 conversion, which AVX2 lacks).

* ``exp``: ``x = n ln 2 + r``, ``|r| <= ln 2 / 2``, by Cody-Waite reduction with
  ``ln 2`` in two parts (``n * hi`` exact); ``exp(r)`` by its Taylor polynomial
  written as ``1 + r + r^2 P(r)`` (degree 13 in float64, error below 5e-18; the
  degree-5 minimax of Cephes' ``expf`` in float32).
* ``exp2``: ``x = n + r`` exactly, ``|r| <= 1/2``; ``2^r = exp(r ln 2)`` by the same
  Taylor polynomial in ``r`` (coefficients ``ln(2)^k / k!``; degree 13 / 7).
* ``2^n`` as two normal factors ``2^(n//2) 2^(n - n//2)``: results down to the
  subnormals are rounded once.

Measured against the correctly rounded result (tests/test_elementwise.py): at
most 1 ulp for normal results.  NaN stays NaN, ``+inf`` gives ``inf``, ``-inf``
gives 0, overflow gives ``inf`` without a warning.  These follow from clamps of the
argument alone (NaN passes them, and the clamped ends compute to exactly ``inf`` and
0), with no select on the input after the polynomial: an in-place loop ending in
``x if x != x else y`` stores only the non-NaN lanes, and LLVM emits a masked store
for it (``vmaskmovps``), measured 1.4-1.8x the time of the whole kernel on AMD Zen.

The loops take an optional shift per row (``exp(a - offset[:, None])``) and a clip
at 0 after it, fused into the pass: the shift by a row maximum or a key constant
costs no pass of its own.  They are chosen or not by measurement
(:mod:`favorkern._elementwise`), and also serve as its reference kernels.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import JIT_OPTIONS as _JIT_OPTIONS
from . import REDUCTION_JIT_OPTIONS as _OPTIONS

# -- bit casts (vectorizable) ----------------------------------------------------------


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bits_of_f64(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_of_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


# -- float64 -------------------------------------------------------------------------

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
# ln 2 in two parts: n * _LN2_HI is exact for |n| < 2^11 (fdlibm's split)
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
# 1.5 * 2^52: c + _ROUND - _ROUND is c rounded to an integer, and the low bits of
# c + _ROUND hold that integer
_ROUND = 6755399441055744.0
_ROUND_BITS = 0x4338000000000000
# exp(r) = 1 + r + r^2 (1/2! + r/3! + ... + r^11/13!)
_E = tuple(1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(2, 14))
# 2^r = 1 + r (ln2 + r (ln2^2/2! + ... ))
_T = tuple(_LN2**k / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(1, 14))
# Clamps at which the computation itself gives exactly inf and 0 (exp: above 709.79
# inf, exp(-746) below half the smallest subnormal; exp2: 1024 and -1075)
(_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11) = _E
(_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12) = _T
_EXP_HIGH, _EXP_LOW = 709.8, -746.0
_EXP2_HIGH, _EXP2_LOW = 1024.0, -1075.0


@njit(**_OPTIONS)
def _pow2_f64(p, n):
    """``p * 2^n`` for int64 ``n`` in [-1076, 1025], rounded once."""
    half = n >> 1
    y = p * _f64_from_bits((half + 1023) << 52)
    return y * _f64_from_bits((n - half + 1023) << 52)


@njit(**_OPTIONS)
def exp_f64(x):
    """float64 ``exp(x)`` (see the module docstring)."""
    c = _EXP_LOW if x < _EXP_LOW else x  # NaN passes both clamps
    c = _EXP_HIGH if c > _EXP_HIGH else c
    t = c * _LOG2E + _ROUND
    fn = t - _ROUND
    n = _bits_of_f64(t) - _ROUND_BITS
    r = (c - fn * _LN2_HI) - fn * _LN2_LO
    p = _E11
    p = p * r + _E10
    p = p * r + _E9
    p = p * r + _E8
    p = p * r + _E7
    p = p * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + _E1
    p = p * r + _E0
    y = _pow2_f64(1.0 + (r + r * r * p), n)
    return y


@njit(**_OPTIONS)
def exp2_f64(x):
    """float64 ``2^x`` (see the module docstring)."""
    c = _EXP2_LOW if x < _EXP2_LOW else x  # NaN passes both clamps
    c = _EXP2_HIGH if c > _EXP2_HIGH else c
    t = c + _ROUND
    fn = t - _ROUND
    n = _bits_of_f64(t) - _ROUND_BITS
    r = c - fn
    p = _T12
    p = p * r + _T11
    p = p * r + _T10
    p = p * r + _T9
    p = p * r + _T8
    p = p * r + _T7
    p = p * r + _T6
    p = p * r + _T5
    p = p * r + _T4
    p = p * r + _T3
    p = p * r + _T2
    p = p * r + _T1
    p = p * r + _T0
    y = _pow2_f64(1.0 + r * p, n)
    return y


# -- float32 -------------------------------------------------------------------------

_F32 = np.float32
_LOG2E_F = _F32(_LOG2E)
# ln 2 in two parts: n * _LN2_HI_F is exact for the |n| <= 151 used here
_LN2_HI_F, _LN2_LO_F = _F32(0.693359375), _F32(-2.12194440e-4)
_ROUND_F = _F32(12582912.0)  # 1.5 * 2^23
_ROUND_BITS_F = np.int32(0x4B400000)
# Cephes expf: exp(r) = 1 + r + r^2 P(r), degree-5 minimax P on [-ln2/2, ln2/2]
_P_F = tuple(
    _F32(c)
    for c in (
        5.0000001201e-1,
        1.6666665459e-1,
        4.1665795894e-2,
        8.3334519073e-3,
        1.3981999507e-3,
        1.9875691500e-4,
    )
)
_P0F, _P1F, _P2F, _P3F, _P4F, _P5F = _P_F
_T0F, _T1F, _T2F, _T3F, _T4F, _T5F, _T6F = (_F32(c) for c in _T[:7])
_EXP_HIGH_F, _EXP_LOW_F = _F32(88.8), _F32(-104.0)
_EXP2_HIGH_F, _EXP2_LOW_F = _F32(128.0), _F32(-151.0)
_I127 = np.int32(127)
_I23 = np.int32(23)
_I1 = np.int32(1)


@njit(**_OPTIONS)
def _pow2_f32(p, n):
    """``p * 2^n`` for int32 ``n`` in [-152, 129], rounded once."""
    half = n >> _I1
    y = p * _f32_from_bits((half + _I127) << _I23)
    return y * _f32_from_bits((n - half + _I127) << _I23)


@njit(**_OPTIONS)
def exp_f32(x):
    """float32 ``exp(x)`` (see the module docstring)."""
    c = _EXP_LOW_F if x < _EXP_LOW_F else x  # NaN passes both clamps
    c = _EXP_HIGH_F if c > _EXP_HIGH_F else c
    t = c * _LOG2E_F + _ROUND_F
    fn = t - _ROUND_F
    n = _bits_of_f32(t) - _ROUND_BITS_F
    r = (c - fn * _LN2_HI_F) - fn * _LN2_LO_F
    p = _P5F
    p = p * r + _P4F
    p = p * r + _P3F
    p = p * r + _P2F
    p = p * r + _P1F
    p = p * r + _P0F
    y = _pow2_f32(_F32(1.0) + (r + r * r * p), n)
    return y


@njit(**_OPTIONS)
def exp2_f32(x):
    """float32 ``2^x`` (see the module docstring)."""
    c = _EXP2_LOW_F if x < _EXP2_LOW_F else x  # NaN passes both clamps
    c = _EXP2_HIGH_F if c > _EXP2_HIGH_F else c
    t = c + _ROUND_F
    fn = t - _ROUND_F
    n = _bits_of_f32(t) - _ROUND_BITS_F
    r = c - fn
    p = _T6F
    p = p * r + _T5F
    p = p * r + _T4F
    p = p * r + _T3F
    p = p * r + _T2F
    p = p * r + _T1F
    p = p * r + _T0F
    y = _pow2_f32(_F32(1.0) + r * p, n)
    return y


# -- one name per function, the dtype's kernel chosen at compile time -------------------


def _exp(x):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


def _exp2(x):  # pragma: no cover
    raise NotImplementedError


@overload(_exp, jit_options=_OPTIONS)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: exp_f64(x)


@overload(_exp2, jit_options=_OPTIONS)
def _exp2_overload(x):
    if x == types.float32:
        return lambda x: exp2_f32(x)
    return lambda x: exp2_f64(x)


# -- loops -----------------------------------------------------------------------------
# One loop per function and layout: a branch on the function inside the inner loop
# would keep LLVM from vectorizing it.


@njit(**_OPTIONS)
def exp_flat(a):
    """``a = exp(a)`` in place, ``a`` 1-D contiguous."""
    for i in range(a.shape[0]):
        a[i] = _exp(a[i])


@njit(**_OPTIONS)
def exp2_flat(a):
    """``a = 2^a`` in place, ``a`` 1-D contiguous."""
    for i in range(a.shape[0]):
        a[i] = _exp2(a[i])


@njit(**_OPTIONS)
def exp_rows(a, offset, clip):
    """``a[i, j] = exp(a[i, j] - offset[i])`` (``min(., 0)`` first if ``clip``), in place."""
    zero = a.dtype.type(0.0)
    for i in range(a.shape[0]):
        row = a[i]
        shift = offset[i]
        if clip:
            for j in range(row.shape[0]):
                row[j] = _exp(min(row[j] - shift, zero))
        else:
            for j in range(row.shape[0]):
                row[j] = _exp(row[j] - shift)


@njit(**_OPTIONS)
def exp2_rows(a, offset, clip):
    """``a[i, j] = 2^(a[i, j] - offset[i])`` (``min(., 0)`` first if ``clip``), in place."""
    zero = a.dtype.type(0.0)
    for i in range(a.shape[0]):
        row = a[i]
        shift = offset[i]
        if clip:
            for j in range(row.shape[0]):
                row[j] = _exp2(min(row[j] - shift, zero))
        else:
            for j in range(row.shape[0]):
                row[j] = _exp2(row[j] - shift)


@njit(**_OPTIONS)
def exp_columns(a, offset, clip):
    """``a[i, j] = exp(a[i, j] - offset[j])`` (``min(., 0)`` first if ``clip``), in place."""
    zero = a.dtype.type(0.0)
    for i in range(a.shape[0]):
        row = a[i]
        if clip:
            for j in range(row.shape[0]):
                row[j] = _exp(min(row[j] - offset[j], zero))
        else:
            for j in range(row.shape[0]):
                row[j] = _exp(row[j] - offset[j])


@njit(**_OPTIONS)
def exp2_columns(a, offset, clip):
    """``a[i, j] = 2^(a[i, j] - offset[j])`` (``min(., 0)`` first if ``clip``), in place."""
    zero = a.dtype.type(0.0)
    for i in range(a.shape[0]):
        row = a[i]
        if clip:
            for j in range(row.shape[0]):
                row[j] = _exp2(min(row[j] - offset[j], zero))
        else:
            for j in range(row.shape[0]):
                row[j] = _exp2(row[j] - offset[j])


@njit(**_OPTIONS)
def exp_pairs(a, p, total):
    """``a[:, :p], a[:, p:2p] = exp(u), exp(total - u)`` for ``u = a[:, :p]`` and
    ``exp`` of the columns from ``2p`` on; ``total`` one value per row."""
    for i in range(a.shape[0]):
        row = a[i]
        t = total[i]
        for j in range(p):
            u = row[j]
            row[p + j] = _exp(t - u)
            row[j] = _exp(u)
        for j in range(2 * p, row.shape[0]):
            row[j] = _exp(row[j])


@njit(**_OPTIONS)
def exp2_pairs(a, p, total):
    """:func:`exp_pairs` in base 2."""
    for i in range(a.shape[0]):
        row = a[i]
        t = total[i]
        for j in range(p):
            u = row[j]
            row[p + j] = _exp2(t - u)
            row[j] = _exp2(u)
        for j in range(2 * p, row.shape[0]):
            row[j] = _exp2(row[j])


# -- squared row norms -----------------------------------------------------------------
# (numpy's einsum measured 3.5x slower for rows of 64; reassociation lets LLVM
# vectorize the sum).  Tried here too and left out: the row maxima of a feature-major
# buffer fused into the exponential's pass ran 1.5-2x the time of numpy's maximum and
# the exponential apart (LLVM vectorized neither form of the maximum).


@njit(**_JIT_OPTIONS)
def row_sq_norms(X, out):
    """``out[i] = |X[i]|^2``, accumulated in ``out``'s dtype (float64 for any ``X``)."""
    for i in range(X.shape[0]):
        row = X[i]
        s = out.dtype.type(0.0)
        for j in range(row.shape[0]):
            s += row[j] * row[j]
        out[i] = s
