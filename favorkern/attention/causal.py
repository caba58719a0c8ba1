"""Causal linear attention: chunked matrix products or a numba recurrence.

Both carry one :class:`~.state.KeyState` through the sequence.  The key stabilizer
of output ``i`` is the running maximum over keys ``0..i`` only, so no output
depends on the values of a later token, not even through rounding or underflow.
(The chunks follow the sequence from its start, so a prefix computed alone shares
the chunking, but its shorter last chunk takes other product shapes: its rows may
differ from the longer sequence's in the last bits.)

``phi`` is the :class:`~.features.AttentionFeatures` of the call (the feature
function of the paper's ``phi(Q)``, ``phi(K)``), ``m`` its width.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .. import _config
from .._parallel import check_cancelled, executor, n_threads
from .bidirectional import accumulate_keys
from .common import normalize, run_parallel, split
from .features import masked_row_log
from .state import KeyState, exclusive_scan

__all__ = [
    "causal",
    "causal_chunked",
    "causal_chunk_rows",
    "causal_key_features",
]


def causal_key_features(phi, k, mask, start, stop, buf, carried):
    """Causally stabilized key features of rows ``start:stop`` into ``buf``.

    Key ``j`` is divided by ``exp(c_j)`` with ``c_j`` the running maximum over keys
    ``0..j`` (``carried`` is that maximum before ``start``).  Returns ``c`` (float64,
    ``-inf`` while every key so far is masked).
    """
    row_log, shift, masked = masked_row_log(phi, k, mask, start, stop, buf)
    const = np.maximum.accumulate(row_log)
    np.maximum(const, carried, out=const)
    finite = np.where(const > -np.inf, const, 0.0)
    phi.key_finish(buf, row_log, shift, finite)
    if masked is not None:
        buf[masked] = 0.0
    return const


def causal_chunked(
    phi, q, k, v, mask, out, chunk, start=0, stop=None, initial=None, workers=1
) -> KeyState:
    """Causal attention of rows ``start:stop`` of one head by chunked matrix products.

    ``out_c = (phi(Qc) S_c + tril(phi(Qc) phi(Kc)^T) Vc) / (phi(Qc) z_c + tril(...) 1)``
    for chunks ``c`` of ``chunk`` rows, every term rescaled to the running key maximum
    of its own query row, where ``(S_c, z_c)`` is the state of the keys before the
    chunk.  The chunks are taken in groups (:class:`_Groups`), so that the cost per
    chunk is that of its products alone.  ``workers >= 2``: two threads in a
    pipeline, one on the keys of a group while the other maps the next group's
    queries and emits the previous group.  ``initial`` is the
    :class:`~.state.KeyState` of the rows before ``start`` (an empty state if None;
    it is not modified).  Returns the state after row ``stop - 1``.
    """
    dtype = phi.dtype
    n = q.shape[0] if stop is None else stop
    if initial is None:
        state = KeyState.empty(phi.n_out, v.shape[1], dtype)
    else:
        state = initial.astype(dtype).copy()
        state.c = float(state.c)
    target = out
    if not out.flags.c_contiguous:
        out = np.empty(out.shape, dtype=out.dtype)
    group_rows = _config.CAUSAL_PIPELINED_GROUP_ROWS if workers >= 2 else _config.CAUSAL_GROUP_ROWS
    per_group = max(1, group_rows // chunk)
    min_groups = _config.CAUSAL_MIN_PIPELINED_GROUPS
    if workers >= 2:  # short sequences: smaller groups, enough to fill the pipeline
        per_group = max(1, min(per_group, (n - start) // (chunk * min_groups)))
    spans = []  # (first row, chunks, rows per chunk)
    a = start
    while n - a >= chunk:
        spans.append((a, min(per_group, (n - a) // chunk), chunk))
        a += spans[-1][1] * chunk
    if a < n:  # the last, shorter chunk
        spans.append((a, 1, n - a))
    if spans:
        pipelined = workers >= 2 and len(spans) >= min_groups
        rows = max(n_chunks * size for _, n_chunks, size in spans)
        groups = _Groups(phi, q, k, v, mask, out, state, rows, chunk, pipelined)
        if pipelined:
            groups.run_pipelined(spans)
        else:
            groups.run(spans)
    if target is not out:
        target[start:n] = out[start:n]
    return state


class _Groups:
    """Groups of chunks of causal attention for one head, and their buffers.

    A group of ``n`` chunks costs one feature product for its queries and one for its
    keys, batched products for its triangular blocks ``tril(phi(Qc) phi(Kc)^T)``, for
    its chunk states ``phi(Kc)^T [Vc, 1]`` and for the outputs of the states before
    the chunks, and one prefix sum (in place) that turns the chunk states into those
    states: per chunk, the products alone.  Pipelined, the buffers the two threads
    share come in sets (three of query features, two of blocks, states and
    denominators) so that no thread reads what the other writes.
    """

    def __init__(self, phi, q, k, v, mask, out, state, rows, chunk, pipelined):
        self.phi, self.q, self.k, self.v, self.mask, self.out = phi, q, k, v, mask, out
        self.state = state
        dtype, m, dv = phi.dtype, phi.n_out, v.shape[1]
        n_chunks = max(1, rows // chunk)
        sets = (3, 2) if pipelined else (1, 1)
        self.query = [phi.empty(rows) for _ in range(sets[0])]
        self.key = phi.empty(rows)
        self.scores = [np.empty(rows * chunk, dtype=dtype) for _ in range(sets[1])]
        self.inter = np.empty((rows, dv), dtype=dtype)
        self.den_inter = np.empty((rows, 1), dtype=dtype)
        # slot g + 1: chunk g's state; after the prefix sum, slot g: the state before
        # chunk g (slot n: after the last)
        self.S = [np.empty((n_chunks + 1, m, dv), dtype=dtype) for _ in range(sets[1])]
        self.z = [np.empty((n_chunks + 1, m, 1), dtype=dtype) for _ in range(sets[1])]
        self.den = [np.empty((rows, 1), dtype=dtype) for _ in range(sets[1])]
        self.ones = np.ones((rows, 1), dtype=dtype)
        # tiled: a broadcast (chunk, chunk) factor costs an inner loop per chunk
        self.lower = np.tile(np.tril(np.ones((chunk, chunk), dtype=dtype)), (n_chunks, 1, 1))

    def run(self, spans):
        """Every group on the calling thread."""
        for span in spans:
            check_cancelled()  # a whole head is one task: stop within a group
            self.queries(span, 0)
            self.emit(span, 0, 0, self.keys(span, 0, 0))

    def run_pipelined(self, spans):
        """Group ``t``'s keys on the calling thread while a pool thread maps group
        ``t + 1``'s queries and emits group ``t - 1``."""
        pool = executor(n_threads())
        self.queries(spans[0], 0)
        done = [None] * len(spans)

        def other(t):
            if t + 1 < len(spans):
                self.queries(spans[t + 1], (t + 1) % 3)
            if t >= 1:
                self.emit(spans[t - 1], (t - 1) % 3, (t - 1) % 2, done[t - 1])

        for t in range(len(spans) + 1):
            check_cancelled()
            future = pool.submit(other, t)
            try:
                if t < len(spans):
                    done[t] = self.keys(spans[t], t % 3, t % 2)
            finally:
                future.result()

    def queries(self, span, qs):
        """Query features of the group ``span`` into query set ``qs``.

        Always shifted by their row maxima: skipping the shift where it is safe
        (:meth:`~.features.AttentionFeatures.query_window`) would depend on a bound of
        later states, and so let later tokens change the rounding of earlier outputs.
        """
        a, n, chunk = span
        self.phi.queries(self.q[a : a + n * chunk], self.query[qs][: n * chunk])

    def keys(self, span, qs, ss):
        """Key features, triangular blocks, chunk states and their prefix sum of the group
        ``span`` (query set ``qs``, state set ``ss``); returns what :meth:`emit` needs."""
        phi, dtype, m, dv = self.phi, self.phi.dtype, self.phi.n_out, self.v.shape[1]
        a, n, chunk = span
        rows = n * chunk
        keys = self.key[:rows]
        row_log, shift, masked = masked_row_log(phi, self.k, self.mask, a, a + rows, keys)
        const = np.maximum.accumulate(row_log)
        np.maximum(const, self.state.c, out=const)
        finite = np.where(const > -np.inf, const, 0.0)
        phi.key_finish(keys, row_log, shift, finite)
        if masked is not None:
            keys[masked] = 0.0
        q3 = self.query[qs][:rows].reshape(n, chunk, m)
        k3 = keys.reshape(n, chunk, m)
        v3 = self.v[a : a + rows].reshape(n, chunk, dv)
        s3 = self.scores[ss][: rows * chunk].reshape(n, chunk, chunk)
        np.matmul(q3, k3.transpose(0, 2, 1), out=s3)
        if chunk == self.lower.shape[1]:
            s3 *= self.lower[:n]
        else:  # the last, shorter chunk
            s3 *= np.tril(np.ones((chunk, chunk), dtype=dtype))
        if finite[0] != finite[-1]:
            f3 = finite.reshape(n, chunk)
            for g in np.flatnonzero(f3[:, 0] != f3[:, -1]):
                # key j < i was stabilized by c_j <= c_i: bring it to row i's constant,
                # and every key of the chunk to the chunk's last constant for its state
                rel = np.minimum(f3[g][np.newaxis, :] - f3[g][:, np.newaxis], 0.0)
                s3[g] *= np.exp(rel).astype(dtype)
                k3[g] *= np.exp(np.minimum(f3[g] - f3[g, -1], 0.0)).astype(dtype)[:, np.newaxis]
        ones = self.ones[:rows].reshape(n, chunk, 1)
        kt = k3.transpose(0, 2, 1)
        # each chunk's own (K_c')^T V_c and (K_c')^T 1; _prefix sums them into the
        # prefix sums S_i, z_i of Performer eq. 11 at the chunk boundaries
        np.matmul(kt, v3, out=self.S[ss][1 : n + 1])
        np.matmul(kt, ones, out=self.z[ss][1 : n + 1])
        before = self._prefix(ss, const[chunk - 1 :: chunk])
        return const, before, bool(before[0] != const[-1])  # constants only grow

    def _prefix(self, ss, ends):
        """Turn the chunk states into the states before each chunk; returns their
        constants.  ``ends``: the key constant after each chunk."""
        state, n = self.state, len(ends)
        S, z = self.S[ss][: n + 1], self.z[ss][: n + 1]
        S[0], z[0, :, 0] = state.S, state.z
        before = np.empty(n)
        if state.c > -np.inf and ends[-1] == state.c:  # no key raised the maximum
            for g in range(1, n + 1):  # numpy's cumsum over axis 0 is 10x slower
                S[g] += S[g - 1]
                z[g] += z[g - 1]
            before[:] = state.c
        else:
            c = state.c
            for g in range(n):
                before[g] = c
                if ends[g] == -np.inf:  # no key yet: the state stays empty
                    continue
                if c > -np.inf:
                    factor = S.dtype.type(np.exp(c - ends[g]))
                    S[g + 1] += S[g] * factor if factor != 1 else S[g]
                    z[g + 1] += z[g] * factor if factor != 1 else z[g]
                c = float(ends[g])
        state.S[...], state.z[...] = S[n], z[n, :, 0]
        if ends[-1] > -np.inf:
            state.c = float(ends[-1])
        return before

    def emit(self, span, qs, ss, keys):
        """Outputs of the group ``span``: the states before its chunks plus its blocks."""
        dtype, m, dv = self.phi.dtype, self.phi.n_out, self.v.shape[1]
        a, n, chunk = span
        const, before, rescale = keys
        rows = n * chunk
        q3 = self.query[qs][:rows].reshape(n, chunk, m)
        inter, den_inter = self.inter[:rows], self.den_inter[:rows]
        # eq. 11 split at the chunk start: q_i'^T S_i = q_i'^T S_before + the masked
        # in-chunk product tril(Q_c' K_c'^T) V_c (and the same for q_i'^T z_i)
        np.matmul(q3, self.S[ss][:n], out=inter.reshape(n, chunk, dv))
        np.matmul(q3, self.z[ss][:n], out=den_inter.reshape(n, chunk, 1))
        if rescale:
            # the state before chunk g has the constant before[g] <= c_i of its rows
            finite = np.where(const > -np.inf, const, 0.0)
            factor = np.exp(np.repeat(before, chunk) - finite).astype(dtype)
            inter *= factor[:, np.newaxis]
            den_inter *= factor[:, np.newaxis]
        # the blocks' products here, not in keys: it balances the pipeline's stages
        s3 = self.scores[ss][: rows * chunk].reshape(n, chunk, chunk)
        block, den = self.out[a : a + rows], self.den[ss][:rows, 0]
        np.matmul(s3, self.v[a : a + rows].reshape(n, chunk, dv), out=block.reshape(n, chunk, dv))
        np.matmul(
            s3, self.ones[:rows].reshape(n, chunk, 1), out=self.den[ss][:rows].reshape(n, chunk, 1)
        )
        block += inter
        den += den_inter[:, 0]
        normalize(block, den)  # D^-1, D_ii = q_i'^T z_i


