"""
FAVOR+ attention against exact softmax attention
================================================

:func:`favorkern.favor_attention` approximates ``softmax(Q K^T / sqrt(d)) V`` in
time linear in the sequence length ``L``.  Here we measure its per-row error
(:func:`favorkern.diagnostics.attention_error`) against the number ``m`` of random
features, for positive and trigonometric features, and its time against ``L``
next to exact :func:`favorkern.softmax_attention`.
"""

import time
from functools import partial

import matplotlib.pyplot as plt
import numpy as np

from favorkern import FavorAttention, softmax_attention
from favorkern.diagnostics import attention_error

rng = np.random.default_rng(0)
L, d = 1024, 16
sizes = [16, 32, 64, 128, 256]

# %%
# Error against the number of random features
# -------------------------------------------
# Queries and keys with entries ``N(0, sigma^2)``: with small norms every estimator
# converges; with larger ones the trigonometric normalizer can vanish or turn
# negative, and only positive features stay usable.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
for ax, sigma in zip(axes, [0.5, 1.0], strict=True):
    Q, K = rng.normal(scale=sigma, size=(2, L, d))
    V = rng.normal(size=(L, d))
    for features, color in [("positive", "tab:blue"), ("trigonometric", "tab:red")]:
        errors = [
            np.median(
                attention_error(Q, K, V, n_components=m, feature_map=features, random_state=0)
            )
            for m in sizes
        ]
        ax.loglog(sizes, errors, "o-", color=color, label=features)
    ax.set(title=f"sigma = {sigma}", xlabel="output width n_components")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("median relative row error")
axes[0].legend()
plt.show()

# %%
# Time against sequence length
# ----------------------------
# ``d = 64``, ``m = 256``, float32; the fastest of three runs after a warm-up.


def best_time(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


layer = FavorAttention(n_components=256, random_state=0)
lengths = [256, 1024, 4096]
exact_times, favor_times = [], []
for length in lengths:
    Q, K, V = rng.normal(scale=0.5, size=(3, length, 64)).astype(np.float32)
    exact_times.append(best_time(partial(softmax_attention, Q, K, V)))
    favor_times.append(best_time(partial(layer, Q, K, V)))
    print(
        f"L = {length:5d}: exact {exact_times[-1] * 1e3:7.2f} ms, "
        f"FAVOR+ {favor_times[-1] * 1e3:7.2f} ms"
    )

fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
ax.loglog(lengths, exact_times, "o-", color="k", label="exact")
ax.loglog(lengths, favor_times, "s-", label="FAVOR+")
ax.set(xlabel="sequence length L", ylabel="time (s)")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
plt.show()
