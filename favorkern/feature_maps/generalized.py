"""Generalized random features ``f(w.x') / sqrt(m)`` (Performer, section 2.2).

``phi(x).phi(y)`` estimates ``k(x, y) = E_w[f(w.x') f(w.y')]``, ``w ~ N(0, I)``:
for ``relu`` the arc-cosine kernel of order 1 (Cho & Saul, 2009), for
``identity`` the linear kernel, for ``abs``
``(2/pi)|x'||y'| (sqrt(1 - c^2) + c arcsin c)``, for ``exp``
``exp(|x' + y'|^2 / 2)``.  None of them is the softmax kernel.
"""

from __future__ import annotations

import numpy as np

from ._base import FeatureMap
from ._evaluate import FeatureMapSpec, sorf_projector

__all__ = ["GeneralizedFeatureMap", "generalized_spec", "FUNCTIONS"]


def _relu(u):
    return np.maximum(u, 0, out=u)


def _abs(u):
    return np.abs(u, out=u)


def _exp(u):
    return np.exp(u, out=u)


def _identity(u):
    return u


#: The named elementwise functions of the generalized maps.
FUNCTIONS = {"relu": _relu, "abs": _abs, "exp": _exp, "identity": _identity}


def generalized_spec(projection, input_scale, func, sorf=None) -> FeatureMapSpec:
    """``f(w.x') / sqrt(m)`` for an elementwise ``f``."""
    return FeatureMapSpec(
        projection * input_scale,
        func,
        log_scale=-0.5 * np.log(projection.shape[0]),
        projector=sorf_projector(sorf, input_scale),
    )


class GeneralizedFeatureMap(FeatureMap):
    """``f(w.x') / sqrt(m)`` for an elementwise ``f``: a name of :data:`FUNCTIONS` or a callable.

    A callable receives the ``(n_samples, n_components)`` array of projections (it
    may modify it in place) and must return an array of the same shape.

    Examples
    --------
    >>> from favorkern.feature_maps import GeneralizedFeatureMap
    >>> GeneralizedFeatureMap("abs").name
    'abs'
    """

    kernels = ()
    summary = "f(w.x) for an elementwise f (generalized attention; not softmax)"

    def __init__(self, function="relu", name=None):
        if isinstance(function, str):
            if function not in FUNCTIONS:
                raise ValueError(
                    f"function must be one of {sorted(FUNCTIONS)} or a callable, got {function!r}"
                )
            self.function = FUNCTIONS[function]
            self.name = function if name is None else name
            self.nonnegative = function in ("relu", "abs", "exp")
        elif callable(function):
            self.function = function
            self.name = getattr(function, "__name__", "function") if name is None else name
            self.nonnegative = False
        else:
            raise TypeError(f"function must be a string or a callable, got {function!r}")

    def spec(
        self,
        projection,
        *,
        n_components,
        input_scale,
        kernel="softmax",
        constants=None,
        draws=None,
        sorf=None,
    ):
        return generalized_spec(projection, input_scale, self.function, sorf=sorf)
