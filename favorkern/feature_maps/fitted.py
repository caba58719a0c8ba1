"""A feature map fitted to data: linear maps of queries and keys before positive features.

**Not an unbiased estimator.**  The map is positive features
``exp(w.x~' - |x~'|^2 / 2) / sqrt(m)`` on ``x~ = T_q q`` (queries) and ``x~ = T_k k``
(keys) with one fixed projection ``W``, where ``T_q`` and ``T_k`` are fitted so that
the linear attention weights ``phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')`` match
the softmax weights on calibration queries and keys (cross-entropy, i.e. an
attention-distillation loss, in the spirit of Hedgehog, Zhang et al. 2024).  After
the fit ``T_q^T T_k`` is no longer the identity: ``phi(q).phi(k)`` estimates a
different kernel, chosen to reproduce the *attention weights* with this ``W``,
not ``exp(q'.k')``.  It can beat unbiased estimators on data like the
calibration data and be worse elsewhere.

The fitted constants include the projection: the one the caller drew (the
transformers and attention pass theirs to ``fit``), around which ``T_q`` and ``T_k``
are fitted.  Features use the constants' projection (the caller's must have its shape).
"""

from __future__ import annotations

import numpy as np

from .._parallel import blas_single_thread
from ._base import FeatureMap, linear_prepare
from .derf import _dense
from .positive import positive_spec

__all__ = ["FittedFeatureMap", "distillation_loss"]


def _unpack(theta, d):
    return theta[: d * d].reshape(d, d), theta[d * d :].reshape(d, d)


def distillation_loss(theta, Q, K, W, target, mask, rows, l2):
    """Cross-entropy of the linear attention weights against ``target``, and its gradient.

    ``theta`` holds ``T_q`` and ``T_k`` (each d x d, raveled); ``Q``, ``K`` are scaled
    inputs (``x' = c x``); ``W`` the projection (m x d); ``target`` the softmax
    weights of the ``rows`` (each row sums to 1 over ``mask``).  Plus
    ``l2 (|T_q - I|^2 + |T_k - I|^2)``.  Returns ``(loss, gradient)``.
    """
    d = Q.shape[1]
    Tq, Tk = _unpack(theta, d)
    m = W.shape[0]
    Xq = Q[rows] @ Tq.T
    Xk = K @ Tk.T
    u = Xq @ W.T
    u -= u.max(axis=1, keepdims=True)  # a per-query constant cancels
    v = Xk @ W.T - 0.5 * np.sum(Xk * Xk, axis=1, keepdims=True)
    v -= v.max()  # one constant for all keys cancels
    phi_q, phi_k = np.exp(u), np.exp(v)
    kernel = (phi_q @ phi_k.T) / m
    kernel_masked = np.where(mask, kernel, 0.0)
    tiny = np.finfo(float).tiny
    Z = kernel_masked.sum(axis=1, keepdims=True) + tiny
    safe = np.maximum(kernel, tiny)
    n = len(rows)
    loss = float(-(target * np.log(safe)).sum() / n + np.log(Z).sum() / n)
    G = (np.where(mask, 1.0 / Z, 0.0) - target / safe) / (n * m)  # dL/dkernel * (1/m)
    grad_u = phi_q * (G @ phi_k)
    grad_v = phi_k * (G.T @ phi_q)
    # v = Xk W^T - |Xk|^2 / 2: dL/dXk = grad_v W - Xk * sum_r grad_v
    grad_xk = grad_v @ W - Xk * grad_v.sum(axis=1, keepdims=True)
    grad_xq = grad_u @ W
    grad_tq = grad_xq.T @ Q[rows]
    grad_tk = grad_xk.T @ K
    eye = np.eye(d)
    loss += l2 * (np.sum((Tq - eye) ** 2) + np.sum((Tk - eye) ** 2))
    grad_tq += 2 * l2 * (Tq - eye)
    grad_tk += 2 * l2 * (Tk - eye)
    return loss, np.concatenate([grad_tq.ravel(), grad_tk.ravel()])


