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
    """
