"""Random projection matrices for random-feature maps."""

from __future__ import annotations

import numpy as np

from ._parallel import blas_single_thread
from ._validation import check_int, check_option, check_seed

__all__ = ["draw_projection", "PROJECTION_KINDS", "NORM_KINDS", "QMC_KINDS"]

PROJECTION_KINDS = ("gaussian", "orthogonal", "simplex", "structured", "sobol", "halton")
NORM_KINDS = ("chi", "fixed")
#: The randomized quasi-Monte Carlo kinds (no closed-form MSE; independent draws).
QMC_KINDS = ("sobol", "halton")
# scipy's Sobol direction numbers cover this many dimensions.
SOBOL_MAX_DIMS = 21201


def _sign_fixed_qr(gaussian: np.ndarray) -> np.ndarray:
    """Q of the QR of ``gaussian`` (..., d, r) with its columns times ``sign(diag(R))``.

    Raw Householder QR is not Haar (its Q has a biased diagonal); the sign fix makes
    Q Haar-distributed: an orthogonal matrix for r = d, the first r columns of one
    (uniform on the Stiefel manifold) for r < d (Mezzadri, 2007).
    """
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    signs[signs == 0] = 1.0
    q *= signs[..., np.newaxis, :]
    return q


def _thin_haar_rows(gaussian: np.ndarray) -> np.ndarray:
    """``(r, d)`` orthonormal rows from a C-ordered ``(r, d)`` Gaussian ``G``, r <= d.

    The rows of the sign-fixed thin QR (``G^T = Q R``, ``diag(R) > 0``): with ``d``
    well above ``r`` by Cholesky QR, ``G G^T = R^T R`` and ``Q^T = R^-T G``, one
    symmetric rank-``d`` update and one triangular solve in place on ``G^T`` (BLAS 3,
    no copy; 0.2 s at d = 50000, r = 256 against 1.3 s for Householder QR).  Its
    loss of orthogonality grows as ``cond(G)^2``, and ``cond(G)`` of an ``r x d``
    Gaussian is about ``(sqrt(d) + sqrt(r)) / (sqrt(d) - sqrt(r))``: at most 3 for
    ``d >= 4 r``.  Nearer the square, the sign-fixed Householder QR of ``G^T`` (a
    Fortran-ordered ``d x r``, factored in place by LAPACK).
    """
    from scipy.linalg import LinAlgError, cholesky, qr
    from scipy.linalg.blas import dsyrk, dtrsm

    n_rows, n_dims = gaussian.shape
    if n_dims >= 4 * n_rows:
        columns = gaussian.T  # Fortran-ordered view: BLAS works on it without a copy
        try:
            upper = cholesky(dsyrk(1.0, columns, trans=1), lower=False, check_finite=False)
        except LinAlgError:
            upper = None
        if upper is not None:
            # the upper Cholesky factor has a positive diagonal: R itself, signs fixed
            q = dtrsm(1.0, upper, columns, side=1, lower=0, overwrite_b=1)
            return q.T
    q, r = qr(gaussian.T, mode="economic", overwrite_a=True, check_finite=False)
    signs = np.sign(np.diagonal(r))
    signs[signs == 0] = 1.0
    rows = q.T
    rows *= signs[:, np.newaxis]
    return rows


def _haar_orthogonal_rows(n_rows: int, n_dims: int, rng: np.random.RandomState) -> np.ndarray:
    """``(n_rows, d)``: blocks of ``d`` orthonormal rows, each a Haar rotation's rows.

    Full blocks come from one batched QR of ``d x d`` Gaussians; the last partial
    block of ``r < d`` rows (all of them when ``n_rows < d``) from the thin QR of a
    ``d x r`` Gaussian, which has the distribution of ``r`` rows of a Haar rotation
    at O(d r^2) time and O(d r) memory instead of O(d^3) and O(d^2).
    """
    n_full, rest = divmod(n_rows, n_dims)
    blocks = []
    # One BLAS thread: measured 0.07 s against 0.25-5 s with two threads for the QR of
    # a 3000 x 256 Gaussian on a loaded two-core machine (the same policy as the maps).
    with blas_single_thread():
        if n_full:
            full = rng.standard_normal((n_full, n_dims, n_dims))
            blocks.append(np.swapaxes(_sign_fixed_qr(full), 1, 2).reshape(-1, n_dims))
        if rest:
            blocks.append(_thin_haar_rows(rng.standard_normal((rest, n_dims))))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


