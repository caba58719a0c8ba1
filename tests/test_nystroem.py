"""NystroemFeatures: scikit-learn's Nystroem on the same landmarks, the landmark choices,
the eigenvalue floor, the kernels, and the streaming ridge models fitted with it."""

import warnings

import numpy as np
import pytest
from scipy import sparse
from sklearn.datasets import make_friedman1
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import Ridge
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.utils.estimator_checks import (
    check_param_validation,
    check_set_output_transform,
    check_transformer_get_feature_names_out,
    parametrize_with_checks,
)

from favorkern import (
    GeneralizedRandomFeatures,
    NystroemFeatures,
    RandomFeatureRidge,
    RandomFeatureRidgeClassifier,
)
from favorkern.nystroem import nystroem_kernel, recursive_leverage_sample

ESTIMATORS = [
    NystroemFeatures(),
    NystroemFeatures(5, landmarks="uniform"),
    NystroemFeatures(5, landmarks="kmeans"),
    # Common checks fit data centred at 100, whose softmax kernel overflows at larger gamma.
    NystroemFeatures(5, landmarks="leverage", kernel="softmax", gamma=1e-5),
    NystroemFeatures(5, kernel="relu"),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_components=")
        check(estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS[1:3], ids=repr)
@pytest.mark.parametrize(
    "check",
    [check_param_validation, check_set_output_transform, check_transformer_get_feature_names_out],
    ids=lambda c: c.__name__,
)
def test_checks_left_out_by_parametrize_with_checks(estimator, check):
    check(type(estimator).__name__, estimator)


def _data(n=400, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("m", [1, 17, 60])
def test_uniform_equals_sklearn_nystroem(m):
    X = _data()
    ours = NystroemFeatures(m, gamma=0.5, landmarks="uniform", random_state=3).fit(X)
    theirs = Nystroem(gamma=0.5, n_components=m, random_state=3).fit(X)
    np.testing.assert_array_equal(ours.landmark_indices_, theirs.component_indices_)
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=0, atol=1e-10)


def test_uniform_softmax_equals_sklearn_with_the_kernel_as_callable():
    X = 0.3 * _data()

    def softmax(x, y):
        return np.exp(0.7 * x @ y)

    ours = NystroemFeatures(30, kernel="softmax", gamma=0.7, landmarks="uniform", random_state=1)
    theirs = Nystroem(softmax, n_components=30, random_state=1)
    np.testing.assert_allclose(ours.fit_transform(X), theirs.fit_transform(X), rtol=0, atol=1e-10)


def test_sparse_input_gives_the_dense_features():
    X = _data()
    X[X < 0.5] = 0.0
    for landmarks in ("uniform", "leverage", "kmeans"):
        est = NystroemFeatures(20, gamma=0.3, landmarks=landmarks, random_state=0)
        dense = est.fit(X).transform(X)
        np.testing.assert_allclose(est.fit(sparse.csr_matrix(X)).transform(X), dense, atol=1e-10)


@pytest.mark.parametrize("landmarks", ["uniform", "kmeans", "leverage"])
@pytest.mark.parametrize("kernel", ["rbf", "softmax", "relu"])
def test_exact_on_the_landmarks_and_converges(landmarks, kernel):
    X = 0.5 * _data(300, 4)
    gamma = 0.5
    K = nystroem_kernel(X, X, kernel=kernel, gamma=gamma)
    errors = []
    for m in (10, 80):
        est = NystroemFeatures(m, kernel=kernel, gamma=gamma, landmarks=landmarks, random_state=0)
        Z = est.fit_transform(X)
        assert Z.shape == (300, m) and est.n_components_ == m
        Z_L = est.transform(est.landmarks_)
        K_L = nystroem_kernel(est.landmarks_, est.landmarks_, kernel=kernel, gamma=gamma)
        np.testing.assert_allclose(Z_L @ Z_L.T, K_L, atol=1e-8 * np.abs(K_L).max())
        errors.append(np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K))
    assert errors[1] < 0.5 * errors[0]
    # The Nyström approximation never exceeds the kernel: K - Z Z^T is positive semidefinite.
    assert np.linalg.eigvalsh(K - Z @ Z.T).min() > -1e-8 * np.abs(K).max()


