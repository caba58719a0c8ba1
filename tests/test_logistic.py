"""RandomFeatureLogisticRegression against scikit-learn's LogisticRegression on the
materialized features, streamed over blocks, weighted, and the estimator checks."""

import numpy as np
import pytest
from sklearn.datasets import load_iris, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

from favorkern import (
    NystroemFeatures,
    RandomFeatureLogisticRegression,
    TrigonometricRandomFeatures,
)
from favorkern.linear_model._logistic import logistic_block

TIGHT = dict(tol=1e-10, max_iter=5000)


def _expected_failures(estimator):
    if estimator.features is None:
        return {}
    # Landmarks are chosen on the first block: repeating rows instead of weighting them
    # changes which rows that block holds, hence the features.
    reason = "data-dependent features fitted on the first block of rows"
    return {
        "check_sample_weight_equivalence_on_dense_data": reason,
        "check_sample_weight_equivalence_on_sparse_data": reason,
    }


@parametrize_with_checks(
    [
        RandomFeatureLogisticRegression(),
        RandomFeatureLogisticRegression(NystroemFeatures(10, gamma=0.5), batch_size=7),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_param_validation():
    check_param_validation("RandomFeatureLogisticRegression", RandomFeatureLogisticRegression())


def _features(m=48):
    return TrigonometricRandomFeatures(m, kernel="rbf", gamma=0.2, random_state=0)


def _reference(model, X, y, sample_weight=None):
    Z = model.features_.transform(X)
    ref = LogisticRegression(C=model.C, tol=1e-12, max_iter=20000)
    return ref.fit(Z, y, sample_weight=sample_weight), Z


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("batch_size", [None, 37])
@pytest.mark.parametrize("weighted", [False, True])
def test_equals_sklearn_on_the_materialized_features(n_classes, batch_size, weighted):
    X, y = make_classification(
        400, 6, n_informative=4, n_classes=n_classes, n_clusters_per_class=1, random_state=0
    )
    weights = np.random.default_rng(0).uniform(0, 3, len(y)) if weighted else None
    model = RandomFeatureLogisticRegression(_features(), C=2.0, batch_size=batch_size, **TIGHT)
    model.fit(X, y, sample_weight=weights)
    ref, Z = _reference(model, X, y, weights)
    assert model.coef_.shape == ref.coef_.shape
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(Z), atol=1e-7)
    np.testing.assert_allclose(model.predict_log_proba(X), ref.predict_log_proba(Z), atol=1e-6)
    np.testing.assert_array_equal(model.predict(X), ref.predict(Z))
    if n_classes == 2:
        np.testing.assert_allclose(model.intercept_, ref.intercept_, atol=1e-6)
        np.testing.assert_allclose(model.decision_function(X), ref.decision_function(Z), atol=1e-6)


def test_string_labels_and_iris_with_nystroem():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = RandomFeatureLogisticRegression(
        NystroemFeatures(30, gamma=0.3, random_state=0), C=5.0, **TIGHT
    ).fit(X, names)
    ref, Z = _reference(model, X, names)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-6)
    assert model.classes_.tolist() == names[[0, 50, 100]].tolist()
    assert model.score(X, names) > 0.95


def test_block_gradient_against_finite_differences():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(20, 4))
    for n_rows, labels in ((1, rng.integers(0, 2, 20)), (3, rng.integers(0, 3, 20))):
        coef, intercept, weights = rng.normal(size=(n_rows, 4)), rng.normal(size=n_rows), None
        weights = rng.uniform(size=20)
        loss, g, g0 = logistic_block(Z, labels, weights, coef, intercept)
        step = 1e-6
        for i in range(n_rows):
            for j in range(4):
                shifted = coef.copy()
                shifted[i, j] += step
                numeric = (logistic_block(Z, labels, weights, shifted, intercept)[0] - loss) / step
                assert numeric == pytest.approx(g[i, j], abs=1e-4)
            moved = intercept.copy()
            moved[i] += step
            numeric = (logistic_block(Z, labels, weights, coef, moved)[0] - loss) / step
            assert numeric == pytest.approx(g0[i], abs=1e-4)


def test_features_are_fitted_on_the_first_block_and_kept_when_one_block():
    X, y = make_classification(300, 4, random_state=1)
    model = RandomFeatureLogisticRegression(
        NystroemFeatures(20, random_state=0), batch_size=100
    ).fit(X, y)
    first = NystroemFeatures(20, random_state=0).fit(X[:100])
    np.testing.assert_array_equal(model.features_.landmarks_, first.landmarks_)
    one_block = RandomFeatureLogisticRegression(NystroemFeatures(20, random_state=0)).fit(X, y)
    assert one_block.n_passes_ >= one_block.n_iter_[0]


def test_random_state_seeds_the_features():
    X, y = make_classification(200, 4, random_state=2)
    a = RandomFeatureLogisticRegression(random_state=3).fit(X, y)
    b = RandomFeatureLogisticRegression(random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.features_.projection_, b.features_.projection_)
    c = RandomFeatureLogisticRegression(
        TrigonometricRandomFeatures(kernel="rbf"), random_state=3
    ).fit(X, y)
    np.testing.assert_array_equal(a.features_.projection_, c.features_.projection_)
    kept = RandomFeatureLogisticRegression(
        TrigonometricRandomFeatures(kernel="rbf", random_state=5), random_state=3
    ).fit(X, y)
    assert kept.features_.random_state == 5


