"""TensorSketch features of the truncated exponential ``sum_{k<=p} (x'.y')^k / k!``.

TensorSketch (Pham & Pagh, KDD 2013; scikit-learn's ``PolynomialCountSketch``)
sketches the tensor power ``x^(x)k`` by the circular convolution of ``k``
independent count sketches, computed by FFT:

    TS_k(x) = IFFT(FFT(C_1 x) * ... * FFT(C_k x)),   E[TS_k(x).TS_k(y)] = (x.y)^k,

with ``C_i`` a ``D x d`` count sketch (one random sign per column, in a random
row).  The map stacks the degrees of the exponential's series,

    phi(x) = [1, TS_1(x') / sqrt(1!), TS_2(x') / sqrt(2!), ..., TS_p(x') / sqrt(p!)],

reusing ``C_1 .. C_k`` for degree ``k`` (each degree stays unbiased; the degrees'
errors are correlated), so ``phi(x).phi(y)`` is an unbiased estimate of the
truncated series ``sum_{k<=p} s^k / k!`` (``s = x'.y'``), and of ``exp(s)`` up to the
truncation ``e^s - sum_{k<=p} s^k/k!``.  Width ``1 + p D`` for ``D = (n_components -
1) // p`` (columns beyond it are zero).

The count sketches come from the projection: sketch ``i`` reads row ``i`` (``d``
entries), its sign ``sign(w_ij)`` and row ``floor(D (2 Phi(|w_ij|) - 1))`` (the sign
and the half-normal's uniform transform are independent).  They are independent
-- and the estimate unbiased -- when the rows are: ``projection="gaussian"``
(orthogonal rows are dependent).
"""

from __future__ import annotations

import math

import numpy as np

from ._base import FeatureMap
from ._evaluate import FeatureMapSpec

__all__ = ["TensorSketchFeatureMap", "count_sketch_matrices"]


def count_sketch_matrices(rows, size):
    """``(p, size, d)`` dense count sketches from ``p`` Gaussian rows (see the module).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps.sketch import count_sketch_matrices
    >>> C = count_sketch_matrices(np.random.default_rng(0).normal(size=(2, 5)), 3)
    >>> C.shape, np.abs(C).sum(axis=1).tolist()       # one +-1 per column
    ((2, 3, 5), [[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    """
    from scipy.special import ndtr

    rows = np.asarray(rows, dtype=np.float64)
    p, d = rows.shape
    uniform = 2.0 * ndtr(np.abs(rows)) - 1.0
    buckets = np.minimum((uniform * size).astype(np.intp), size - 1)
    signs = np.where(rows >= 0, 1.0, -1.0)
    C = np.zeros((p, size, d))
    for i in range(p):
        C[i, buckets[i], np.arange(d)] = signs[i]
    return C


class _SketchFeatures:
    """The spec's callable: column 0 is 1, blocks ``1..p`` hold ``C_i x'``."""

    def __init__(self, degree, size):
        self.degree, self.size = degree, size
        self.scales = [1.0 / math.sqrt(math.factorial(k)) for k in range(1, degree + 1)]

    def __call__(self, u):
        p, D = self.degree, self.size
        out = np.zeros_like(u)
        out[:, 0] = 1.0
        blocks = u[:, 1 : 1 + p * D].reshape(u.shape[0], p, D).astype(np.float64)
        out[:, 1 : 1 + D] = blocks[:, 0] * self.scales[0]
        spectrum = np.fft.rfft(blocks[:, 0], axis=1)
        for k in range(1, p):
            spectrum = spectrum * np.fft.rfft(blocks[:, k], axis=1)
            sketch = np.fft.irfft(spectrum, n=D, axis=1)
            out[:, 1 + k * D : 1 + (k + 1) * D] = sketch * self.scales[k]
        return out


class TensorSketchFeatureMap(FeatureMap):
    """TensorSketch features of the exponential's series truncated at ``degree``.

    ``phi(x).phi(y)`` estimates ``sum_{k<=degree} (gamma x.y)^k / k!`` without bias
    for independent projection rows (``projection="gaussian"``); see the module
    docstring for the construction (Pham & Pagh, 2013).  The projection holds
    ``degree`` rows, read as count sketches.

    Parameters
    ----------
    degree : int, default=3
        Highest power of the series.
    name : str or None
        Registry name (default ``"tensorsketch"``).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import RandomFeatures
    >>> X = np.random.default_rng(0).normal(scale=0.2, size=(4, 6))
    >>> rf = RandomFeatures("tensorsketch", n_components=4096, projection="gaussian",
    ...                     random_state=0).fit(X)
    >>> Z = rf.transform(X)
    >>> bool(np.abs(Z @ Z.T - np.exp(X @ X.T)).max() < 0.1)
    True
    """

    kernels = ("softmax",)
    nonnegative = False
    stacked_trials = False
    summary = "TensorSketch of exp's series to a degree: polynomial sketch, unbiased for it"

    def __init__(self, degree=3, name=None):
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
            raise ValueError(f"degree must be a positive int, got {degree!r}")
        self.degree = int(degree)
        self.name = name or "tensorsketch"

    def n_projections(self, n_components: int) -> int:
        return self.degree

    def sketch_size(self, n_components) -> int:
        """``D``, the width of each degree's sketch (a ``ValueError`` below 1)."""
        size = (int(n_components) - 1) // self.degree
        if size < 1:
            raise ValueError(
                f"n_components must be at least 1 + degree = {1 + self.degree} for feature "
                f"map {self.name!r}, got {n_components}"
            )
        return size

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
        size = self.sketch_size(n_components)
        p, d = projection.shape
        if p != self.degree:
            raise ValueError(
                f"feature map {self.name!r} of degree {self.degree} needs {self.degree} "
                f"projection rows, got {p}"
            )
        weights = np.zeros((int(n_components), d))
        weights[1 : 1 + p * size] = (
            count_sketch_matrices(projection, size).reshape(p * size, d) * input_scale
        )
        return FeatureMapSpec(weights, _SketchFeatures(p, size))
