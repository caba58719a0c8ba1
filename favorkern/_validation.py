"""Shared input checks for the public functions (estimators use scikit-learn's own)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from . import _config

FLOAT_DTYPES = (np.float64, np.float32)


def int_interval(left, right=None, *, closed="left"):
    """scikit-learn's ``Interval(Integral, ...)`` parameter constraint, without booleans.

    ``True`` is an ``Integral`` in Python, so scikit-learn's constraint accepts it as 1
    (``n_components=True`` would fit one column); this one refuses it with the same
    message as any other value out of its range.

    Examples
    --------
    >>> from favorkern._validation import int_interval
    >>> constraint = int_interval(1)
    >>> constraint.is_satisfied_by(3), constraint.is_satisfied_by(True)
    (True, False)
    """
    from sklearn.utils._param_validation import Interval

    class _IntNotBool(Interval):
        def is_satisfied_by(self, val):
            return not isinstance(val, bool | np.bool_) and super().is_satisfied_by(val)

    return _IntNotBool(Integral, left, right, closed=closed)


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


def check_seed(random_state, name: str = "random_state"):
    """``sklearn.utils.check_random_state`` with an error that names ``name``.

    Examples
    --------
    >>> from favorkern._validation import check_seed
    >>> int(check_seed(0).randint(10)) == int(check_seed(0).randint(10))
    True
    """
    from sklearn.utils import check_random_state

    try:
        return check_random_state(random_state)
    except ValueError:
        raise TypeError(
            f"{name} must be None, an int or a numpy.random.RandomState (scikit-learn's "
            f"convention), got {type(random_state).__name__}: {random_state!r}"
        ) from None


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
    if not _all_finite(arr):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def _all_finite(arr) -> bool:
    """True when every element of the C-contiguous ``arr`` is finite."""
    flat = arr.reshape(-1)
    if flat.size == 0:
        return True
    block = _config.FINITE_CHECK_BLOCK
    buf = np.empty(min(flat.size, block), dtype=np.bool_)
    for start in range(0, flat.size, block):
        part = flat[start : start + block]
        ok = buf[: part.size]
        np.isfinite(part, out=ok)
        if not ok.all():
            return False
    return True


# -- attention inputs (shared by the in-memory and the dask functions) ----------------


def check_bool(value, name: str) -> bool:
    """Return ``value`` as bool, or raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_attention_shapes(q_shape, k_shape, v_shape, causal, mask_shape=None) -> tuple:
    """The broadcast (batch, head) shape of attention inputs, or a ``ValueError``.

    Shapes are ``(..., Lq, d)``, ``(..., Lk, d)``, ``(..., Lk, dv)`` and, for a key
    padding mask, ``(..., Lk)``.
    """
    if k_shape[-1] != q_shape[-1]:
        raise ValueError(
            f"K must have the feature dimension d = {q_shape[-1]} of Q, got shape {k_shape}"
        )
    if v_shape[-2] != k_shape[-2]:
        raise ValueError(f"V must have as many rows as K ({k_shape[-2]} keys), got shape {v_shape}")
    if causal and q_shape[-2] != k_shape[-2]:
        raise ValueError(
            "causal=True needs as many queries as keys, got "
            f"Lq = {q_shape[-2]} and Lk = {k_shape[-2]}"
        )
    shapes = {"Q": q_shape[:-2], "K": k_shape[:-2], "V": v_shape[:-2]}
    if mask_shape is not None:
        if len(mask_shape) < 1 or mask_shape[-1] != k_shape[-2]:
            raise ValueError(
                f"key_padding_mask must have shape (..., Lk) with Lk = {k_shape[-2]}, "
                f"got shape {tuple(mask_shape)}"
            )
        shapes["key_padding_mask"] = tuple(mask_shape[:-1])
    leads = list(shapes.values())
    if all(lead == leads[0] for lead in leads):
        return tuple(leads[0])  # nothing to broadcast (np.broadcast_shapes takes ~10 us)
    try:
        return tuple(np.broadcast_shapes(*leads))
    except ValueError:
        detail = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        name = "key_padding_mask" if mask_shape is not None else "Q, K and V"
        raise ValueError(
            f"the leading (batch, head) dimensions of {name} do not broadcast: {detail}"
        ) from None


def check_attention_arrays(Q, K, V, key_padding_mask=None):
    """``(Q, K, V, mask)`` converted to one float dtype and checked; shapes not compared."""
    Q = check_float_array(Q, "Q", min_ndim=2)
    K = check_float_array(K, "K", min_ndim=2)
    V = check_float_array(V, "V", min_ndim=2)
    dtype = np.result_type(Q.dtype, K.dtype, V.dtype)
    Q, K, V = (X.astype(dtype, copy=False) for X in (Q, K, V))
    mask = None
    if key_padding_mask is not None:
        mask = np.asarray(key_padding_mask)
        if mask.dtype != np.bool_:
            raise ValueError(
                f"key_padding_mask must be a boolean array (True = ignore), got dtype {mask.dtype}"
            )
        mask = np.ascontiguousarray(mask)
    return Q, K, V, mask


def check_attention_inputs(Q, K, V, causal, key_padding_mask=None):
    """Validated ``(Q, K, V, mask, batch_shape)`` in one float dtype."""
    Q, K, V, mask = check_attention_arrays(Q, K, V, key_padding_mask)
    causal = check_bool(causal, "causal")
    batch = check_attention_shapes(
        Q.shape, K.shape, V.shape, causal, None if mask is None else mask.shape
    )
    return Q, K, V, mask, batch


def check_logit_scale(gamma, d: int) -> float:
    """The attention logit scale: ``gamma`` checked, or ``1 / sqrt(d)`` when None."""
    if gamma is None:
        return 1.0 / float(np.sqrt(d))
    return check_positive_real(gamma, "gamma")
