"""FAVOR+ attention on dask arrays: chunk states, their tree reduction and prefix scan,
and the graph of :func:`favor_attention`."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .. import _config
from .._validation import check_attention_shapes, check_bool
from ..attention.bidirectional import accumulate_keys, emit
from ..attention.causal import causal_chunk_rows, causal_chunked
from ..attention.common import feature_chunk_rows
from ..attention.features import AttentionFeatures
from ..attention.plan import fill_lost_rows, head_groups, plan_attention, warn_lost_rows
from ..attention.state import KeyState, exclusive_scan, merge
from ..feature_maps import FeatureMap, check_constants, get_feature_map
from ._cluster import as_dask, check_last_axis, checked_block, tree_reduce
from ._transform import reject_sparse

# Attention feature maps built in this process, by graph key (tasks receive the map's
# spec, a frozen dataclass of arrays; the evaluator is built once per process).
_FEATURE_MAPS: dict = {}


# -- attention: chunk states ----------------------------------------------------------


def _features(recipe, dtype=None):
    """The attention feature map of ``recipe = (key, spec, dtype, state_dtype)`` in
    ``dtype`` (the recipe's if None), cached per process."""
    dtype = np.dtype(recipe[2] if dtype is None else dtype)
    key = (recipe[0], dtype)
    phi = _FEATURE_MAPS.get(key)
    if phi is None:
        if len(_FEATURE_MAPS) >= _config.DASK_FEATURE_MAPS_CACHED:
            _FEATURE_MAPS.clear()
        phi = _FEATURE_MAPS[key] = AttentionFeatures(recipe[1], dtype)
    return phi


def _heads_of(block):
    return list(np.ndindex(*block.shape[:-2]))


def _chunk_state(recipe, k_block, v_block, m_block=None):
    """The :class:`~favorkern.attention.state.KeyState` of one key chunk, every head, float64.

    ``S`` (heads..., m, dv), ``z`` (heads..., m) and ``c`` (heads...), each head's
    from :func:`favorkern.attention.bidirectional.accumulate_keys`.  Where float32
    outputs may need the float64 fallback (non-negative maps), a head whose keys
    float32's exponent range may have lost is computed again with float64 features:
    the fallback of the output rows then finds them in the state.
    """
    phi = _features(recipe)
    k_block = checked_block(k_block, "K")
    v_block = checked_block(v_block, "V")
    lead = k_block.shape[:-2]
    state = KeyState(
        np.zeros(lead + (phi.n_out, v_block.shape[-1])),
        np.zeros(lead + (phi.n_out,)),
        np.full(lead, -np.inf),
    )
    chunk = feature_chunk_rows(phi.n_out, phi.dtype)
    for idx in _heads_of(k_block):
        k, v = k_block[idx], v_block[idx]
        m = None if m_block is None else np.ascontiguousarray(m_block[idx])
        lost = [] if recipe[3] != phi.dtype else None
        part = accumulate_keys(phi, k, v, m, 0, k.shape[0], chunk, lost=lost)
        if lost:
            wide = _features(recipe, recipe[3])
            k, v = k.astype(wide.dtype), v.astype(wide.dtype)
            rows = feature_chunk_rows(wide.n_out, wide.dtype)
            part = accumulate_keys(wide, k, v, m, 0, k.shape[0], rows)
        state.S[idx], state.z[idx] = part.S, part.z
        state.c[idx] = part.c
    return state


def _merge(*parts):
    """:func:`favorkern.attention.state.merge` of chunk states (float64)."""
    return merge(parts)


def _row_groups(rows, heads=1, state_bytes=0):
    """Ranges ``(a, b)`` of consecutive chunks (of ``rows`` rows each) whose key states
    one task computes: as many chunks as fit in ``DASK_GROUP_ROWS`` rows times ``heads``
    and in ``DASK_GROUP_STATE_BYTES`` of states of ``state_bytes`` each, at least one."""
    state_limit = _config.DASK_GROUP_STATE_BYTES
    max_chunks = max(1, state_limit // state_bytes) if state_bytes > 0 else len(rows)
    groups, start, total = [], 0, 0
    for i, size in enumerate(rows):
        full = (total + size) * heads > _config.DASK_GROUP_ROWS or i - start >= max_chunks
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
    return _GroupPrefixes(_chunk_states(recipe, k_blocks, v_blocks, m_blocks), recipe[3])


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
    """Bidirectional output of one query chunk: ``phi(Q_c) S / phi(Q_c) z`` per head;
    rows float32 loses come from float64, as in memory
    (:func:`~favorkern.attention.plan.fill_lost_rows`)."""
    q_block = checked_block(q_block, "Q")
    out = _emit_rows(recipe, q_block, total, recipe[2])
    # 0 by design: heads with no visible key or only zero values (their S is 0)
    by_design = ~np.asarray(total.S).any(axis=(-2, -1))[..., np.newaxis]
    count, computed = fill_lost_rows(
        recipe[4], out, lambda: _emit_rows(recipe, q_block, total, np.float64),
        by_design=by_design,
    )  # fmt: skip
    warn_lost_rows(count, out, computed)
    return _finite_output(out)


def _emit_rows(recipe, q_block, total, dtype):
    phi = _features(recipe, dtype)
    q_block = q_block.astype(phi.dtype, copy=False)
    out = np.empty(q_block.shape[:-1] + (total.S.shape[-1],), dtype=phi.dtype)
    chunk = feature_chunk_rows(phi.n_out, phi.dtype)
    for idx in _heads_of(q_block):
        q = q_block[idx]
        state = KeyState(total.S[idx].astype(phi.dtype), total.z[idx].astype(phi.dtype), 0.0)
        emit(phi, q, state, out[idx], 0, q.shape[0], chunk)
    return out


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
    stabilizer of the in-memory algorithm, so no output looks at a later chunk.  Rows
    float32 loses come from float64, as in memory
    (:func:`~favorkern.attention.plan.fill_lost_rows`: each row chosen by its own
    output, so no later chunk decides).
    """
    blocks = [
        checked_block(X, name) for X, name in ((q_block, "Q"), (k_block, "K"), (v_block, "V"))
    ]
    out = _causal_rows(recipe, *blocks, prefix, m_block, recipe[2])
    count, computed = fill_lost_rows(
        recipe[4], out,
        lambda: _causal_rows(recipe, *blocks, prefix, m_block, np.float64),
        by_design=_causal_zero_by_design(blocks[2], prefix, m_block),
    )  # fmt: skip
    warn_lost_rows(count, out, computed)
    return _finite_output(out)


def _causal_rows(recipe, q_block, k_block, v_block, prefix, m_block, dtype):
    phi = _features(recipe, dtype)
    q_block, k_block, v_block = (
        X.astype(phi.dtype, copy=False) for X in (q_block, k_block, v_block)
    )
    out = np.empty(q_block.shape[:-1] + (v_block.shape[-1],), dtype=phi.dtype)
    chunk = causal_chunk_rows(phi.n_out)
    for idx in _heads_of(q_block):
        q, k, v = q_block[idx], k_block[idx], v_block[idx]
        initial = _head_state(prefix, idx, phi.dtype)
        m = None if m_block is None else np.ascontiguousarray(m_block[idx])
        causal_chunked(phi, q, k, v, m, out[idx], chunk, 0, q.shape[0], initial)
    return out


def _causal_zero_by_design(v_block, prefix, m_block):
    """Rows ``i`` of a causal chunk that are 0 by design: every key up to ``i`` masked,
    or every value up to ``i`` 0 (the carried state's ``S`` then is 0 too)."""
    valued = v_block.any(axis=-1)  # (heads..., rows)
    if m_block is not None:
        valued &= ~m_block
    seen = np.logical_or.accumulate(valued, axis=-1)
    if prefix is not None:
        seen |= np.asarray(prefix.S).any(axis=(-2, -1))[..., np.newaxis]
    return ~seen


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
        """Reduce state keys by :func:`_merge` in a tree of fan-in ``DASK_REDUCTION_FAN_IN``."""
        fan_in = _config.DASK_REDUCTION_FAN_IN
        return tree_reduce(parts, lambda *group: self.add(_merge, *group), fan_in)

    def exclusive_scan(self, entries):
        """The exclusive prefix state of each of ``entries``, as an entry.

        An entry ``(key, index)`` is entry ``index`` of the result of task ``key``
        (the result itself if ``index`` is None; ``(None, None)``: no keys).  The
        value of the last entry is never read (it may be ``(None, None)``).

        A scan of fan-in ``f = DASK_SCAN_FAN_IN``: groups of ``f`` entries are merged
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

        fan_in = _config.DASK_SCAN_FAN_IN
        if len(entries) <= fan_in:
            return prefixes_of((None, None), entries)
        groups = [entries[i : i + fan_in] for i in range(0, len(entries), fan_in)]
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
        X = as_dask(X, name)
        reject_sparse(X, name)
        if X.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions, got shape {X.shape}")
        check_last_axis(X, name)
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
    projection_matrix=None,
    constants=None,
    key_padding_mask=None,
    random_state=None,
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
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        Kind of the drawn projection (:func:`favorkern.draw_projection`).
    gamma : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    projection_matrix : array-like of shape (m, d), default=None
        Use these projections instead of drawing them (drawn once, on the client).
    constants : dict, sequence of dicts or None, default=None
        Data constants of the map (e.g. ``{"A": -0.1}`` for ``"optimal"``), shared by
        every head; or one dict per head (axis -3; ``H / len(constants)`` consecutive
        heads share a set, as for grouped-query calibration), e.g. those of a fitted
        :class:`favorkern.FavorAttention`:
        ``[att.frozen_constants(h) for h in range(len(att.constants_["A"]))]`` (with
        ``projection_matrix=att.projection_``).  Required by maps with data constants.
    key_padding_mask : array-like or dask array of bool, shape (..., Lk), default=None
        True marks a key to ignore (broadcast as in :func:`favorkern.favor_attention`;
        rechunked to the keys' sequence chunks).  A row whose keys are all ignored
        is 0.
    random_state : int, RandomState instance or None, default=None
        Seed of the drawn projection: the same seed gives the projection of the
        in-memory :func:`favorkern.favor_attention`.

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
    such rows differ by about as much as either result differs from float64; use
    float64 inputs there.  Rows that float32 loses entirely (every feature product
    underflowed, or their normalizer is subnormal) are computed again in float64 and
    cast back, as in memory (key chunks whose keys float32's range may have lost are
    computed with float64 features for that); rows float64 loses too stay 0 with a
    ``FeatureUnderflowWarning`` from the task of their chunk.

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
    fmap = get_feature_map(feature_map)
    if fmap.data_constants and constants is None:
        raise ValueError(
            f"feature_map={fmap.name!r} fits constants on all tokens, which chunks cannot "
            f"do: fit {list(fmap.data_constants)} beforehand and pass them as constants"
        )
    plan = plan_attention(
        fmap, Q.shape[-1], n_components=n_components, projection=projection,
        projection_matrix=projection_matrix, gamma=gamma, causal=causal,
        constants=constants, random_state=random_state,
    )  # fmt: skip
    if plan.head_constants is None:
        return _constants_graph(plan, Q, K, V, mask, dtype, plan.constants)
    pieces = []
    for sl, head_constants in head_groups(
        Q.shape[-3] if Q.ndim >= 3 else None, plan.head_constants
    ):
        head_mask = None if mask is None else mask[sl[:-1]]
        pieces.append(_constants_graph(plan, Q[sl], K[sl], V[sl], head_mask, dtype, head_constants))
    return pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=-3)


def _constants_graph(plan, Q, K, V, mask, dtype, constants):
    """The graph of one set of constants (or none) for every head of the inputs."""
    fmap = plan.feature_map
    constants = check_constants(fmap, constants)
    if fmap.data_constants or type(fmap).prepare is not FeatureMap.prepare:
        # asymmetric maps transform queries and keys blockwise (hybrid random features
        # add a side column: the last axis, one chunk, may change its width)
        width = fmap.prepare(np.zeros((1, Q.shape[-1]), dtype=dtype), "query", constants)
        chunks = Q.chunks[:-1] + ((width.shape[-1],),)
        Q = Q.map_blocks(fmap.prepare, "query", constants, dtype=dtype, chunks=chunks)
        K = K.map_blocks(fmap.prepare, "key", constants, dtype=dtype,
                         chunks=K.chunks[:-1] + ((width.shape[-1],),))  # fmt: skip
    spec = plan.features(dtype, constants).spec
    return _favor_graph(Q, K, V, spec, plan.causal, dtype, mask, fmap)


def _favor_graph(Q, K, V, spec, causal, dtype, mask, feature_map):
    """The attention graph: key states, merges (tree or scan) and outputs.

    Raw tasks in one graph layer rather than one delayed call (and one layer) per
    chunk: building, optimizing and scheduling the graph then costs little per chunk.
    One task computes the key states of consecutive chunks up to ``DASK_GROUP_ROWS``
    rows (:func:`_row_groups`) and merges them (bidirectional) or scans them
    (causal: the prefixes within the group, which each output task merges with the
    state before the group); every query chunk is one output task.
    """
    mask_name = None if mask is None else mask.name
    token = tokenize(spec, dtype, Q.name, K.name, V.name, causal, mask_name)
    name = f"favorkern-features-{tokenize(spec, dtype, feature_map)}"
    # One graph key for the map's spec (its projection): fetched once per worker, the
    # evaluator built once per process.
    # Where float32 outputs can lose rows to their exponent range (non-negative maps),
    # the states (and the prefixes sent to the output tasks) are float64 and hold the
    # keys float32 lost, for the float64 fallback of those rows.
    wide = dtype == np.float32 and feature_map.nonnegative
    state_dtype = np.dtype(np.float64) if wide else dtype
    recipe = dask.delayed((name, spec, dtype, state_dtype, feature_map), name=name)
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
