"""Shared input checks for the public functions (estimators use scikit-learn's own)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

FLOAT_DTYPES = (np.float64, np.float32)


def check_int(value, name: str, *, min_value: int = 1) -> int:
    """Return ``value`` as int, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < min_value:
        raise ValueError(f"{name} must be an integer >= {min_value}, got {value}")
    return int(value)


def check_positive_real(value, name: str) -> float:
    """Return ``value`` as a finite float > 0, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_option(value, name: str, options) -> str:
    """Return ``value`` if it is one of ``options``, or raise naming ``name``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
    return value


def check_float_array(X, name: str, *, ndim=None, min_ndim=None, allow_empty=False, dtype=None):
    """Convert ``X`` to a C-contiguous float32/float64 array and check it.

    Float32 stays float32; any other numeric input becomes float64.  Raises a
    ``TypeError`` for non-numeric input and a ``ValueError`` for a wrong number of
    dimensions, an empty array or non-finite values, each naming ``name``.
    """
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if dtype is None:
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); at least one value is required")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return arr