class FittedFeatureMap(FeatureMap):
    """Positive features after linear maps of q and k fitted by attention distillation.

    A kernel fitted to data, **not an unbiased estimator** of ``exp(gamma q.k)``
    (see the module docstring).  ``fit(Q, K, projection=W)`` keeps the caller's
    projection ``W`` (the transformers and attention pass the one they drew from
    their ``n_components``, ``projection`` and ``random_state``; without it the map
    draws its own from the parameters below) and minimizes, with L-BFGS and analytic gradients, the
    cross-entropy between the softmax attention weights of ``Q`` and ``K`` (one
    sequence: query ``i`` and key ``i`` are the same position; causal weights if
    ``causal``) and the linear attention weights of the features, over ``n_rows``
    sampled query rows, plus ``l2`` times the squared distance of ``T_q``, ``T_k``
    from the identity.  At ``T_q = T_k = I`` the map is the positive map with
    ``W``.  Deterministic given ``random_state``.  With one input set (``Y=None``)
    nothing is fitted (the identity maps).

    Parameters
    ----------
    n_components : int, default=256
        Output width of a projection the map draws itself (``fit`` without
        ``projection``).
    causal : bool, default=True
        Fit causal attention weights (keys ``j <= i``).
    n_rows : int, default=256
        Query rows sampled for the loss (all rows if fewer).
    l2 : float, default=1e-3
        Penalty on ``|T - I|^2``.
    max_iter : int, default=100
        L-BFGS iterations.
    projection : {"orthogonal", "gaussian"}, default="orthogonal"
        Kind of a ``W`` the map draws itself.
    random_state : int or None, default=0
        Seed of the sampled rows (and of a ``W`` the map draws itself).
    name : str, default="fitted"

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import FittedFeatureMap
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(2, 64, 8)) * 1.5
    >>> fmap = FittedFeatureMap(n_components=16, max_iter=20, random_state=0)
    >>> c = fmap.fit(Q, K, input_scale=8 ** -0.25)
    >>> c["projection"].shape, bool(c["loss"] < c["initial_loss"])
    ((16, 8), True)
    """

    kernels = ("softmax",)
    data_constants = ("query_transform", "key_transform", "projection")
    fit_takes_projection = True
    constant_shapes = {
        "query_transform": ("d", "d"),
        "key_transform": ("d", "d"),
        "projection": ("m", "d"),
    }
    summary = "positive features after fitted linear maps of q and k: fitted, biased"

    def __init__(self, n_components=256, *, causal=True, n_rows=256, l2=1e-3, max_iter=100,
                 projection="orthogonal", random_state=0, name="fitted"):  # fmt: skip
        self.n_components = int(n_components)
        self.causal = causal
        self.n_rows = int(n_rows)
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.projection = projection
        self.random_state = random_state
        self.name = name

    def fit(self, X, Y=None, *, input_scale=1.0, projection=None):
        # scipy.optimize is imported here: it pulls heavy modules into ``import favorkern``.
        from scipy.optimize import minimize
        from sklearn.utils import check_random_state

        from ..projections import draw_projection

        X = _dense(X, "X")
        Y = X if Y is None else _dense(Y, "Y")
        d = X.shape[1]
        rng = check_random_state(self.random_state)
        if projection is None:
            W = draw_projection(self.n_components, d, projection=self.projection, random_state=rng)
        else:
            W = np.asarray(projection, dtype=np.float64)
            if W.ndim != 2 or W.shape[1] != d:
                raise ValueError(
                    f"projection must have shape (n_components, {d}) for {d}-dimensional "
                    f"inputs, got {W.shape}"
                )
        if Y is X or X.shape[0] == 0 or Y.shape[0] == 0:
            # One input set (a transformer applies one map to all rows, no prepare):
            # the identity maps, i.e. the positive map with W.
            return {"query_transform": np.eye(d), "key_transform": np.eye(d), "projection": W}
        Qs, Ks = X * input_scale, Y * input_scale
        L = Qs.shape[0]
        rows = np.arange(L)
        if L > self.n_rows:
            rows = np.sort(rng.choice(L, size=self.n_rows, replace=False))
        logits = Qs[rows] @ Ks.T
        mask = np.ones_like(logits, dtype=bool)
        if self.causal and Ks.shape[0] == L:
            mask = np.arange(Ks.shape[0])[None, :] <= rows[:, None]
        logits = np.where(mask, logits, -np.inf)
        target = np.exp(logits - logits.max(axis=1, keepdims=True))
        target /= target.sum(axis=1, keepdims=True)
        theta0 = np.concatenate([np.eye(d).ravel(), np.eye(d).ravel()])
        args = (Qs, Ks, W, target, mask, rows, self.l2)
        # Products of a few hundred rows: one BLAS thread is faster (measured 15x under load).
        with blas_single_thread():
            initial = distillation_loss(theta0, *args)[0]
            result = minimize(distillation_loss, theta0, args=args, jac=True, method="L-BFGS-B",
                              options={"maxiter": self.max_iter})  # fmt: skip
        Tq, Tk = _unpack(result.x, d)
        return {"query_transform": Tq, "key_transform": Tk, "projection": W,
                "loss": float(result.fun), "initial_loss": float(initial)}  # fmt: skip

    def prepare(self, X, side, constants):
        return linear_prepare(X, side, constants)

    def spec(
        self,
        projection,
        *,
        n_components,
        input_scale,
        kernel="softmax",
        constants=None,
        draws=None,
        sorf=None,
    ):
        if constants is None:
            return positive_spec(projection, input_scale)
        W = np.asarray(constants["projection"], dtype=np.float64)
        if W.shape != projection.shape:
            raise ValueError(
                f"feature map {self.name!r} was fitted with n_components={W.shape[0]} and "
                f"d={W.shape[1]}, but is used with a projection of shape {projection.shape}"
            )
        return positive_spec(W, input_scale)
