"""Elementwise kernels chosen by measurement on the running machine.

The exponential of the feature maps costs as much as the product before it, and
which implementation is fastest depends on the CPU: numpy's float32 ``exp2`` was
measured 1.8x faster than its ``exp`` with AVX-512 and 1.9x slower with AVX2 only,
where a polynomial compiled by numba (:mod:`favorkern._numba.elementwise`) beat
both.  So each dtype's exponential is chosen by a short timing at its first use
(about 10 ms once the kernels are loaded), kept for the process.  The same holds
for the sin/cos of trigonometric maps.

Loading numba costs about 2 s once per process (import and compiler start, the
kernels themselves come from numba's cache), more than a small call takes in all:
the numba candidates take part only when numba is already loaded or when the call
that asks evaluates at least ``favorkern._config.NUMBA_MIN_WORK`` exponentials;
until then the choice is among numpy's kernels.  The tuning constants are in
:mod:`favorkern._config`.

Every candidate is within 1 ulp of the correctly rounded result for normal
results (numpy's own, as measured on its SIMD paths), so the choice changes
results by at most an ulp per feature.

Environment variables force a choice (read at the first use of each dtype):

* ``FAVORKERN_EXP``: ``numpy-exp``, ``numpy-exp2``, ``numba-exp``, ``numba-exp2``
  or ``auto`` (the default: timed);
* ``FAVORKERN_SINCOS``: ``numpy``, ``numba``, ``numba-float32`` or ``auto``.

The sin/cos candidates: numpy's; ``numba``, a polynomial after a reduction by
``pi/2`` in float64 (within 1 ulp of the correctly rounded result in float32); and
for float32 only ``numba-float32``, the reduction in float32 by FMAs, 8 lanes wide on
AVX2 and measured 2.8x faster than ``numba``, with an absolute error of at most
``2^-22`` (:data:`favorkern._numba.vmath.SIN_COS_F32_ERROR`; not relative to the
result near the zeros of sin and cos: random features are sums, which an absolute
error bounds).  Forced for float64, ``numba-float32`` means ``numba``.

Callers scale their logits by :attr:`ExpKernel.unit` (``log2(e)`` for the base-2
kernels, folded into the projection) and call the kernel's methods, which work in
place on row-major arrays and on transposed (feature-major) ones alike.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from . import _config

__all__ = [
    "EXP_KERNELS",
    "ENV_EXP",
    "ENV_SINCOS",
    "SINCOS_KERNELS",
    "ExpKernel",
    "LOG2E",
    "chosen_kernels",
    "exp_kernel",
    "sincos_kernel",
    "sq_norms",
]

LOG2E = 1.0 / float(np.log(2.0))

ENV_EXP = "FAVORKERN_EXP"
ENV_SINCOS = "FAVORKERN_SINCOS"
EXP_KERNELS = ("numpy-exp", "numpy-exp2", "numba-exp", "numba-exp2")
SINCOS_KERNELS = ("numpy", "numba", "numba-float32")

# Every candidate is timed this many rounds, in turn; the best of each counts.
_TIMING_ROUNDS = 5


class ExpKernel:
    """One exponential: ``base ** a`` in place, with ``unit = log2(base)``-scaled logits.

    Parameters
    ----------
    name : str
        One of :data:`EXP_KERNELS`.

    Attributes
    ----------
    unit : float
        The logits this kernel takes per natural logit: ``log2(e)`` for the base-2
        kernels, 1 for the others.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern._elementwise import ExpKernel
    >>> kernel = ExpKernel("numpy-exp2")
    >>> a = np.array([[0.0, 1.0]]) * kernel.unit      # logits 0 and 1
    >>> kernel.exp(a)
    >>> np.allclose(a, [[1.0, np.e]])
    True
    """

    def __init__(self, name):
        if name not in EXP_KERNELS:
            raise ValueError(f"exp kernel must be one of {EXP_KERNELS}, got {name!r}")
        self.name = name
        self.base2 = name.endswith("exp2")
        self.numba = name.startswith("numba")
        self.unit = LOG2E if self.base2 else 1.0

    def __repr__(self):
        return f"ExpKernel({self.name!r})"

    def natural(self):
        """The kernel of the same family that takes natural logits (``unit == 1``)."""
        return self if not self.base2 else ExpKernel(self.name[:-1])

    def _numba(self):
        fns = self.__dict__.get("_fns")
        if fns is None:  # the import once per kernel: it costs ~15 us per call
            from ._numba import elementwise as E

            if self.base2:
                fns = (E.exp2_flat, E.exp2_rows, E.exp2_columns, E.exp2_pairs)
            else:
                fns = (E.exp_flat, E.exp_rows, E.exp_columns, E.exp_pairs)
            self._fns = fns
        return fns

    def __getstate__(self):  # numba dispatchers stay out of pickles (dask)
        return {"name": self.name}

    def __setstate__(self, state):
        self.__init__(state["name"])

    def exp(self, a) -> None:
        """``a = base ** a`` in place (any float array; overflow gives ``inf``)."""
        if self.numba and _native(a):
            flat = _flat(a)
            if flat is not None:
                self._numba()[0](flat)
                return
        (np.exp2 if self.base2 else np.exp)(a, out=a)

    def exp_shifted(self, a, offset, clip=False) -> None:
        """``a = base ** (a - offset[:, None])`` in place for a 2-D ``a``; with ``clip``
        the exponents are clipped at 0 after the subtraction (one pass with numba)."""
        if self.numba and a.ndim == 2 and _native(a):
            offset = np.ascontiguousarray(offset, dtype=a.dtype)
            _, rows, columns, _ = self._numba()
            if a.flags.c_contiguous:
                rows(a, offset, bool(clip))
                return
            if a.T.flags.c_contiguous:
                columns(a.T, offset, bool(clip))
                return
        a -= np.asarray(offset, dtype=a.dtype)[:, np.newaxis]
        if clip:
            np.minimum(a, 0.0, out=a)
        (np.exp2 if self.base2 else np.exp)(a, out=a)

    def exp_pairs(self, a, p, total) -> None:
        """``a[:, :p], a[:, p:2p] = base ** u, base ** (total - u)`` for ``u = a[:, :p]``
        and ``base ** a`` for the columns from ``2p`` on (in place, row-major ``a``)."""
        if self.numba and a.flags.c_contiguous and _native(a):
            self._numba()[3](a, p, np.ascontiguousarray(total, dtype=a.dtype))
            return
        np.subtract(total[:, np.newaxis], a[:, :p], out=a[:, p : 2 * p])
        (np.exp2 if self.base2 else np.exp)(a, out=a)


def _native(a) -> bool:
    """float32 or float64 (the numba kernels' dtypes)."""
    return a.dtype.kind == "f" and a.dtype.itemsize in (4, 8)


def _flat(a):
    """A 1-D view of all of ``a`` if ``a`` or its transpose is contiguous, else None."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if a.T.flags.c_contiguous:
        return a.T.reshape(-1)
    return None


_lock = threading.Lock()
_chosen: dict = {}


def _forced(variable, choices):
    value = os.environ.get(variable, "auto").strip().lower() or "auto"
    if value != "auto" and value not in choices:
        raise ValueError(
            f"environment variable {variable}={value!r}: must be one of {choices} or 'auto'"
        )
    return None if value == "auto" else value


def _time_candidates(candidates, sample):
    """The name of the fastest of ``candidates`` (name -> function of a buffer)."""
    buf = np.empty_like(sample)
    best = {name: np.inf for name in candidates}
    for fn in candidates.values():  # warm-up: compilation or cache loading
        buf[...] = sample
        fn(buf)
    for _ in range(_TIMING_ROUNDS):
        for name, fn in candidates.items():
            buf[...] = sample
            start = time.perf_counter()
            fn(buf)
            best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.get)


def _logits_sample(dtype):
    # logits as the features see them: shifted by their maximum, mostly in [-20, 0]
    rng = np.random.default_rng(0)
    shape = (64, max(1, _config.KERNEL_TIMING_ELEMENTS // 64))
    return (rng.standard_normal(shape) * 4.0 - 6.0).astype(dtype)


def exp_kernel(dtype, work=None) -> ExpKernel:
    """The exponential for ``dtype``: forced by ``FAVORKERN_EXP`` or timed once.

    Parameters
    ----------
    dtype : float32 or float64
    work : int, optional
        How many exponentials the asking call evaluates.  Below
        ``_config.NUMBA_MIN_WORK``, while numba is not loaded, the choice is among
        numpy's kernels (timed once too); None counts as large.

    Returns
    -------
    ExpKernel

    Raises
    ------
    ValueError
        If ``FAVORKERN_EXP`` names no kernel of :data:`EXP_KERNELS`.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern._elementwise import EXP_KERNELS, exp_kernel
    >>> exp_kernel(np.float32).name in EXP_KERNELS
    True
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    key = ("exp", dtype)
    kernel = _chosen.get(key)
    if kernel is not None:
        return kernel
    candidates = EXP_KERNELS
    if work is not None and work < _config.NUMBA_MIN_WORK and "numba" not in sys.modules:
        key, candidates = ("exp (numpy)", dtype), EXP_KERNELS[:2]
        kernel = _chosen.get(key)
        if kernel is not None:
            return kernel
    with _lock:
        if key not in _chosen:
            name = _forced(ENV_EXP, EXP_KERNELS)
            if name is None:
                name = _time_candidates(
                    {n: ExpKernel(n).exp for n in candidates}, _logits_sample(dtype) * LOG2E
                )
            _chosen[key] = ExpKernel(name)
    return _chosen[key]


def sincos_kernel(dtype) -> str:
    """One of :data:`SINCOS_KERNELS`: the sin/cos of trigonometric maps for ``dtype``.

    Forced by ``FAVORKERN_SINCOS`` or timed once (numpy's ``sin`` and ``cos`` of the
    first half of the columns against the fused kernels of
    :mod:`favorkern._numba.vmath`; ``numba-float32`` for float32 only).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern._elementwise import sincos_kernel
    >>> sincos_kernel(np.float64) in ("numpy", "numba")
    True
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    key = ("sincos", dtype)
    name = _chosen.get(key)
    if name is not None:
        return name
    with _lock:
        if key not in _chosen:
            name = _forced(ENV_SINCOS, SINCOS_KERNELS)
            if name is None:
                sample = _logits_sample(dtype)
                half = sample.shape[1] // 2
                ones = np.ones(sample.shape[0], dtype=dtype)

                def with_numpy(a):
                    np.sin(a[:, :half], out=a[:, half:])
                    np.cos(a[:, :half], out=a[:, :half])
                    a *= ones[:, np.newaxis]

                candidates = {"numpy": with_numpy}
                for candidate in SINCOS_KERNELS[1:]:
                    if sincos_name(candidate, dtype) == candidate:  # float32 only: -float32
                        kernel = sin_cos_pairs_kernel(candidate, dtype)
                        candidates[candidate] = lambda a, k=kernel: k(a, half, ones)
                name = _time_candidates(candidates, sample)
            _chosen[key] = sincos_name(name, dtype)
    return _chosen[key]


def sincos_name(name, dtype) -> str:
    """``name`` as it applies to ``dtype`` (``numba-float32`` is ``numba`` in float64)."""
    return "numba" if name == "numba-float32" and np.dtype(dtype) != np.float32 else name


def sin_cos_pairs_kernel(name, dtype):
    """The numba kernel ``f(a, n_pairs, row_scale)`` of a sin/cos choice, or None for
    numpy's (:func:`favorkern._numba.vmath.sin_cos_pairs` and its float32 variants)."""
    name = sincos_name(name, dtype)
    if name == "numpy":
        return None
    from ._numba import vmath

    if np.dtype(dtype) == np.float64:
        return vmath.sin_cos_pairs
    return vmath.sin_cos_pairs_f32_fma if name == "numba-float32" else vmath.sin_cos_pairs_f32


def sq_norms(X) -> np.ndarray:
    """``|x_i|^2`` of the rows of a 2-D float array, in float64.

    By a vectorized numba loop once numba is loaded (3.5x faster than numpy's
    ``einsum`` for rows of 64, and accumulated in float64), else by ``einsum``.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern._elementwise import sq_norms
    >>> sq_norms(np.array([[3.0, 4.0], [1.0, 0.0]])).tolist()
    [25.0, 1.0]
    """
    if "numba" in sys.modules and X.flags.c_contiguous and _native(X) and X.ndim == 2:
        from ._numba.elementwise import row_sq_norms

        out = np.empty(X.shape[0], dtype=np.float64)
        row_sq_norms(X, out)
        return out
    return np.einsum("ij,ij->i", X, X).astype(np.float64)


def chosen_kernels() -> dict:
    """The kernels chosen so far in this process, by (function, dtype name).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern._elementwise import chosen_kernels, exp_kernel
    >>> _ = exp_kernel(np.float32)
    >>> "exp float32" in chosen_kernels()
    True
    """
    return {
        f"{what} {dtype.name}": getattr(kernel, "name", kernel)
        for (what, dtype), kernel in sorted(
            _chosen.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
        )
    }


def reset_choices() -> None:
    """Forget the choices (tests: read the environment variables again)."""
    with _lock:
        _chosen.clear()
