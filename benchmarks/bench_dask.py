"""Benchmark favorkern.dask.favor_attention on a LocalCluster against the in-memory function.

A script, not a test.  d = dv = 64, m = 256, float32, one head, medians of
``--repeats`` runs after a warm-up.

Table 1, at L = 2^log2-length (default 2^20):

* ``in-memory``: :func:`favorkern.favor_attention` on NumPy arrays in this process
  (favorkern's own thread pool, 2 threads here);
* ``dask, chunk = B``: :func:`favorkern.dask.favor_attention` on a
  ``LocalCluster(processes=True, n_workers=2, threads_per_worker=1)`` (workers started
  with ``favorkern.dask.WORKER_ENV``), Q, K, V already scattered to the workers, the
  output persisted there too (``client.persist`` + ``wait``: no transfer to the
  client); ``graph`` is the client-side time to build the graph (included in
  ``time``);
* ``CPU s``: CPU seconds (user + system) of the run, summed over this process (which
  also hosts the LocalCluster scheduler) and the worker processes; unlike the wall
  time it does not depend on what else runs on the machine.

Table 2, the overhead per chunk: at a fixed L (default 2^16) the total work is
constant, so the growth of the time with the number of chunks is the scheduling
overhead; its least-squares slope is reported per chunk (a chunk costs one output
task; the key states of consecutive chunks up to 2^14 rows share a task).

Usage::

    python benchmarks/bench_dask.py                       # L = 2^20, 3 repeats
    python benchmarks/bench_dask.py --log2-length 18 --repeats 2
    python benchmarks/bench_dask.py --overhead-only --repeats 5   # table 2 only

Run it from the repository root with ``PYTHONPATH=.`` to time this checkout.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

D, M = 64, 256


def process_cpu_seconds():
    """CPU time (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median_time(fn, repeats, cpu_clock=process_cpu_seconds):
    """Median wall and CPU seconds of ``fn()`` after a warm-up call.

    CPU time does not depend on what else runs on the machine (the wall time does, a
    lot, on a shared one); ``cpu_clock`` sums it over the processes involved.
    """
    fn()  # warm-up: imports and first-task costs on the workers
    walls, cpus = [], []
    for _ in range(repeats):
        cpu = cpu_clock()
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_clock() - cpu)
    return float(np.median(walls)), float(np.median(cpus))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2-length", type=int, default=20)
    parser.add_argument("--chunk-log2", type=int, nargs="+", default=[14, 16, 18])
    parser.add_argument("--overhead-log2-length", type=int, default=16)
    parser.add_argument("--overhead-chunks", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overhead-only", action="store_true", help="only table 2")
    args = parser.parse_args()

    import dask.array as da
    from distributed import Client, futures_of, wait

    import favorkern
    from favorkern.dask import favor_attention, local_cluster

    length = 1 << args.log2_length
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((length, D), dtype=np.float32) * 0.5 for _ in range(3))
    W = favorkern.draw_projection(M, D, random_state=0)

    with (
        local_cluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, memory_limit="4GiB"
        ) as cluster,
        Client(cluster) as client,
    ):

        def cluster_cpu_seconds():
            # the scheduler runs in this process (LocalCluster); workers are processes
            return process_cpu_seconds() + sum(client.run(process_cpu_seconds).values())

        def on_cluster(rows, causal, q=Q, k=K, v=V):
            """A timing function for chunks of ``rows``; inputs persisted beforehand."""
            # Scattered once per chunk, then persisted as dask arrays on the workers.
            arrays = []
            for x in (q, k, v):
                blocks = [
                    da.from_delayed(future, (min(rows, len(x) - a), D), dtype=x.dtype)
                    for a, future in zip(
                        range(0, len(x), rows),
                        client.scatter([x[a : a + rows] for a in range(0, len(x), rows)]),
                        strict=True,
                    )
                ]
                arrays.append(da.concatenate(blocks).persist())
            wait(arrays)
            graph_times = []
            seeds = []

            def run():
                # A new seed each run: new graph keys, so no result is reused from a
                # previous run (the projection's cost is the same).
                seeds.append(len(seeds))
                start = time.perf_counter()
                out = favor_attention(*arrays, causal=causal, random_state=seeds[-1])
                graph_times.append(time.perf_counter() - start)
                out = client.persist(out)
                wait(out)
                for future in futures_of(out):
                    if future.status == "error":
                        future.result()  # raises the task's exception
                del out

            return run, graph_times

        print(
            f"L = 2^{args.log2_length}, d = dv = {D}, m = {M}, float32, median of "
            f"{args.repeats}; dask: 2 workers x 1 thread, output persisted on the workers"
        )
        print(
            f"{'mode':<14}{'engine':<24}{'chunks':>7}{'time s':>9}{'graph s':>9}"
            f"{'vs in-mem':>11}{'ns/token':>10}{'CPU s':>8}{'CPU vs':>8}"
        )
        for causal in () if args.overhead_only else (False, True):
            mode = "causal" if causal else "bidirectional"
            memory, memory_cpu = median_time(
                lambda causal=causal: favorkern.favor_attention(
                    Q, K, V, causal=causal, projection_matrix=W
                ),
                args.repeats,
            )
            print(
                f"{mode:<14}{'in-memory (2 threads)':<24}{'-':>7}{memory:9.3f}{'-':>9}"
                f"{1.0:11.2f}{memory / length * 1e9:10.1f}{memory_cpu:8.2f}{1.0:8.2f}"
            )
            for chunk_log2 in args.chunk_log2:
                rows = 1 << chunk_log2
                run, graph_times = on_cluster(rows, causal)
                elapsed, cpu = median_time(run, args.repeats, cluster_cpu_seconds)
                graph = float(np.median(graph_times))
                engine = f"dask, chunk = 2^{chunk_log2}"
                print(
                    f"{mode:<14}{engine:<24}{-(-length // rows):>7}{elapsed:9.3f}"
                    f"{graph:9.3f}{elapsed / memory:11.2f}{elapsed / length * 1e9:10.1f}"
                    f"{cpu:8.2f}{cpu / memory_cpu:8.2f}"
                )

        small = 1 << args.overhead_log2_length
        print()
        print(f"Overhead per chunk at L = 2^{args.overhead_log2_length} (constant total work)")
        print(f"{'mode':<14}{'chunks':>7}{'rows':>8}{'time s':>9}{'graph s':>9}{'CPU s':>8}")
        for causal in (False, True):
            mode = "causal" if causal else "bidirectional"
            counts, times, cpus = [], [], []
            for n_chunks in args.overhead_chunks:
                rows = max(1, small // n_chunks)
                run, graph_times = on_cluster(rows, causal, q=Q[:small], k=K[:small], v=V[:small])
                elapsed, cpu = median_time(run, args.repeats, cluster_cpu_seconds)
                counts.append(-(-small // rows))
                times.append(elapsed)
                cpus.append(cpu)
                print(
                    f"{mode:<14}{counts[-1]:>7}{rows:>8}{elapsed:9.3f}"
                    f"{float(np.median(graph_times)):9.3f}{cpu:8.2f}"
                )
            slope, intercept = np.polyfit(counts, times, 1)
            cpu_slope, _ = np.polyfit(counts, cpus, 1)
            print(
                f"{mode:<14}overhead {slope * 1e3:.2f} ms wall, {cpu_slope * 1e3:.2f} ms CPU "
                f"per chunk (fit over {counts[0]}..{counts[-1]} chunks; wall intercept "
                f"{intercept:.3f} s)"
            )


if __name__ == "__main__":
    main()