def qmc_gaussian_rows(n_rows: int, n_dims: int, kind: str, rng) -> np.ndarray:
    """``(n_rows, d)`` randomized quasi-Monte Carlo points mapped to ``N(0, I_d)`` rows.

    The first ``n_rows`` points ``u_i`` of a randomized low-discrepancy sequence in
    ``[0, 1)^d``, each exactly uniform, through the standard normal quantile
    coordinate by coordinate, ``w_i = Phi^-1(u_i)``: every row is exactly
    ``N(0, I_d)`` (so every feature stays unbiased) while the rows together fill
    the space more evenly than independent draws.  Sobol: Owen's linear matrix
    scramble with a digital shift (scipy's ``stats.qmc.Sobol``), whose points are
    uniform on the grid of ``2^-30``, plus a uniform offset inside the grid cell.
    Halton: scipy's digit-permutation scramble plus a uniform shift modulo 1
    (Cranley-Patterson), which makes each point uniform.  Randomized QMC of this
    kind gives random-feature errors near ``O(1/m)`` instead of ``O(1/sqrt(m))``
    (Huang et al., ICML 2024), best at powers of two for Sobol.
    """
    import warnings

    from scipy.special import ndtri
    from scipy.stats import qmc

    if kind == "sobol" and n_dims > SOBOL_MAX_DIMS:
        raise ValueError(
            f"projection='sobol' supports up to {SOBOL_MAX_DIMS} input dimensions, got "
            f"n_dims={n_dims}; use projection='halton' or 'orthogonal'"
        )
    seed = np.random.default_rng(rng.randint(0, 2**32, size=4, dtype=np.uint64))
    engine = (qmc.Sobol if kind == "sobol" else qmc.Halton)(n_dims, scramble=True, rng=seed)
    with warnings.catch_warnings():
        # Sobol's balance needs 2^k points; any prefix is still a valid (unbiased) draw.
        warnings.simplefilter("ignore", UserWarning)
        points = engine.random(n_rows)
    if kind == "sobol":
        points += rng.random_sample(points.shape) * 2.0**-30
    else:
        points += rng.random_sample(n_dims)
        points %= 1.0
    # a point exactly 0 (probability 2^-53 per coordinate) would map to -inf
    np.clip(points, 2.0**-60, 1.0 - 2.0**-53, out=points)
    return np.ascontiguousarray(ndtri(points))


def _simplex_directions(n_dims: int) -> np.ndarray:
    """Unit vectors of a regular simplex centred at 0: rows of ``I - 11^T/d``, normalized.

    Pairwise inner products are ``-1/(d-1)`` (Reid et al., 2023).
    """
    centred = np.eye(n_dims) - 1.0 / n_dims
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


def _simplex_factor(n_rows: int, n_dims: int) -> np.ndarray:
    """Lower-triangular ``L`` (r x r) with ``L L^T`` the Gram matrix of r simplex directions.

    ``S_r U`` for ``r`` simplex directions ``S_r`` and a Haar rotation ``U`` has the
    distribution of ``L V`` with ``V`` any ``r`` Haar-distributed orthonormal rows
    (``S_r = L P`` with ``P`` orthonormal rows, and ``P U`` is such a ``V``), so a
    partial simplex block never needs the ``d x d`` rotation.
    """
    gram = np.full((n_rows, n_rows), -1.0 / (n_dims - 1))
    np.fill_diagonal(gram, 1.0)
    return np.linalg.cholesky(gram)


