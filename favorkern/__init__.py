"""favorkern: FAVOR+ random-feature kernels and linear-time attention.

Public names are imported lazily so that ``import favorkern`` stays cheap and never
imports numba; the heavy parts load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "draw_projection": "projections",
    "RandomFeatures": "features",
    "PositiveRandomFeatures": "features",
    "HyperbolicRandomFeatures": "features",
    "TrigonometricRandomFeatures": "features",
    "GeneralizedRandomFeatures": "features",
    "OptimalPositiveRandomFeatures": "features",
    "softmax_kernel": "kernels",
    "exact_kernel": "kernels",
    "approximate_kernel": "kernels",
    "softmax_attention": "attention",
    "favor_attention": "attention",
    "FavorAttention": "attention",
    "DecodingState": "attention",
    "ApproximationWarning": "_warnings",
    "FeatureOverflowWarning": "feature_maps",
    "hybrid_attention": "attention",
    "HybridAttention": "attention",
    "NystroemFeatures": "nystroem",
    "RandomFeatureLogisticRegression": "linear_model",
    "RandomFeatureRidge": "linear_model",
    "RandomFeatureRidgeClassifier": "linear_model",
}
_SUBMODULES = {
    "attention",
    "dask",
    "datasets",
    "diagnostics",
    "feature_maps",
    "features",
    "kernels",
    "linear_model",
    "nystroem",
    "plotting",
    "projections",
    "regression",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'favorkern' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
