"""Transform time of every feature map against the bare product and RBFSampler.

Run: ``PYTHONPATH=. python benchmarks/bench_features.py [--n 200000] [--d 64] [--m 256]
[--repeats 7] [--cpu]`` (``--cpu``: CPU seconds of the process instead of wall
seconds, for one-thread figures) and ``... --structured`` for structured (SORF, fast Walsh-Hadamard)
against dense orthogonal projections at d in {64, 256, 1024}.

Prints, per dtype, the median time of each map's ``transform`` (every registered map,
each kernel it estimates) and its ratio to ``RBFSampler.transform`` at the same width
and to the bare product ``X @ W.T`` of the same output width into a fresh array: the
better of BLAS on all threads and row blocks over favorkern's thread pool (BLAS on one
thread each).  The contestants of a dtype are timed round-robin (one run of each in
turn), so the ratios share the machine's load.

``--baseline DIR`` also times each map's ``transform`` from the checkout in ``DIR``
(imported under another name), round-robin with the others: before/after in one
run.  The machine's SIMD level, BLAS core and the elementwise kernels chosen
(:mod:`favorkern._elementwise`; ``FAVORKERN_EXP`` forces one) are printed with
every table.  ``--ideas`` adds variants of the float32 positive map's evaluation
(same rows, same pool, same output), to measure where the time of an exp-type map
goes:

* ``exp K``: the augmented product (natural logits), then the exp kernel ``K`` of
  :data:`favorkern._elementwise.EXP_KERNELS` in natural units;
* ``fused shift``: the bare product ``X W^T``, then ``exp(. - a |x|^2 + log s)``
  in one pass of the chosen kernel (no augmented input);
* ``sub+exp``: the bare product, then numpy's subtract and ``exp`` (two passes);
* ``blocks R``: the augmented product and numpy's ``exp`` over blocks of R rows.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time

import numpy as np
from sklearn.kernel_approximation import RBFSampler
from timing import load_checkout, print_machine, round_robin

from favorkern import PositiveRandomFeatures


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def blocked_product(X, W_t):
    """``X @ W_t`` into a fresh array by row blocks over favorkern's pool (BLAS 1 thread)."""
    from favorkern.feature_maps._evaluate import run_row_blocks

    def run():
        out = np.empty((X.shape[0], W_t.shape[1]), dtype=X.dtype)

        def block(start, stop):
            np.matmul(X[start:stop], W_t, out=out[start:stop])

        run_row_blocks(X.shape[0], W_t.shape[1], X.dtype.itemsize, block)
        return out

    return run


