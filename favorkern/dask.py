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

The chunk-level pieces (the key state and its merge and scan, query emission, the
causal chunk from a carried state) are those of :mod:`favorkern.attention`
(:mod:`favorkern.attention.state` and friends), and the feature maps those of the
registry, :mod:`favorkern.feature_maps`: the math is the same code.

Worker processes should run numba and favorkern's feature-map pool on one thread
each (dask already runs one task per worker thread): start them with
:data:`WORKER_ENV`, e.g. ``LocalCluster(..., env=WORKER_ENV)``, or use
:func:`local_cluster`.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ._validation import check_attention_shapes, check_bool, check_logit_scale
from .attention.bidirectional import accumulate_keys, emit
from .attention.causal import causal_chunk_rows, causal_chunked
from .attention.common import feature_chunk_rows
from .attention.favor import attention_features, resolve_projection
from .attention.features import AttentionFeatures
from .attention.state import KeyState, exclusive_scan, merge
from .feature_maps import apply_feature_map, check_constants, get_feature_map

__all__ = [
    "transform",
    "DaskTransformer",
    "favor_attention",
    "WORKER_ENV",
    "local_cluster",
]

#: Environment for dask worker processes: one numba thread and one favorkern
#: feature-map thread per process (dask runs one task per worker thread, and the
#: nanny pins BLAS/OpenMP but not numba or favorkern's own pool).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "FAVORKERN_NUM_THREADS": "1"}

# Attention feature maps built in this process, by graph key (tasks receive the map's
# spec, a frozen dataclass of arrays; the evaluator is built once per process).
_FEATURE_MAPS: dict = {}
_FEATURE_MAPS_MAX = 8

# Fan-in of the bidirectional tree reduction and of the causal prefix scan of chunk
# states: each level of the tree is a hop between workers (tens of ms on a loaded
# machine), and a merge of m x dv states costs microseconds.
_REDUCTION_FAN_IN = 16
_SCAN_FAN_IN = 16
# Consecutive key chunks whose states one task computes: a task costs about 2 ms of
# CPU besides its work (scheduler and worker; no-op tasks on a LocalCluster of 2
# workers), the key state of 2^14 rows about 14 ms (m = 256, d = dv = 64, one head):
# chunks of this many rows (times the heads of a block) keep a task each.  The float64
# states a group task holds (and, causal, the prefixes it sends to the output tasks)
# are bounded too: at most _GROUP_STATE_BYTES of them (64 chunks at m = 256, dv = 64).
_GROUP_ROWS = 1 << 14
_GROUP_STATE_BYTES = 1 << 23


def local_cluster(n_workers=2, threads_per_worker=1, **kwargs):
    """A ``distributed.LocalCluster`` of processes started with :data:`WORKER_ENV`.

    Parameters
    ----------
    n_workers : int, default=2
        Number of worker processes.
    threads_per_worker : int, default=1
        Threads per worker (tasks run concurrently in a worker).
    **kwargs
        Passed to ``distributed.LocalCluster`` (e.g. ``memory_limit``,
        ``dashboard_address``); ``env`` entries are added to :data:`WORKER_ENV`.

    Returns
    -------
    cluster : distributed.LocalCluster
        Close it (or use it as a context manager) when done.

    Examples
    --------
    >>> from distributed import Client
    >>> from favorkern.dask import local_cluster
    >>> with local_cluster(n_workers=1, dashboard_address=None) as cluster:  # doctest: +SKIP
    ...     with Client(cluster) as client:
    ...         print(client.run(lambda: __import__("os").environ["NUMBA_NUM_THREADS"]))
    """
    from distributed import LocalCluster

    env = {**WORKER_ENV, **kwargs.pop("env", {})}
    kwargs.setdefault("processes", True)
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=threads_per_worker, env=env, **kwargs
    )


# -- input checks -----------------------------------------------------------------


def _as_dask(X, name, *, row_chunks="auto"):
    """``X`` as a dask array of float32 (if float32) or float64, checked for dtype."""
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        chunks = (row_chunks,) * max(0, X.ndim - 1) + (-1,) if X.ndim else ()
        X = da.from_array(X, chunks=chunks)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {X.dtype}")
    if any(math.isnan(s) for s in X.shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {X.shape}); call {name}.compute_chunk_sizes()"
        )
    if 0 in X.shape:
        raise ValueError(f"{name} is empty (shape {X.shape}); at least one value is required")
    return X


def _check_last_axis(X, name):
    if X.numblocks[-1] != 1:
        raise ValueError(
            f"{name} must not be chunked along its last axis (features), got chunks "
            f"{X.chunks[-1]}; chunk along rows only, e.g. {name}.rechunk({{-1: -1}})"
        )


def _checked_block(block, name):
    """A C-contiguous block; non-finite values raise as the in-memory checks do."""
    block = np.ascontiguousarray(block)
    if not np.isfinite(block).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return block


# -- transform --------------------------------------------------------------------


def _transform_block(block, spec):
    if sp.issparse(block):
        return apply_feature_map(_checked_sparse_block(block, "X"), spec)
    return apply_feature_map(_checked_block(block, "X"), spec)


def _checked_sparse_block(block, name):
    """A CSR block of float32/float64 values; non-finite stored values raise."""
    block = sp.csr_matrix(block)
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float64)
    if not np.isfinite(block.data).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return block


def _is_sparse(X) -> bool:
    """True for a dask array whose blocks are scipy.sparse matrices."""
    return sp.issparse(getattr(X, "_meta", None))


def _reject_sparse(X, name):
    if _is_sparse(X):
        raise TypeError(
            f"{name} has scipy.sparse blocks; attention needs dense blocks: "
            f"{name}.map_blocks(lambda b: b.toarray())"
        )


