"""Positive random features (FAVOR+): ``exp(w.x' - |x'|^2 / 2) / sqrt(m)``.

Performer (Choromanski et al., ICLR 2021), Lemma 1: unbiased for
``SM(x, y) = exp(x'.y')`` with non-negative features; Lemma 2:
``Var1 = SM^2 (e^{|z|^2} - 1)``, ``z = x' + y'``.
"""

from __future__ import annotations

import numpy as np

from ._base import FeatureMap, sq_factor
from ._evaluate import FeatureMapSpec, max_sq_norm, sorf_projector
from ._variance import block_deficit, exp_map_log_mse, fixed_exp_log_mse, log_expm1

__all__ = ["PositiveFeatureMap", "positive_spec"]


def positive_spec(projection, input_scale, sq_factor=0.5, sorf=None) -> FeatureMapSpec:
    """``exp(w.x' - sq_factor |x'|^2) / sqrt(m)`` (Performer's positive features)."""
    m = projection.shape[0]
    return FeatureMapSpec(
        projection * input_scale,
        "exp",
        sq_coef=sq_factor * input_scale**2,
        log_scale=-0.5 * np.log(m),
        # max over x' of |w||x'| - c|x'|^2 is |w|^2 / (4c)
        logit_bound=max_sq_norm(projection) / (4 * sq_factor),
        projector=sorf_projector(sorf, input_scale),
    )


class PositiveFeatureMap(FeatureMap):
    """Positive random features, ``exp(w.x' - |x'|^2/2) / sqrt(m)`` (FAVOR+).

    Examples
    --------
    >>> from favorkern.feature_maps import get_feature_map
    >>> get_feature_map("positive").outputs_per_projection
    1
    """

    name = "positive"
    summary = "exp(w.x - |x|^2/2): FAVOR+, non-negative, unbiased"

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
        return positive_spec(projection, input_scale, sq_factor(kernel), sorf=sorf)

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        if norms == "fixed":
            return fixed_exp_log_mse(geometry, m, P, d, lambda lf1: 1.0)
        deficit = block_deficit(geometry.s, d, projection) if P else np.zeros_like(geometry.s)
        return exp_map_log_mse(geometry, log_expm1(geometry.s), deficit, m, P)

    def closed_form_projections(self, norms):
        return (
            ("gaussian", "orthogonal", "simplex") if norms == "chi" else ("gaussian", "orthogonal")
        )
