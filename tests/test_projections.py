import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from favorkern import draw_projection


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    d=st.integers(1, 12),
    kind=st.sampled_from(["gaussian", "orthogonal"]),
    norms=st.sampled_from(["chi", "fixed"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_shape_dtype_and_determinism(m, d, kind, norms, seed):
    W = draw_projection(m, d, projection=kind, norms=norms, random_state=seed)
    assert W.shape == (m, d)
    assert W.dtype == np.float64
    assert W.flags.c_contiguous
    assert np.isfinite(W).all()
    np.testing.assert_array_equal(
        W, draw_projection(m, d, projection=kind, norms=norms, random_state=seed)
    )
    if norms == "fixed":
        np.testing.assert_allclose(np.linalg.norm(W, axis=1), np.sqrt(d), rtol=1e-12)


@pytest.mark.parametrize("m, d", [(16, 16), (37, 8), (5, 8), (8, 1)])
def test_orthogonal_blocks(m, d):
    W = draw_projection(m, d, projection="orthogonal", random_state=0)
    for start in range(0, m, d):
        block = W[start : start + d]
        gram = block @ block.T
        off_diagonal = gram - np.diag(np.diag(gram))
        assert np.abs(off_diagonal).max() < 1e-10 * max(1.0, np.abs(gram).max())


def test_orthogonal_rows_are_marginally_gaussian():
    # Rows of sign-corrected ORF blocks are N(0, I): check mean, covariance and norms.
    d = 6
    W = draw_projection(6000, d, projection="orthogonal", random_state=1)
    assert np.abs(W.mean(axis=0)).max() < 4.5 / np.sqrt(6000)
    np.testing.assert_allclose(np.cov(W.T), np.eye(d), atol=0.08)
    p_value = stats.kstest(np.sum(W**2, axis=1), stats.chi2(d).cdf).pvalue
    assert p_value > 1e-3


def test_sign_fix_makes_haar_diagonal_unbiased():
    # Raw LAPACK QR has Q[0, 0] <= 0 always (:ref:`theory-qr-sign`); Haar has a symmetric diagonal.
    d = 8
    first_rows = np.array(
        [draw_projection(d, d, norms="fixed", random_state=s)[0] / np.sqrt(d) for s in range(3000)]
    )
    mean_diag = first_rows[:, 0].mean()
    se = first_rows[:, 0].std() / np.sqrt(len(first_rows))
    assert abs(mean_diag) < 4.5 * se
    assert (first_rows[:, 0] > 0).mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"n_projections": 0, "n_dims": 3}, ValueError, "n_projections"),
        ({"n_projections": 2.5, "n_dims": 3}, TypeError, "n_projections"),
        ({"n_projections": 4, "n_dims": 0}, ValueError, "n_dims"),
        ({"n_projections": 4, "n_dims": 3, "projection": "hadamard"}, ValueError, "projection"),
        ({"n_projections": 4, "n_dims": 3, "norms": "unit"}, ValueError, "norms"),
        ({"n_projections": True, "n_dims": 3}, TypeError, "n_projections"),
    ],
)
def test_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        draw_projection(**kwargs)


@pytest.mark.parametrize("m, d", [(16, 16), (20, 8), (3, 5)])
def test_simplex_blocks_have_simplex_geometry(m, d):
    W = draw_projection(m, d, projection="simplex", norms="fixed", random_state=0) / np.sqrt(d)
    for start in range(0, m, d):
        gram = W[start : start + d] @ W[start : start + d].T
        off_diagonal = gram[~np.eye(len(gram), dtype=bool)]
        np.testing.assert_allclose(off_diagonal, -1.0 / (d - 1), atol=1e-12)


@pytest.mark.parametrize("d", [1, 3, 8, 13])
def test_structured_matches_hadamard_products(d):
    from scipy.linalg import hadamard

    from favorkern.projections import padded_dims, structured_directions, structured_signs

    m = 2 * d + 1
    signs = structured_signs(m, d, np.random.RandomState(0))
    size = padded_dims(d)
    H = hadamard(size) / np.sqrt(size)
    expected = np.concatenate(
        [H @ np.diag(a) @ H @ np.diag(b) @ H @ np.diag(c) for a, b, c in signs]
    )
    np.testing.assert_allclose(structured_directions(signs, m, d), expected[:m, :d], atol=1e-12)
    W = draw_projection(m, d, projection="structured", norms="fixed", random_state=0)
    # With padding (d not a power of two) a row restricted to d columns can vanish.
    row_norms = np.linalg.norm(W, axis=1)
    np.testing.assert_allclose(row_norms[row_norms > 0], np.sqrt(d))
    if d == padded_dims(d):
        assert (row_norms > 0).all()


def test_structured_rows_are_approximately_gaussian():
    d = 64
    W = draw_projection(4096, d, projection="structured", random_state=2)
    np.testing.assert_allclose(np.cov(W.T), np.eye(d), atol=0.12)
    assert abs(np.mean(np.sum(W**2, axis=1)) - d) < 0.5


# -- thin blocks (m < d, and the partial last block) ---------------------------------


