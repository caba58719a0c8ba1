"""Trigonometric features with distinct frequencies (one random-phase cosine per output)."""

import numpy as np
import pytest
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

from favorkern import TrigonometricRandomFeatures
from favorkern.diagnostics import theoretical_mse
from favorkern.feature_maps import TrigonometricFeatureMap

ESTIMATORS = [
    TrigonometricRandomFeatures(frequencies="distinct", kernel=kernel, projection=projection)
    for kernel in ("softmax", "rbf")
    for projection in ("orthogonal", "structured")
] + [TrigonometricRandomFeatures(7, frequencies="distinct", kernel="rbf")]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_param_validation():
    check_param_validation("TrigonometricRandomFeatures", ESTIMATORS[0])
    with pytest.raises(ValueError, match="frequencies"):
        TrigonometricRandomFeatures(frequencies="odd").fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="frequencies"):
        TrigonometricFeatureMap("odd")


def test_one_direction_and_phase_per_output():
    X = np.random.default_rng(0).normal(size=(20, 6))
    est = TrigonometricRandomFeatures(
        10, kernel="rbf", gamma=0.3, frequencies="distinct", random_state=0
    ).fit(X)
    assert est.projection_.shape == (10, 6) and est.random_offset_.shape == (10,)
    # phi_j(x) = sqrt(2/m) cos(sqrt(2 gamma) w_j.x + b_j)
    expected = np.sqrt(2 / 10) * np.cos(np.sqrt(0.6) * X @ est.projection_.T + est.random_offset_)
    np.testing.assert_allclose(est.transform(X), expected, atol=1e-12)
    Z32 = est.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32
    np.testing.assert_allclose(Z32, expected, atol=1e-5)


@pytest.mark.parametrize("projection", ["orthogonal", "structured", "gaussian"])
def test_rbf_kernel_is_approximated(projection):
    X = np.random.default_rng(1).normal(size=(30, 8))
    est = TrigonometricRandomFeatures(
        2**14, kernel="rbf", gamma=0.05, projection=projection, frequencies="distinct",
        random_state=0,
    )  # fmt: skip
    Z = est.fit_transform(X)
    # Per entry the standard deviation is at most sqrt(1/m) ~ 0.008.
    assert np.abs(Z @ Z.T - rbf_kernel(X, gamma=0.05)).max() < 0.05


@pytest.mark.parametrize(("projection", "norms"), [("gaussian", "chi"), ("orthogonal", "fixed")])
def test_closed_form_mse_against_monte_carlo(projection, norms):
    # The closed form (the pair's variance plus e^{|x'|^2+|y'|^2} / 2 per feature) against
    # the squared error of 1500 independent draws of the transformer, softmax kernel.
    rng = np.random.default_rng(0)
    x, y = 0.4 * rng.normal(size=(3, 8)), 0.4 * rng.normal(size=(3, 8))
    kernel = np.exp(np.einsum("ij,ij->i", x, y))
    errors = []
    for seed in range(1500):
        est = TrigonometricRandomFeatures(
            16, projection=projection, norms=norms, frequencies="distinct", random_state=seed
        ).fit(x)
        errors.append(np.einsum("ij,ij->i", est.transform(x), est.transform(y)) - kernel)
    squared = np.square(errors)
    mse, se = squared.mean(axis=0), squared.std(axis=0) / np.sqrt(len(squared))
    closed = theoretical_mse(
        x, y, feature_map=TrigonometricFeatureMap("distinct"), n_components=16,
        projection=projection, norms=norms,
    )  # fmt: skip
    assert np.all(np.abs(mse - closed) < 4 * se)
    # The random phases cost variance: the paired map's MSE is smaller at equal width.
    paired = theoretical_mse(
        x, y, feature_map="trigonometric", n_components=16, projection=projection, norms=norms
    )
    assert np.all(paired < closed)