def test_relu_kernel_closed_form_and_monte_carlo():
    x = np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.0]])
    K = nystroem_kernel(x, x, kernel="relu", gamma=2.0)
    assert K[0, 0] == pytest.approx(2.0 * 9.0 / 2)  # |x'|^2 / 2
    assert K[0, 1] == pytest.approx(2.0 * 6.0 / (2 * np.pi))  # orthogonal: |x'||y'| / (2 pi)
    assert K[0, 2] == pytest.approx(0.0, abs=1e-12)  # opposite: relu(u) relu(-u) = 0
    assert np.all(K[3] == 0)
    X = _data(6, 3)
    relu = GeneralizedRandomFeatures(2**16, function="relu", gamma=2.0, random_state=0)
    Z = relu.fit_transform(X)
    exact = nystroem_kernel(X, X, kernel="relu", gamma=2.0)
    # Monte Carlo with 2^16 features: standard error ~ |x'||y'| / 256.
    assert np.abs(Z @ Z.T - exact).max() < 0.05 * np.abs(exact).max()


def test_leverage_sample_prefers_isolated_rows():
    # 95% of rows in a tight cluster, 5% spread out: the spread rows carry most of
    # the ridge leverage, so leverage sampling takes them far more often than 5%.
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(scale=0.05, size=(1900, 3)), rng.normal(scale=3.0, size=(100, 3))])
    shares = [
        np.mean(recursive_leverage_sample(X, 60, gamma=1.0, random_state=seed) >= 1900)
        for seed in range(5)
    ]
    assert np.mean(shares) > 0.5
    idx = recursive_leverage_sample(X, 60, gamma=1.0, random_state=0)
    assert len(np.unique(idx)) == 60
    np.testing.assert_array_equal(idx, recursive_leverage_sample(X, 60, gamma=1.0, random_state=0))


def test_leverage_beats_uniform_on_uneven_density():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(scale=0.1, size=(2850, 3)), rng.normal(scale=3.0, size=(150, 3))])
    K = rbf_kernel(X, gamma=1.0)

    def error(landmarks, seed):
        est = NystroemFeatures(100, gamma=1.0, landmarks=landmarks, random_state=seed)
        Z = est.fit_transform(X)
        return np.trace(K - Z @ Z.T)  # the nuclear norm: K - Z Z^T is positive semidefinite

    # Measured: 83 against 136 (seeds 0-2).
    assert np.mean([error("leverage", s) for s in range(3)]) < 0.75 * np.mean(
        [error("uniform", s) for s in range(3)]
    )


@pytest.fixture
def few_candidates():
    from favorkern import _config

    with _config.override(NYSTROEM_MIN_CANDIDATES=50, NYSTROEM_CANDIDATES_PER_LANDMARK=5):
        yield


def test_candidates_are_subsampled(monkeypatch, few_candidates):
    import favorkern.nystroem as module

    seen = []
    original = module.recursive_leverage_sample

    def spy(pool, m, **kwargs):
        seen.append(pool.shape[0])
        return original(pool, m, **kwargs)

    monkeypatch.setattr(module, "recursive_leverage_sample", spy)
    est = NystroemFeatures(20, random_state=0).fit(_data(1000))
    assert seen == [100]
    assert len(np.unique(est.landmark_indices_)) == 20


def test_eigenvalue_floor_with_duplicate_landmarks():
    X = _data(50, 3)
    landmarks = np.vstack([X[:10], X[:10], X[:10] + 1e-12])
    est = NystroemFeatures(landmarks=landmarks, gamma=0.5).fit(X)
    Z = est.transform(X)
    assert Z.shape == (50, 30) and np.all(np.isfinite(Z))
    assert np.sum(est.eigenvalues_ > 30 * np.finfo(float).eps * est.eigenvalues_[-1]) <= 20
    # The duplicates add nothing: the same kernel approximation as the ten distinct rows.
    Z10 = NystroemFeatures(landmarks=X[:10], gamma=0.5).fit(X).transform(X)
    np.testing.assert_allclose(Z @ Z.T, Z10 @ Z10.T, atol=1e-6)


