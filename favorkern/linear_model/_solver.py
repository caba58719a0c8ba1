"""The ridge solver: one eigendecomposition of the scatter matrix for a whole penalty grid,
leave-one-out and generalized cross-validation errors, predictive variance.
"""

from __future__ import annotations

import numpy as np

from .. import _config
from ._statistics import (
    as_targets,
    check_alphas,
    check_sample_weight,
    default_batch_size,
    feature_block,
    row_blocks,
)


class RidgeSolver:
    """Ridge solutions from the statistics: one eigendecomposition serves a whole penalty grid.

    With ``S = V diag(s) V^T`` the (centred, when ``fit_intercept``) weighted
    scatter of the features and ``q = V^T b`` the projected cross products
    ``b = sum_i w_i (z_i - mu)(y_i - ybar)``:

    * coefficients ``coef(alpha) = V diag(1 / (s + alpha)) q``, intercept
      ``ybar - mu . coef``;
    * the weighted residual sum of squares
      ``RSS(alpha) = yy - sum_k q_k^2 (s_k + 2 alpha) / (s_k + alpha)^2``;
    * generalized cross-validation (Golub, Heath and Wahba, 1979),
      ``GCV(alpha) = (RSS / W) / (1 - df / W)^2`` with the effective degrees of
      freedom ``df = sum_k s_k / (s_k + alpha) + fit_intercept`` (weights count as
      frequencies; ``inf`` where ``df >= W``);
    * the exact leave-one-out errors, which need every row's leverage
      ``h_i = w_i (z_i - mu)^T (S + alpha I)^{-1} (z_i - mu) + w_i / W`` and
      residual ``r_i``: ``e_i = sqrt(w_i) r_i / (1 - h_i)`` (the identity behind
      :class:`~sklearn.linear_model.RidgeCV`), computed block by block in a second
      pass over the rows by :meth:`loo_errors` as ``U = (Z - mu) V`` then
      ``h = (U * U) @ (1 / (s + alpha))`` for the whole grid at once;
    * the posterior of the Bayesian model (see :class:`RandomFeatureRidge`).

    A single penalty needs no eigendecomposition: :meth:`coef`,
    :meth:`noise_variance` and :meth:`posterior_factor` then use a Cholesky
    factorization of ``S + alpha I`` (``m^3 / 3`` flops against about ``9 m^3``);
    the eigendecomposition is computed on first use of a grid (:meth:`gcv_errors`,
    :meth:`loo_errors`, the eigen attributes) and then serves every penalty.

    Parameters
    ----------
    statistics : RidgeStatistics
    fit_intercept : bool, default=True
        Without an intercept the uncentred scatter ``S + W mu mu^T`` is used.

    Attributes
    ----------
    eigenvalues : ndarray of shape (m,)
        ``s``, clipped at zero (computed on first access).
    eigenvectors : ndarray of shape (m, m)
        ``V``.
    projected_cross : ndarray of shape (m, t)
        ``q``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from favorkern.linear_model import RidgeStatistics
    >>> rng = np.random.default_rng(0)
    >>> Z, y = rng.normal(size=(50, 4)), rng.normal(size=50)
    >>> solver = RidgeStatistics.from_block(Z, y).solver()
    >>> coef = solver.coef(2.0)[:, 0]
    >>> bool(np.allclose(coef, Ridge(alpha=2.0).fit(Z, y).coef_))
    True
    """

    def __init__(self, statistics, *, fit_intercept=True):
        self.statistics = statistics
        self.fit_intercept = bool(fit_intercept)
        stats = statistics
        self.scatter = stats.feature_scatter
        self.cross = stats.cross_scatter
        self.target_sum_squares = stats.target_scatter.copy()
        if not self.fit_intercept:
            W, mu, ybar = stats.weight_sum, stats.feature_mean, stats.target_mean
            self.scatter = self.scatter + W * np.multiply.outer(mu, mu)
            self.cross = self.cross + W * np.multiply.outer(mu, ybar)
            self.target_sum_squares = self.target_sum_squares + W * ybar**2
        self._eigen = None
        self._cholesky = {}

    def _eigensystem(self):
        if self._eigen is None:
            # symmetric by construction up to rounding; eigh reads one triangle
            eigenvalues, eigenvectors = np.linalg.eigh(self.scatter)
            eigenvalues = np.maximum(eigenvalues, 0.0)
            self._eigen = (eigenvalues, eigenvectors, eigenvectors.T @ self.cross)
        return self._eigen

    @property
    def eigenvalues(self):
        return self._eigensystem()[0]

    @property
    def eigenvectors(self):
        return self._eigensystem()[1]

    @property
    def projected_cross(self):
        return self._eigensystem()[2]

    def _cholesky_factor(self, alpha):
        """Lower Cholesky factor of ``S + alpha I``, or None if it fails (then eigh)."""
        if self._eigen is not None:
            return None
        if alpha not in self._cholesky:
            from scipy.linalg import LinAlgError, cholesky

            shifted = self.scatter.copy()
            shifted.flat[:: shifted.shape[0] + 1] += alpha
            try:
                self._cholesky = {alpha: cholesky(shifted, lower=True, overwrite_a=True)}
            except LinAlgError:
                return None
        return self._cholesky[alpha]

    @property
    def feature_offset(self):
        """The mean subtracted from the features: ``mu``, or zeros without intercept."""
        mean = self.statistics.feature_mean
        return mean if self.fit_intercept else np.zeros_like(mean)

    def coef(self, alpha):
        """Coefficients ``(m, t)`` at penalty ``alpha``."""
        factor = self._cholesky_factor(alpha)
        if factor is not None:
            from scipy.linalg import cho_solve

            return cho_solve((factor, True), self.cross)
        return self.eigenvectors @ (self.projected_cross / (self.eigenvalues + alpha)[:, None])

    def intercept(self, coef):
        """Intercepts ``(t,)`` of coefficients ``coef`` (zeros without intercept)."""
        if not self.fit_intercept:
            return np.zeros(self.statistics.n_targets)
        return self.statistics.target_mean - self.statistics.feature_mean @ coef

    def residual_sum_squares(self, alpha):
        """Weighted residual sum of squares ``(t,)`` of the fit at ``alpha``."""
        s, q = self.eigenvalues[:, None], self.projected_cross
        # (s + 2 alpha) / (s + alpha)^2 as (1 + alpha / (s + alpha)) / (s + alpha): no
        # overflow of 2 alpha or of the square at alphas near the largest float
        inverse = 1.0 / (s + alpha)
        rss = self.target_sum_squares - np.sum(q**2 * (1.0 + alpha * inverse) * inverse, axis=0)
        return np.maximum(rss, 0.0)

    def noise_variance(self, alpha):
        """Estimate ``(t,)`` of the noise variance ``sigma^2`` of the Bayesian model.

        ``(yy - b^T coef) / (W - fit_intercept)`` = ``(RSS + alpha |coef|^2) /
        (W - fit_intercept)``: the maximum of the marginal likelihood of
        ``y ~ N(0, sigma^2 (I + Z Z^T / alpha))`` over ``sigma^2`` (restricted to the
        complement of the intercept when there is one).  Divided by ``W`` when
        ``W <= 1``.
        """
        fit = np.einsum("ij,ij->j", self.cross, self.coef(alpha))  # b^T coef
        W = self.statistics.weight_sum
        dof = W - self.fit_intercept if W > 1 else max(W, np.finfo(np.float64).tiny)
        return np.maximum(self.target_sum_squares - fit, 0.0) / dof

    def gcv_errors(self, alphas):
        """Generalized cross-validation errors ``(t, n_alphas)`` (see the class notes)."""
        alphas = check_alphas(alphas)
        W = self.statistics.weight_sum
        errors = np.empty((self.statistics.n_targets, alphas.size))
        for j, alpha in enumerate(alphas):
            df = np.sum(self.eigenvalues / (self.eigenvalues + alpha)) + self.fit_intercept
            if W <= df:
                errors[:, j] = np.inf
            else:
                errors[:, j] = (self.residual_sum_squares(alpha) / W) / (1 - df / W) ** 2
        return errors

    def loo_block_errors(self, Z, Y, sample_weight=None, *, alphas):
        """Summed squared leave-one-out errors ``(t, n_alphas)`` of the rows of one block.

        ``Z`` (n x m) are the features of rows that are part of the statistics;
        summed over every block of the fit and divided by the number of rows this
        is the mean squared leave-one-out error of
        :class:`~sklearn.linear_model.RidgeCV`.  The grid is taken in slices whose
        ``(n, t, slice)`` arrays hold at most ``favorkern._config.RIDGE_BLOCK_BYTES``
        (the block of features): the memory of the fit does not grow with the grid.
        """
        alphas = check_alphas(alphas)
        Y = as_targets(Y)
        weights = check_sample_weight(sample_weight, Y.shape[0])
        Zc = np.array(Z, dtype=np.float64, order="C")
        if Zc.shape[0] == 0:
            return np.zeros((Y.shape[1], alphas.size))
        Zc -= self.feature_offset
        U = Zc @ self.eigenvectors
        del Zc
        squares = U * U
        n, t = U.shape[0], Y.shape[1]
        offset = self.statistics.target_mean if self.fit_intercept else 0.0
        centred = Y - offset
        errors = np.empty((t, alphas.size))
        # slices of k alphas: the (n, t, k) residuals and the (n, k) leverages of one
        # slice hold at most one block (RIDGE_BLOCK_BYTES) together
        step = max(1, _config.RIDGE_BLOCK_BYTES // (8 * n * (t + 1)))
        for a in range(0, alphas.size, step):
            part = slice(a, min(alphas.size, a + step))
            errors[:, part] = self._loo_slice(U, squares, centred, weights, alphas[part])
        return errors

    def _loo_slice(self, U, squares, centred, weights, alphas):
        """:meth:`loo_block_errors` of one slice of the grid (in place: one (n, t, k) and
        one (n, k) array)."""
        inverse = 1.0 / (self.eigenvalues[:, None] + alphas[None, :])  # (m, k)
        m, t = self.projected_cross.shape
        # fitted centred values for every target and alpha: (n, t, k), then residuals
        weighted = (self.projected_cross[:, :, None] * inverse[:, None, :]).reshape(m, -1)
        residual = (U @ weighted).reshape(-1, t, alphas.size)
        np.subtract(centred[:, :, None], residual, out=residual)
        residual **= 2
        denominator = squares @ inverse  # the leverage (n, k), then 1 - h
        W = self.statistics.weight_sum
        if weights is not None:
            denominator *= weights[:, None]
            residual *= weights[:, None, None]
        np.subtract(1.0, denominator, out=denominator)
        if self.fit_intercept:
            denominator -= (1.0 / W) if weights is None else weights[:, None] / W
        denominator **= 2
        residual /= denominator[:, None, :]
        return residual.sum(axis=0)

    def loo_errors(self, features, X, Y, sample_weight=None, *, alphas, batch_size=None):
        """:meth:`loo_block_errors` summed over the row blocks of ``features.transform(X)``.

        Parameters
        ----------
        features : fitted transformer
            The one the statistics were accumulated with.
        X : array-like or sparse matrix of shape (n, d)
        Y : ndarray of shape (n,) or (n, t)
        sample_weight : ndarray of shape (n,), default=None
        alphas : array-like of float
        batch_size : int, default=None

        Returns
        -------
        errors : ndarray of shape (t, n_alphas)
            Sums of squared leave-one-out errors over the rows of ``X``.
        """
        alphas = check_alphas(alphas)
        Y = as_targets(Y, X.shape[0])
        weights = check_sample_weight(sample_weight, X.shape[0])
        if batch_size is None:
            batch_size = default_batch_size(self.statistics.n_components)
        total = np.zeros((Y.shape[1], alphas.size))
        for start, stop in row_blocks(X.shape[0], batch_size):
            Z = feature_block(features, X[start:stop])
            w = None if weights is None else weights[start:stop]
            total += self.loo_block_errors(Z, Y[start:stop], w, alphas=alphas)
        return total

    def posterior_factor(self, alpha):
        """``F`` (m x m) with ``F F^T = (S + alpha I)^{-1}``.

        ``V diag((s + alpha)^{-1/2})`` from the eigendecomposition, else ``C^{-T}``
        for the Cholesky factor ``C C^T = S + alpha I``.
        """
        factor = self._cholesky_factor(alpha)
        if factor is not None:
            from scipy.linalg import solve_triangular

            identity = np.eye(factor.shape[0])
            return solve_triangular(factor, identity, lower=True).T
        return self.eigenvectors / np.sqrt(self.eigenvalues + alpha)