def transform(estimator, X):
    """Random features of a dask array, block by block, through a fitted transformer.

    Each row block ``X_b`` becomes ``estimator.transform(X_b)`` (the same feature map
    code, so the same numbers as the in-memory ``transform``); the output declares
    its real chunks ``(X.chunks[0], (n_components,))`` and dtype.

    Parameters
    ----------
    estimator : fitted favorkern transformer
        ``PositiveRandomFeatures``, ``HyperbolicRandomFeatures``,
        ``TrigonometricRandomFeatures``, ``GeneralizedRandomFeatures`` or
        ``OptimalPositiveRandomFeatures``, already fitted (on in-memory data).
    X : dask array of shape (n_samples, n_features)
        Chunked along rows only (one chunk along columns).  float32 stays float32,
        other numeric input becomes float64.  A NumPy array is wrapped with automatic
        row chunks.  Blocks may be dense or ``scipy.sparse`` matrices (e.g. from
        ``X.map_blocks(scipy.sparse.csr_matrix)``); the output blocks are dense.

    Returns
    -------
    X_new : dask array of shape (n_samples, n_components)
        Lazy; chunks ``(X.chunks[0], (n_components,))``.

    Raises
    ------
    ValueError
        If ``X`` is chunked along columns, has the wrong number of features, or (at
        compute time) contains NaN or infinity.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from favorkern import PositiveRandomFeatures
    >>> from favorkern.dask import transform
    >>> X = np.random.default_rng(0).normal(size=(10, 4))
    >>> features = PositiveRandomFeatures(n_components=6, random_state=0).fit(X)
    >>> X_new = transform(features, da.from_array(X, chunks=(3, 4)))
    >>> X_new.chunks
    ((3, 3, 3, 1), (6,))
    >>> bool(np.allclose(X_new.compute(), features.transform(X)))
    True
    """
    if not hasattr(estimator, "_spec"):
        raise TypeError(
            "estimator must be a favorkern random-feature transformer, got "
            f"{type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    X = _as_dask(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array, got shape {X.shape}")
    _check_last_axis(X, "X")
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input"
        )
    dtype = np.dtype(np.float32 if X.dtype == np.float32 else np.float64)
    X = X.astype(dtype, copy=False)
    spec = estimator._spec()
    n_out = spec.weights.shape[0]
    # One graph key for the spec: workers fetch the projection once, not once per task.
    spec_key = dask.delayed(spec, name=f"favorkern-spec-{tokenize(spec)}")
    return X.map_blocks(
        _transform_block,
        spec_key,
        chunks=(X.chunks[0], (n_out,)),
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        name=f"favorkern-transform-{tokenize(X, spec)}",
    )