def hadamard_transform(rows: np.ndarray) -> np.ndarray:
    """Normalized fast Walsh-Hadamard transform of each row (length a power of two).

    Returns a new array ``rows @ H / sqrt(n)`` with ``H`` the Sylvester Hadamard matrix;
    O(n log n) per row.
    """
    out = np.array(rows, dtype=np.float64, copy=True)
    n_rows, size = out.shape
    if size & (size - 1):
        raise ValueError(f"row length must be a power of two, got {size}")
    half = 1
    while half < size:
        view = out.reshape(n_rows, size // (2 * half), 2, half)
        first = view[:, :, 0, :].copy()
        view[:, :, 0, :] += view[:, :, 1, :]
        view[:, :, 1, :] = first - view[:, :, 1, :]
        half *= 2
    return out / np.sqrt(size)


def padded_dims(n_dims: int) -> int:
    """The power of two that structured projections pad ``n_dims`` to."""
    return 1 << max(0, int(n_dims - 1).bit_length())


def structured_signs(n_projections, n_dims, rng) -> np.ndarray:
    """Random signs ``(n_blocks, 3, d_pad)`` of the SORF blocks ``H D1 H D2 H D3``."""
    size = padded_dims(n_dims)
    n_blocks = -(-n_projections // size)
    return rng.randint(0, 2, size=(n_blocks, 3, size)).astype(np.float64) * 2.0 - 1.0


def structured_directions(signs, n_projections, n_dims) -> np.ndarray:
    """Rows ``i`` of ``M_b = H D1 H D2 H D3`` (orthogonal), stacked over blocks, first d columns.

    ``M_b x`` applies ``D3``, ``H``, ``D2``, ``H``, ``D1``, ``H`` in turn, so column ``j`` of
    ``M_b`` is that sequence applied to the unit vector ``e_j``.
    """
    size = signs.shape[2]
    blocks = []
    for d1, d2, d3 in signs:
        columns = np.eye(size)[:n_dims] * d3  # rows are e_j^T D3
        columns = hadamard_transform(columns) * d2
        columns = hadamard_transform(columns) * d1
        columns = hadamard_transform(columns)  # row j = (M e_j)^T
        blocks.append(columns.T)
    return np.concatenate(blocks, axis=0)[:n_projections]


def draw_structured(n_projections, n_dims, norms, rng):
    """SORF projection with its factors: ``(projection, signs, row_factors)``.

    ``projection = structured_directions(signs) * row_factors[:, None]``; the factors
    let :mod:`favorkern._numba.hadamard` apply it in O(d log d) per input.
    """
    signs = structured_signs(n_projections, n_dims, rng)
    directions = structured_directions(signs, n_projections, n_dims)
    if norms == "chi":
        # Rows of M are unit vectors in d_pad dimensions; chi_{d_pad} lengths make the
        # full rows approximately N(0, I_{d_pad}), hence the first d coordinates too.
        factors = np.sqrt(rng.chisquare(signs.shape[2], size=n_projections))
    else:
        row_norms = np.linalg.norm(directions, axis=1)
        row_norms[row_norms == 0] = 1.0
        factors = np.sqrt(n_dims) / row_norms
    return np.ascontiguousarray(directions * factors[:, np.newaxis]), signs, factors


def draw_projection(
    n_projections, n_dims, *, projection="orthogonal", norms="chi", random_state=None
):
    """Draw an ``(n_projections, n_dims)`` random projection matrix.

    Each row is marginally ``N(0, I_d)`` (with ``norms="chi"``), which makes the
    random-feature estimators of :mod:`favorkern.features` unbiased.

    Parameters
    ----------
    n_projections : int
        Number of rows ``m`` (random projections).
    n_dims : int
        Input dimension ``d``.
    projection : {"orthogonal", "gaussian", "simplex", "structured", "sobol", "halton"}, \
default="orthogonal"
        ``"gaussian"``: iid standard normal rows.  ``"orthogonal"``: rows are
        exactly orthogonal within blocks of ``d`` rows (orthogonal random features,
        Yu et al. 2016; Performer section 2.4).  Each block is a Haar rotation from
        the sign-corrected QR of a Gaussian matrix; when ``d`` does not divide ``m``
        the last block is partial: ``r`` rows from the thin QR of a ``d x r``
        Gaussian (distributed as ``r`` rows of a Haar rotation), so ``m < d`` costs
        O(d m^2) time and O(d m) memory.  Blocks are independent.
        ``"simplex"``: within a block the directions are the ``d`` vertices of a
        regular simplex (pairwise cosine ``-1/(d-1)``) under a Haar rotation
        (simplex random features, Reid et al. 2023); for ``d = 1`` this is
        ``"orthogonal"``.  ``"structured"``: SORF blocks ``H D1 H D2 H D3`` (Yu et al.
        2016) of size ``d_pad``, the next power of two, restricted to the first ``d``
        columns, with chi norms of ``d_pad`` degrees of freedom: approximately
        Gaussian rows (a small bias that vanishes as ``d`` grows), computable in
        O(d log d) per input.  Meant for large ``d`` (say 32 and more): when ``d`` is
        not a power of two, a restricted row can be far from Gaussian (even zero).
        ``"sobol"`` and ``"halton"``: randomized quasi-Monte Carlo rows, the first
        ``m`` points of a scrambled Sobol or Halton sequence in ``[0, 1)^d`` (each
        point exactly uniform: scrambling and random offsets drawn from
        ``random_state``) through the normal quantile ``Phi^-1`` coordinate by
        coordinate.  Direction and norm of each row are those of a ``N(0, I_d)``
        vector, so every feature stays unbiased, while the rows fill the space more
        evenly than independent ones: for positive features the MSE falls faster
        in ``m`` (Huang et al., ICML 2024).  Sobol is best at ``m`` a power of two
        and takes ``d <= 21201``.  The rows are not orthogonalized: Gram-Schmidt
        within a block keeps each row Gaussian only when the block's joint law is
        rotation invariant, which quasi-random points are not (a Monte-Carlo check
        of the features' mean finds the orthogonalized rows biased).  No closed-form
        MSE exists; :func:`favorkern.diagnostics.empirical_mse` measures it.
    norms : {"chi", "fixed"}, default="chi"
        ``"chi"``: row lengths drawn independently from the chi distribution with
        ``d`` degrees of freedom, so each row is marginally Gaussian.  ``"fixed"``:
        every row has length ``sqrt(d)`` (the regularized softmax kernel SMREG of the
        Performer paper, section 2.3, which is *biased* for the softmax kernel).
        For ``projection="gaussian"``, ``"sobol"`` and ``"halton"`` the rows are
        rescaled to that length.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives bit-identical matrices.

    Returns
    -------
    projection_matrix : ndarray of shape (n_projections, n_dims), dtype float64

    Notes
    -----
    Random draws happen in a fixed order: the Gaussian matrices (for
    ``"orthogonal"`` and ``"simplex"``: one ``d x d`` per full block, then one
    ``d x r`` for a partial last block of ``r`` rows) or the random signs
    (``"structured"``), then the chi norms; for ``"sobol"`` and ``"halton"`` the
    scrambling seed, then the offsets.

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
    >>> draw_projection(256, 8, projection="sobol", random_state=0).shape
    (256, 8)
    """
    m = check_int(n_projections, "n_projections")
    d = check_int(n_dims, "n_dims")
    kind = check_option(projection, "projection", PROJECTION_KINDS)
    check_option(norms, "norms", NORM_KINDS)
    rng = check_seed(random_state)

    if kind == "gaussian" or kind in QMC_KINDS:
        if kind == "gaussian":
            projection = rng.standard_normal((m, d))
        else:
            projection = qmc_gaussian_rows(m, d, kind, rng)
        if norms == "chi":
            return projection
        directions = projection
    elif kind == "structured":
        return draw_structured(m, d, norms, rng)[0]
    else:
        directions = _haar_orthogonal_rows(m, d, rng)
        if kind == "simplex" and d > 1:
            n_full = m - m % d
            full = directions[:n_full].reshape(-1, d, d)
            directions[:n_full] = (_simplex_directions(d) @ full).reshape(-1, d)
            if m % d:
                directions[n_full:] = _simplex_factor(m % d, d) @ directions[n_full:]
        if norms == "chi":
            lengths = np.sqrt(rng.chisquare(d, size=m))
            directions = np.ascontiguousarray(directions)
            directions *= lengths[:, np.newaxis]  # in place: at large d m x d is big
            return directions

    row_norms = np.linalg.norm(directions, axis=1)
    row_norms[row_norms == 0] = 1.0
    return np.ascontiguousarray(directions * (np.sqrt(d) / row_norms)[:, np.newaxis])
