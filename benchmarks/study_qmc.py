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
4. **Hybrid random features over angles** (``|x| = |y| = 1``): closed-form relative
   MSE of ``hrf`` against positive and trigonometric features at the same output
   width and at HRF's base width, over 181 angles, with a Monte-Carlo check.

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
    print(f"cosines {cosines}, {trials} trials per kind; ratio = mean relative MSE over the")
    print("pairs of one norm against orthogonal's (the median per-pair ratio beside it)\n")
    print("| d | norm | kind | mean rel. MSE | ratio to orthogonal | median per-pair ratio |")
    print("|---|---|---|---|---|---|")
    for d in dims:
        x, y = rotated_pairs(d, norms, cosines, np.random.default_rng(seed + d))
        ortho, _ = relative_mse("orthogonal", x, y, m, trials, seed)
        rel = {k: relative_mse(k, x, y, m, trials, seed)[0] for k in KINDS if k != "orthogonal"}
        rel["orthogonal"] = ortho
        groups = np.repeat(np.arange(len(norms)), len(cosines))
        for g, r in enumerate(norms):
            # pairs with y = -x have zero MSE for every kind (the estimator is exact)
            sel = (groups == g) & (ortho > 1e-20)
            for kind in KINDS:
                ratio = rel[kind][sel].mean() / ortho[sel].mean()
                per = np.median(rel[kind][sel] / ortho[sel])
                print(f"| {d} | {r} | {kind} | {rel[kind][sel].mean():.3g} | {ratio:.3f} | "
                      f"{per:.3f} |")  # fmt: skip


def part_convergence(d, widths, trials, seed, norms, cosines, plot=None):
    print(f"\n## Convergence in m at d = {d} (relative MSE averaged over the pairs of a norm)")
    x, y = rotated_pairs(d, norms, cosines, np.random.default_rng(seed + 1000 + d))
    groups = np.repeat(np.arange(len(norms)), len(cosines))
    runs = {
        kind: [relative_mse(kind, x, y, m, trials, seed)[0] for m in widths] for kind in KINDS
    }
    tables = {}
    for g, r in enumerate(norms):
        sel = groups == g
        sel &= runs["orthogonal"][0] > 1e-20  # y = -x: every kind is exact
        table = {k: np.array([rel[sel].mean() for rel in runs[k]]) for k in KINDS}
        slopes = {k: np.polyfit(np.log(widths), np.log(table[k]), 1)[0] for k in KINDS}
        tables[r] = (table, slopes)
        print(f"\nnorm |x| = |y| = {r}\n")
        print("| m | " + " | ".join(KINDS) + " |")
        print("|---" * (len(KINDS) + 1) + "|")
        for i, m in enumerate(widths):
            print(f"| {m} | " + " | ".join(f"{table[k][i]:.3g}" for k in KINDS) + " |")
        print("| slope | " + " | ".join(f"{slopes[k]:.2f}" for k in KINDS) + " |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(norms), figsize=(4 * len(norms), 3.8), squeeze=False)
        for ax, r in zip(axes[0], norms, strict=True):
            table, slopes = tables[r]
            for k in KINDS:
                ax.loglog(widths, table[k], "o-", label=f"{k} ({slopes[k]:.2f})")
            ax.set_xlabel("m (features)")
            ax.set_title(f"|x| = |y| = {r}, d = {d}")
            ax.legend(fontsize=8, title="slope", title_fontsize=8)
        axes[0][0].set_ylabel("mean relative MSE (positive features)")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
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


def part_angles(d, width, trials, seed):
    """Hybrid random features against positive and trigonometric over the angle."""
    from favorkern.diagnostics import theoretical_mse
    from favorkern.feature_maps.hrf import hrf_layout

    print(f"\n## Relative MSE over angles, |x| = |y| = 1, d = {d}, iid rows (closed forms)\n")
    angles = np.linspace(0.0, np.pi, 181)
    x = np.zeros((angles.size, d))
    y = np.zeros((angles.size, d))
    x[:, 0] = 1.0
    y[:, 0], y[:, 1] = np.cos(angles), np.sin(angles)
    k2 = np.exp(2 * np.cos(angles))
    m_base = hrf_layout(width)[0]

    def rel(name, n):
        return theoretical_mse(x, y, feature_map=name, n_components=n, projection="gaussian") / k2

    rows = {
        f"positive, m = {width}": rel("positive", width),
        f"trigonometric, m = {width}": rel("trigonometric", width),
        f"hrf (angular), width {width} (base m = {m_base})": rel("hrf", width),
        f"hrf_gaussian, width {width}": rel("hrf_gaussian", width),
        f"positive, m = {m_base}": rel("positive", m_base),
        f"trigonometric, m = {m_base}": rel("trigonometric", m_base),
    }
    base = np.minimum(rows[f"positive, m = {width}"], rows[f"trigonometric, m = {width}"])
    print("| estimator | max over angles | at angle (deg) | angles below both base maps |")
    print("|---|---|---|---|")
    for label, r in rows.items():
        below = np.mean(r[1:-1] < base[1:-1])
        worst = int(np.argmax(r))
        print(f"| {label} | {r.max():.4g} | {np.degrees(angles[worst]):.0f} | {below:.0%} |")
    print(f"\nMonte Carlo check of the hrf closed form (width {width}, {trials} trials):\n")
    print("| angle (deg) | closed form | Monte Carlo | se | mean bias / se |")
    print("|---|---|---|---|---|")
    pick = [0, 30, 60, 90, 120, 150, 180]
    mc = empirical_mse(x[pick], y[pick], feature_map="hrf", n_components=width,
                       projection="gaussian", n_trials=trials, random_state=seed)  # fmt: skip
    closed = theoretical_mse(x[pick], y[pick], feature_map="hrf", n_components=width,
                             projection="gaussian")  # fmt: skip
    for i, a in enumerate(pick):
        if closed[i] == 0:  # exact estimator: the Monte Carlo sees rounding only
            print(f"| {a} | 0 (exact) | {mc.mse[i]:.2g} (rounding) | - | - |")
            continue
        z = (mc.mean[i] - mc.kernel[i]) / mc.mean_se[i]
        print(f"| {a} | {closed[i]:.4g} | {mc.mse[i]:.4g} | {mc.se[i]:.2g} | {z:+.1f} |")


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
    parser.add_argument("--angle-width", type=int, default=256)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["ratio", "convergence", "bias", "angles"]
    )
    args = parser.parse_args(argv)
    start = time.process_time()
    if "ratio" not in args.skip:
        part_ratio(args.dims, args.m, args.trials, args.seed, args.norms, args.cosines)
    if "convergence" not in args.skip:
        part_convergence(args.dims[0], args.widths, args.trials, args.seed, args.norms,
                         args.cosines, args.plot)  # fmt: skip
    if "bias" not in args.skip:
        part_bias(args.dims[0], args.m, args.bias_trials, args.seed)
    if "angles" not in args.skip:
        part_angles(args.dims[0], args.angle_width, args.bias_trials, args.seed)
    print(f"\nCPU time {time.process_time() - start:.1f} s")


if __name__ == "__main__":
    main()
