"""The registry of random-feature maps: one module per map, one evaluator for all.

A feature map (:class:`FeatureMap`) says how a random projection turns inputs into
features; everything else in favorkern reads the registry:
:class:`favorkern.RandomFeatures` (and the named transformers),
:func:`favorkern.favor_attention`, the diagnostics and :mod:`favorkern.dask`.  A map
registered with :func:`register_feature_map` works in all of them by its name.

Built-in maps: ``"positive"`` (FAVOR+), ``"hyperbolic"``, ``"trigonometric"``,
``"relu"`` (generalized), ``"optimal"`` (GERF, FAVOR++), ``"saderf"``, ``"sderf"`` and
``"aderf"`` (FAVOR#), ``"whitened"`` (whitening, then GERF) and ``"fitted"`` (fitted by
attention distillation: a kernel fitted to data, not an unbiased estimator); then
``"taylor"`` (the deterministic second-order Taylor map of Based), ``"hrf"`` and
``"hrf_gaussian"`` (hybrid random features, asymmetric: attention only) and
``"tensorsketch"`` (TensorSketch of the exponential's series to degree 3).

Examples
--------
>>> from favorkern.feature_maps import feature_map_names
>>> feature_map_names()[:6]
('positive', 'hyperbolic', 'trigonometric', 'relu', 'optimal', 'saderf')
>>> feature_map_names()[6:10]
('sderf', 'aderf', 'whitened', 'fitted')
>>> feature_map_names()[10:]
('taylor', 'hrf', 'hrf_gaussian', 'tensorsketch')
"""

from __future__ import annotations

from .._warnings import FeatureUnderflowWarning
from ._base import (
    FeatureMap,
    _register_builtin,
    check_constants,
    feature_map_names,
    fit_constants,
    get_feature_map,
    input_scale,
    register_feature_map,
    sq_factor,
    unregister_feature_map,
)
from ._evaluate import FeatureMapSpec, FeatureOverflowWarning, apply_feature_map
from ._variance import PairGeometry, same_block_pairs
from .derf import AderfFeatureMap, SderfFeatureMap
from .fitted import FittedFeatureMap
from .generalized import GeneralizedFeatureMap
from .hrf import HybridFeatureMap
from .hyperbolic import HyperbolicFeatureMap
from .optimal import OptimalFeatureMap
from .positive import PositiveFeatureMap
from .saderf import SaderfFeatureMap
from .sketch import TensorSketchFeatureMap
from .taylor import TaylorFeatureMap
from .trigonometric import TrigonometricFeatureMap
from .whitened import WhitenedFeatureMap

# The built-in maps, registered here in this order (the order of feature_map_names).
for _builtin in (
    PositiveFeatureMap(),
    HyperbolicFeatureMap(),
    TrigonometricFeatureMap(),
    GeneralizedFeatureMap("relu"),
    OptimalFeatureMap(),
    SaderfFeatureMap(),
    SderfFeatureMap(),
    AderfFeatureMap(),
    WhitenedFeatureMap(),
    FittedFeatureMap(),
):
    _register_builtin(_builtin)
del _builtin
# Maps beyond the random-projection families (registered after them, in this order).
for _builtin in (
    TaylorFeatureMap(),
    HybridFeatureMap(),
    HybridFeatureMap("gaussian", 1),
    TensorSketchFeatureMap(),
):
    _register_builtin(_builtin)
del _builtin

__all__ = [
    "FeatureMap",
    "FeatureMapSpec",
    "FeatureOverflowWarning",
    "FeatureUnderflowWarning",
    "PairGeometry",
    "register_feature_map",
    "unregister_feature_map",
    "get_feature_map",
    "feature_map_names",
    "apply_feature_map",
    "check_constants",
    "fit_constants",
    "input_scale",
    "sq_factor",
    "same_block_pairs",
    "PositiveFeatureMap",
    "HyperbolicFeatureMap",
    "TrigonometricFeatureMap",
    "GeneralizedFeatureMap",
    "OptimalFeatureMap",
    "SaderfFeatureMap",
    "SderfFeatureMap",
    "AderfFeatureMap",
    "WhitenedFeatureMap",
    "FittedFeatureMap",
    "TaylorFeatureMap",
    "HybridFeatureMap",
    "TensorSketchFeatureMap",
]

# Shared with favorkern.attention and the diagnostics: one internal import point
# (not public, outside __all__).
from ._base import map_identity, map_spec  # noqa: E402, F401
from ._evaluate import apply_block  # noqa: E402, F401