class DaskTransformer(TransformerMixin, BaseEstimator):
    """Wrap a favorkern transformer so that ``transform`` accepts dask arrays.

    The role of dask-ml's ``ParallelPostFit`` for random features, with the right
    output chunks: fit on an in-memory sample (the random features need only the
    input width, except ``OptimalPositiveRandomFeatures``, which estimates its
    parameter from the data), then transform dask arrays blockwise with
    :func:`transform`; NumPy / pandas input goes to the wrapped ``transform``.
    ``set_output(transform="pandas")`` (or ``"polars"``) applies to in-memory input
    only: with dask input it raises ``ValueError`` rather than compute the result
    into memory.

    Parameters
    ----------
    estimator : favorkern transformer
        Fitted or not.  If :meth:`fit` is never called, the estimator must already be
        fitted and is used as it is.

    Attributes
    ----------
    estimator_ : favorkern transformer
        A fitted clone of ``estimator`` (after :meth:`fit`).
    n_features_in_ : int
        Number of features seen by the wrapped estimator.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from favorkern import TrigonometricRandomFeatures
    >>> from favorkern.dask import DaskTransformer
    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> model = DaskTransformer(TrigonometricRandomFeatures(8, random_state=0)).fit(X[:5])
    >>> model.transform(da.from_array(X, chunks=(7, 3))).chunks
    ((7, 7, 6), (8,))
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y=None):
        """Fit a clone of ``estimator`` on in-memory ``X``; returns ``self``.

        A dask collection raises ``TypeError``: fit on a sample that fits in memory.
        """
        if dask.is_dask_collection(X):
            raise TypeError(
                "X must be in memory for fit (random features need only its width; fit on "
                "a sample, e.g. X[:1000].compute()), got a dask collection"
            )
        self.estimator_ = clone(self.estimator).fit(X, y)
        return self

    def _fitted(self):
        if hasattr(self, "estimator_"):
            return self.estimator_
        check_is_fitted(self.estimator)
        return self.estimator

    @property
    def n_features_in_(self):
        return self._fitted().n_features_in_

    def transform(self, X):
        """Random features of ``X``: a dask array for dask input (see :func:`transform`)."""
        estimator = self._fitted()
        if isinstance(X, da.Array):
            self._check_lazy_output()
            return transform(estimator, X)
        return estimator.transform(X)

    def _check_lazy_output(self):
        """``set_output(transform="pandas")`` would compute the dask result into memory."""
        from sklearn.utils._set_output import _get_output_config

        container = _get_output_config("transform", self)["dense"]
        if container != "default":
            raise ValueError(
                f"set_output(transform={container!r}) would compute the whole dask result "
                "into memory; for dask input use set_output(transform='default') and "
                "convert lazily, e.g. dask.dataframe.from_dask_array(X_new, columns="
                "model.get_feature_names_out())"
            )

    def get_feature_names_out(self, input_features=None):
        """Output feature names of the wrapped estimator."""
        return self._fitted().get_feature_names_out(input_features)

    def __sklearn_is_fitted__(self):
        try:
            self._fitted()
        except Exception:
            return False
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self.estimator.__sklearn_tags__().input_tags.sparse
        return tags


# -- attention: chunk states ----------------------------------------------------------


def _feature_map(recipe):
    """The attention feature map of ``recipe = (key, spec, dtype)``, cached per process."""
    key = recipe[0]
    fmap = _FEATURE_MAPS.get(key)
    if fmap is None:
        if len(_FEATURE_MAPS) >= _FEATURE_MAPS_MAX:
            _FEATURE_MAPS.clear()
        fmap = _FEATURE_MAPS[key] = AttentionFeatures(*recipe[1:])
    return fmap


def _heads_of(block):
    return list(np.ndindex(*block.shape[:-2]))


def _chunk_state(recipe, k_block, v_block, m_block=None):
    """The :class:`~favorkern.attention.state.KeyState` of one key chunk, every head, float64.

    ``S`` (heads..., m, dv), ``z`` (heads..., m) and ``c`` (heads...), each head's
    from :func:`favorkern.attention.bidirectional.accumulate_keys`.
    """
    fmap = _feature_map(recipe)
    k_block = _checked_block(k_block, "K")
    v_block = _checked_block(v_block, "V")
    lead = k_block.shape[:-2]
    state = KeyState(
        np.zeros(lead + (fmap.n_out, v_block.shape[-1])),
        np.zeros(lead + (fmap.n_out,)),
        np.full(lead, -np.inf),
    )
    chunk = feature_chunk_rows(fmap.n_out, fmap.dtype)
    for idx in _heads_of(k_block):
        k, v = k_block[idx], v_block[idx]
        m = None if m_block is None else np.ascontiguousarray(m_block[idx])
        part = accumulate_keys(fmap, k, v, m, 0, k.shape[0], chunk)
        state.S[idx], state.z[idx] = part.S, part.z
        state.c[idx] = part.c
    return state


def _merge(*parts):
    """:func:`favorkern.attention.state.merge` of chunk states (float64)."""
    return merge(parts)


def _row_groups(rows, heads=1, state_bytes=0):
    """Ranges ``(a, b)`` of consecutive chunks (of ``rows`` rows each) whose key states
    one task computes: as many chunks as fit in ``_GROUP_ROWS`` rows times ``heads``
    and in ``_GROUP_STATE_BYTES`` of states of ``state_bytes`` each, at least one."""
    max_chunks = max(1, _GROUP_STATE_BYTES // state_bytes) if state_bytes > 0 else len(rows)
    groups, start, total = [], 0, 0
    for i, size in enumerate(rows):
        full = (total + size) * heads > _GROUP_ROWS or i - start >= max_chunks
        if i > start and full:
            groups.append((start, i))
            start, total = i, 0
        total += size
    groups.append((start, len(rows)))
    return groups


def _chunk_states(recipe, k_blocks, v_blocks, m_blocks):
    return [
        _chunk_state(recipe, k, v, m) for k, v, m in zip(k_blocks, v_blocks, m_blocks, strict=True)
    ]


def _group_state(recipe, k_blocks, v_blocks, m_blocks):
    """The merged :class:`~favorkern.attention.state.KeyState` of consecutive key chunks."""
    states = _chunk_states(recipe, k_blocks, v_blocks, m_blocks)
    return states[0] if len(states) == 1 else merge(states)


class _GroupPrefixes:
    """The exclusive prefix states of a group of key chunks, stacked.

    Entry ``i`` is the state of the group's chunks before chunk ``i`` (``None`` for
    the first), the last entry the group's total.  The prefixes travel to the
    workers of the group's output tasks: stacked, they are three arrays to send
    rather than three per chunk, and ``S`` is in the features' dtype (the dtype it
    is used in; ``z`` and ``c`` stay float64).  The total (float64) goes to the
    scan across groups.
    """

    def __init__(self, states, dtype):
        first = states[0]
        count = len(states) - 1
        self.S = np.empty((count,) + first.S.shape, dtype=dtype)
        self.z = np.empty((count,) + first.z.shape)
        self.c = np.empty((count,) + np.shape(first.c))
        running = first
        for i, state in enumerate(states[1:]):
            self.S[i], self.z[i], self.c[i] = running.S, running.z, running.c
            running = merge([running, state])
        self.total = running

    def __len__(self):
        return len(self.S) + 2

    def __getitem__(self, index):
        if index == 0:
            return None
        if index == len(self) - 1:
            return self.total
        return KeyState(self.S[index - 1], self.z[index - 1], self.c[index - 1, ...])


def _group_prefixes(recipe, k_blocks, v_blocks, m_blocks):
    """The :class:`_GroupPrefixes` of consecutive key chunks (from no offset)."""
    return _GroupPrefixes(_chunk_states(recipe, k_blocks, v_blocks, m_blocks), recipe[2])


def _entry(container, index):
    """Entry ``index`` of another task's result (the result itself if ``index`` is None)."""
    if container is None:
        return None
    return container if index is None else container[index]


def _merge_entries(containers, indices):
    """:func:`~favorkern.attention.state.merge` of states that are entries of other
    tasks' results; ``None`` entries (no keys) contribute nothing."""
    states = [s for s in map(_entry, containers, indices) if s is not None]
    if not states:
        return None
    return states[0] if len(states) == 1 else merge(states)


def _scan_entries(offset, offset_index, containers, indices):
    """:func:`~favorkern.attention.state.exclusive_scan` of entries of other tasks'
    results, from the state ``offset[offset_index]`` (none if ``offset`` is None)."""
    states = list(map(_entry, containers, indices))
    return tuple(exclusive_scan(states, offset=_entry(offset, offset_index)))


def _head_state(total, idx, dtype):
    """One head's state of a stacked state, in ``dtype`` (``None`` if it holds no key)."""
    if total is None:
        return None
    const = float(np.asarray(total.c)[idx])
    if const == -np.inf:
        return None
    return KeyState(total.S[idx].astype(dtype), total.z[idx].astype(dtype), const)


