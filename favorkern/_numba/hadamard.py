"""Structured (SORF) projections by the fast Walsh-Hadamard transform."""

from __future__ import annotations

import numpy as np
from numba import njit

from . import JIT_OPTIONS

# Rows processed together: butterflies run along this contiguous axis (SIMD).
_TILE = 16


@njit(**JIT_OPTIONS)
def _fwht_columns(buf):
    """Unnormalized Walsh-Hadamard transform along axis 0 of ``buf`` (p, tile), in place."""
    size, tile = buf.shape
    half = 1
    while half < size:
        for start in range(0, size, 2 * half):
            for j in range(start, start + half):
                for t in range(tile):
                    a = buf[j, t]
                    b = buf[j + half, t]
                    buf[j, t] = a + b
                    buf[j + half, t] = a - b
        half *= 2


@njit(**JIT_OPTIONS)
def sorf_project(X, signs, row_scales, out):
    """``out[i, k] = row_scales[k] * (M_b x_i)_r`` for ``k = b p + r``, ``M_b = H D1 H D2 H D3``.

    ``X`` (n, d) and ``out`` (n, m) share a float dtype; ``signs`` (B, 3, p) holds the
    diagonals D1, D2, D3 (``p`` a power of two >= d); ``row_scales`` (m,) includes the
    ``p ** -1.5`` normalization of the three transforms.
    """
    n, d = X.shape
    n_blocks, _, size = signs.shape
    m = out.shape[1]
    buf = np.empty((size, _TILE), dtype=X.dtype)
    for row0 in range(0, n, _TILE):
        rows = min(_TILE, n - row0)
        for block in range(n_blocks):
            buf[:, :] = 0
            for j in range(d):
                s = signs[block, 2, j]
                for t in range(rows):
                    buf[j, t] = X[row0 + t, j] * s
            _fwht_columns(buf)
            for j in range(size):
                s = signs[block, 1, j]
                for t in range(_TILE):
                    buf[j, t] *= s
            _fwht_columns(buf)
            for j in range(size):
                s = signs[block, 0, j]
                for t in range(_TILE):
                    buf[j, t] *= s
            _fwht_columns(buf)
            start = block * size
            stop = min(m, start + size)
            for t in range(rows):
                for k in range(start, stop):
                    out[row0 + t, k] = buf[k - start, t] * row_scales[k]
