"""Random projection matrices for random-feature maps."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from ._validation import check_int, check_option

__all__ = ["draw_projection", "PROJECTION_KINDS", "NORM_KINDS"]

PROJECTION_KINDS = ("gaussian", "orthogonal")
NORM_KINDS = ("chi", "fixed")


def _haar_orthogonal(n_dims: int, rng: np.random.RandomState) -> np.ndarray:
    """One Haar-distributed orthogonal ``n_dims x n_dims`` matrix (rows orthonormal).

    Raw Householder QR is not Haar (its Q has a biased diagonal); multiplying the
    columns of Q by ``sign(diag(R))`` makes it so (Mezzadri, 2007).
    """
    gaussian = rng.standard_normal((n_dims, n_dims))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q *= signs[np.newaxis, :]
    return q.T


def draw_projection(n_features, n_dims, *, kind="orthogonal", norms="chi", random_state=None):
    """Draw an ``(n_features, n_dims)`` random projection matrix.

    Each row is marginally ``N(0, I_d)`` (with ``norms="chi"``), which makes the
    random-feature estimators of :mod:`favorkern.features` unbiased.

    Parameters
    ----------
    n_features : int
        Number of rows ``m`` (random projections).
    n_dims : int
        Input dimension ``d``.
    kind : {"orthogonal", "gaussian"}, default="orthogonal"
        ``"gaussian"``: iid standard normal rows.  ``"orthogonal"``: rows are
        exactly orthogonal within blocks of ``d`` rows (orthogonal random features,
        Yu et al. 2016; Performer section 2.4).  Each block is a Haar rotation from
        the sign-corrected QR of a Gaussian matrix; when ``d`` does not divide ``m``
        the last block is partial.  Blocks are independent.
    norms : {"chi", "fixed"}, default="chi"
        ``"chi"``: row lengths drawn independently from the chi distribution with
        ``d`` degrees of freedom, so each row is marginally Gaussian.  ``"fixed"``:
        every row has length ``sqrt(d)`` (the regularized softmax kernel SMREG of the
        Performer paper, section 2.3, which is *biased* for the softmax kernel).
        For ``kind="gaussian"`` the rows are rescaled to that length.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives bit-identical matrices.

    Returns
    -------
    projection : ndarray of shape (n_features, n_dims), dtype float64

    Notes
    -----
    Random draws happen in a fixed order: the Gaussian matrices (one per block for
    ``"orthogonal"``), then the chi norms.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import draw_projection
    >>> W = draw_projection(6, 4, random_state=0)
    >>> W.shape
    (6, 4)
    >>> G = W[:4] @ W[:4].T           # the first block is orthogonal
    >>> bool(np.allclose(G - np.diag(np.diag(G)), 0))
    True
    """
    m = check_int(n_features, "n_features")
    d = check_int(n_dims, "n_dims")
    check_option(kind, "kind", PROJECTION_KINDS)
    check_option(norms, "norms", NORM_KINDS)
    rng = check_random_state(random_state)

    if kind == "gaussian":
        projection = rng.standard_normal((m, d))
        if norms == "chi":
            return projection
        directions = projection
    else:
        n_blocks = -(-m // d)
        blocks = [_haar_orthogonal(d, rng) for _ in range(n_blocks)]
        directions = np.concatenate(blocks, axis=0)[:m]
        if norms == "chi":
            lengths = np.sqrt(rng.chisquare(d, size=m))
            return np.ascontiguousarray(directions * lengths[:, np.newaxis])

    row_norms = np.linalg.norm(directions, axis=1)
    row_norms[row_norms == 0] = 1.0
    return np.ascontiguousarray(directions * (np.sqrt(d) / row_norms)[:, np.newaxis])