def _corner_trace(rows):
    """Trace of the leading r x r corner of r orthonormal rows (a Haar-sensitive statistic)."""
    r = rows.shape[0]
    return float(np.trace(rows[:, :r]))


@pytest.mark.parametrize("m, d", [(3, 7), (11, 4)])
def test_thin_blocks_match_full_block_rows_in_distribution(m, d):
    # r rows of a thin block must be distributed as the first r rows of a full Haar
    # block; two-sample KS on the corner trace and on one coordinate, 2000 draws each.
    r = m % d
    thin, full = [], []
    for seed in range(2000):
        W = draw_projection(m, d, norms="fixed", random_state=seed) / np.sqrt(d)
        thin.append(W[m - r :])
        full.append(
            draw_projection(d, d, norms="fixed", random_state=10**6 + seed)[:r] / np.sqrt(d)
        )
    for statistic in (
        _corner_trace,
        lambda rows: float(rows[0, 0]),
        lambda rows: float(rows[-1, 1]),
    ):
        a = [statistic(rows) for rows in thin]
        b = [statistic(rows) for rows in full]
        assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_thin_block_sign_fix_makes_diagonal_unbiased():
    # Without the sign fix the thin QR's Q[0, 0] is never positive.
    d, m = 9, 4
    first = np.array(
        [
            draw_projection(m, d, norms="fixed", random_state=s)[:, 0] / np.sqrt(d)
            for s in range(3000)
        ]
    )
    assert (first[:, 0] > 0).mean() == pytest.approx(0.5, abs=0.05)
    se = first[:, 0].std() / np.sqrt(len(first))
    assert abs(first[:, 0].mean()) < 4.5 * se


def test_thin_rows_are_marginally_gaussian():
    # m < d: every row still N(0, I_d) (isotropic directions with chi lengths).
    d, m = 10, 3
    W = np.concatenate([draw_projection(m, d, random_state=s) for s in range(2000)])
    assert np.abs(W.mean(axis=0)).max() < 4.5 / np.sqrt(len(W))
    np.testing.assert_allclose(np.cov(W.T), np.eye(d), atol=0.08)
    assert stats.kstest(np.sum(W**2, axis=1), stats.chi2(d).cdf).pvalue > 1e-3


def test_thin_simplex_block_keeps_simplex_geometry_and_isotropy():
    d, m = 12, 5
    blocks = [
        draw_projection(m, d, projection="simplex", norms="fixed", random_state=s) / np.sqrt(d)
        for s in range(1500)
    ]
    gram = blocks[0] @ blocks[0].T
    np.testing.assert_allclose(gram[~np.eye(m, dtype=bool)], -1.0 / (d - 1), atol=1e-12)
    # Each direction is uniform on the sphere: E[w w^T] = I / d.
    second_moment = np.mean([b[0][:, None] * b[0][None, :] for b in blocks], axis=0)
    np.testing.assert_allclose(second_moment, np.eye(d) / d, atol=0.012)


def test_full_blocks_unchanged_by_a_partial_block():
    # The full blocks are drawn first, from the same stream as without a partial block.
    d = 5
    np.testing.assert_array_equal(
        draw_projection(13, d, norms="fixed", random_state=3)[:10],
        draw_projection(10, d, norms="fixed", random_state=3),
    )


@pytest.mark.parametrize("r, d", [(3, 12), (5, 40), (64, 4096)])
def test_cholesky_thin_rows_equal_sign_fixed_householder(r, d):
    # d >= 4 r takes the Cholesky QR (BLAS 3, in place); it must give the rows of the
    # sign-fixed Householder QR, which are Haar-distributed.
    from favorkern.projections import _thin_haar_rows

    gaussian = np.random.default_rng(r + d).standard_normal((r, d))
    q, rr = np.linalg.qr(gaussian.T)
    expected = (q * np.sign(np.diag(rr))).T
    rows = _thin_haar_rows(gaussian.copy())
    np.testing.assert_allclose(rows, expected, atol=1e-12)
    np.testing.assert_allclose(rows @ rows.T, np.eye(r), atol=1e-12)


def test_cholesky_thin_rows_match_full_block_rows_in_distribution():
    d, m = 20, 3  # d >= 4 m: the Cholesky path
    thin = [draw_projection(m, d, norms="fixed", random_state=s) / np.sqrt(d) for s in range(2000)]
    full = [
        draw_projection(d, d, norms="fixed", random_state=10**6 + s)[:m] / np.sqrt(d)
        for s in range(2000)
    ]
    for statistic in (_corner_trace, lambda rows: float(rows[0, 0]), lambda rows: rows[-1, 1]):
        a = [statistic(rows) for rows in thin]
        b = [statistic(rows) for rows in full]
        assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_wide_orthogonal_projection_is_orthonormal_and_reproducible():
    # d = 20000, m = 256: the thin-block case whose Householder QR took seconds.
    W = draw_projection(256, 20000, random_state=5)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    np.testing.assert_allclose(U @ U.T, np.eye(256), atol=1e-12)
    np.testing.assert_array_equal(W, draw_projection(256, 20000, random_state=5))