def _recurrent_features(phi, q, k, mask, a, b, query_buf, key_buf, carried, queries=True):
    """Features of one chunk for the recurrent kernel, and the per-token decay."""
    size = b - a
    qf, kf = query_buf[:size], key_buf[:size]
    if queries:
        phi.queries(q[a:b], qf)
    const = causal_key_features(phi, k, mask, a, b, kf, carried)
    previous = np.concatenate(([carried], const[:-1]))
    with np.errstate(invalid="ignore"):
        decay = np.exp(previous - const)
    decay[np.isnan(decay)] = 1.0  # no key yet: the state is zero, any factor will do
    return qf, kf, decay, float(const[-1])


def _causal_recurrent(phi, q, k, v, mask, out, chunk, column_blocks, workers):
    """Causal attention of one head by the numba recurrence, columns split in blocks."""
    from .._numba.attention import causal_recurrence

    dtype = phi.dtype
    n, dv = v.shape
    columns = split(dv, column_blocks)
    states = [np.zeros((phi.n_out, c1 - c0), dtype=dtype) for c0, c1 in columns]
    normalizers = [np.zeros(phi.n_out, dtype=dtype) for _ in columns]
    query_buf = phi.empty(chunk, rows=True)
    key_buf = phi.empty(chunk, rows=True)
    value_buf = np.empty((chunk, dv), dtype=dtype)
    carried = -np.inf
    for a in range(0, n, chunk):
        check_cancelled()
        b = min(n, a + chunk)
        if workers > 1:
            # queries on one thread while the keys are mapped on another
            query_task = executor(n_threads()).submit(phi.queries, q[a:b], query_buf[: b - a])
            qf, kf, decay, carried = _recurrent_features(
                phi, q, k, mask, a, b, query_buf, key_buf, carried, queries=False
            )
            query_task.result()
        else:
            qf, kf, decay, carried = _recurrent_features(
                phi, q, k, mask, a, b, query_buf, key_buf, carried
            )
        values = value_buf[: b - a]
        values[...] = v[a:b]
        block = out[a:b]
        run_parallel(
            [
                partial(
                    causal_recurrence,
                    qf,
                    kf,
                    values,
                    decay,
                    states[i],
                    normalizers[i],
                    block,
                    c0,
                    c1,
                )
                for i, (c0, c1) in enumerate(columns)
            ],
            workers,
        )


