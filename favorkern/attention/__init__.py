"""Softmax attention: the exact reference and FAVOR+ linear attention in bounded memory.

* :func:`softmax_attention` (:mod:`.exact`) is the O(L^2) reference, computed over
  query chunks.
* :func:`favor_attention` (:mod:`.favor`), :class:`FavorAttention` (:mod:`.layer`)
  and :func:`favorkern.dask.favor_attention` check their arguments, build one
  :class:`~.plan.AttentionPlan` and run it (:mod:`.plan`).  They replace
  ``exp(gamma q.k)`` by ``phi(q).phi(k)`` with any map of
  :mod:`favorkern.feature_maps` and never hold more than a chunk of features per
  worker thread: bidirectional (:mod:`.bidirectional`) accumulates the key state,
  then emits the queries; causal (:mod:`.causal`) carries the state through the
  sequence by chunked matrix products or a numba recurrence.
* :mod:`.decoding` continues causal attention token by token from a
  :class:`DecodingState` (:meth:`FavorAttention.step`), and :mod:`.error` estimates
  the error of any output from a sample of exact rows
  (:func:`estimate_attention_error`).
* :func:`hybrid_attention` (:mod:`.hybrid`, engine :mod:`.hybrid_engine`) is exact on
  a local window, global keys and each query's top keys, and uses random features
  for the other keys, renormalized together; :class:`HybridAttention`
  (:mod:`.hybrid_layer`) holds its projection and decodes token by token from a
  :class:`HybridState`.
* :mod:`.state` holds the key state ``(S, z, c)`` and its operations (rescale, add,
  merge, exclusive scan), shared by every algorithm here and by
  :mod:`favorkern.dask`.

Stabilizers (:ref:`theory-stabilizers`): each query's features are divided by their own
maximum (a per-query factor cancels in the normalized output); keys share one
constant per (batch, head), which also cancels.  In causal mode the key constant
of output ``i`` is the running maximum over keys ``0..i`` only, so no output
depends on the values of a later token, not even through rounding or underflow.
"""

from __future__ import annotations

from .decoding import DecodingState
from .error import AttentionErrorEstimate, estimate_attention_error
from .exact import softmax_attention
from .favor import favor_attention
from .hybrid import hybrid_attention
from .hybrid_layer import HybridAttention, HybridState
from .layer import FavorAttention

__all__ = [
    "softmax_attention",
    "favor_attention",
    "FavorAttention",
    "DecodingState",
    "estimate_attention_error",
    "AttentionErrorEstimate",
    "hybrid_attention",
    "HybridAttention",
    "HybridState",
]
