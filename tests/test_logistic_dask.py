"""favorkern.dask.fit_logistic against the in-memory fit."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from sklearn.datasets import make_classification  # noqa: E402

from favorkern import RandomFeatureLogisticRegression, TrigonometricRandomFeatures  # noqa: E402
from favorkern.dask import fit_logistic  # noqa: E402


def _model():
    features = TrigonometricRandomFeatures(32, kernel="rbf", gamma=0.2, random_state=0)
    return RandomFeatureLogisticRegression(features, C=2.0, tol=1e-10, max_iter=2000, batch_size=64)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunks", [500, 90, (1, 299, 17, 183)])
def test_fit_equals_in_memory_fit(n_classes, weighted, chunks):
    X, y = make_classification(500, 5, n_informative=3, n_classes=n_classes, random_state=0)
    weights = np.random.default_rng(0).uniform(0, 2, len(y)) if weighted else None
    reference = _model().fit(X, y, sample_weight=weights)
    w_dask = None if weights is None else da.from_array(weights, chunks=77)
    with dask.config.set(scheduler="synchronous"):
        model = fit_logistic(
            _model(), da.from_array(X, chunks=(chunks, 5)), da.from_array(y, chunks=123), w_dask
        )
    # Sums in another order: equal to the optimizer's tolerance.
    np.testing.assert_allclose(model.coef_, reference.coef_, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), atol=1e-7)


def test_bad_input_is_refused():
    X, y = make_classification(100, 4, random_state=0)
    with pytest.raises(TypeError, match="RandomFeatureLogisticRegression"):
        fit_logistic(object(), da.from_array(X), y)
    with pytest.raises(TypeError, match="dask array"):
        fit_logistic(_model(), X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_logistic(_model(), da.from_array(X, chunks=50), np.zeros(100))


def test_newton_solver_is_refused_before_any_work():
    X, y = make_classification(100, 5, random_state=0)
    model = RandomFeatureLogisticRegression(solver="newton")
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        fit_logistic(model, da.from_array(X, chunks=50), da.from_array(y, chunks=50))
    assert not hasattr(model, "coef_")