def test_not_converged_warns_and_bad_input_is_refused():
    from sklearn.exceptions import ConvergenceWarning

    X, y = make_classification(200, 4, random_state=2)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        RandomFeatureLogisticRegression(max_iter=2, tol=0).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        RandomFeatureLogisticRegression().fit(X, np.zeros(200))
    with pytest.raises(ValueError, match="sample_weight"):
        RandomFeatureLogisticRegression().fit(X, y, sample_weight=-np.ones(200))
    with pytest.raises(ValueError, match="sums to zero"):
        RandomFeatureLogisticRegression().fit(X, y, sample_weight=np.zeros(200))
    with pytest.raises(ValueError, match="C"):
        RandomFeatureLogisticRegression(C=0).fit(X, y)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("batch_size", [None, 37])
@pytest.mark.parametrize("weighted", [False, True])
def test_newton_equals_sklearn_newton_cholesky(n_classes, batch_size, weighted):
    # Both solve the same objective by Newton steps to a gradient below 1e-10:
    # the coefficients agree far below the 1e-6 of the L-BFGS comparison.
    X, y = make_classification(
        400, 6, n_informative=4, n_classes=n_classes, n_clusters_per_class=1, random_state=0
    )
    weights = np.random.default_rng(0).uniform(0, 3, len(y)) if weighted else None
    model = RandomFeatureLogisticRegression(
        _features(), C=2.0, batch_size=batch_size, solver="newton", tol=1e-10
    ).fit(X, y, sample_weight=weights)
    Z = model.features_.transform(X)
    ref = LogisticRegression(C=2.0, tol=1e-12, max_iter=1000, solver="newton-cholesky")
    ref.fit(Z, y, sample_weight=weights)
    np.testing.assert_allclose(model.coef_, ref.coef_, atol=1e-7, rtol=0)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, atol=1e-7, rtol=0)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(Z), atol=1e-8)
    # Newton converges in a few passes where L-BFGS takes tens
    lbfgs = RandomFeatureLogisticRegression(_features(), C=2.0, batch_size=batch_size, tol=1e-10)
    lbfgs.fit(X, y, sample_weight=weights)
    assert model.n_passes_ < lbfgs.n_passes_


def test_newton_block_hessian_against_finite_differences():
    from favorkern.linear_model._newton import newton_block

    rng = np.random.default_rng(4)
    Z = rng.normal(size=(30, 3))
    for n_rows, labels in ((1, rng.integers(0, 2, 30)), (3, rng.integers(0, 3, 30))):
        coef, intercept, weights = rng.normal(size=(n_rows, 3)), rng.normal(size=n_rows), None
        weights = rng.uniform(size=30)
        loss, g, H = newton_block(Z, labels, weights, coef, intercept)
        # the gradient is logistic_block's, laid out row by row as [coef, intercept]
        _, g_coef, g_intercept = logistic_block(Z, labels, weights, coef, intercept)
        np.testing.assert_allclose(g, np.column_stack([g_coef, g_intercept]).ravel(), atol=1e-12)
        params, step = np.column_stack([coef, intercept]), 1e-6
        for j in range(params.size):
            moved = params.copy()
            moved.flat[j] += step
            shifted = newton_block(Z, labels, weights, moved[:, :-1], moved[:, -1])[1]
            np.testing.assert_allclose((shifted - g) / step, H[:, j], atol=1e-4)
        np.testing.assert_allclose(H, H.T, atol=1e-12)
        assert newton_block(Z, labels, weights, coef, intercept, hessian=False)[0] == loss


def test_newton_is_checked_like_lbfgs():
    from sklearn.exceptions import ConvergenceWarning

    X, y = make_classification(200, 4, random_state=2)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        RandomFeatureLogisticRegression(max_iter=1, tol=0, solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="solver"):
        RandomFeatureLogisticRegression(solver="irls").fit(X, y)
    with pytest.raises(ValueError, match="sums to zero"):
        RandomFeatureLogisticRegression(solver="newton").fit(X, y, sample_weight=np.zeros(200))
    # the Hessian of K (m + 1) unknowns is bounded: refused before any pass
    from favorkern import _config

    X3, y3 = make_classification(200, 5, n_informative=3, n_classes=3, random_state=2)
    with _config.override(NEWTON_MAX_UNKNOWNS=3 * 32):
        with pytest.raises(ValueError, match="3 coefficient rows x 33.*solver='lbfgs'"):
            RandomFeatureLogisticRegression(_features(32), solver="newton").fit(X3, y3)
        RandomFeatureLogisticRegression(_features(31), solver="newton").fit(X3, y3)


@parametrize_with_checks(
    [RandomFeatureLogisticRegression(solver="newton", max_iter=50)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible_newton(estimator, check):
    check(estimator)