def _emit_block(recipe, q_block, total):
    """Bidirectional output of one query chunk: ``phi(Q_c) S / phi(Q_c) z`` per head."""
    fmap = _feature_map(recipe)
    q_block = _checked_block(q_block, "Q")
    out = np.empty(q_block.shape[:-1] + (total.S.shape[-1],), dtype=fmap.dtype)
    chunk = feature_chunk_rows(fmap.n_out, fmap.dtype)
    for idx in _heads_of(q_block):
        q = q_block[idx]
        state = KeyState(total.S[idx].astype(fmap.dtype), total.z[idx].astype(fmap.dtype), 0.0)
        emit(fmap, q, state, out[idx], 0, q.shape[0], chunk)
    return _finite_output(out)


def _finite_output(out):
    """``out``, or a ``ValueError`` where its sums overflowed (finite inputs: values near
    the dtype's max, which this graph does not scale as the in-memory function does)."""
    if out.size and not (np.isfinite(out.min()) and np.isfinite(out.max())):
        raise ValueError(
            f"attention outputs overflowed {out.dtype}: V has values too close to the "
            "largest number for sums over the keys; divide V by a power of two and multiply "
            "the output back (favorkern.favor_attention does so by itself)"
        )
    return out


def _causal_block(recipe, q_block, k_block, v_block, prefix, m_block=None):
    """Causal output of one chunk from the state of all earlier chunks (``None``: none).

    :func:`favorkern.attention.causal.causal_chunked` started from the carried state,
    whose key constant is the maximum over earlier keys only: the running-maximum
    stabilizer of the in-memory algorithm, so no output looks at a later chunk.
    """
    fmap = _feature_map(recipe)
    q_block = _checked_block(q_block, "Q")
    k_block = _checked_block(k_block, "K")
    v_block = _checked_block(v_block, "V")
    out = np.empty(q_block.shape[:-1] + (v_block.shape[-1],), dtype=fmap.dtype)
    for idx in _heads_of(q_block):
        q, k, v = q_block[idx], k_block[idx], v_block[idx]
        initial = _head_state(prefix, idx, fmap.dtype)
        m = None if m_block is None else np.ascontiguousarray(m_block[idx])
        chunk = causal_chunk_rows(fmap.n_out)
        causal_chunked(fmap, q, k, v, m, out[idx], chunk, 0, q.shape[0], initial)
    return _finite_output(out)


def _causal_block_of(
    recipe, q_block, k_block, v_block, offset, offset_index, local, local_index, m_block=None
):
    """:func:`_causal_block` from the state of all earlier chunks: the state before the
    chunk's group (``offset[offset_index]``) merged with the chunk's prefix within its
    group (``local[local_index]``); ``None`` containers hold no keys."""
    prefix = _merge_entries([offset, local], [offset_index, local_index])
    return _causal_block(recipe, q_block, k_block, v_block, prefix, m_block)


class _Tasks:
    """Builds the tasks of one graph layer: raw ``(function, *args)`` tuples under keys
    ``(name, *index)``; arguments that are keys (also inside lists) are references to
    other tasks."""

    def __init__(self, name):
        self.name = name
        self.graph = {}
        self._count = 0

    def add(self, function, *args):
        key = (self.name, self._count)
        self._count += 1
        self.graph[key] = (function, *args)
        return key

    def merge_tree(self, parts):
        """Reduce state keys by :func:`_merge` in a tree of fan-in ``_REDUCTION_FAN_IN``."""
        while len(parts) > 1:
            parts = [
                self.add(_merge, *parts[i : i + _REDUCTION_FAN_IN])
                for i in range(0, len(parts), _REDUCTION_FAN_IN)
            ]
        return parts[0]

    def exclusive_scan(self, entries):
        """The exclusive prefix state of each of ``entries``, as an entry.

        An entry ``(key, index)`` is entry ``index`` of the result of task ``key``
        (the result itself if ``index`` is None; ``(None, None)``: no keys).  The
        value of the last entry is never read (it may be ``(None, None)``).

        A scan of fan-in ``f = _SCAN_FAN_IN``: groups of ``f`` entries are merged
        into group totals, the totals scanned recursively, and one task per group
        then runs its members' prefixes sequentially from the group's offset.  Depth
        ``2 log_f(n)`` (every level is a hop between workers), about ``2n`` merges of
        ``m x dv`` states; consumers index the group's tuple themselves (no task per
        prefix).
        """

        def prefixes_of(offset, group):
            if len(group) == 1:
                return [offset]
            if len(group) == 2 and offset == (None, None):
                return [offset, group[0]]  # the second's prefix is the first
            # the last member's own state is not needed: its prefix ends before it
            keys, indices = zip(*group[:-1], strict=True)
            scan = self.add(_scan_entries, *offset, list(keys), list(indices))
            # the first member's prefix is the offset itself: no wait for the scan
            return [offset] + [(scan, i) for i in range(1, len(group))]

        if len(entries) <= _SCAN_FAN_IN:
            return prefixes_of((None, None), entries)
        groups = [entries[i : i + _SCAN_FAN_IN] for i in range(0, len(entries), _SCAN_FAN_IN)]
        totals = []
        for group in groups[:-1]:
            keys, indices = zip(*group, strict=True)
            totals.append((self.add(_merge_entries, list(keys), list(indices)), None))
        offsets = self.exclusive_scan(totals + [(None, None)])
        prefixes = []
        for offset, group in zip(offsets, groups, strict=True):
            prefixes.extend(prefixes_of(offset, group))
        return prefixes


# -- attention: public function -----------------------------------------------------------


