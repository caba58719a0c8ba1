"""
Causal FAVOR+ attention over 4 million tokens on a dask cluster
================================================================

:func:`favorkern.dask.favor_attention` computes causal attention over a sequence
chunked along its length: each chunk's key state ``(S_c, z_c, c_c)`` (an
``m x dv`` matrix, a vector and a stabilizer) is computed in parallel, an exclusive
prefix scan over those small states gives every chunk the state of all earlier keys,
and then every chunk computes its outputs in parallel.  Nothing of size ``L x L`` or
``L x m x dv`` ever exists, and the workers never see the whole sequence.

Here ``L = 2^22`` tokens, ``d = dv = 64``, ``m = 256`` random features, float32, on
a ``LocalCluster`` of two single-threaded worker processes (numba and favorkern's
feature-map pool pinned to one thread in each, through
:data:`favorkern.dask.WORKER_ENV`).  Q, K and V are generated on the workers (1 GiB
each), the output (1 GiB) stays on the workers: we fetch only its first rows, to
check them against the in-memory :func:`favorkern.favor_attention` of the same
prefix (causal attention of a prefix depends only on that prefix), and a summary.

Printed: wall time, throughput, the check and the peak resident memory of each
worker process.  Run ``python examples/plot_dask_attention.py --log2-length 20`` for
a quicker run.
"""

import argparse
import resource
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client

import favorkern
from favorkern.dask import favor_attention, local_cluster


def peak_rss_mib():
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description="Causal FAVOR+ attention on a dask cluster")
    parser.add_argument("--log2-length", type=int, default=22, help="L = 2^this (default 22)")
    parser.add_argument("--chunk-rows", type=int, default=1 << 16, help="rows per chunk")
    parser.add_argument("--workers", type=int, default=2)
    args, _ = parser.parse_known_args()
    L, D, M = 1 << args.log2_length, 64, 256
    check_rows = min(L, 1 << 14)

    # Start the cluster and build the lazy graph
    # ------------------------------------------
    # The projection is drawn once on the client and shipped to each worker once.

    with (
        local_cluster(
            n_workers=args.workers,
            threads_per_worker=1,
            dashboard_address=None,
            memory_limit="6GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        rng = da.random.default_rng(0)
        chunks = (args.chunk_rows, D)
        Q, K, V = (
            (0.5 * rng.standard_normal((L, D), chunks=chunks, dtype=np.float32)).astype(np.float32)
            for _ in range(3)
        )
        W = favorkern.draw_projection(M, D, random_state=0)
        out = favor_attention(Q, K, V, causal=True, projection_matrix=W)
        print(f"L = 2^{args.log2_length} = {L} tokens, d = dv = {D}, m = {M}, float32")
        print(
            f"{out.numblocks[0]} chunks of {args.chunk_rows} rows, "
            f"{len(out.__dask_graph__())} tasks, {args.workers} workers x 1 thread"
        )

        # Compute: the first rows (for the check) and a summary of all rows, in one pass
        # ------------------------------------------------------------------------------
        start = time.perf_counter()
        head, inputs, mean_square, finite = dask.compute(
            out[:check_rows],
            (Q[:check_rows], K[:check_rows], V[:check_rows]),
            (out.astype(np.float64) ** 2).mean(),
            da.isfinite(out).all(),
        )
        wall = time.perf_counter() - start
        peaks = client.run(peak_rss_mib)

        # Check and report
        # ----------------
        reference = favorkern.favor_attention(*inputs, causal=True, projection_matrix=W)
        error = float(np.abs(head - reference).max() / np.abs(reference).max())
        print(f"wall time {wall:.1f} s ({L / wall / 1e6:.2f} M tokens/s), all finite: {finite}")
        print(f"mean square of the output {mean_square:.4g}")
        print(f"first {check_rows} rows vs in-memory favor_attention: relative error {error:.2e}")
        for number, (address, peak) in enumerate(sorted(peaks.items()), 1):
            print(f"worker {number} ({address}): peak RSS {peak:.0f} MiB")
        print(f"client: peak RSS {peak_rss_mib():.0f} MiB")


# Worker processes are spawned: the guard keeps them from re-running the script.
if __name__ == "__main__":
    main()
