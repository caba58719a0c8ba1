"""Fast elementwise kernels at their edges: the division by a normalizer column,
float32 sin/cos at large arguments, the polynomial exponentials at their clamps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from favorkern.attention.bidirectional import divide_by_last_column
from favorkern.attention.common import normalize


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("numba", [True, False])
def test_divide_by_last_column_loses_rows_as_normalize_does(dtype, numba):
    """Zero, subnormal, NaN and infinite normalizers, against every kind of numerator:
    the same values and signs as ``normalize`` (the division before the fused
    column), so the lost rows reach the float64 fallback as before."""
    info = np.finfo(dtype)
    tiny, sub = float(info.tiny), float(info.smallest_subnormal)
    dens = [0.0, -0.0, sub, tiny / 4, -tiny / 4, tiny, np.nan, np.inf, -np.inf, 1e-30, 1.0]
    nums = [[1.0, -2.0], [tiny / 8, sub], [np.nan, 1.0], [np.inf, -1.0], [float(info.max), 1.0]]
    for num in nums:
        block = np.array([num + [d] for d in dens], dtype=dtype)
        ref = block[:, :2].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow in divide
            normalize(ref, block[:, 2].copy())
            out = np.empty((len(dens), 2), dtype=dtype)
            divide_by_last_column(block.copy(), 2, out, numba)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, ref)  # NaN where NaN
        np.testing.assert_array_equal(np.signbit(out), np.signbit(ref))


def test_sin_cos_f32_fma_error_bound_holds_at_large_arguments():
    """Absolute error <= SIN_COS_F32_ERROR against float64 near every multiple of
    pi/2 up to the reduction limit (1e5, where the error of the float32 reduction
    would grow) and beyond it (the exact path); NaN for NaN and infinities."""
    from favorkern._numba import vmath

    limit = vmath.COS_REDUCTION_LIMIT
    base = (np.arange(int(limit / (np.pi / 2)) + 1) * np.pi / 2).astype(np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    rng = np.random.default_rng(0)
    large = rng.uniform(1e4, 1e8, 4096).astype(np.float32)
    at = np.float32(limit)
    edge = np.float32([at, np.nextafter(at, up), np.nextafter(at, down)])
    near = [base, np.nextafter(base, up), np.nextafter(base, down), -base]
    x = np.concatenate(near + [large, -large, edge])
    x = np.concatenate([x, np.zeros(-x.size % 64, np.float32)]).reshape(-1, 64)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    a = np.empty((x.shape[0], 128), dtype=np.float32)
    a[:, :64] = x
    vmath.sin_cos_pairs_f32_fma(a, 64, np.ones(x.shape[0], dtype=np.float32))
    finite = np.isfinite(x)
    xd = np.where(finite, x, 0).astype(np.float64)
    assert np.abs(a[:, :64] - np.cos(xd))[finite].max() <= vmath.SIN_COS_F32_ERROR
    assert np.abs(a[:, 64:] - np.sin(xd))[finite].max() <= vmath.SIN_COS_F32_ERROR
    assert np.isnan(a[:, :64][~finite]).all() and np.isnan(a[:, 64:][~finite]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["exp", "exp2"])
def test_polynomial_exp_ends_come_from_the_clamps(dtype, name):
    """Around overflow, underflow and the clamps: inf, 0 and NaN exactly where numpy
    gives them, at most 1 ulp elsewhere (subnormal results included)."""
    from favorkern._numba import elementwise

    kernel = getattr(elementwise, name + "_flat")
    edges = {
        (np.float64, "exp"): [709.78, 709.8, -745.2, -746.0, -708.4],
        (np.float64, "exp2"): [1024.0, -1075.0, -1022.0],
        (np.float32, "exp"): [88.72, 88.8, -104.0, -103.28, -87.34],
        (np.float32, "exp2"): [128.0, -151.0, -149.0, -126.0],
    }[dtype, name]
    info = np.finfo(dtype)
    x = np.concatenate([np.linspace(e - 1, e + 1, 20001) for e in edges]).astype(dtype)
    x = np.concatenate([x, np.array([np.nan, np.inf, -np.inf, 0, info.max, -info.max], dtype)])
    got = x.copy()
    kernel(got)
    with np.errstate(all="ignore"):
        ref = getattr(np, name)(x.astype(np.float64)).astype(dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_array_equal(got == 0, ref == 0)
    both = np.isfinite(ref) & (ref != 0)
    ints = np.int64 if dtype == np.float64 else np.int32
    ulps = np.abs(got[both].view(ints).astype(np.int64) - ref[both].view(ints).astype(np.int64))
    assert ulps.max() <= 1
