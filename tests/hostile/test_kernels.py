"""favorkern.kernels under hostile conditions: the rbf kernel at huge norms."""

from __future__ import annotations

import numpy as np
import pytest


def test_rbf_kernel_at_huge_norms_is_finite_and_exact():
    from scipy.spatial.distance import cdist

    from favorkern import exact_kernel

    for scale, dtype in [(1e200, np.float64), (1e150, np.float64), (1e30, np.float32)]:
        X = np.array([[scale, 0.0], [scale, 1.0], [0.0, 0.0], [-scale, 2.0]], dtype=dtype)
        K = exact_kernel(X, kernel="rbf", gamma=0.5)
        assert K.dtype == dtype and np.isfinite(K).all()
        with np.errstate(over="ignore"):
            expected = np.exp(-0.5 * cdist(X, X, "sqeuclidean"))
        np.testing.assert_allclose(K, expected, rtol=1e-6)
        assert K[0, 1] == pytest.approx(np.exp(-0.5), rel=1e-6)
