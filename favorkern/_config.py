"""Tuning constants of favorkern: block sizes, thread thresholds, crossovers, fan-ins.

Each constant changes only how fast a result is computed and how much memory it
takes, never the estimate (exact rounding may differ with the blocking, as with any
BLAS).  Each carries the one line of measurement or reasoning behind its value
(one thread, CPU time, AMD EPYC with AVX2 unless stated; the sweeps of
``benchmarks/bench_config.py`` ran at load 11-13 on 2 cores, medians of 5 rounds).
The code reads them at call time, as ``_config.NAME`` inside the function that uses
them, so that :func:`override` reaches every reader::

    from favorkern import _config

    with _config.override(ATTENTION_CHUNK_BYTES=16 * 32 * 8, CAUSAL_CHUNK_ROWS=16):
        ...  # tiny blocks: many chunk boundaries in a short test sequence

A constant compiled into a numba kernel cannot be read at call time and stays in
its kernel's module: the tile of the Walsh-Hadamard transform
(``favorkern/_numba/hadamard.py``).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

__all__ = ["override", "TUNING_NAMES"]

# -- attention ----------------------------------------------------------------------
#: Bytes per feature buffer of one worker (2 MiB, 2048 rows at m = 256 in float32):
#: bidirectional time / its four bare products 1.24 against 1.46 at 512 KiB (L = 8192),
#: 1.14 against 1.19 (L = 65536); fewer, larger products and fewer calls per token
#: outweigh keeping the features in L2 (d = dv = 64, m = 256, float32, one thread).
ATTENTION_CHUNK_BYTES = 1 << 21
#: Feature evaluations (tokens x width) below which FAVOR attention runs on one thread:
#: a thread-pool round trip costs more than it saves there.
ATTENTION_PARALLEL_MIN_WORK = 1 << 18
#: ``method="auto"`` runs exact attention where ``Lq Lk <= this * m (Lq + Lk)``:
#: exact / FAVOR time 0.66 at L = 512, 1.17 at 768 (d = 64, m = 256, float32).
EXACT_ATTENTION_CROSSOVER = 1.3
#: Rows per chunk of causal attention (doubled from m = 512): 1.46x bidirectional time
#: at m = 256 against 1.53x at 64 rows (d = dv = 64, float32, L = 16384-65536).
CAUSAL_CHUNK_ROWS = 32
#: Rows per group of causal chunks on one thread: best at 512-1024 (256: 8% slower;
#: d = 64, m = 256, float32, L = 65536); it bounds the group buffers.
CAUSAL_GROUP_ROWS = 1024
#: Rows per group with two pipelined threads: 3-12% faster than 1024 at L = 2^16..2^18
#: (4096 no better), for about 8 MiB more buffers.
CAUSAL_PIPELINED_GROUP_ROWS = 2048
#: Fewer groups than this leave the pipeline's two stages mostly idle.
CAUSAL_MIN_PIPELINED_GROUPS = 4
#: Feature bytes per chunk of the causal numba recurrence (2 MiB): amortizes one
#: thread-pool round trip per chunk.
RECURRENT_CHUNK_BYTES = 1 << 21
#: Hybrid attention's query rows per block of its far sums: each block's masked
#: product with its own far keys costs rows (m + dv) per row.  32 ran 0.96-0.99x the
#: time of 64 (causal, window 64, d = 64, m = 256, float32, L = 4096-16384, its blocks
#: batched per group).
HYBRID_CHUNK_ROWS = 32
#: Hybrid attention's rows per group of blocks: one feature product per group and its
#: blocks' products batched (as CAUSAL_GROUP_ROWS); bounds the group's buffers.
HYBRID_GROUP_ROWS = 512
#: Hybrid attention's query rows per block of its exact window: each block takes a
#: band of rows + window - 1 keys (bidirectional: rows + 2 (window - 1)); measured
#: as HYBRID_CHUNK_ROWS.
HYBRID_BAND_ROWS = 32
#: A causal hybrid head split over threads: the cost of one key of the state a range
#: builds before its rows, relative to the cost of one row (balances the ranges).
HYBRID_PREFIX_COST = 0.3

# -- exact attention and its error estimate ------------------------------------------
#: Scores per query chunk of exact softmax attention (4 MiB of float32): 2^16 1.36x its
#: time, 2^18 1.06x, 2^22 1.02x (L = 4096, d = dv = 64, float32).
EXACT_CHUNK_SCORES = 1 << 20
#: Scores below which exact attention runs on one thread (the pool costs more; an
#: estimate, not measured).
EXACT_PARALLEL_MIN_SCORES = 1 << 18
#: Scores per block of the exact rows of the error estimate: bounds its extra memory.
ERROR_BLOCK_SCORES = 1 << 22
#: Query rows per causal block of the error estimate (one task each; a causal block
#: reads the keys up to its last row only).
ERROR_CAUSAL_BLOCK_ROWS = 32
#: Keys per task of the error estimate: 64 rows x 4096 keys of float32 scores (1 MiB)
#: stay in cache between the product, the exp and the product with V.
ERROR_KEY_RANGE = 4096
#: Multiply-adds below which the error estimate runs on one thread.
ERROR_PARALLEL_MIN_WORK = 1 << 22

# -- feature transforms and validation -----------------------------------------------
#: Output bytes per row block of a transform: 1 MiB runs 1.31x the bare product, 256 KiB
#: 1.47x (float32, n = 200000, d = 64, m = 256); it stays in L2 between matmul and exp.
TRANSFORM_BLOCK_BYTES = 1 << 20
#: Output elements below which a transform runs on one thread (the pool costs more).
TRANSFORM_PARALLEL_MIN_ELEMENTS = 1 << 17
#: Structured (Walsh-Hadamard) projections beat the BLAS product from this padded
#: dimension on: 0.4x its time at d = 1024, 1.5x at 256 (float32, bench_features.py).
SORF_MIN_PADDED_DIMS = 512
#: Elements per block of the finiteness check: isfinite per 256 KiB block runs
#: 1.3-1.6x faster than min and max of the whole array (2^16 to 2^22 elements).
FINITE_CHECK_BLOCK = 1 << 18

# -- elementwise kernels (favorkern._elementwise) -----------------------------------
#: Exponentials (or squared norms' elements) a call must evaluate before numba's kernels
#: join the timed choice: loading numba costs ~2 s once (what ~2^30 exponentials save);
#: 2^16 is one attention chunk at m = 256 in float32, a 4 x 3 call evaluates 1024.  The
#: path depends on a call's sizes alone, never on whether numba was loaded before it.
NUMBA_MIN_WORK = 1 << 16
#: Elements of the sample each candidate kernel is timed on at first use (a 256 KiB
#: float32 block, in L2 as the evaluators' blocks are); best of 5 rounds each.
KERNEL_TIMING_ELEMENTS = 1 << 16

# -- diagnostics -----------------------------------------------------------------------
#: Elements per temporary array of the closed forms' windowed Poisson sums (32 MiB): a
#: memory bound; 2^20 and 2^24 within 11% of its time (2000 pairs, |z|^2 ~ 128).
VARIANCE_CHUNK_ELEMENTS = 1 << 22
#: Elements per chunk of Monte-Carlo trials (8 MiB): 2^18 1.07x its time, 2^22 1.14x
#: (16 pairs, d = 16, m = 64, 2000 trials).
MONTE_CARLO_CHUNK_ELEMENTS = 1 << 20

# -- ridge -----------------------------------------------------------------------------
#: Float64 feature bytes per row block of the ridge statistics: 32 MiB (4096 rows at
#: m = 2048) keeps the scatter product at the GEMM rate (1024 rows already within 5%).
RIDGE_BLOCK_BYTES = 32 << 20

# -- logistic regression ------------------------------------------------------------
#: Most unknowns K (m + 1) of a Newton step of RandomFeatureLogisticRegression: its
#: Hessian is 128 MiB there and the solve ~2e10 flops (about a second); beyond, L-BFGS.
NEWTON_MAX_UNKNOWNS = 4096

# -- Nyström landmarks (favorkern.nystroem) -------------------------------------------
#: k-means and leverage landmarks are chosen among at most
#: max(NYSTROEM_MIN_CANDIDATES, NYSTROEM_CANDIDATES_PER_LANDMARK * n_components) rows
#: drawn uniformly, so that fit costs O(n_components^2) per candidate at most.
NYSTROEM_CANDIDATES_PER_LANDMARK = 32
NYSTROEM_MIN_CANDIDATES = 8192

# -- dask graphs -----------------------------------------------------------------------
#: Rows of consecutive key chunks per dask task: a task costs ~2 ms besides its work,
#: the key state of 2^14 rows ~14 ms (m = 256, d = dv = 64, LocalCluster of 2 workers).
DASK_GROUP_ROWS = 1 << 14
#: Float64 state bytes a dask group task holds (64 chunk states at m = 256, dv = 64).
DASK_GROUP_STATE_BYTES = 1 << 23
#: Fan-in of the dask tree reduction of key states: a tree level is a hop between
#: workers (tens of ms loaded), a merge of m x dv states microseconds.
DASK_REDUCTION_FAN_IN = 16
#: Fan-in of the dask prefix scan of causal chunk states (same costs as the reduction).
DASK_SCAN_FAN_IN = 16
#: Fan-in of the tree merging ridge statistics: a merge adds two m x m matrices
#: (milliseconds), a tree level costs a hop between workers.
DASK_RIDGE_FAN_IN = 8
#: Attention feature maps kept per worker process, by graph key (each is built once per
#: process from its spec; a few graphs at a time are live).
DASK_FEATURE_MAPS_CACHED = 8

#: Every tuning constant above, by name.
TUNING_NAMES = tuple(
    name for name, value in vars().items() if name.isupper() and isinstance(value, int | float)
)


@contextmanager
def override(**values):
    """Set tuning constants for the duration of a ``with`` block, then restore them.

    For tests (small blocks that put chunk boundaries into short inputs, thresholds
    of 0 that force the threaded paths), not thread-safe: every reader in the process
    sees the new values.

    Parameters
    ----------
    **values
        ``NAME=value`` for names of :data:`TUNING_NAMES`; each value a non-negative
        number of the constant's type (an int where the constant is an int).

    Examples
    --------
    >>> from favorkern import _config
    >>> with _config.override(CAUSAL_CHUNK_ROWS=16):
    ...     _config.CAUSAL_CHUNK_ROWS
    16
    >>> _config.CAUSAL_CHUNK_ROWS
    32
    """
    module = sys.modules[__name__]
    for name, value in values.items():
        if name not in TUNING_NAMES:
            raise TypeError(f"override() got an unknown tuning constant {name!r}")
        kind = type(getattr(module, name))
        if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
            raise TypeError(f"{name} must be {kind.__name__}, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    previous = {name: getattr(module, name) for name in values}
    try:
        for name, value in values.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in previous.items():
            setattr(module, name, value)