def test_user_landmarks_and_kmeans_attributes():
    X = _data()
    est = NystroemFeatures(landmarks=X[:7], gamma=0.2).fit(X)
    assert est.transform(X).shape == (400, 7) and est.landmark_indices_ is None
    assert est.get_feature_names_out().tolist()[-1] == "nystroemfeatures6"
    km = NystroemFeatures(12, landmarks="kmeans", random_state=0).fit(X)
    assert km.landmarks_.shape == (12, 5) and km.landmark_indices_ is None


def test_float32_in_float32_out_and_reproducible():
    X = _data().astype(np.float32)
    for landmarks in ("uniform", "kmeans", "leverage"):
        est = NystroemFeatures(20, gamma=0.3, landmarks=landmarks, random_state=4)
        Z = est.fit_transform(X)
        assert Z.dtype == np.float32
        np.testing.assert_allclose(Z, est.fit(X.astype(np.float64)).transform(X), atol=1e-4)
        np.testing.assert_array_equal(est.fit(X).landmarks_, est.fit(X).landmarks_)


def test_more_components_than_rows_warns_and_takes_every_row():
    X = _data(10)
    with pytest.warns(UserWarning, match="every row is a landmark"):
        est = NystroemFeatures(50, gamma=0.1).fit(X)
    assert est.n_components_ == 10 and est.transform(X).shape == (10, 10)


def test_bad_input_is_refused():
    X = _data()
    with pytest.raises(ValueError, match="landmarks must have the 5 columns"):
        NystroemFeatures(landmarks=np.ones((3, 4))).fit(X)
    with pytest.raises(ValueError, match="landmarks"):
        NystroemFeatures(landmarks="random").fit(X)
    with pytest.raises(ValueError, match="kernel"):
        NystroemFeatures(kernel="laplacian").fit(X)
    with pytest.raises(ValueError, match="gamma"):
        NystroemFeatures(gamma=0).fit(X)
    est = NystroemFeatures(5, kernel="softmax", landmarks="uniform", random_state=0).fit(X)
    with pytest.raises(ValueError, match="softmax kernel"):
        est.transform(100 * X)
    for landmarks in ("uniform", "leverage"):
        with pytest.raises(ValueError, match="overflows"):
            NystroemFeatures(5, kernel="softmax", landmarks=landmarks).fit(100 * X)


def test_ridge_fits_nystroem_on_the_first_block_then_streams():
    X, y = make_friedman1(n_samples=900, noise=0.5, random_state=0)
    features = NystroemFeatures(40, gamma=0.1, random_state=0)
    model = RandomFeatureRidge(features, alphas=(0.01,), batch_size=300).fit(X, y)
    frozen = NystroemFeatures(40, gamma=0.1, random_state=0).fit(X[:300])
    np.testing.assert_array_equal(model.features_.landmarks_, frozen.landmarks_)
    reference = Ridge(alpha=0.01).fit(frozen.transform(X), y)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(model.predict(X), reference.predict(frozen.transform(X)), atol=1e-8)
    # partial_fit keeps the map of its first call
    streamed = RandomFeatureRidge(features, alphas=(0.01,))
    for start in range(0, 900, 300):
        streamed.partial_fit(X[start : start + 300], y[start : start + 300])
    np.testing.assert_allclose(streamed.coef_, reference.coef_, rtol=1e-7, atol=1e-9)


def test_ridge_classifier_with_nystroem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 2))
    y = (np.hypot(X[:, 0], X[:, 1]) > 1.2).astype(int)  # a ring: not linearly separable
    model = RandomFeatureRidgeClassifier(
        NystroemFeatures(50, gamma=1.0, random_state=0), alphas=(1e-3,)
    ).fit(X[:400], y[:400])
    assert model.score(X[400:], y[400:]) > 0.9


def test_dask_fit_with_nystroem():
    da = pytest.importorskip("dask.array")
    from favorkern.dask import fit

    X, y = make_friedman1(n_samples=600, noise=0.5, random_state=1)
    template = NystroemFeatures(30, gamma=0.1, random_state=0)
    reference = RandomFeatureRidge(template, alphas=(0.1, 1.0), batch_size=200).fit(X, y)
    import dask

    with dask.config.set(scheduler="synchronous"):
        model = fit(
            RandomFeatureRidge(template, alphas=(0.1, 1.0), batch_size=200),
            da.from_array(X, chunks=150),
            da.from_array(y, chunks=150),
        )
    assert model.alpha_ == reference.alpha_
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-8, atol=1e-10)
