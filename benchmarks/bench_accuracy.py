"""Held-out accuracy against the width m: favorkern's features, Nyström landmarks,
scikit-learn's RBFSampler and Nystroem, and exact kernel ridge.

A script, not a test.  Data sets: friedman1/2/3 (``--n-friedman`` rows, noise as
scikit-learn's examples), diabetes (regression); breast cancer, digits, wine
(classification).  Each is split 75/25 (seeded), inputs standardized on the
training rows, regression targets too; one rbf kernel per data set,
``gamma = 1 / (2 d)`` (half scikit-learn's ``"scale"`` on standardized inputs), the
same for every method.

Regression: :class:`favorkern.RandomFeatureRidge` on each map, the penalty chosen by
exact leave-one-out over ``alphas = 10^-6 .. 10^2`` (RidgeCV's criterion), held-out
R^2.  ``exact``: kernel ridge on the whole kernel matrix, the same alphas and
criterion (leave-one-out from one eigendecomposition), where n_train <= 10^4.
Classification: :class:`favorkern.RandomFeatureLogisticRegression`, ``C`` chosen
among ``--Cs`` on a 20% validation split of the training rows, then refitted;
held-out accuracy and log loss.  ``exact``: the same model on Nyström features of
every training row (the exact kernel logistic regression), where n_train <= 2000.

The maps are fitted on all training rows (``batch_size`` = n_train: the first block
is the whole training set).  Fit time: CPU seconds (``time.process_time``) of the
whole fit, selection included, one thread (set the ``*_NUM_THREADS`` variables
before starting, as the benchmarks page says).

Usage::

    python benchmarks/bench_accuracy.py --widths 64 256 1024 --seeds 0
    python benchmarks/bench_accuracy.py --datasets friedman1 digits --widths 64 128
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

REGRESSION = ("friedman1", "friedman2", "friedman3", "diabetes")
CLASSIFICATION = ("breast_cancer", "digits", "wine")
ALPHAS = np.logspace(-6, 2, 9)


def is_classification(dataset):
    return dataset in CLASSIFICATION or dataset.startswith("make_classification")


def load(name, n_friedman, seed):
    from sklearn import datasets

    if name.startswith("friedman"):
        maker = getattr(datasets, "make_" + name)
        noise = {"friedman1": 1.0, "friedman2": 125.0, "friedman3": 0.1}[name]
        return maker(n_samples=n_friedman, noise=noise, random_state=seed)
    return getattr(datasets, "load_" + name)(return_X_y=True)


def methods(m, gamma, seed):
    """Name -> unfitted feature transformer at width m (None: exact)."""
    from sklearn.kernel_approximation import Nystroem, RBFSampler

    from favorkern import (
        NystroemFeatures,
        PositiveRandomFeatures,
        TrigonometricRandomFeatures,
    )

    def trig(frequencies, projection="orthogonal"):
        return TrigonometricRandomFeatures(
            m, kernel="rbf", gamma=gamma, projection=projection, frequencies=frequencies,
            random_state=seed,
        )  # fmt: skip

    return {
        "fk trig paired (orth)": trig("paired"),
        "fk trig distinct (orth)": trig("distinct"),
        "fk trig distinct (struct)": trig("distinct", "structured"),
        "fk positive (orth)": PositiveRandomFeatures(
            m, kernel="rbf", gamma=gamma, random_state=seed
        ),
        "fk Nystroem uniform": NystroemFeatures(
            m, gamma=gamma, landmarks="uniform", random_state=seed
        ),
        "fk Nystroem kmeans": NystroemFeatures(
            m, gamma=gamma, landmarks="kmeans", random_state=seed
        ),
        "fk Nystroem leverage": NystroemFeatures(
            m, gamma=gamma, landmarks="leverage", random_state=seed
        ),
        "sk RBFSampler": RBFSampler(gamma=gamma, n_components=m, random_state=seed),
        "sk Nystroem": Nystroem(gamma=gamma, n_components=m, random_state=seed),
    }


def exact_ridge_r2(X, y, X_test, y_test, gamma):
    """Kernel ridge with the alpha of least leave-one-out error (eigendecomposition)."""
    from sklearn.metrics import r2_score
    from sklearn.metrics.pairwise import rbf_kernel

    mean = y.mean()
    K = rbf_kernel(X, gamma=gamma)
    s, V = np.linalg.eigh(K)
    q = V.T @ (y - mean)
    best = (np.inf, None)
    for alpha in ALPHAS:
        shrink = s / (s + alpha)
        fitted = V @ (shrink * q)
        leverage = np.einsum("ij,j,ij->i", V, shrink, V)
        loo = np.mean(((y - mean - fitted) / (1.0 - leverage)) ** 2)
        if loo < best[0]:
            best = (loo, alpha)
    alpha = best[1]
    dual = V @ (q / (s + alpha))
    return r2_score(y_test, rbf_kernel(X_test, X, gamma=gamma) @ dual + mean), alpha


def regression_run(features, X, y, X_test, y_test):
    from favorkern import RandomFeatureRidge

    model = RandomFeatureRidge(features, alphas=ALPHAS, batch_size=len(X)).fit(X, y)
    return {"r2": float(model.score(X_test, y_test)), "alpha": float(model.alpha_)}


def classification_run(features, X, y, X_test, y_test, Cs, seed):
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    from favorkern import RandomFeatureLogisticRegression

    X_fit, X_val, y_fit, y_val = train_test_split(
        X, y, test_size=0.2, random_state=seed, stratify=y
    )
    scores = []
    for C in Cs:
        model = RandomFeatureLogisticRegression(features, C=C, batch_size=len(X))
        model.fit(X_fit, y_fit)
        scores.append(log_loss(y_val, model.predict_proba(X_val), labels=model.classes_))
    C = Cs[int(np.argmin(scores))]
    model = RandomFeatureLogisticRegression(features, C=C, batch_size=len(X)).fit(X, y)
    proba = model.predict_proba(X_test)
    return {
        "accuracy": float(np.mean(model.classes_[proba.argmax(axis=1)] == y_test)),
        "log_loss": float(log_loss(y_test, proba, labels=model.classes_)),
        "C": float(C),
    }


def run(dataset, widths, seed, n_friedman, Cs, only, exact=True):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from favorkern import NystroemFeatures

    X, y = load(dataset, n_friedman, seed)
    classify = dataset in CLASSIFICATION
    X, X_test, y, y_test = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=y if classify else None
    )
    scaler = StandardScaler().fit(X)
    X, X_test = scaler.transform(X), scaler.transform(X_test)
    if not classify:
        mu, sd = y.mean(), y.std()
        y, y_test = (y - mu) / sd, (y_test - mu) / sd
    gamma = 1.0 / (2 * X.shape[1])
    rows = []
    for m in widths:
        for name, features in methods(m, gamma, seed).items():
            if only and not any(word in name for word in only):
                continue
            start = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if classify:
                    result = classification_run(features, X, y, X_test, y_test, Cs, seed)
                else:
                    result = regression_run(features, X, y, X_test, y_test)
            result.update(method=name, m=m, fit_s=time.process_time() - start)
            rows.append(result)
            print(dataset, seed, json.dumps(result), flush=True)
    start = time.process_time()
    if not exact:
        pass
    elif not classify and len(X) <= 10_000:
        r2, alpha = exact_ridge_r2(X, y, X_test, y_test, gamma)
        rows.append({"method": "exact", "m": len(X), "r2": r2, "alpha": alpha})
    elif classify and len(X) <= 2000:
        # Every row a landmark (the selection split has fewer rows: all of them).
        exact = NystroemFeatures(len(X), gamma=gamma, landmarks="uniform", random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = classification_run(exact, X, y, X_test, y_test, Cs, seed)
        rows.append(dict(method="exact", m=len(X), **result))
    if rows and rows[-1]["method"] == "exact":
        rows[-1]["fit_s"] = time.process_time() - start
        print(dataset, seed, json.dumps(rows[-1]), flush=True)
    for row in rows:
        row.update(dataset=dataset, seed=seed, n_train=len(X), gamma=gamma)
    return rows


def large_classification(n, widths, seed, C, tol, only, solver="lbfgs", n_test=100_000):
    """``make_classification`` with ``n`` training rows: streamed logistic fits, one ``C``.

    The fits stream row blocks (the default ``batch_size``), so that only the input is
    n-sized; no selection of ``C`` (each fit is tens of passes over every row).
    Reports held-out accuracy and log loss, fit CPU seconds and the peak resident
    memory during the fit above that before it (a 5 ms sampling thread).
    """
    from bench_scale import PeakRSS
    from sklearn.datasets import make_classification
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    from favorkern import RandomFeatureLogisticRegression

    X, y = make_classification(
        n_samples=n + n_test, n_features=20, n_informative=10, n_redundant=4, flip_y=0.01,
        random_state=seed,
    )  # fmt: skip
    X, X_test, y, y_test = X[:n], X[n:], y[:n], y[n:]
    scaler = StandardScaler().fit(X)
    X, X_test = scaler.transform(X), scaler.transform(X_test)
    gamma = 1.0 / (2 * X.shape[1])
    dataset = f"make_classification ({n} rows)"
    rows = []
    for m in widths:
        for name, features in methods(m, gamma, seed).items():
            if only and not any(word in name for word in only):
                continue
            model = RandomFeatureLogisticRegression(
                features, C=C, tol=tol, random_state=seed, solver=solver
            )
            with warnings.catch_warnings(), PeakRSS() as rss:
                warnings.simplefilter("ignore")
                start = time.process_time()
                model.fit(X, y)
                fit_s = time.process_time() - start
            proba = model.predict_proba(X_test)
            row = dict(
                dataset=dataset, method=name, m=m, seed=seed, n_train=n, gamma=gamma, C=C,
                accuracy=float(np.mean(model.classes_[proba.argmax(axis=1)] == y_test)),
                log_loss=float(log_loss(y_test, proba, labels=model.classes_)),
                fit_s=fit_s, peak_mb=rss.peak - rss.start, passes=int(model.n_passes_),
                solver=solver,
            )  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summarize(rows):
    """Markdown tables (one per data set and score) and the comparisons with scikit-learn."""
    import collections

    lines = []
    by_dataset = collections.defaultdict(list)
    for row in rows:
        by_dataset[row["dataset"]].append(row)
    for dataset, group in by_dataset.items():
        classify = is_classification(dataset)
        widths = sorted({r["m"] for r in group if r["method"] != "exact"})
        exact = [r for r in group if r["method"] == "exact"]
        for score in ("accuracy", "log_loss") if classify else ("r2",):
            cells = collections.defaultdict(list)
            times = collections.defaultdict(list)
            peaks = collections.defaultdict(list)
            for r in group:
                cells[r["method"], r["m"]].append(r[score])
                times[r["method"], r["m"]].append(r.get("fit_s", np.nan))
                peaks[r["method"], r["m"]].append(r.get("peak_mb", np.nan))
            names = list(dict.fromkeys(r["method"] for r in group if r["method"] != "exact"))
            n_train = group[0]["n_train"]
            memory = any("peak_mb" in r for r in group)
            unit = "fit CPU s, peak MB above the input" if memory else "fit CPU s"
            lines += [f"\n{dataset} (n_train {n_train}), {score}, median over seeds ({unit})\n"]
            lines += ["| method | " + " | ".join(f"m={m}" for m in widths) + " |"]
            lines += ["|---" * (len(widths) + 1) + "|"]
            for name in names:
                row = [
                    f"{np.median(cells[name, m]):.4f} ({np.median(times[name, m]):.2f}"
                    + (f", {np.median(peaks[name, m]):.0f})" if memory else ")")
                    if cells[name, m]
                    else "-"
                    for m in widths
                ]
                lines += [f"| {name} | " + " | ".join(row) + " |"]
            if exact:
                e = exact[0]
                lines += [f"| exact (n={e['m']}) | {np.median([x[score] for x in exact]):.4f} "
                          f"({np.median([x['fit_s'] for x in exact]):.2f}) |"]  # fmt: skip
            better = (lambda a, b: a <= b) if score == "log_loss" else (lambda a, b: a >= b)
            for m in widths:
                med = {n: float(np.median(cells[n, m])) for n in names if cells[n, m]}
                fk = {n: v for n, v in med.items() if n.startswith("fk")}
                best = min(fk, key=fk.get) if score == "log_loss" else max(fk, key=fk.get)
                sk = {n: v for n, v in med.items() if n.startswith("sk")}
                met = all(better(fk[best], v) for v in sk.values())
                lines += [f"  m={m}: best favorkern {best} {fk[best]:.4f}; "
                          + ", ".join(f"{n} {v:.4f}" for n, v in sk.items())
                          + f" -> {'met' if met else 'NOT met'}"]  # fmt: skip
    return "\n".join(lines)


def paired_verdicts(rows, z=2.0):
    """Per data set and width: the best favorkern method against each scikit-learn one.

    The best favorkern method of a cell is the one with the best mean score over the
    seeds; against each scikit-learn method the per-seed differences (same split,
    same data, same seed) give a mean and its standard error.  Verdict: ``ahead``
    when the mean difference favours favorkern by more than ``z`` standard errors,
    ``behind`` when it favours scikit-learn by more, else ``tie`` (within noise).
    Choosing the best of several methods on the same seeds favours it slightly: a
    ``tie`` is not evidence of being ahead.
    """
    import collections

    lines = []
    scores = collections.defaultdict(dict)  # (dataset, score, m, method) -> {seed: value}
    for row in rows:
        if row["method"] == "exact":
            continue
        kinds = ("accuracy", "log_loss") if is_classification(row["dataset"]) else ("r2",)
        for score in kinds:
            scores[row["dataset"], score, row["m"], row["method"]][row["seed"]] = row[score]
    cells = sorted({key[:3] for key in scores})
    lines += [
        "| data set | score | m | best favorkern (mean) | vs | mean difference +- s.e. "
        "| seeds | verdict |",
        "|---" * 8 + "|",
    ]
    tally = collections.Counter()
    for dataset, score, m in cells:
        sign = -1.0 if score == "log_loss" else 1.0  # > 0: favorkern better
        methods_here = {key[3]: scores[key] for key in scores if key[:3] == (dataset, score, m)}
        fk = {n: v for n, v in methods_here.items() if n.startswith("fk")}
        if not fk:
            continue
        best = max(fk, key=lambda n: sign * np.mean(list(fk[n].values())))
        for name, values in methods_here.items():
            if not name.startswith("sk"):
                continue
            seeds = sorted(set(values) & set(fk[best]))
            diff = sign * np.array([fk[best][s] - values[s] for s in seeds])
            mean = float(diff.mean())
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else np.inf
            # equal to rounding (the same landmarks) is a tie whatever the spread
            margin = max(z * se, 1e-9)
            verdict = "ahead" if mean > margin else "behind" if mean < -margin else "tie"
            tally[verdict] += 1
            lines += [
                f"| {dataset} | {score} | {m} | {best} ({np.mean(list(fk[best].values())):.4f}) "
                f"| {name} ({np.mean([values[s] for s in seeds]):.4f}) "
                f"| {sign * mean:+.4f} +- {se:.4f} | {len(seeds)} | {verdict} |"
            ]
    lines += [f"\nverdicts: {dict(tally)} (differences favorkern - scikit-learn)"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(REGRESSION + CLASSIFICATION))
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--n-friedman", type=int, default=5000)
    parser.add_argument("--Cs", nargs="+", type=float, default=[1.0, 10.0, 100.0])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of method names")
    parser.add_argument(
        "--large", type=int, default=None, metavar="N",
        help="instead: make_classification with N training rows, streamed fits",
    )  # fmt: skip
    parser.add_argument("--C", type=float, default=1.0, help="C of the --large fits")
    parser.add_argument("--tol", type=float, default=1e-6, help="tol of the --large fits")
    parser.add_argument("--solver", default="lbfgs", help="solver of the --large fits")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact models")
    parser.add_argument("--out", default=None, help="write the rows as JSON lines here")
    parser.add_argument("--summarize", nargs="+", default=None, help="JSON lines files: tables")
    args = parser.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for path in args.summarize for line in open(path)]
        print(summarize(rows))
        print(paired_verdicts(rows))
        return
    print(f"load {os.getloadavg()}", flush=True)
    rows = []
    if args.large:
        for seed in args.seeds:
            rows += large_classification(
                args.large, args.widths, seed, args.C, args.tol, args.only, args.solver
            )
            if args.out:
                with open(args.out, "w") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"load {os.getloadavg()}", flush=True)
        return
    for dataset in args.datasets:
        for seed in args.seeds:
            rows += run(
                dataset,
                args.widths,
                seed,
                args.n_friedman,
                args.Cs,
                args.only,
                exact=not args.no_exact,
            )
            if args.out:
                with open(args.out, "w") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
