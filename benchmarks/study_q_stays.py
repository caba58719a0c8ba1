"""Follow ``Q`` as data from ``favor_attention`` to the feature products: its stays.

A script, not a test.  A *stay* is a maximal run of consecutive calls, in one module,
that receive ``Q`` (or an array made from it) as an argument; going back to a module
``Q`` had left starts a new stay (a *return*).  An array is ``Q`` when it shares memory
with a tracked array, or when a call that received ``Q`` returns an array of ``Q``'s
shape first in its results (``astype`` and contiguous copies).  One head, ``dv != d``,
float64, the default map.

Usage::

    PYTHONPATH=. python benchmarks/study_q_stays.py
"""

from __future__ import annotations

import sys

import numpy as np

_GENERATOR = 0x20  # inspect.CO_GENERATOR: a generator's "return" event is a yield


def follow(call, Q):
    """``[(module, function)]`` of the calls that receive ``Q`` during ``call()``."""
    tracked, holders, path = [Q], set(), []

    def is_q(x):
        return isinstance(x, np.ndarray) and any(
            x is t or (x.size and t.size and np.shares_memory(x, t)) for t in tracked
        )

    def profile(frame, event, arg):
        if event == "call":
            module = frame.f_globals.get("__name__", "?")
            if module.startswith("favorkern") and any(map(is_q, frame.f_locals.values())):
                holders.add(frame)
                path.append((module, frame.f_code.co_name))
        elif event == "return" and frame in holders:
            holders.discard(frame)
            if frame.f_code.co_flags & _GENERATOR:
                return
            for value in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(value, np.ndarray) and value.shape[-2:] == Q.shape[-2:]:
                    if not is_q(value):
                        tracked.append(value)
                    break

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return path


def stays(path):
    """Consecutive calls in one module merged: ``[(module, [functions])]``."""
    merged = []
    for module, name in path:
        if merged and merged[-1][0] == module:
            merged[-1][1].append(name)
        else:
            merged.append((module, [name]))
    return merged


def main():
    from favorkern import favor_attention

    rng = np.random.default_rng(0)
    Q, K, V = rng.normal(scale=0.5, size=(3, 256, 16))
    V = V[:, :8]
    for causal in (False, True):
        kwargs = dict(causal=causal, n_components=64, random_state=0)
        favor_attention(Q, K, V, **kwargs)  # compiled and warm
        merged = stays(follow(lambda: favor_attention(Q, K, V, **kwargs), Q))  # noqa: B023
        modules = [module for module, _ in merged]
        returns = sum(module in modules[:i] for i, module in enumerate(modules))
        print(
            f"causal={causal}: {len(merged)} stays in {len(set(modules))} modules, "
            f"{returns} returns"
        )
        for module, names in merged:
            print(f"    {module}: {', '.join(dict.fromkeys(names))}")


if __name__ == "__main__":
    main()
