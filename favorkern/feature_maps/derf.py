"""Dense-exponential random features, full-matrix form (FAVOR#: ADERF and SDERF).

A dense-exponential random feature (Likhosherstov et al., "FAVOR#: Sharp Attention
Kernel Approximations via New Classes of Positive Random Features", 2023) is

    f(w, x) = D exp(w^T A w + w^T B x + x^T C x),   w ~ N(0, I_d),

unbiased for ``exp(x'.y')`` when ``8A < I``, ``B1^T (I - 4A)^-1 B2 = I``,
``C_k = -B_k^T (I - 4A)^-1 B_k / 2`` and ``D = det(I - 4A)^(1/4)``.  Because ``w``
is rotation invariant, ``A`` can be taken diagonal; then with
``x~ = (I - 4A)^(-1/2) B1 x`` and ``y~ = (I - 4A)^(-1/2) B2 y`` (so ``x~.y~ = x.y``)
every such pair of maps is a per-dimension GERF on linearly transformed inputs:

    phi(x~)_j = exp(sum_l a_l w_jl^2 + sum_l sqrt(1 - 4 a_l) w_jl x~_l - |x~|^2 / 2
                    + sum_l log(1 - 4 a_l) / 4) / sqrt(m).

Both maps here are of that form and differ in the transform:

* ``"sderf"`` (symmetric, ``B1 = B2``): the transform is the rotation into the
  eigenbasis of ``P = E_pairs[(x' + y')(x' + y')^T]`` (second moments plus the
  cross term of the means), and ``a_l`` is the one-dimensional optimal GERF
  parameter at the eigenvalue ``p_l``.  Over rotations this is the minimizer of the
  pair-averaged log second moment (the diagonal of a rotated ``P`` is majorized by
  its eigenvalues and the per-direction optimum is concave in ``p``).
* ``"aderf"`` (asymmetric): queries go through ``T``, keys through ``T^-T``, with
  ``T`` the balancing transform that makes the second moments of both sides the same
  diagonal matrix (the singular values of ``M_x^(1/2) M_y^(1/2)``), followed by the
  SDERF rotation of the transformed pairs.  This minimizes
  ``tr(T M_x T^T) + tr(T^-T M_y T^-1)``, the mean of ``|x~|^2 + |y~|^2``.

The log second moment averaged over pairs, which both fits minimize, is
``sum_l [log(1 - 4a_l) - log(1 - 8a_l)/2 + p_l / (1 - 8a_l)] + 2 mean(x.y)``.

The reference implementation in google-research (``imp/max/modeling/
kernel_transformation.py``) differs in three places, checked against the paper's
constraints: its asymmetric rescaling multiplies queries by
``(sum q^2 / sum k^2)^(1/4)`` (the inverse of the balancing factor), its symmetric
map computes the eigenvalues from unscaled inputs (missing the ``d^(-1/2)`` logit
scale), and it drops ``D`` (harmless in normalized attention only).

Both maps estimate the softmax kernel only, are non-negative and unbiased for any
fitted constants (unbiasedness is algebraic; the fit only sets the variance).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._parallel import blas_single_thread
from ._base import FeatureMap, check_constants
from ._evaluate import FeatureMapSpec, sorf_projector
from ._variance import BasisPairGeometry, derf_log_rel_var, log_expm1
from .optimal import optimal_gerf_a

__all__ = [
    "SderfFeatureMap",
    "AderfFeatureMap",
    "diagonal_gerf_spec",
    "derf_log_second_moment",
    "balancing_transform",
]

# Relative ridge added to second-moment matrices before square roots and inverses: a
# direction that carries no data gets a finite (large but bounded) rescaling.
DEFAULT_RIDGE = 1e-6


def _dense(X, name):
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, d), got shape {X.shape}")
    return X


def diagonal_gerf_spec(projection, input_scale, a, rotation=None, sorf=None) -> FeatureMapSpec:
    """Per-dimension GERF on ``x~ = rotation @ x``: the evaluator spec of a DERF.

    ``a`` has one entry per dimension (all ``< 1/8``); ``rotation`` is orthogonal
    (``|x~| = |x|``, so the ``-|x~|^2/2`` term is the evaluator's ``sq_coef``).
    """
    m, d = projection.shape
    a = np.asarray(a, dtype=np.float64).reshape(d)
    b = np.sqrt(1.0 - 4.0 * a)
    rows = projection * b
    # log s_j = sum_l a_l w_jl^2 + sum_l log(1 - 4 a_l) / 4 - log(m) / 2, in the exponent.
    log_scale = (projection**2) @ a + 0.25 * np.sum(np.log1p(-4.0 * a)) - 0.5 * np.log(m)
    weights = rows * input_scale if rotation is None else (rows @ rotation) * input_scale
    bound = float(np.max(np.einsum("ij,ij->i", rows, rows))) / 2.0 if m else 0.0
    return FeatureMapSpec(
        weights,
        "exp",
        sq_coef=0.5 * input_scale**2,
        log_scale=log_scale,
        logit_bound=bound,
        # The fast transform applies W itself: only without a rotation or a tilt of W.
        projector=sorf_projector(sorf, input_scale)
        if rotation is None and np.all(b == 1)
        else None,
    )


def _pair_moment(X, Y):
    """``E_{i,j}[(x_i + y_j)(x_i + y_j)^T]`` over all pairs of rows."""
    Mx = X.T @ X / X.shape[0]
    My = Y.T @ Y / Y.shape[0]
    cross = np.outer(X.mean(axis=0), Y.mean(axis=0))
    P = Mx + My + cross + cross.T
    return 0.5 * (P + P.T)


def _rotation_and_a(X, Y, input_scale):
    """Eigen-rotation (rows = eigenvectors) of the pair moment and the per-direction A*."""
    P = _pair_moment(X, Y) * input_scale**2
    eigenvalues, vectors = np.linalg.eigh(P)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    return np.ascontiguousarray(vectors.T), optimal_gerf_a(eigenvalues, 1)


def balancing_transform(X, Y, ridge=DEFAULT_RIDGE):
    """``T`` with ``T M_x T^T = T^-T M_y T^-1`` diagonal; returns ``(T, T^-T)``.

    ``M_x = X^T X / n_x`` and ``M_y`` are the second moments (plus a relative
    ``ridge`` times their mean eigenvalue).  With ``M_x = Q1 L1 Q1^T``,
    ``M_y = Q2 L2 Q2^T`` and ``L1^(1/2) Q1^T Q2 L2^(1/2) = U S V^T``:
    ``T = S^(1/2) U^T L1^(-1/2) Q1^T``, ``T^-T = S^(-1/2) U^T L1^(1/2) Q1^T``, and both
    transformed second moments equal ``S``.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps.derf import balancing_transform
    >>> rng = np.random.default_rng(0)
    >>> X, Y = rng.normal(size=(2, 200, 3)) * [[5.0, 1.0, 0.2]]
    >>> T, Tk = balancing_transform(X, Y)
    >>> bool(np.allclose(T.T @ Tk, np.eye(3)))       # x.y is unchanged
    True
    """

    def moment(Z):
        M = Z.T @ Z / Z.shape[0]
        M = 0.5 * (M + M.T)
        return M + ridge * max(np.trace(M) / M.shape[0], np.finfo(float).tiny) * np.eye(len(M))

    l1, q1 = np.linalg.eigh(moment(X))
    l2, q2 = np.linalg.eigh(moment(Y))
    l1, l2 = np.maximum(l1, np.finfo(float).tiny), np.maximum(l2, np.finfo(float).tiny)
    root1 = np.sqrt(l1)
    U, S, _ = np.linalg.svd((root1[:, None] * (q1.T @ q2)) * np.sqrt(l2)[None, :])
    S = np.maximum(S, np.finfo(float).tiny)
    left = U.T * np.sqrt(S)[:, None]
    T = (left / root1[None, :]) @ q1.T
    T_key = ((U.T / np.sqrt(S)[:, None]) * root1[None, :]) @ q1.T
    return T, T_key


def derf_log_second_moment(x, y, constants, input_scale, kind):
    """``log E[(phi(x).phi(y))^2]`` for one projection row (iid ``w``), per pair.

    ``Var1 = exp(this) - exp(2 x'.y')``; the MSE of ``m`` iid rows is ``Var1 / m``
    (:func:`favorkern.diagnostics.theoretical_mse` gives it in log space).  Per
    direction ``l`` of the transformed, rotated, scaled pair ``(u, v)``:
    ``log(1 - 4a) - log(1 - 8a)/2 + 2(1 - 4a)(u + v)^2/(1 - 8a) - u^2 - v^2``.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps.derf import derf_log_second_moment
    >>> c = {"rotation": np.eye(2), "A": np.zeros(2)}   # positive features
    >>> x, y = np.array([0.5, 0.0]), np.array([0.0, 0.5])
    >>> bool(np.isclose(derf_log_second_moment(x, y, c, 1.0, "sderf")[0], 0.5))
    True
    """
    fmap = SderfFeatureMap() if kind == "sderf" else AderfFeatureMap()
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    geometry = fmap.pair_geometry(x, y, input_scale**2, constants)
    return 2.0 * geometry.ip + derf_log_rel_var(geometry.z, np.asarray(constants["A"]))


# Tolerance of the checks that a given rotation is orthogonal and that the key
# transform is the inverse transpose of the query transform (fitted constants meet
# both to rounding; beyond it the features would estimate another kernel).
_CONSTANT_RTOL = 1e-6


def _check_square(constants, key, d, name):
    M = np.asarray(constants[key], dtype=np.float64)
    if M.shape != (d, d):
        raise ValueError(
            f"constant {key!r} of feature map {name!r} must have shape ({d}, {d}) for "
            f"{d}-dimensional inputs, got {M.shape}"
        )
    return M


def _off_identity(M):
    return float(np.max(np.abs(M - np.eye(len(M))))) if M.size else 0.0


class SderfFeatureMap(FeatureMap):
    """SDERF (FAVOR#, symmetric): per-direction GERF in the eigenbasis of the pair moment.

    ``fit(Q, K)`` sets the rotation ``R`` (rows: eigenvectors of
    ``E[(q' + k')(q' + k')^T]`` over all pairs) and ``A`` (one entry per eigenvector:
    the one-dimensional optimal GERF parameter at its eigenvalue), in
    ``O(L d^2 + d^3)``.  Queries and keys go through the same map, so it also serves
    one input set (:class:`favorkern.RandomFeatures`).  Unbiased for every fitted
    ``R`` and ``A``; only the variance depends on the fit.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import get_feature_map
    >>> rng = np.random.default_rng(0)
    >>> Q = rng.normal(size=(100, 4)) * [2.0, 1.0, 0.5, 0.1]
    >>> c = get_feature_map("sderf").fit(Q, Q, input_scale=0.5)
    >>> c["rotation"].shape, bool(np.all(c["A"] <= 0))
    ((4, 4), True)
    """

    name = "sderf"
    kernels = ("softmax",)
    data_constants = ("rotation", "A")
    constant_shapes = {"rotation": ("d", "d"), "A": ("d",)}
    summary = "SDERF (FAVOR#): GERF per eigendirection of the pair moment, unbiased"

    def fit(self, X, Y=None, *, input_scale=1.0):
        X = _dense(X, "X")
        Y = X if Y is None else _dense(Y, "Y")
        if X.shape[0] == 0 or Y.shape[0] == 0:
            return {"rotation": np.eye(X.shape[1]), "A": np.zeros(X.shape[1])}
        with blas_single_thread():
            rotation, a = _rotation_and_a(X, Y, input_scale)
        return {"rotation": rotation, "A": a}

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
        d = projection.shape[1]
        if constants is None:
            return diagonal_gerf_spec(projection, input_scale, np.zeros(d), sorf=sorf)
        return diagonal_gerf_spec(
            projection, input_scale, constants["A"], np.asarray(constants["rotation"])
        )

    def checked_constants(self, constants, d) -> dict:
        """Fitted ``constants`` validated for ``d``-dimensional inputs (a ``ValueError`` else).

        ``rotation`` must be an orthogonal ``d x d`` matrix and ``A`` hold ``d``
        entries below 1/8 (where the variance is finite); see also
        :meth:`AderfFeatureMap.checked_constants`.
        """
        constants = check_constants(self, constants, d)
        R = _check_square(constants, "rotation", d, self.name)
        if _off_identity(R @ R.T) > _CONSTANT_RTOL:
            raise ValueError(
                f"constant 'rotation' of feature map {self.name!r} must be an orthogonal "
                f"matrix (R R^T = I), got |R R^T - I|_max = {_off_identity(R @ R.T):.3g}"
            )
        a = np.asarray(constants["A"], dtype=np.float64)
        if a.shape != (d,):
            raise ValueError(
                f"constant 'A' of feature map {self.name!r} must have shape ({d},), got {a.shape}"
            )
        if np.any(a >= 0.125):
            raise ValueError(
                f"constant 'A' of feature map {self.name!r} must be < 1/8 in every entry "
                f"(finite variance), got max {a.max()}"
            )
        return constants

    def pair_geometry(self, x, y, gamma, constants):
        """:class:`~favorkern.feature_maps._variance.BasisPairGeometry` in the fitted basis.

        The pairs go through :meth:`prepare`, then their scaled sums are expressed in
        the basis of the rows of ``rotation``, where the features are a GERF per
        direction with parameter ``A[l]``.
        """
        constants = self.checked_constants(constants, x.shape[1])
        x, y = self.prepare(x, "query", constants), self.prepare(y, "key", constants)
        return BasisPairGeometry.of(x, y, gamma, basis=constants["rotation"])

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        # Var1 / SM^2 = e^t - 1 with t a sum over the basis directions (:ref:`theory-favor-sharp`);
        # iid rows only (closed_form_projections), so MSE = Var1 / m.
        t = derf_log_rel_var(geometry.z, np.asarray(constants["A"], dtype=np.float64))
        return 2.0 * geometry.ip + log_expm1(t) - np.log(m)

    def closed_form_projections(self, norms):
        # Orthogonal blocks keep Var1 / m and add a same-block covariance that, for
        # unequal entries of A, is a Fisher-Bingham-type integral over pairs of
        # orthonormal directions: no closed form.
        return ("gaussian",) if norms == "chi" else ()


class AderfFeatureMap(SderfFeatureMap):
    """ADERF (FAVOR#, asymmetric): a balancing transform of queries and keys, then SDERF.

    ``fit(Q, K)`` finds ``T`` with equal, diagonal second moments of ``T q`` and
    ``T^-T k`` (:func:`balancing_transform`), so ``q.k`` is unchanged, and then the
    SDERF rotation and ``A`` of the transformed pairs.  ``prepare`` applies ``T``
    to queries and ``T^-T`` to keys.  With one input set (``Y=None``) ``T`` is the
    identity and the map is SDERF.  Unbiased for every fitted constant.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import get_feature_map
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(2, 100, 4)) * [[3.0, 1.0, 0.5, 0.1]]
    >>> fmap = get_feature_map("aderf")
    >>> c = fmap.fit(Q, K / 4, input_scale=0.5)
    >>> q, k = fmap.prepare(Q, "query", c), fmap.prepare(K / 4, "key", c)
    >>> bool(np.allclose(q @ k.T, Q @ (K / 4).T))
    True
    """

    name = "aderf"
    data_constants = ("query_transform", "key_transform", "rotation", "A")
    constant_shapes = {
        "query_transform": ("d", "d"),
        "key_transform": ("d", "d"),
        "rotation": ("d", "d"),
        "A": ("d",),
    }
    summary = "ADERF (FAVOR#): balancing transform of q and k, then SDERF, unbiased"

    def __init__(self, ridge=DEFAULT_RIDGE):
        self.ridge = ridge

    def fit(self, X, Y=None, *, input_scale=1.0):
        X = _dense(X, "X")
        d = X.shape[1]
        if Y is None or Y is X:
            return {"query_transform": np.eye(d), "key_transform": np.eye(d),
                    **super().fit(X, input_scale=input_scale)}  # fmt: skip
        Y = _dense(Y, "Y")
        if X.shape[0] == 0 or Y.shape[0] == 0:
            return {"query_transform": np.eye(d), "key_transform": np.eye(d),
                    "rotation": np.eye(d), "A": np.zeros(d)}  # fmt: skip
        with blas_single_thread():  # d x d problems: BLAS threads only cost
            T, T_key = balancing_transform(X, Y, self.ridge)
            rotation, a = _rotation_and_a(X @ T.T, Y @ T_key.T, input_scale)
        return {"query_transform": T, "key_transform": T_key, "rotation": rotation, "A": a}

    def checked_constants(self, constants, d) -> dict:
        """As :meth:`SderfFeatureMap.checked_constants`, and ``key_transform`` must be
        the inverse transpose of ``query_transform`` (``T_q^T T_k = I``: ``q.k`` kept)."""
        constants = super().checked_constants(constants, d)
        Tq = _check_square(constants, "query_transform", d, self.name)
        Tk = _check_square(constants, "key_transform", d, self.name)
        gap = _off_identity(Tq.T @ Tk)
        if gap > _CONSTANT_RTOL:
            raise ValueError(
                f"constants 'query_transform' and 'key_transform' of feature map {self.name!r} "
                f"must satisfy query_transform^T key_transform = I (logits kept), got "
                f"|T_q^T T_k - I|_max = {gap:.3g}"
            )
        return constants

    def prepare(self, X, side, constants):
        key = "query_transform" if side == "query" else "key_transform"
        T = np.asarray(constants[key])
        with blas_single_thread():  # a (rows x d) by (d x d) product: threads only cost
            return np.ascontiguousarray(X @ T.T.astype(X.dtype, copy=False))
