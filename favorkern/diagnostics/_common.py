"""Input checks shared by the diagnostics modules."""

from __future__ import annotations

import numpy as np

from .._validation import check_float_array, check_int, check_option, check_positive_real
from ..feature_maps import get_feature_map

__all__ = [
    "check_pairs",
    "check_gamma",
    "check_a",
    "output",
    "check_width",
    "parse_sizes",
    "parse_options",
    "PROJECTIONS",
    "MC_PROJECTIONS",
    "NORMS",
]

#: Projections with closed forms; Monte Carlo also draws structured (SORF) and
#: randomized quasi-Monte Carlo ones (no closed form).
PROJECTIONS = ("gaussian", "orthogonal", "simplex")
MC_PROJECTIONS = PROJECTIONS + ("structured", "sobol", "halton")
NORMS = ("chi", "fixed")


def check_pairs(x, y):
    """Validate ``x``, ``y`` as float64 ``(n, d)`` arrays; return them and a scalar flag."""
    x = check_float_array(x, "x", dtype=np.float64)
    y = check_float_array(y, "y", dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be a 1-D or 2-D array, got shape {x.shape}")
    if y.ndim not in (1, 2):
        raise ValueError(f"y must be a 1-D or 2-D array, got shape {y.shape}")
    scalar = x.ndim == 1 and y.ndim == 1
    x2, y2 = np.atleast_2d(x), np.atleast_2d(y)
    if x2.shape[1] != y2.shape[1]:
        raise ValueError(
            f"x and y must have the same number of dimensions, got {x2.shape[1]} and {y2.shape[1]}"
        )
    try:
        x2, y2 = np.broadcast_arrays(x2, y2)
    except ValueError:
        raise ValueError(
            f"x and y must hold the same number of pairs (or one of them 1), "
            f"got shapes {x.shape} and {y.shape}"
        ) from None
    return np.ascontiguousarray(x2), np.ascontiguousarray(y2), scalar


def check_gamma(gamma):
    return check_positive_real(gamma, "gamma")


def check_a(A):
    """GERF parameter: None (per-pair optimum) or a real < 1/8."""
    if A is None:
        return None
    if isinstance(A, bool) or not isinstance(A, (int, float, np.integer, np.floating)):
        raise TypeError(f"A must be a real number or None, got {type(A).__name__}: {A!r}")
    A = float(A)
    if not np.isfinite(A) or A >= 0.125:
        raise ValueError(f"A must be a finite number < 1/8 (finite variance), got {A}")
    return A


def output(values, scalar):
    return float(values[0]) if scalar else values


def check_width(feature_map, n_components):
    """``(map, m)``: the registered map and its projections for ``n_components`` outputs.

    The closed forms and the Monte Carlo average whole projections, so the width must
    be a multiple of the map's outputs per projection.
    """
    fmap = get_feature_map(feature_map)
    n_components = check_int(n_components, "n_components")
    if n_components % fmap.outputs_per_projection:
        raise ValueError(
            f"n_components must be a multiple of {fmap.outputs_per_projection} for feature "
            f"map {fmap.name!r} (two outputs per projection), got {n_components}"
        )
    return fmap, n_components // fmap.outputs_per_projection


def parse_sizes(values, name):
    if isinstance(values, (int, np.integer)):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return [check_int(v, name) for v in values]


def parse_options(values, name, options):
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return [check_option(v, name, options) for v in values]