def _prepare(Q, K, V, causal, key_padding_mask=None):
    """Checked dask arrays with one dtype, broadcast and aligned leading chunks."""
    causal = check_bool(causal, "causal")
    arrays = {}
    for name, X in (("Q", Q), ("K", K), ("V", V)):
        X = _as_dask(X, name)
        _reject_sparse(X, name)
        if X.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions, got shape {X.shape}")
        _check_last_axis(X, name)
        arrays[name] = X
    Q, K, V = arrays["Q"], arrays["K"], arrays["V"]
    dtype = np.dtype(np.float32 if all(X.dtype == np.float32 for X in (Q, K, V)) else np.float64)
    Q, K, V = (X.astype(dtype, copy=False) for X in (Q, K, V))
    mask = _mask_array(key_padding_mask)
    batch = check_attention_shapes(
        Q.shape, K.shape, V.shape, causal, None if mask is None else mask.shape
    )
    Q, K, V = (da.broadcast_to(X, batch + X.shape[-2:]) for X in (Q, K, V))
    lead = Q.chunks[:-2]
    # Leading chunks follow Q; keys and values share K's sequence chunks (causal: Q's).
    key_rows = Q.chunks[-2] if causal else K.chunks[-2]
    K = K.rechunk(lead + (key_rows, K.chunks[-1]))
    V = V.rechunk(lead + (key_rows, V.chunks[-1]))
    if mask is not None:
        mask = da.broadcast_to(mask, batch + mask.shape[-1:]).rechunk(lead + (key_rows,))
    return Q, K, V, mask, dtype


def _mask_array(key_padding_mask):
    """``key_padding_mask`` as a boolean dask array (True = ignore), or None."""
    if key_padding_mask is None:
        return None
    mask = key_padding_mask
    if not isinstance(mask, da.Array):
        mask = da.from_array(np.asarray(mask))
    if mask.dtype != np.bool_:
        raise TypeError(
            f"key_padding_mask must be a boolean array (True = ignore), got dtype {mask.dtype}"
        )
    if any(math.isnan(size) for size in mask.shape):
        raise ValueError("key_padding_mask has unknown chunk sizes; call compute_chunk_sizes()")
    return mask


def favor_attention(
    Q,
    K,
    V,
    *,
    causal=False,
    n_components=None,
    feature_map="positive",
    projection="orthogonal",
    gamma=None,
    constants=None,
    projection_matrix=None,
    random_state=None,
    key_padding_mask=None,
):
    """FAVOR+ attention of dask arrays chunked along the sequence, as a lazy dask array.

    The same estimate as :func:`favorkern.favor_attention` (equal to it up to
    rounding for the same ``projection_matrix``, for any chunking), computed as a
    dask graph:

    * bidirectional: each key chunk gives ``(S_c, z_c, c_c)``; a tree reduction
      merges them with max-rescaling into ``(S, z)``; each query chunk then emits
      ``phi(Q_c) S / phi(Q_c) z`` in parallel;
    * causal: an exclusive prefix scan of the chunk states (depth ``2 log16`` of the
      number of chunks) gives each chunk the state of all earlier keys, whose
      constant is the maximum over earlier keys only; each chunk then computes its
      outputs in parallel (the in-memory chunked algorithm from that state).

    Consecutive key chunks of up to ``2^14`` rows share one task for their states
    (and their merge, or their scan), so the graph has about one task per query
    chunk: chunks of a few thousand rows cost little more than long ones.

    Parameters
    ----------
    Q : dask array (or array-like) of shape (..., Lq, d)
        Queries, chunked along ``Lq`` (and optionally the leading dimensions), one
        chunk along ``d``.  Leading dimensions (batch, heads) broadcast against those
        of K and V; the output takes Q's leading chunks.
    K : dask array (or array-like) of shape (..., Lk, d)
        Keys, one chunk along ``d``.
    V : dask array (or array-like) of shape (..., Lk, dv)
        Values, one chunk along ``dv``; rechunked to K's sequence chunks.
    causal : bool, default=False
        If True, output ``i`` uses keys ``0..i`` only (``Lq == Lk``; K and V are
        rechunked to Q's sequence chunks).
    n_components : int or None, default=None
        Output width of the feature map (see :func:`favorkern.favor_attention`).
    feature_map : str or FeatureMap, default="positive"
        A map of the registry (see :func:`favorkern.favor_attention`).  Maps with
        data constants (``"optimal"``, ``"saderf"``) need them fitted beforehand and
        passed as ``constants``: chunks cannot fit them on all tokens.
    projection : {"orthogonal", "gaussian", "simplex", "structured"}, default="orthogonal"
        Kind of the drawn projection (:func:`favorkern.draw_projection`).
    gamma : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    constants : dict, sequence of dicts or None, default=None
        Data constants of the map (e.g. ``{"A": -0.1}`` for ``"optimal"``), shared by
        every head; or one dict per head (axis -3; ``H / len(constants)`` consecutive
        heads share a set, as for grouped-query calibration), e.g. those of a fitted
        :class:`favorkern.FavorAttention`:
        ``[att.frozen_constants(h) for h in range(len(att.constants_["A"]))]`` (with
        ``projection_matrix=att.projection_``).  Required by maps with data constants.
    projection_matrix : array-like of shape (m, d), default=None
        Use these projections instead of drawing them (drawn once, on the client).
    random_state : int, RandomState instance or None, default=None
        Seed of the drawn projection: the same seed gives the projection of the
        in-memory :func:`favorkern.favor_attention`.
    key_padding_mask : array-like or dask array of bool, shape (..., Lk), default=None
        True marks a key to ignore (broadcast as in :func:`favorkern.favor_attention`;
        rechunked to the keys' sequence chunks).  A row whose keys are all ignored
        is 0.

    Returns
    -------
    out : dask array of shape (..., Lq, dv)
        Lazy; chunks ``Q.chunks[:-1] + ((dv,),)``; float32 if Q, K and V are float32,
        else float64.

    Raises
    ------
    ValueError
        If an input is chunked along its last axis, shapes do not match, or (at
        compute time) an input contains NaN or infinity.

    See Also
    --------
    favorkern.favor_attention : the in-memory function.

    Notes
    -----
    ``method`` is not supported here, nor the exact power-of-two scaling of value
    columns near the dtype's largest number that the in-memory function applies:
    where values within a factor ``Lk m`` of it overflow the sums, computing raises a
    ``ValueError`` (divide V by a power of two and multiply the output back).  Each task holds one
    chunk of Q, K, V and its features, ``O(chunk x (d + m))`` per head, and the
    states are ``m x dv`` per head and chunk.  Stabilizers cancel in the normalized
    output, so the result equals the in-memory one; the causal key constant of row
    ``i`` is the running maximum over keys ``0..i``, as in memory.  Agreement with
    the in-memory function: 1e-6 relative in float64, 1e-4 in float32 where the
    float32 computation is itself accurate.  At sharp logits the float32 normalizer
    ``phi(q_i) . z`` of some rows is subnormal (a few significant bits) and the
    chunk states, merged in float64, round differently from the in-memory state:
    such rows differ by about as much as either result differs from float64 (the
    in-memory function warns with ``FeatureUnderflowWarning`` in that regime); use
    float64 inputs there.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import favorkern
    >>> from favorkern.dask import favor_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 2, 50, 8))   # 2 heads, L = 50
    >>> Qd, Kd, Vd = (da.from_array(X, chunks=(2, 16, 8)) for X in (Q, K, V))
    >>> out = favor_attention(Qd, Kd, Vd, causal=True, n_components=32, random_state=0)
    >>> out.chunks
    ((2,), (16, 16, 16, 2), (8,))
    >>> ref = favorkern.favor_attention(Q, K, V, causal=True, n_components=32, random_state=0)
    >>> bool(np.allclose(out.compute(), ref))
    True
    """
    Q, K, V, mask, dtype = _prepare(Q, K, V, causal, key_padding_mask)
    d = Q.shape[-1]
    fmap = get_feature_map(feature_map)
    gamma = check_logit_scale(gamma, d)
    if fmap.data_constants and constants is None:
        raise ValueError(
            f"feature_map={fmap.name!r} fits constants on all tokens, which chunks cannot "
            f"do: fit {list(fmap.data_constants)} beforehand and pass them as constants"
        )
    proj = resolve_projection(fmap, projection_matrix, n_components, d, projection, random_state)
    if constants is not None and not isinstance(constants, dict):
        return _per_head_graphs(Q, K, V, mask, fmap, proj, gamma, causal, dtype, constants)
    return _constants_graph(Q, K, V, mask, fmap, proj, gamma, causal, dtype, constants)


