"""favorkern.projections under hostile conditions: thin orthogonal and simplex
blocks at huge dimensions, seeds that are no seeds.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from favorkern import (
    PositiveRandomFeatures,
    draw_projection,
    favor_attention,
)


def test_thin_block_at_huge_dimension_stays_small():
    # m = 16 rows in d = 50000: O(d m) memory (a full d x d block would be 18.6 GiB).
    tracemalloc.start()
    try:
        W = draw_projection(16, 50_000, random_state=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20
    directions = W / np.linalg.norm(W, axis=1, keepdims=True)
    np.testing.assert_allclose(directions @ directions.T, np.eye(16), atol=1e-12)


def test_sparse_text_like_fit_at_d_50000():
    X = 0.1 * sp.random(300, 50_000, density=4e-4, format="csr", random_state=0, dtype=np.float32)
    transformer = PositiveRandomFeatures(256, random_state=0).fit(X)
    assert transformer.projection_.shape == (256, 50_000)
    features = transformer.transform(X)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    # The estimate of exp(x.y) for these small-norm rows is close to the exact kernel.
    exact = np.exp((X[:20] @ X[:20].T).toarray())
    approx = features[:20].astype(np.float64) @ features[:20].T.astype(np.float64)
    assert np.abs(approx / exact - 1).mean() < 0.1


@pytest.mark.parametrize(("m", "d"), [(2, 3), (37, 12), (100, 1000)])
def test_partial_block_rows_orthogonal(m, d):
    W = draw_projection(m, d, norms="fixed", random_state=4) / np.sqrt(d)
    for start in range(0, m, d):
        block = W[start : start + d]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-12)


def test_thin_simplex_block_at_large_dimension():
    d, m = 5000, 7
    W = draw_projection(m, d, projection="simplex", norms="fixed", random_state=1) / np.sqrt(d)
    gram = W @ W.T
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=1e-12)
    np.testing.assert_allclose(gram[~np.eye(m, dtype=bool)], -1.0 / (d - 1), atol=1e-12)


def test_generator_seeds_are_refused_by_name():
    """numpy's message did not name random_state."""
    from favorkern import FavorAttention

    gen = np.random.default_rng(0)
    Q = np.ones((4, 4))
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy"):
        draw_projection(8, 4, random_state=gen)
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy"):
        favor_attention(Q, Q, Q, random_state=gen)
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy"):
        FavorAttention(random_state=gen).fit(4)
