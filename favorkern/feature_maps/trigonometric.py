"""Trigonometric random features: ``h(x) [cos(w.x'), sin(w.x')] / sqrt(p)``.

Random Fourier features (Rahimi & Recht 2007; orthogonal: Yu et al. 2016) for the
Gaussian kernel, ``h = 1``; for the softmax kernel ``h(x) = exp(|x'|^2 / 2)``
(Performer, Lemma 2: ``Var1 = e^{|x'|^2+|y'|^2} (1 - e^{-|delta|^2})^2 / 2``).

With ``frequencies="distinct"`` every output has its own direction and a random
phase, ``h(x) sqrt(2/m) cos(w_j.x' + b_j)`` (the form of scikit-learn's
``RBFSampler``, here over orthogonal or structured directions): ``m`` frequencies
for ``m`` columns instead of ``m/2``.  Its single-feature variance is that of a pair
plus ``e^{|x'|^2+|y'|^2} / 2`` (the term ``cos(w.(x'+y') + 2b)`` of the product);
the phases are independent, so the covariance of two features is the pair's.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ._base import FeatureMap
from ._evaluate import FeatureMapSpec
from ._variance import log_of_nonneg, trig_gap

__all__ = [
    "TrigonometricFeatureMap",
    "trigonometric_spec",
    "distinct_frequency_spec",
    "FREQUENCIES",
]

#: ``"paired"``: cos and sin of each direction; ``"distinct"``: one direction per output.
FREQUENCIES = ("paired", "distinct")


def trigonometric_spec(projection, input_scale, n_outputs, offset, softmax) -> FeatureMapSpec:
    """``h(x) [cos(u), sin(u)] / sqrt(p)``; an odd last output is ``sqrt(2/p) cos(u + b)``.

    ``h(x) = exp(|x'|^2 / 2)`` for the softmax kernel, 1 for rbf.
    """
    W = projection * input_scale
    n_pairs = n_outputs // 2
    n_proj = W.shape[0]
    weights = np.concatenate([W[:n_pairs], W[:n_pairs], W[n_pairs:]], axis=0)
    # sin(u) = cos(u - pi/2): one cos pass over all outputs.
    phases = np.concatenate([np.zeros(n_pairs), np.full(n_pairs, -0.5 * np.pi), offset])
    log_scale = np.full(n_outputs, -0.5 * np.log(n_proj))
    log_scale[2 * n_pairs :] = 0.5 * np.log(2.0 / n_proj)
    if n_outputs % 2 == 0:
        log_scale = float(log_scale[0])
    return FeatureMapSpec(
        weights,
        "cos",
        row_log_coef=0.5 * input_scale**2 if softmax else 0.0,
        log_scale=log_scale,
        offset=phases,
        pairs=n_pairs,
    )


def distinct_frequency_spec(projection, input_scale, offset, softmax) -> FeatureMapSpec:
    """``h(x) sqrt(2/m) cos(w_j.x' + b_j)``: one direction ``w_j`` and phase ``b_j`` per output.

    ``E_b[2 cos(u + b) cos(v + b)] = cos(u - v)``, so the estimate is unbiased for
    the kernel the paired map estimates.
    """
    return FeatureMapSpec(
        projection * input_scale,
        "cos",
        row_log_coef=0.5 * input_scale**2 if softmax else 0.0,
        log_scale=0.5 * np.log(2.0 / projection.shape[0]),
        offset=np.asarray(offset, dtype=np.float64),
    )


class TrigonometricFeatureMap(FeatureMap):
    """Trigonometric features: sin/cos pairs, or one random-phase cosine per output.

    Parameters
    ----------
    frequencies : {"paired", "distinct"}, default="paired"
        ``"paired"``: ``[cos(w.x'), sin(w.x')]`` of ``ceil(m/2)`` directions (an odd
        width adds one random-phase cosine); the registered ``"trigonometric"`` map.
        ``"distinct"``: ``sqrt(2) cos(w_j.x' + b_j)`` of ``m`` directions with uniform
        random phases ``b_j``, named ``"trigonometric_distinct"``.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import TrigonometricFeatureMap, get_feature_map
    >>> draws = get_feature_map("trigonometric").draw(5, np.random.RandomState(0))
    >>> draws["offset"].shape
    (1,)
    >>> distinct = TrigonometricFeatureMap("distinct")
    >>> distinct.n_projections(5), distinct.draw(5, np.random.RandomState(0))["offset"].shape
    (5, (5,))
    """

    name = "trigonometric"
    outputs_per_projection = 2
    nonnegative = False
    summary = "h(x) [cos w.x, sin w.x]: random Fourier features, can be negative"

    def __init__(self, frequencies="paired"):
        if frequencies not in FREQUENCIES:
            raise ValueError(f"frequencies must be one of {list(FREQUENCIES)}, got {frequencies!r}")
        self.frequencies = frequencies
        if frequencies == "distinct":
            self.name = "trigonometric_distinct"
            self.outputs_per_projection = 1
            self.summary = "h(x) sqrt(2) cos(w.x + b): one frequency per output, can be negative"

    def draw(self, n_components, random_state):
        count = n_components if self.frequencies == "distinct" else n_components % 2
        return {"offset": random_state.uniform(0.0, 2.0 * np.pi, size=count)}

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
        if self.frequencies == "distinct":
            if draws is None:
                raise ValueError("distinct frequencies need their random phases (draws)")
            return distinct_frequency_spec(
                projection, input_scale, draws["offset"], softmax=kernel == "softmax"
            )
        offset = np.zeros(n_components % 2) if draws is None else draws["offset"]
        return trigonometric_spec(
            projection, input_scale, n_components, offset, softmax=kernel == "softmax"
        )

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        a, b, delta = geometry.a, geometry.b, geometry.delta
        # A random phase adds E cos^2(w.(x'+y') + 2b) = 1/2 to each feature's variance.
        phase = 0.5 if self.frequencies == "distinct" else 0.0
        if norms == "fixed":
            # G(u) = 0F1(; d/2; -u) = E cos(w . delta), |w| = sqrt(d); bounded by 1.
            half = d / 2.0
            g1 = special.hyp0f1(half, -d * delta)
            g2 = special.hyp0f1(half, -d * delta / 2.0)
            g4 = special.hyp0f1(half, -d * delta / 4.0)
            var1 = (1.0 + g1) / 2.0 - g4**2 + phase
            cov = g2 - g4**2
            inner = var1 / m + (P / m**2) * cov + (g4 - np.exp(-delta / 2.0)) ** 2
            return (a + b) + log_of_nonneg(inner)
        var1 = 0.5 * np.expm1(-delta) ** 2 + phase
        cov = trig_gap(delta, d) if P else 0.0
        return (a + b) + log_of_nonneg(var1 / m + (P / m**2) * cov)

    def closed_form_projections(self, norms):
        return ("gaussian", "orthogonal")
