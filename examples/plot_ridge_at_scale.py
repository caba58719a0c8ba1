"""
Kernel ridge regression on any number of rows, in bounded memory
================================================================

:class:`~favorkern.RandomFeatureRidge` fits ridge regression on random features
without ever holding the ``n x m`` feature matrix: it maps the rows block by block
and accumulates the ``m x m`` scatter matrix of the features (and their cross
products with the target), then solves once.  Its memory does not grow with the
number of rows; ``make_pipeline(features, Ridge())`` holds all the features (and
Ridge a centred copy of them).

Left: the peak memory allocated during ``fit`` (numpy's allocations, traced with
:mod:`tracemalloc`) against ``n``.  Right: the predictive mean and the 95%
predictive interval (``predict(X, return_std=True)``, the Bayesian model in
feature space) of the streamed model along one input of ``friedman1``, the other
inputs fixed.

The gallery runs this with ``N_ROWS = 100_000``; ``N_ROWS = 10_000_000`` streams ten
million rows generated chunk by chunk by :func:`favorkern.regression.iter_chunks`
(a few minutes on two cores at ``m = 256``), with the same bounded memory.
"""

import time
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

from favorkern import RandomFeatureRidge, TrigonometricRandomFeatures
from favorkern.regression import iter_chunks

N_ROWS = 100_000  # 10_000_000 streams ten million rows in bounded memory
WIDTH = 256
GAMMA, ALPHA = 0.2, 0.01


def features():
    return TrigonometricRandomFeatures(WIDTH, kernel="rbf", gamma=GAMMA, random_state=0)


def traced_fit(model, X, y):
    """Seconds and peak MiB allocated by ``model.fit(X, y)``."""
    tracemalloc.start()
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


# %%
# Memory against the number of rows
# ---------------------------------
sizes = [12_500, 25_000, 50_000, 100_000]
X_all, y_all = next(iter_chunks("friedman1", n_samples=max(sizes), chunksize=max(sizes)))
memory = {"RandomFeatureRidge": [], "Pipeline(features, Ridge)": []}
for n in sizes:
    X, y = X_all[:n], y_all[:n]
    streamed = RandomFeatureRidge(features(), alphas=(ALPHA,))
    pipeline = make_pipeline(features(), Ridge(ALPHA))
    for name, model in [("RandomFeatureRidge", streamed), ("Pipeline(features, Ridge)", pipeline)]:
        seconds, peak = traced_fit(model, X, y)
        memory[name].append(peak)
        print(f"n = {n:>7}: {name:<26} fit {seconds:5.2f} s, peak {peak:7.1f} MiB")
    gap = np.abs(streamed.predict(X[:1000]) - pipeline.predict(X[:1000])).max()
    print(f"            largest difference of the predictions: {gap:.1e}")

# %%
# Streaming a long data set
# -------------------------
# ``partial_fit`` over chunks of 100_000 generated rows; the first chunk's alpha
# grid is scored by generalized cross-validation on all rows seen.
model = RandomFeatureRidge(features(), alphas=np.logspace(-4, 0, 9))
start = time.perf_counter()
for X, y in iter_chunks("friedman1", n_samples=N_ROWS, chunksize=100_000, random_state=1):
    model.partial_fit(X, y)
print(
    f"streamed {model.statistics_.n_samples} rows in {time.perf_counter() - start:.1f} s; "
    f"alpha_ = {model.alpha_:g}; noise variance {model.noise_variance_:.2f} (the data's is 1, "
    "the rest is the misfit of the width-256 model)"
)

# %%
# The predictive distribution along one input
# -------------------------------------------
grid = np.full((200, 10), 0.5)
grid[:, 3] = np.linspace(-0.5, 1.5, 200)  # x3 outside [0, 1] has no training data
truth = 10 * np.sin(np.pi * 0.5 * 0.5) + 20 * (0.5 - 0.5) ** 2 + 10 * grid[:, 3] + 5 * 0.5
mean, std = model.predict(grid, return_std=True)

figure, (ax_memory, ax_band) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
for name, peaks in memory.items():
    ax_memory.plot(sizes, peaks, marker="o", label=name)
ax_memory.set(xscale="log", yscale="log", xlabel="rows n", ylabel="peak MiB during fit")
ax_memory.set_title(f"width m = {WIDTH}")
ax_memory.legend()
ax_band.fill_between(
    grid[:, 3], mean - 1.96 * std, mean + 1.96 * std, alpha=0.3, label="95% predictive interval"
)
ax_band.plot(grid[:, 3], mean, label="predictive mean")
ax_band.plot(grid[:, 3], truth, "k--", label="noise-free target")
ax_band.axvspan(0, 1, color="0.9", zorder=-1, label="training range")
ax_band.set(xlabel="x3 (other inputs 0.5)", ylabel="y")
ax_band.legend(fontsize="small")
plt.show()
