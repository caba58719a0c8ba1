"""Inputs and contexts shared by the hostile tests of several modules."""

import warnings

import numpy as np


def no_warnings():
    """An entered ``catch_warnings`` that makes every warning an error (the caller exits it)."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    return context


def qkv(shape=(2, 32, 8), dv=3, scale=1.0, dtype=np.float64, seed=5):
    """Standard normal ``Q, K`` of ``shape`` (times ``scale``) and ``V`` of width ``dv``."""
    rng = np.random.default_rng(seed)
    Q = (rng.standard_normal(shape) * scale).astype(dtype)
    K = (rng.standard_normal(shape) * scale).astype(dtype)
    V = rng.standard_normal(shape[:-1] + (dv,)).astype(dtype)
    return Q, K, V
