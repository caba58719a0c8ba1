"""SADERF (FAVOR#, Likhosherstov et al. 2023): per-dimension rescaling, then GERF.

Queries and keys are rescaled ``q_l -> psi_l q_l``, ``k_l -> k_l / psi_l`` with
``psi_l = (sum_j k_jl^2 / sum_i q_il^2)^(1/4)`` (``q.k`` unchanged, ``|q + k|^2``
balanced across dimensions), and the optimal GERF map runs on the rescaled inputs
(:ref:`theory-favor-sharp`).  For a symmetric kernel (one input set, as in a transformer)
``psi = 1`` and the map is the optimal one.
"""

from __future__ import annotations

import numpy as np

from .optimal import OptimalFeatureMap, homogeneity_sum_sq, optimal_gerf_a

__all__ = ["SaderfFeatureMap", "saderf_scales"]

# psi is clipped to this range: a dimension almost zero on one side carries no kernel
# mass, and an unbounded rescaling would only amplify rounding.
_PSI_RANGE = (1e-4, 1e4)


def saderf_scales(X, Y) -> np.ndarray:
    """``psi_l = (sum_j y_jl^2 / sum_i x_il^2)^(1/4)``; 1 where a side is zero."""
    x_sq = np.einsum("ij,ij->j", X, X)
    y_sq = np.einsum("ij,ij->j", Y, Y)
    with np.errstate(divide="ignore", invalid="ignore"):
        psi = np.sqrt(np.sqrt(y_sq / x_sq))
    psi = np.where(np.isfinite(psi) & (psi > 0), psi, 1.0)
    return np.clip(psi, *_PSI_RANGE)


class SaderfFeatureMap(OptimalFeatureMap):
    """SADERF: GERF features after a per-dimension rescaling of queries and keys.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import get_feature_map
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(2, 30, 4)) * [1.0, 1.0, 4.0, 0.25]
    >>> constants = get_feature_map("saderf").fit(Q, K)
    >>> sorted(constants), constants["psi"].shape
    (['A', 'psi'], (4,))
    """

    name = "saderf"
    data_constants = ("psi", "A")
    constant_shapes = {"psi": ("d",), "A": ()}
    summary = "SADERF (FAVOR#): per-dimension rescaling of q and k, then GERF"

    def fit(self, X, Y=None, *, input_scale=1.0):
        if Y is None:  # one input set: psi = 1, the optimal map (dense or sparse X)
            return {"psi": np.ones(X.shape[1]), **super().fit(X, input_scale=input_scale)}
        X = np.asarray(X, dtype=np.float64)
        Y = X if Y is None else np.asarray(Y, dtype=np.float64)
        psi = saderf_scales(X, Y)
        if Y.shape[0] == 0:
            return {"psi": psi, "A": 0.0}
        sum_sq = input_scale**2 * homogeneity_sum_sq(X * psi, Y / psi)
        return {"psi": psi, "A": float(optimal_gerf_a(sum_sq, X.shape[1]))}

    def prepare(self, X, side, constants):
        psi = np.asarray(constants["psi"]).astype(X.dtype, copy=False)
        return np.ascontiguousarray(X * psi if side == "query" else X / psi)

    # The closed form is the optimal map's (any A, iid, orthogonal or simplex rows) on
    # the rescaled pair: pair_geometry (the base's) prepares the pair with psi first.
