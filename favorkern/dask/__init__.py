"""Random features and FAVOR+ attention on dask arrays (the optional ``dask`` extra).

The same numbers as the in-memory functions, computed block by block by dask's
scheduler (threads, processes or a ``distributed`` cluster); nothing here schedules
work itself.

* :func:`transform` (and the :class:`DaskTransformer` wrapper) maps a dask array
  chunked along rows through a fitted favorkern transformer with
  ``dask.array.map_blocks``; the output declares its true chunks
  ``(row chunks, (n_components,))`` (dask-ml's ``ParallelPostFit`` declares the
  input's width, which is wrong for random features).
* :func:`favor_attention` takes ``Q, K, V`` chunked along the sequence.  Each key
  chunk gives its state ``(S_c, z_c, c_c)`` (``S_c = phi(K_c)^T V_c exp(-c_c)``,
  ``z_c = phi(K_c)^T 1 exp(-c_c)``, ``c_c`` the chunk's key stabilizer).  States
  combine by ``c = max(c_a, c_b)``, ``S = S_a exp(c_a - c) + S_b exp(c_b - c)`` (the
  merge of :mod:`favorkern.attention`): bidirectional attention reduces all states
  in a tree and every query chunk emits ``phi(Q_c) S / phi(Q_c) z``; causal attention
  takes an exclusive prefix scan of the states (a tree of depth ``2 log16(chunks)``)
  and every chunk then runs the in-memory chunked causal algorithm from its carried
  state, all chunks in parallel.  One task computes the states of consecutive key
  chunks of up to ``2^14`` rows together (merged, or scanned within the group for
  causal attention), so that short chunks cost about one task each: their output.

* :func:`fit` and :func:`predict` fit and apply the streaming ridge models
  (:class:`~favorkern.RandomFeatureRidge` and the classifier) on dask arrays: each
  row chunk yields its sufficient statistics on a worker, merged in a tree; the
  ``m x m`` solve runs on the client.

The chunk-level pieces (the key state and its merge and scan, query emission, the
causal chunk from a carried state) are those of :mod:`favorkern.attention`
(:mod:`favorkern.attention.state` and friends), and the feature maps those of the
registry, :mod:`favorkern.feature_maps`: the math is the same code.

Worker processes should run numba and favorkern's feature-map pool on one thread
each (dask already runs one task per worker thread): start them with
:data:`WORKER_ENV`, e.g. ``LocalCluster(..., env=WORKER_ENV)``, or use
:func:`local_cluster`.
"""

from ._attention import favor_attention
from ._cluster import WORKER_ENV, local_cluster
from ._ridge import fit, predict
from ._transform import DaskTransformer, transform

__all__ = [
    "transform",
    "DaskTransformer",
    "favor_attention",
    "fit",
    "predict",
    "WORKER_ENV",
    "local_cluster",
]