# Rows per chunk of the chunked algorithm.  Its cost beyond bidirectional attention
# is the triangular blocks, 2 chunk (m + dv) multiply-adds per token, against the
# batched products' efficiency and the chunk states' memory traffic (m dv per chunk),
# which fall with longer chunks.  Measured (d = dv = 64, float32, one thread, time
# against bidirectional attention, L = 16384-65536): 32 rows best up to m = 256 (m =
# 256: 1.46x, against 1.53x at 64 rows and 2.06x for the earlier 256-row chunks taken
# one at a time), 64 rows from m = 512 (m = 1024: 1.61x against 1.86x).
def causal_chunk_rows(n_out) -> int:
    """Rows per chunk of :func:`causal_chunked` for ``n_out`` features (measured rule)."""
    rows = _config.CAUSAL_CHUNK_ROWS
    return rows if n_out <= 256 else 2 * rows


def _causal_scan(phi, q, k, v, mask, out, chunk, workers):
    """Causal attention of one head on ``workers`` threads.

    Two workers: one two-thread pipeline (:func:`causal_chunked`), no key mapped
    twice.  More: the head is split over one contiguous range per thread.  Phase 1
    computes the key state of each range but the last, in parallel; an exclusive
    prefix merge gives each range the state of all earlier keys (its constant is
    their maximum: no future key enters); phase 2 runs the ranges in parallel from
    those states.  (Pipelines inside the ranges would make pool threads wait on pool
    threads, which can deadlock when several calls share the pool.)
    """
    if workers == 2:
        causal_chunked(phi, q, k, v, mask, out, chunk, workers=2)
        return
    ranges = split(q.shape[0], workers)
    parts = run_parallel(
        [partial(accumulate_keys, phi, k, v, mask, a, b, chunk) for a, b in ranges[:-1]],
        workers,
    )
    initials = exclusive_scan(parts, phi.dtype)
    run_parallel(
        [
            partial(causal_chunked, phi, q, k, v, mask, out, chunk, a, b, initial)
            for (a, b), initial in zip(ranges, initials, strict=True)
        ],
        workers,
    )


