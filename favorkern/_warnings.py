"""Warning classes shared by favorkern's modules.

Examples
--------
>>> import warnings
>>> from favorkern._warnings import ApproximationWarning
>>> issubclass(ApproximationWarning, UserWarning)
True
"""

from __future__ import annotations

__all__ = ["ApproximationWarning"]


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
