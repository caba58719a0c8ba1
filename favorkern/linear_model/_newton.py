"""Newton's method for the penalized logistic loss on streamed features.

Each Newton iteration is one pass over the row blocks that sums the loss, the
gradient and the Hessian ``sum_i s_i [z_i, 1]^T D_i [z_i, 1]`` (``D_i`` the
derivative of the softmax probabilities), then solves one system of ``K (m + 1)``
unknowns.  It pays where ``m`` (and ``K``) are small: a pass costs the feature map
plus ``K (K + 1) / 2`` weighted Gram products of ``n (m + 1)^2`` multiply-adds,
and Newton converges in a few passes where L-BFGS takes tens.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, special

__all__ = ["newton_block", "newton_minimize"]

# Armijo's sufficient decrease, and the halvings of the step tried before giving up.
_ARMIJO = 1e-4
_MAX_HALVINGS = 30


def newton_block(Z, labels, weights, coef, intercept, hessian=True):
    """Weighted log-loss of one block, its gradient and (optionally) its Hessian.

    Parameters
    ----------
    Z : ndarray of shape (n_rows, m)
        Features (float64).
    labels : ndarray of shape (n_rows,)
        Class indices in ``0..K-1`` (``0..1`` for one coefficient row).
    weights : ndarray of shape (n_rows,) or None
    coef : ndarray of shape (1, m) or (K, m)
    intercept : ndarray of shape (1,) or (K,)
    hessian : bool, default=True
        ``False``: the loss alone (a line-search pass); the other outputs are None.

    Returns
    -------
    loss : float
    gradient : ndarray of shape (rows * (m + 1),) or None
        Row ``k`` of ``[coef, intercept]`` at ``k (m + 1) .. (k + 1)(m + 1)``.
    hessian : ndarray of shape (rows * (m + 1), rows * (m + 1)) or None

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.linear_model._newton import newton_block
    >>> Z = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss, g, H = newton_block(Z, np.array([0, 1]), None, np.zeros((1, 2)), np.zeros(1))
    >>> round(loss, 6), g.tolist(), H.diagonal().tolist()
    (1.386294, [0.5, -0.5, 0.0], [0.25, 0.25, 0.5])
    """
    logits = Z @ coef.T
    logits += intercept
    rows = np.arange(Z.shape[0])
    if coef.shape[0] == 1:
        u = logits[:, 0]
        target = (labels == 1).astype(np.float64)
        losses = np.logaddexp(0.0, u) - target * u
        probability = special.expit(u)[:, np.newaxis]
        residual = probability - target[:, np.newaxis]
    else:
        norm = special.logsumexp(logits, axis=1)
        losses = norm - logits[rows, labels]
        probability = np.exp(logits - norm[:, np.newaxis])
        residual = probability.copy()
        residual[rows, labels] -= 1.0
    if weights is not None:
        losses = losses * weights
    if not hessian:
        return float(losses.sum()), None, None
    scale = np.ones(Z.shape[0]) if weights is None else weights
    Z1 = np.empty((Z.shape[0], Z.shape[1] + 1))
    Z1[:, :-1] = Z
    Z1[:, -1] = 1.0
    gradient = ((residual * scale[:, np.newaxis]).T @ Z1).ravel()
    return float(losses.sum()), gradient, _block_hessian(Z1, probability, scale)


def _block_hessian(Z1, probability, scale):
    """``sum_i s_i [z_i, 1]^T (diag(p_i) - p_i p_i^T) [z_i, 1]`` by blocks ``(k, l)``.

    One coefficient row (two classes): ``p (1 - p)``; ``K`` rows: the softmax's.
    """
    rows, width = probability.shape[1], Z1.shape[1]
    H = np.empty((rows * width, rows * width))
    for k in range(rows):
        p_k = probability[:, k]
        # diagonal blocks have weights s p_k (1 - p_k) >= 0: a syrk of their root
        root = np.sqrt(scale * p_k * (1.0 - p_k))[:, np.newaxis] * Z1
        block = np.dot(root.T, root)
        H[k * width : (k + 1) * width, k * width : (k + 1) * width] = block
        for l in range(k + 1, rows):
            cross = -(Z1 * (scale * p_k * probability[:, l])[:, np.newaxis]).T @ Z1
            H[k * width : (k + 1) * width, l * width : (l + 1) * width] = cross
            H[l * width : (l + 1) * width, k * width : (k + 1) * width] = cross.T
    return H


def newton_minimize(evaluate, n_rows, width, C, tol, max_iter, weight_sum):
    """Minimize ``C sum_i s_i l_i + |W|^2 / 2`` by Newton steps with backtracking.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(coef, intercept, hessian) -> (loss, gradient, hessian)``, the sums
        of :func:`newton_block` over every row (one pass).
    n_rows, width : int
        Coefficient rows (1 for two classes, else ``K``) and features ``m``.
    C : float
    tol : float
        Stop when the largest entry of the gradient divided by ``C sum_i s_i`` is
        at most ``tol`` (the criterion of the L-BFGS solver).
    max_iter : int
        Most Newton steps.
    weight_sum : float

    Returns
    -------
    params : ndarray of shape (n_rows, width + 1)
        ``[coef, intercept]``.
    n_iter, n_passes : int
    gradient_max : float
        The scaled criterion at the returned point.
    """
    size = width + 1
    params = np.zeros((n_rows, size))
    penalized = np.ones((n_rows, size))
    penalized[:, -1] = 0.0  # the intercepts are not penalized
    penalized = penalized.ravel()
    scale = 1.0 / (C * weight_sum)

    def value(loss, p):
        return C * loss + 0.5 * float(np.vdot(p[:, :-1], p[:, :-1]))

    loss, g, H = evaluate(params[:, :-1], params[:, -1], True)
    passes, n_iter = 1, 0
    while True:
        gradient = C * g + penalized * params.ravel()
        gradient_max = float(np.abs(gradient).max()) * scale
        if gradient_max <= tol or n_iter >= max_iter:
            return params, n_iter, passes, gradient_max
        system = C * H
        system[np.diag_indices_from(system)] += penalized
        step = _solve(system, -gradient, n_rows).reshape(n_rows, size)
        start, slope = value(loss, params), float(gradient @ step.ravel())
        t = 1.0
        for _ in range(_MAX_HALVINGS):
            trial = params + t * step
            # the full step is usually taken: evaluate its Hessian on the same pass
            new = evaluate(trial[:, :-1], trial[:, -1], t == 1.0)
            passes += 1
            # rounding slack: near the optimum the decrease is below float64 resolution
            if value(new[0], trial) <= start + _ARMIJO * t * slope + 1e-13 * abs(start):
                break
            t *= 0.5
        params, n_iter = trial, n_iter + 1
        if new[1] is None:
            new = evaluate(params[:, :-1], params[:, -1], True)
            passes += 1
        loss, g, H = new


def _solve(system, rhs, n_rows):
    """The Newton step.

    With ``K > 1`` rows the loss does not change when a constant is added to every
    intercept: the system is singular along ``v`` (ones on the intercepts) and the
    gradient orthogonal to it.  Adding ``c v v^T`` makes it positive definite without
    changing the step orthogonal to ``v``, the one that keeps the intercepts' sum.
    """
    if n_rows > 1:
        size = system.shape[0] // n_rows
        intercepts = np.arange(size - 1, system.shape[0], size)
        shift = max(1.0, float(np.trace(system)) / system.shape[0])
        system[np.ix_(intercepts, intercepts)] += shift
    try:
        return linalg.solve(system, rhs, assume_a="pos")
    except (linalg.LinAlgError, ValueError):
        return linalg.lstsq(system, rhs, lapack_driver="gelsy")[0]
