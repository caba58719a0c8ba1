"""Warning classes shared by favorkern's modules.

Examples
--------
>>> import warnings
>>> from favorkern._warnings import ApproximationWarning
>>> issubclass(ApproximationWarning, UserWarning)
True
"""

from __future__ import annotations

__all__ = ["ApproximationWarning", "FeatureUnderflowWarning"]


class ApproximationWarning(UserWarning):
    """A random-feature approximation is estimated to be far from its target.

    Emitted, for example, by :func:`favorkern.attention.error.estimate_attention_error`
    (and ``favor_attention(..., return_error=True)``) when the estimated median
    relative row error of the attention output exceeds ``warn_error``.  More
    features (``n_components``), another feature map or exact attention for the
    affected heads are the usual remedies.  Filter it with the :mod:`warnings`
    module like any other warning.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from favorkern import ApproximationWarning, favor_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=3.0, size=(3, 200, 16))   # sharp logits: hard
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     out, estimate = favor_attention(Q, K, V, n_components=16, random_state=0,
    ...                                     return_error=True, warn_error=0.1)
    >>> any(issubclass(w.category, ApproximationWarning) for w in caught)
    True
    """


class FeatureUnderflowWarning(ApproximationWarning):
    """Every feature of some rows (or every feature product of some attention rows) is 0.

    Emitted once per call, with the number of affected rows, when an exp-type map
    (positive, hyperbolic, optimal) evaluates to exactly zero for every feature of a
    row: all its exponents are below the log of the smallest float of the dtype, so
    the kernel estimate of that row with any other row is 0 (and ``favor_attention``
    returns a zero output row where every feature product of a query underflowed).
    Rows of attention whose keys are all masked are 0 by definition and are not
    counted.  Smaller logits (scale ``X`` down, lower ``gamma``), float64 input, or
    exact attention for those rows are the remedies.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from favorkern import PositiveRandomFeatures
    >>> X = np.array([[0.1, 0.2], [300.0, 0.0]])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     Z = PositiveRandomFeatures(8, random_state=0).fit(X).transform(X)
    >>> [str(w.message).split(":")[0] for w in caught if w.category is FeatureUnderflowWarning]
    ['1 of 2 rows have every feature 0']
    """