def _constants_graph(Q, K, V, mask, fmap, proj, gamma, causal, dtype, constants):
    """The graph of one set of constants (or none) for every head of the inputs."""
    constants = check_constants(fmap, constants)
    if fmap.data_constants:
        # asymmetric maps transform queries and keys blockwise
        Q = Q.map_blocks(fmap.prepare, "query", constants, dtype=dtype)
        K = K.map_blocks(fmap.prepare, "key", constants, dtype=dtype)
    spec = attention_features(fmap, proj, gamma, dtype, constants).spec
    return _favor_graph(Q, K, V, spec, causal, dtype, mask)


def _per_head_graphs(Q, K, V, mask, fmap, proj, gamma, causal, dtype, constants):
    """One graph per set of frozen constants along the head axis (-3), concatenated."""
    sets = list(constants)
    if not sets or not all(isinstance(c, dict) for c in sets):
        raise TypeError(
            "constants must be a dict or a non-empty sequence of dicts (one per head), "
            f"got {type(constants).__name__}"
        )
    if Q.ndim < 3 or Q.shape[-3] % len(sets):
        heads = "no head axis" if Q.ndim < 3 else f"{Q.shape[-3]} heads (axis -3)"
        raise ValueError(
            f"constants has {len(sets)} per-head sets, but the inputs have {heads}; the "
            "number of heads must be a multiple of the number of sets"
        )
    group = Q.shape[-3] // len(sets)
    pieces = []
    for h, head_constants in enumerate(sets):
        sl = (Ellipsis, slice(h * group, (h + 1) * group), slice(None), slice(None))
        head_mask = None if mask is None else mask[sl[:-1]]
        pieces.append(
            _constants_graph(
                Q[sl], K[sl], V[sl], head_mask, fmap, proj, gamma, causal, dtype, head_constants
            )
        )
    return da.concatenate(pieces, axis=-3)


