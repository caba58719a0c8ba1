"""Hyperbolic positive random features: ``exp(+u)`` and ``exp(-u)`` per projection.

Performer, Lemma 2: ``Var1 = SM^2 (e^{|z|^2} - 1)(1 - e^{-|z|^2}) / 2``, at most
that of positive features with twice the projections.
"""

from __future__ import annotations

import numpy as np

from ._base import FeatureMap, sq_factor
from ._evaluate import FeatureMapSpec, max_sq_norm
from ._variance import block_deficit, exp_map_log_mse, fixed_exp_log_mse, log_expm1

__all__ = ["HyperbolicFeatureMap", "hyperbolic_spec"]


def hyperbolic_spec(projection, input_scale, n_outputs, sq_factor=0.5) -> FeatureMapSpec:
    """``[exp(+u), exp(-u)] / sqrt(2p)`` per pair; an odd last output is ``exp(u)/sqrt(p)``."""
    W = projection * input_scale
    n_pairs = n_outputs // 2
    n_proj = W.shape[0]
    weights = np.concatenate([W[:n_pairs], -W[:n_pairs], W[n_pairs:]], axis=0)
    log_scale = np.full(n_outputs, -0.5 * np.log(2 * n_proj))
    log_scale[2 * n_pairs :] = -0.5 * np.log(n_proj)
    if n_outputs % 2 == 0:
        log_scale = float(log_scale[0])
    return FeatureMapSpec(
        weights,
        "exp",
        sq_coef=sq_factor * input_scale**2,
        log_scale=log_scale,
        logit_bound=max_sq_norm(projection) / (4 * sq_factor),
        pairs=n_pairs,
    )


# Below this s, the ratio of the same-block deficit to the variance is taken at s.
_RATIO_FLOOR = 1e-100


def _log_rel_var(s):
    """``log(Var1 / SM^2) = log(expm1(s) (1 - e^-s) / 2)`` for the paired map."""
    with np.errstate(divide="ignore"):
        return log_expm1(s) + np.log(-np.expm1(-s)) - np.log(2.0)


class HyperbolicFeatureMap(FeatureMap):
    """Hyperbolic features ``exp(-|x'|^2/2) [exp(w.x'), exp(-w.x')] / sqrt(2 p)``.

    Examples
    --------
    >>> from favorkern.feature_maps import get_feature_map
    >>> get_feature_map("hyperbolic").n_projections(7)
    4
    """

    name = "hyperbolic"
    outputs_per_projection = 2
    summary = "exp(+-w.x - |x|^2/2): two outputs per projection, lower variance"

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
        return hyperbolic_spec(projection, input_scale, n_components, sq_factor(kernel))

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        s = geometry.s
        if norms == "fixed":
            # E cosh^2 = (F(d s) + 1) / 2
            return fixed_exp_log_mse(geometry, m, P, d, lambda lf1: 0.5 * (1.0 + np.exp(-lf1)))
        log_var = _log_rel_var(s)
        if not P:
            return exp_map_log_mse(geometry, log_var, np.zeros_like(s), m, P)
        # q and Var1/SM^2 = sinh(s) sinh(s)... fall like s^2 and underflow below
        # s ~ 1e-150, their ratio tends to a constant: take it at s >= 1e-100 (a relative
        # change of O(1e-100)) and give q as that ratio times Var1/SM^2 in log space
        floor = np.maximum(s, _RATIO_FLOOR)
        q = block_deficit(floor, d, projection, paired=True)
        with np.errstate(divide="ignore"):
            log_q = np.log(np.abs(q)) - _log_rel_var(floor) + log_var
        return exp_map_log_mse(geometry, log_var, np.sign(q) * np.exp(log_q), m, P)

    def closed_form_projections(self, norms):
        return (
            ("gaussian", "orthogonal", "simplex") if norms == "chi" else ("gaussian", "orthogonal")
        )
