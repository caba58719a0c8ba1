"""favorkern.dask.fit / predict of the streaming ridge models against the in-memory fit."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from sklearn.datasets import make_friedman1  # noqa: E402

from favorkern import (  # noqa: E402
    RandomFeatureRidge,
    RandomFeatureRidgeClassifier,
    TrigonometricRandomFeatures,
)
from favorkern.dask import fit, local_cluster, predict  # noqa: E402

RTOL = 1e-8
ALPHAS = np.logspace(-4, 2, 7)


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes (favorkern.dask.local_cluster)."""
    with local_cluster(n_workers=2, dashboard_address=None, memory_limit="2GiB") as cluster:
        with distributed.Client(cluster) as client:
            client.run(lambda: __import__("favorkern.linear_model"))
            yield client


def _features():
    return TrigonometricRandomFeatures(48, kernel="rbf", gamma=0.1, random_state=0)


def _rel(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - ref)) / np.max(np.abs(ref)))


def _data(n=700, n_targets=None):
    X, y = make_friedman1(n_samples=n, noise=1.0, random_state=0)
    if n_targets:
        y = np.column_stack([y, np.sin(y)][:n_targets])
    return X, y


@pytest.mark.parametrize("alphas", [(0.3,), ALPHAS], ids=["one-alpha", "grid"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunks", [700, 100, (1, 299, 17, 383)])
def test_fit_equals_in_memory_fit(client, alphas, weighted, chunks):
    X, y = _data()
    weights = np.random.default_rng(0).uniform(0, 2, len(X)) if weighted else None
    model = RandomFeatureRidge(_features(), alphas=alphas, batch_size=64)
    reference = RandomFeatureRidge(_features(), alphas=alphas, batch_size=64)
    reference.fit(X, y, sample_weight=weights)
    X_dask = da.from_array(X, chunks=(chunks, 5))  # column chunks are merged
    w_dask = None if weights is None else da.from_array(weights, chunks=50)
    fit(model, X_dask, da.from_array(y, chunks=123), sample_weight=w_dask)
    assert model.alpha_ == reference.alpha_
    assert _rel(model.coef_, reference.coef_) < RTOL
    assert abs(model.intercept_ - reference.intercept_) < RTOL * np.abs(y).max()
    if len(alphas) > 1:
        assert model.cv_criterion_ == "loo"
        assert _rel(model.cv_values_, reference.cv_values_) < 1e-8
    mean, std = predict(model, X_dask, return_std=True)
    assert mean.chunks == (X_dask.chunks[0],)
    ref_mean, ref_std = reference.predict(X, return_std=True)
    assert _rel(mean.compute(), ref_mean) < RTOL
    assert _rel(std.compute(), ref_std) < RTOL


def test_multi_output_and_float32(client):
    X, y = _data(n_targets=2)
    X32 = X.astype(np.float32)
    reference = RandomFeatureRidge(_features(), alphas=ALPHAS).fit(X32, y)
    model = fit(RandomFeatureRidge(_features(), alphas=ALPHAS), da.from_array(X32, chunks=200), y)
    assert model.coef_.shape == reference.coef_.shape == (2, 48)
    assert model.coef_.dtype == np.float32
    # float32 features may differ by an ulp between the worker (one thread) and the
    # in-memory path (row blocks on threads); the solve amplifies that to ~1e-6
    assert _rel(model.coef_, reference.coef_) < 1e-5  # float32 coefficients
    out = predict(model, da.from_array(X32, chunks=200))
    assert out.dtype == np.float32 and out.shape == (700, 2)
    assert _rel(out.compute(), reference.predict(X32)) < 1e-5


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_equals_in_memory_fit(client, n_classes):
    X, y = _data()
    labels = np.digitize(y, np.quantile(y, np.linspace(0, 1, n_classes + 1)[1:-1]))
    reference = RandomFeatureRidgeClassifier(_features(), alphas=ALPHAS).fit(X, labels)
    X_dask = da.from_array(X, chunks=150)
    model = fit(RandomFeatureRidgeClassifier(_features(), alphas=ALPHAS), X_dask, labels)
    assert list(model.classes_) == list(reference.classes_)
    assert model.alpha_ == reference.alpha_
    assert _rel(model.coef_, reference.coef_) < RTOL
    assert (predict(model, X_dask).compute() == reference.predict(X)).all()


def test_bad_input(client):
    X, y = _data(n=100)
    X_dask = da.from_array(X, chunks=50)
    with pytest.raises(TypeError, match="model"):
        fit(object(), X_dask, y)
    with pytest.raises(TypeError, match="X must be a dask array"):
        fit(RandomFeatureRidge(), X, y)
    with pytest.raises(ValueError, match=r"y has shape \(99,\)"):
        fit(RandomFeatureRidge(), X_dask, y[:99])
    model = fit(RandomFeatureRidge(_features()), X_dask, y)
    with pytest.raises(ValueError, match="features"):
        predict(model, X_dask[:, :3])
    with pytest.raises(ValueError, match="return_std"):
        predict(fit(RandomFeatureRidgeClassifier(_features()), X_dask, y > 14), X_dask, True)


def test_dask_fit_with_an_empty_chunk_and_a_width_other_than_n_components():
    import dask.array as da
    from sklearn.kernel_approximation import Nystroem

    from favorkern import RandomFeatureRidge
    from favorkern.dask import fit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = X[:, 0]
    Xd = da.from_array(X, chunks=((20, 0, 20), (5,)))
    yd = da.from_array(y, chunks=((20, 0, 20),))
    features = Nystroem(n_components=100, random_state=0)  # 40 rows: 40 landmarks
    with pytest.warns(UserWarning, match="n_components > n_samples"):
        model = fit(RandomFeatureRidge(features, batch_size=64), Xd, yd)
    with pytest.warns(UserWarning, match="n_components > n_samples"):
        ref = RandomFeatureRidge(features, batch_size=64).fit(X, y)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-8, atol=1e-10)


def test_dask_fit_selection_ignores_nan_scores_and_checks_alphas_first():
    import dask.array as da

    from favorkern import RandomFeatureRidge, TrigonometricRandomFeatures
    from favorkern.dask import fit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    y = X[:, 0]
    Xd, yd = da.from_array(X, chunks=3), da.from_array(y, chunks=3)
    features = TrigonometricRandomFeatures(64, random_state=0)
    model = fit(RandomFeatureRidge(features, alphas=[1e-320, 1.0]), Xd, yd)
    assert model.alpha_ == 1.0
    with pytest.raises(ValueError, match="no penalty in alphas has a finite"):
        fit(RandomFeatureRidge(features, alphas=[1e-320, 2e-320]), Xd, yd)
    bad = da.from_array(np.full((6, 3), np.nan), chunks=3)  # never computed
    with pytest.raises(ValueError, match="alphas must hold finite numbers > 0"):
        fit(RandomFeatureRidge(features, alphas=[1.0, -2.0]), bad, yd)