def ideas(X, m):
    """Variants of the float32 positive map's evaluation (see the module docstring)."""
    import threading

    from favorkern._elementwise import EXP_KERNELS, ExpKernel, exp_kernel
    from favorkern.feature_maps import _evaluate as E
    from favorkern.features import RandomFeatures

    spec = RandomFeatures("positive", n_components=m, random_state=0).fit(X[:1000])._spec()
    # natural-log exponents (unit 1: the chosen kernel may take base-2 ones)
    aug = E._augmented_weights(spec, X.dtype)
    chosen = exp_kernel(X.dtype).natural()
    W_t = np.ascontiguousarray(spec.weights.astype(X.dtype).T)
    log_scale = X.dtype.type(spec.log_scale)
    n, d = X.shape

    def variant(kind, rows_per_block=1024, kernel=None):
        def run():
            out = np.empty((n, m), dtype=X.dtype)
            scratch = threading.local()

            def block(a, b):
                Xb, o = X[a:b], out[a:b]
                if kind in ("exp", "blocks"):
                    x = E._augmented_input(b - a, d, "exp", X.dtype, scratch)
                    x[:, :d] = Xb
                    sq = np.einsum("ij,ij->i", Xb, Xb)
                    sq *= X.dtype.type(-spec.sq_coef)
                    x[:, d] = sq
                    np.matmul(x, aug, out=o)
                    if kind == "blocks":
                        np.exp(o, out=o)
                    else:
                        kernel.exp(o)
                    return
                np.matmul(Xb, W_t, out=o)
                shift = np.einsum("ij,ij->i", Xb, Xb)
                shift *= X.dtype.type(spec.sq_coef)
                shift -= log_scale
                if kind == "fused shift":
                    chosen.exp_shifted(o, shift)
                else:
                    o -= shift[:, np.newaxis]
                    np.exp(o, out=o)

            E.run_row_blocks(n, m, X.dtype.itemsize, block, rows_per_block=rows_per_block)
            return out

        return run

    reference = RandomFeatures("positive", n_components=m, random_state=0).fit(X[:1000])
    expected = reference.transform(X[:4096])
    fns = {
        f"idea: exp {name}": variant("exp", kernel=ExpKernel(name).natural())
        for name in EXP_KERNELS
        if not name.endswith("exp2")
    }
    fns.update(
        {
            "idea: fused shift": variant("fused shift"),
            "idea: sub+exp": variant("sub+exp"),
        }
    )
    for rows in (256, 1024, 2048, 4096, 8192):
        fns[f"idea: blocks {rows}"] = variant("blocks", rows)
    for name, fn in fns.items():
        got = fn()[:4096]
        np.testing.assert_allclose(got, expected, rtol=2e-6, err_msg=name)
    return fns


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--structured", action="store_true", help="structured vs dense")
    parser.add_argument("--baseline", default=None, help="checkout whose transforms to time too")
    parser.add_argument("--ideas", action="store_true", help="float32 positive-map variants")
    parser.add_argument("--cpu", action="store_true", help="CPU seconds instead of wall seconds")
    parser.add_argument(
        "--maps", default=None, help="comma-separated map names (default: every registered map)"
    )
    args = parser.parse_args(argv)
    if args.structured:
        return structured(args)

    from threadpoolctl import threadpool_info

    blas = [
        (i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"
    ]
    print(f"n={args.n} d={args.d} m={args.m} cores={os.cpu_count()} blas={blas}")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    clock = "CPU seconds of the process" if args.cpu else "wall seconds"
    print(
        f"median of {args.repeats} runs ({clock}); ratios against baselines timed in the same run\n"
    )
    header = f"{'dtype':<8} {'method':<36} {'time [ms]':>10} {'/ RBFSampler':>13} {'/ bare':>10}"
    print(header)
    print("-" * len(header))
    from favorkern.feature_maps import feature_map_names, get_feature_map
    from favorkern.features import RandomFeatures

    rng = np.random.default_rng(0)
    worst = {}
    base = None
    if args.baseline:
        base = importlib.import_module(load_checkout(args.baseline).__name__ + ".features")
    names = args.maps.split(",") if args.maps else feature_map_names()
    for dtype in (np.float32, np.float64):
        X = rng.normal(scale=0.5 / np.sqrt(args.d), size=(args.n, args.d)).astype(dtype)
        W_t = np.ascontiguousarray(rng.normal(size=(args.m, args.d)).astype(dtype).T)
        rbf = RBFSampler(n_components=args.m, random_state=0).fit(X)
        methods = {
            "bare product, BLAS threads": lambda X=X, W_t=W_t: X @ W_t,
            "bare product, row blocks": blocked_product(X, W_t),
            "RBFSampler": lambda X=X: rbf.transform(X),
        }
        for name in names:
            for kernel in get_feature_map(name).kernels or ("softmax",):
                est = RandomFeatures(name, n_components=args.m, kernel=kernel, random_state=0)
                try:
                    est.fit(X[:1000]).transform(X[:2])
                except ValueError as error:  # a map without one set of features for
                    # queries and keys, or that needs more features at this d
                    if dtype == np.float32:
                        print(f"skipped {name} {kernel}: {str(error).split(':')[0]}")
                    continue
                methods[f"{name} {kernel}"] = lambda X=X, est=est: est.transform(X)
                if base is not None:
                    old = base.RandomFeatures(
                        name, n_components=args.m, kernel=kernel, random_state=0
                    ).fit(X[:1000])
                    methods[f"{name} {kernel} (baseline)"] = lambda X=X, e=old: e.transform(X)
        if args.ideas and dtype == np.float32:
            methods.update(ideas(X, args.m))
        times = round_robin(methods, args.repeats, cpu=args.cpu)
        bare = min(times["bare product, BLAS threads"], times["bare product, row blocks"])
        for name, t in times.items():
            if not name.startswith("bare"):
                worst[(np.dtype(dtype).name, name)] = t / bare
            print(
                f"{np.dtype(dtype).name:<8} {name:<36} {1e3 * t:>10.1f} "
                f"{t / times['RBFSampler']:>13.2f} {t / bare:>10.2f}"
            )
        print_machine()
        print()
    over = {
        k: v
        for k, v in worst.items()
        if v > 1.3 and k[1] != "RBFSampler" and "(baseline)" not in k[1] and "idea" not in k[1]
    }
    print(
        "maps above 1.3x the bare product:",
        ", ".join(f"{d} {n} ({r:.2f})" for (d, n), r in over.items()) or "none",
    )


def structured(args):
    """PositiveRandomFeatures transform: projection='structured' vs 'orthogonal' (dense BLAS).

    The structured map switches to the O(d log d) Walsh-Hadamard kernel from d_pad >= 512
    (``favorkern._config.SORF_MIN_PADDED_DIMS``); the 'forced' column times that
    kernel at every d, to show where it wins.
    """
    from favorkern.feature_maps._evaluate import SorfProjector

    print(f"n={args.n // 10} rows, m = max(256, d); median of {args.repeats} runs")
    header = f"{'dtype':<8} {'d':>5} {'dense [ms]':>11} {'structured [ms]':>16} {'forced FWHT [ms]':>17} {'forced / dense':>15}"
    print(header)
    print("-" * len(header))
    for dtype in (np.float32, np.float64):
        for d in (64, 256, 1024):
            m = max(256, d)
            X = (
                np.random.default_rng(0)
                .normal(scale=0.3 / np.sqrt(d), size=(args.n // 10, d))
                .astype(dtype)
            )
            dense = PositiveRandomFeatures(m, projection="orthogonal", random_state=0).fit(X[:2])
            sorf = PositiveRandomFeatures(m, projection="structured", random_state=0).fit(X[:2])
            spec = sorf._spec()
            signs, factors, _ = sorf._sorf
            forced = type(spec)(
                **{**spec.__dict__, "projector": SorfProjector(signs, factors, sorf._input_scale())}
            )
            from favorkern.feature_maps._evaluate import apply_feature_map

            t_dense = median_time(lambda: dense.transform(X), args.repeats)
            t_sorf = median_time(lambda: sorf.transform(X), args.repeats)
            t_forced = median_time(lambda: apply_feature_map(X, forced), args.repeats)
            print(
                f"{np.dtype(dtype).name:<8} {d:>5} {1e3 * t_dense:>11.1f} {1e3 * t_sorf:>16.1f} "
                f"{1e3 * t_forced:>17.1f} {t_forced / t_dense:>15.2f}"
            )
    print_machine()


if __name__ == "__main__":
    main()
