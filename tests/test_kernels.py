import numpy as np
import pytest
from sklearn.kernel_approximation import RBFSampler

from favorkern import PositiveRandomFeatures, approximate_kernel, softmax_kernel


def test_softmax_kernel_matches_definition():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    expected = np.array([[np.exp(0.7 * x @ y) for y in Y] for x in X])
    np.testing.assert_allclose(softmax_kernel(X, Y, gamma=0.7), expected, rtol=1e-13)
    np.testing.assert_allclose(softmax_kernel(X), softmax_kernel(X, X))
    assert softmax_kernel(X.astype(np.float32)).dtype == np.float32
    assert softmax_kernel(X.astype(np.float32), Y).dtype == np.float64


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((np.zeros((2, 3)), np.zeros((2, 4))), {}, ValueError, "same number of features"),
        ((np.zeros(3),), {}, ValueError, "X must be a 2-D"),
        ((np.zeros((2, 3)),), {"gamma": 0}, ValueError, "gamma"),
        ((np.array([[np.nan]]),), {}, ValueError, "X contains NaN"),
        ((np.array([["a"]]),), {}, TypeError, "X must be a numeric"),
        ((np.zeros((0, 3)),), {}, ValueError, "X is empty"),
    ],
)
def test_softmax_kernel_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        softmax_kernel(*args, **kwargs)


def test_approximate_kernel_uses_the_fitted_map():
    X = np.random.default_rng(2).normal(scale=0.3, size=(6, 4))
    Y = X[:2] * 0.5
    prf = PositiveRandomFeatures(64, random_state=0).fit(X)
    np.testing.assert_allclose(
        approximate_kernel(X, Y, features=prf), prf.transform(X) @ prf.transform(Y).T
    )
    rbf = RBFSampler(n_components=32, random_state=0).fit(X)
    assert approximate_kernel(X, features=rbf).shape == (6, 6)
    with pytest.raises(TypeError, match="features"):
        approximate_kernel(X, features="positive")
    with pytest.raises(Exception, match="not fitted"):
        approximate_kernel(X, features=PositiveRandomFeatures())


def test_exact_kernel_matches_definitions():
    from favorkern import exact_kernel

    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    rbf = np.array([[np.exp(-0.3 * np.sum((x - y) ** 2)) for y in Y] for x in X])
    np.testing.assert_allclose(exact_kernel(X, Y, kernel="rbf", gamma=0.3), rbf, rtol=1e-12)
    np.testing.assert_array_equal(
        exact_kernel(X, Y, kernel="softmax", gamma=0.3), softmax_kernel(X, Y, gamma=0.3)
    )
    np.testing.assert_allclose(np.diag(exact_kernel(X, kernel="rbf")), 1.0)
    assert exact_kernel(X.astype(np.float32), kernel="rbf").dtype == np.float32
    assert exact_kernel(X.astype(np.float32), Y, kernel="rbf").dtype == np.float64


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"kernel": "laplacian"}, ValueError, "kernel must be one of"),
        ({"kernel": "rbf", "gamma": -1.0}, ValueError, "gamma"),
        ({"kernel": "rbf", "Y": np.zeros((2, 4))}, ValueError, "same number of features"),
    ],
)
def test_exact_kernel_bad_input(kwargs, exc, match):
    from favorkern import exact_kernel

    with pytest.raises(exc, match=match):
        exact_kernel(np.zeros((2, 3)), **kwargs)