def _favor_graph(Q, K, V, spec, causal, dtype, mask=None):
    """The attention graph: key states, merges (tree or scan) and outputs.

    Raw tasks in one graph layer rather than one delayed call (and one layer) per
    chunk: building, optimizing and scheduling the graph then costs little per chunk.
    One task computes the key states of consecutive chunks up to ``_GROUP_ROWS``
    rows (:func:`_row_groups`) and merges them (bidirectional) or scans them
    (causal: the prefixes within the group, which each output task merges with the
    state before the group); every query chunk is one output task.
    """
    mask_name = None if mask is None else mask.name
    token = tokenize(spec, dtype, Q.name, K.name, V.name, causal, mask_name)
    name = f"favorkern-features-{tokenize(spec, dtype)}"
    # One graph key for the map's spec (its projection): fetched once per worker, the
    # evaluator built once per process.
    recipe = dask.delayed((name, spec, dtype), name=name)
    states = _Tasks(f"favorkern-key-state-{token}")
    merges = _Tasks(f"favorkern-merge-{token}")
    out_name = f"favorkern-attention-{token}"
    outputs = {}
    n_lead = Q.ndim - 2
    heads = math.prod(max(sizes) for sizes in K.chunks[:-2])
    state_bytes = heads * spec.weights.shape[0] * V.shape[-1] * 8
    groups = _row_groups(K.chunks[-2], heads, state_bytes)
    for lead in np.ndindex(*Q.numblocks[:n_lead]):
        keys = [(K.name, *lead, j, 0) for j in range(K.numblocks[-2])]
        values = [(V.name, *lead, j, 0) for j in range(V.numblocks[-2])]
        masks = [None if mask is None else (mask.name, *lead, j) for j in range(K.numblocks[-2])]
        if causal:
            offsets, local = [], []
            for g, (a, b) in enumerate(groups):
                # the last chunk's own state is not needed: its prefix ends before it
                stop = b - 1 if g == len(groups) - 1 else b
                group, total = None, stop - a
                if stop == a + 1 and b == stop:  # a chunk alone: its state is the total
                    group, total = (
                        states.add(_chunk_state, name, keys[a], values[a], masks[a]),
                        None,
                    )
                elif stop > a:
                    group = states.add(
                        _group_prefixes, name, keys[a:stop], values[a:stop], masks[a:stop]
                    )
                offsets.append((group, total) if b == stop else (None, None))
                local.extend([(None, None)] + [(group, i) for i in range(1, b - a)])
            offsets = merges.exclusive_scan(offsets)
            for g, (a, b) in enumerate(groups):
                for i in range(a, b):
                    outputs[(out_name, *lead, i, 0)] = (
                        _causal_block_of,
                        name,
                        (Q.name, *lead, i, 0),
                        keys[i],
                        values[i],
                        *offsets[g],
                        *local[i],
                        masks[i],
                    )
        else:
            parts = [
                states.add(_chunk_state, name, keys[a], values[a], masks[a])
                if b == a + 1
                else states.add(_group_state, name, keys[a:b], values[a:b], masks[a:b])
                for a, b in groups
            ]
            total = merges.merge_tree(parts)
            for i in range(Q.numblocks[-2]):
                outputs[(out_name, *lead, i, 0)] = (_emit_block, name, (Q.name, *lead, i, 0), total)
    # one layer: its tasks reference each other and the blocks of Q, K, V
    dependencies = [Q, K, V, recipe] + ([] if mask is None else [mask])
    graph = HighLevelGraph.from_collections(
        out_name, {**states.graph, **merges.graph, **outputs}, dependencies=dependencies
    )
    chunks = Q.chunks[:-1] + ((V.shape[-1],),)
    return da.Array(
        graph,
        out_name,
        chunks,
        dtype=dtype,
        meta=np.empty((0,) * Q.ndim, dtype=dtype),
    )


# == Streaming ridge regression and classification (favorkern.linear_model) ==========
# Self-contained section (its imports are local): fit/predict of RandomFeatureRidge(Classifier)
# on dask arrays.
# Each row chunk yields its RidgeStatistics on a worker; they are merged in a tree and
# the m x m solve runs on the client.  With several alphas a second pass over the chunks
# sums the exact leave-one-out errors (the solver, one m x m eigenbasis, is shipped once).

__all__ += ["fit", "predict"]

# Fan-in of the tree that merges chunk statistics: a merge adds two m x m matrices
# (milliseconds), a tree level costs a hop between workers.
_RIDGE_FAN_IN = 8


def _ridge_rows(array, name, n_rows=None, row_chunks=None):
    """``array`` as a dask array chunked along rows only (matching ``row_chunks``)."""
    import math

    import dask.array as da
    import numpy as np

    if array is None:
        return None
    if not isinstance(array, da.Array):
        if row_chunks is None:
            raise TypeError(f"{name} must be a dask array, got {type(array).__name__}")
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] != n_rows:
            raise ValueError(f"{name} has shape {array.shape}, X has {n_rows} rows")
        array = da.from_array(array, chunks=(row_chunks,) + array.shape[1:])
    if array.ndim not in (1, 2) or (name == "X" and array.ndim != 2):
        raise ValueError(
            f"{name} must be {'2-D' if name == 'X' else '1-D or 2-D'}, got shape {array.shape}"
        )
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    if n_rows is not None and array.shape[0] != n_rows:
        raise ValueError(f"{name} has {array.shape[0]} rows, X has {n_rows}")
    chunks = {0: row_chunks if row_chunks is not None else array.chunks[0]}
    if array.ndim == 2:
        chunks[1] = -1
    return array.rechunk(chunks)


def _ridge_chunk_statistics(features, X_block, y_block, w_block, batch_size, classes):
    from .linear_model import RidgeStatistics, encode_labels

    targets = y_block if classes is None else encode_labels(y_block, classes)
    return RidgeStatistics.from_features(features, X_block, targets, w_block, batch_size=batch_size)


def _ridge_chunk_loo(solver, features, X_block, y_block, w_block, alphas, batch_size, classes):
    from .linear_model import encode_labels

    targets = y_block if classes is None else encode_labels(y_block, classes)
    return solver.loo_errors(
        features, X_block, targets, w_block, alphas=alphas, batch_size=batch_size
    )


def _ridge_merge(*parts):
    total = parts[0].copy()
    for part in parts[1:]:
        total = total.merge(part)
    return total


def _ridge_sum(*parts):
    import numpy as np

    return np.sum(parts, axis=0)


def _ridge_tree(parts, combine):
    import dask

    while len(parts) > 1:
        parts = [
            dask.delayed(combine, pure=True)(*parts[i : i + _RIDGE_FAN_IN])
            for i in range(0, len(parts), _RIDGE_FAN_IN)
        ]
    return parts[0]