def causal(phi, heads, out, workers, method) -> None:
    """Causal attention of every (batch, head) of ``heads`` into ``out``.

    ``method="chunked"`` (and ``"auto"``): whole heads per thread when there are at
    least as many heads as workers, else each head as a two-thread pipeline (two
    workers) or over one range of the sequence per thread (more workers, see
    :func:`_causal_scan`); ``"recurrent"``: the numba recurrence.
    """
    if method == "auto":
        method = "chunked"
    if method == "chunked":
        chunk = causal_chunk_rows(phi.n_out)
        if len(heads) >= workers:
            run_parallel(
                [
                    partial(causal_chunked, phi, q, k, v, m, out[idx], chunk)
                    for q, k, v, m, idx in heads
                ],
                workers,
            )
        else:
            for q, k, v, m, idx in heads:
                _causal_scan(phi, q, k, v, m, out[idx], chunk, workers)
        return
    chunk = max(64, _config.RECURRENT_CHUNK_BYTES // (phi.n_out * phi.dtype.itemsize))
    if len(heads) >= workers:
        run_parallel(
            [
                partial(_causal_recurrent, phi, q, k, v, m, out[idx], chunk, 1, 1)
                for q, k, v, m, idx in heads
            ],
            workers,
        )
        return
    for q, k, v, m, idx in heads:
        blocks = max(1, min(workers, v.shape[1]))
        _causal_recurrent(phi, q, k, v, m, out[idx], chunk, blocks, workers)
