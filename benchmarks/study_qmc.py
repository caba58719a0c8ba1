"""Randomized quasi-Monte Carlo projections against orthogonal ones, by Monte Carlo.

Three parts (numpy only):

1. **MSE at one width**: positive features (FAVOR+) at ``m`` outputs, relative MSE
   ``E[(phi(x).phi(y) - k)^2] / k^2`` of ``projection="sobol"``, ``"halton"``,
   ``"gaussian"`` against ``"orthogonal"`` on randomly rotated pairs (each pair
   turned by its own Haar rotation, so no coordinate axis is favoured), for each
   ``d``; the ratio is that of the pair-averaged relative MSEs, with the per-pair
   range beside it.
2. **Convergence in m**: the pair-averaged relative MSE per width and its fitted
   slope in log-log (``-1`` for Monte Carlo rates, steeper for QMC); a plot with
   ``--plot``.
3. **Unbiasedness**: the mean of the estimate against ``k`` in standard errors, for
   the QMC rows as drawn and for the same rows orthogonalized within blocks of
   ``d`` (Gram-Schmidt, norms kept), which is *not* what ``draw_projection`` does.

Usage (from the repository root)::

    python benchmarks/study_qmc.py                     # all parts, default sizes
    python benchmarks/study_qmc.py --trials 400 --plot qmc_convergence.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from favorkern import draw_projection
from favorkern.diagnostics import empirical_mse

KINDS = ("orthogonal", "gaussian", "sobol", "halton")


def rotated_pairs(d, norms, cosines, rng):
    """Pairs ``(x, y)`` of every norm and cosine, each turned by its own random rotation."""
    xs, ys = [], []
    for r in norms:
        for c in cosines:
            x = np.zeros(d)
            y = np.zeros(d)
            x[0] = r
            y[0], y[1] = r * c, r * np.sqrt(max(0.0, 1.0 - c * c))
            q, rr = np.linalg.qr(rng.standard_normal((d, d)))
            q *= np.sign(np.diag(rr))
            xs.append(q @ x)
            ys.append(q @ y)
    return np.array(xs), np.array(ys)


def relative_mse(kind, x, y, m, trials, seed, feature_map="positive"):
    mc = empirical_mse(
        x, y, feature_map=feature_map, n_components=m, projection=kind, n_trials=trials,
        random_state=seed,
    )  # fmt: skip
    k2 = mc.kernel**2
    return mc.mse / k2, mc


def part_ratio(dims, m, trials, seed, norms, cosines):
    print(f"\n## Relative MSE at m = {m}, positive features, randomly rotated pairs")
    print(f"norms {norms}, cosines {cosines}, {trials} trials per kind\n")
    print("| d | kind | mean rel. MSE | ratio to orthogonal | per-pair ratio (min-max) |")
    print("|---|---|---|---|---|")
    for d in dims:
        x, y = rotated_pairs(d, norms, cosines, np.random.default_rng(seed + d))
        ortho, _ = relative_mse("orthogonal", x, y, m, trials, seed)
        for kind in KINDS:
            rel = ortho if kind == "orthogonal" else relative_mse(kind, x, y, m, trials, seed)[0]
            per = rel / ortho
            print(
                f"| {d} | {kind} | {rel.mean():.3g} | {rel.mean() / ortho.mean():.3f} | "
                f"{per.min():.3f}-{per.max():.3f} |"
            )


def part_convergence(d, widths, trials, seed, norms, cosines, plot=None):
    print(f"\n## Convergence in m at d = {d} (pair-averaged relative MSE)\n")
    x, y = rotated_pairs(d, norms, cosines, np.random.default_rng(seed + 1000 + d))
    table = {}
    for kind in KINDS:
        table[kind] = [relative_mse(kind, x, y, m, trials, seed)[0].mean() for m in widths]
    print("| m | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for i, m in enumerate(widths):
        print(f"| {m} | " + " | ".join(f"{table[k][i]:.3g}" for k in KINDS) + " |")
    slopes = {k: np.polyfit(np.log(widths), np.log(table[k]), 1)[0] for k in KINDS}
    print("| slope | " + " | ".join(f"{slopes[k]:.2f}" for k in KINDS) + " |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for k in KINDS:
            ax.loglog(widths, table[k], "o-", label=f"{k} (slope {slopes[k]:.2f})")
        ax.set_xlabel("m (features)")
        ax.set_ylabel("mean relative MSE")
        ax.set_title(f"positive features, d = {d}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        print(f"\nplot: {plot}")


def orthogonalized(W, d):
    """Gram-Schmidt of each block of ``d`` rows of ``W``, each row keeping its norm."""
    out = W.copy()
    for lo in range(0, W.shape[0], d):
        block = W[lo : lo + d]
        q, r = np.linalg.qr(block.T)
        q *= np.sign(np.diag(r))
        out[lo : lo + d] = q.T * np.linalg.norm(block, axis=1)[:, None]
    return out


def part_bias(d, m, trials, seed):
    print(f"\n## Unbiasedness (d = {d}, m = {m}, {trials} independent draws)\n")
    x = np.zeros(d)
    y = np.zeros(d)
    x[0], y[0] = 1.0, 1.0  # an axis-aligned pair: where Sobol's structure is strongest
    x2 = np.zeros(d)
    x2[d - 1] = 1.0
    pairs = [("x = y = e_1", x, y), ("x = y = e_d", x2, x2), ("x = e_1, y = e_d", x, x2)]
    print("| projection | pair | mean / k - 1 | z = (mean - k) / se |")
    print("|---|---|---|---|")
    rng = np.random.RandomState(seed)
    for kind in ("sobol", "halton"):
        draws = np.stack(
            [draw_projection(m, d, projection=kind, random_state=rng) for _ in range(trials)]
        )
        ortho = np.stack([orthogonalized(W, d) for W in draws])
        for label, W in ((kind, draws), (f"{kind} + Gram-Schmidt", ortho)):
            for name, a, b in pairs:
                mc = empirical_mse(a, b, feature_map="positive", n_components=m, projections=W)
                z = (mc.mean - mc.kernel) / mc.mean_se
                print(f"| {label} | {name} | {mc.mean / mc.kernel - 1:+.2e} | {z:+.1f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--bias-trials", type=int, default=2000)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--norms", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--cosines", type=float, nargs="+", default=[1.0, 0.5, 0.0, -0.5, -1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ratio", "convergence", "bias"])
    args = parser.parse_args(argv)
    start = time.process_time()
    if "ratio" not in args.skip:
        part_ratio(args.dims, args.m, args.trials, args.seed, args.norms, args.cosines)
    if "convergence" not in args.skip:
        part_convergence(args.dims[0], args.widths, args.trials, args.seed, args.norms,
                         args.cosines, args.plot)  # fmt: skip
    if "bias" not in args.skip:
        part_bias(args.dims[0], args.m, args.bias_trials, args.seed)
    print(f"\nCPU time {time.process_time() - start:.1f} s")


if __name__ == "__main__":
    main()