def fit(model, X, y, sample_weight=None):
    """Fit a :class:`~favorkern.RandomFeatureRidge` (or the classifier) on dask arrays.

    The feature map is fitted on the client on the first ``batch_size`` rows (as
    in-memory ``fit`` does); every row chunk's sufficient statistics
    (:class:`favorkern.linear_model.RidgeStatistics`) are computed on the workers,
    ``batch_size`` rows at a time, merged in a tree (exact pairwise centring), and
    the solve runs on the client.  With several ``alphas`` a second pass over the
    chunks sums the exact leave-one-out errors, so ``alpha_`` and the coefficients
    equal those of ``model.fit`` on the same rows in memory, to rounding.

    Parameters
    ----------
    model : RandomFeatureRidge or RandomFeatureRidgeClassifier
        Fitted in place.
    X : dask.array.Array of shape (n_samples, n_features)
        Chunked along rows (column chunks are merged).
    y : dask.array.Array or ndarray of shape (n_samples,) or (n_samples, n_targets)
        Rechunked to the row chunks of ``X``.
    sample_weight : dask.array.Array or ndarray of shape (n_samples,), default=None

    Returns
    -------
    model : the fitted model

    Examples
    --------
    >>> import dask.array as da
    >>> from sklearn.datasets import make_friedman1
    >>> from favorkern import RandomFeatureRidge
    >>> from favorkern.dask import fit, predict
    >>> X, y = make_friedman1(n_samples=2000, random_state=0)
    >>> X_dask, y_dask = da.from_array(X, chunks=500), da.from_array(y, chunks=500)
    >>> model = fit(RandomFeatureRidge(alphas=[0.01, 0.1]), X_dask, y_dask)
    >>> bool(abs(model.coef_ - RandomFeatureRidge(alphas=[0.01, 0.1]).fit(X, y).coef_).max() < 1e-8)
    True
    >>> predict(model, X_dask).chunks
    ((500, 500, 500, 500),)
    """
    import dask
    import dask.array as da
    import numpy as np
    from sklearn.base import is_classifier

    from .linear_model import RandomFeatureRidge, RandomFeatureRidgeClassifier

    if not isinstance(model, (RandomFeatureRidge, RandomFeatureRidgeClassifier)):
        raise TypeError(
            "model must be a RandomFeatureRidge or RandomFeatureRidgeClassifier, "
            f"got {type(model).__name__}"
        )
    X = _ridge_rows(X, "X")
    row_chunks = X.chunks[0]
    y = _ridge_rows(y, "y", X.shape[0], row_chunks)
    weights = _ridge_rows(sample_weight, "sample_weight", X.shape[0], row_chunks)
    if weights is not None and weights.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {weights.shape}")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    batch_size = model.resolved_batch_size()
    classes = None
    if is_classifier(model):
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels for a classifier, got shape {y.shape}")
        classes = np.unique(da.unique(y).compute())
    head = min(batch_size, X.shape[0])
    first_X, first_y = dask.compute(X[:head], y[:head])
    features = model.init_features(first_X, first_y, classes=classes)
    features_key = dask.delayed(features)
    x_blocks = X.to_delayed().ravel()
    y_blocks = y.to_delayed().ravel()
    w_blocks = [None] * len(x_blocks) if weights is None else list(weights.to_delayed().ravel())
    blocks = list(zip(x_blocks, y_blocks, w_blocks, strict=True))
    parts = [
        dask.delayed(_ridge_chunk_statistics, pure=True)(
            features_key, xb, yb, wb, batch_size, classes
        )
        for xb, yb, wb in blocks
    ]
    (statistics,) = dask.compute(_ridge_tree(parts, _ridge_merge))
    loo_errors = None
    alphas = np.atleast_1d(np.asarray(model.alphas, dtype=np.float64))
    if alphas.size > 1 and statistics.weight_sum > 0:
        solver = statistics.solver(fit_intercept=model.fit_intercept)
        solver_key = dask.delayed(solver)
        parts = [
            dask.delayed(_ridge_chunk_loo, pure=True)(
                solver_key, features_key, xb, yb, wb, alphas, batch_size, classes
            )
            for xb, yb, wb in blocks
        ]
        (loo_errors,) = dask.compute(_ridge_tree(parts, _ridge_sum))
    return model.fit_statistics(features, statistics, loo_errors=loo_errors)


def _ridge_predict_block(model, X_block, return_std):
    import numpy as np

    if return_std:
        mean, std = model.predict(X_block, return_std=True)
        return np.stack([mean, std], axis=-1)
    return model.predict(X_block)


def predict(model, X, return_std=False):
    """Blockwise predictions of a fitted ridge model on a dask array (lazy).

    Parameters
    ----------
    model : fitted RandomFeatureRidge or RandomFeatureRidgeClassifier
    X : dask.array.Array of shape (n_samples, n_features)
    return_std : bool, default=False
        Regressor only: also the predictive standard deviation.

    Returns
    -------
    y_pred : dask.array.Array of shape (n_samples,) or (n_samples, n_targets)
        Chunked like the rows of ``X``.
    y_std : dask.array.Array, only when ``return_std``

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from favorkern import RandomFeatureRidge
    >>> from favorkern.dask import predict
    >>> X = np.random.default_rng(0).uniform(size=(1000, 3))
    >>> model = RandomFeatureRidge().fit(X, X.sum(axis=1))
    >>> mean, std = predict(model, da.from_array(X, chunks=250), return_std=True)
    >>> mean.chunks, bool(np.allclose(mean.compute(), model.predict(X)))
    (((250, 250, 250, 250),), True)
    """
    import dask
    import dask.array as da
    import numpy as np
    from sklearn.base import is_classifier
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    if not isinstance(return_std, (bool, np.bool_)):
        raise TypeError(f"return_std must be a bool, got {return_std!r}")
    if return_std and is_classifier(model):
        raise ValueError("return_std applies to RandomFeatureRidge only")
    X = _ridge_rows(X, "X")
    if X.shape[1] != model.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, the model expects {model.n_features_in_}")
    model_key = dask.delayed(model)
    if is_classifier(model):
        dtype, width = model.classes_.dtype, ()
    else:
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        width = () if np.ndim(model.coef_) == 1 else (np.shape(model.coef_)[0],)
    pieces = []
    for i, block in enumerate(X.to_delayed().ravel()):
        shape = (X.chunks[0][i],) + width + ((2,) if return_std else ())
        task = dask.delayed(_ridge_predict_block, pure=True)(model_key, block, bool(return_std))
        pieces.append(
            da.from_delayed(task, shape, dtype=dtype, meta=np.empty((0,) * len(shape), dtype=dtype))
        )
    out = da.concatenate(pieces, axis=0)
    if return_std:
        return out[..., 0], out[..., 1]
    return out
