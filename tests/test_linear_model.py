"""RandomFeatureRidge(Classifier) against scikit-learn's Ridge, RidgeCV and RidgeClassifier."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from favorkern import (
    RandomFeatureRidge,
    RandomFeatureRidgeClassifier,
    TrigonometricRandomFeatures,
)

_GRID = (0.01, 0.1, 1.0)


def _expected_failures(estimator):
    if np.size(estimator.alphas) == 1:
        return {}
    reason = (
        "leave-one-out leaves out one row, not one unit of weight: as for RidgeCV, an integer "
        "weight and repeated rows give different errors, hence possibly another alpha"
    )
    return {
        "check_sample_weight_equivalence_on_dense_data": reason,
        "check_sample_weight_equivalence_on_sparse_data": reason,
    }


@parametrize_with_checks(
    [
        RandomFeatureRidge(),
        RandomFeatureRidge(
            TrigonometricRandomFeatures(64, kernel="rbf", gamma=0.1, random_state=0),
            alphas=_GRID,
            batch_size=7,
        ),
        RandomFeatureRidgeClassifier(),
        RandomFeatureRidgeClassifier(
            TrigonometricRandomFeatures(64, kernel="rbf", gamma=0.1, random_state=0),
            alphas=_GRID,
            fit_intercept=False,
            batch_size=7,
        ),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# -- helpers ---------------------------------------------------------------------------
import pickle  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_friedman1  # noqa: E402
from sklearn.linear_model import (  # noqa: E402
    Ridge,
    RidgeClassifier,
    RidgeClassifierCV,
    RidgeCV,
)
from sklearn.metrics.pairwise import rbf_kernel  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from favorkern import OptimalPositiveRandomFeatures  # noqa: E402
from favorkern.linear_model import RidgeStatistics, encode_labels  # noqa: E402

RTOL = 1e-8
ALPHAS = np.logspace(-4, 2, 13)


def _features(m=64, gamma=0.1, seed=0):
    return TrigonometricRandomFeatures(m, kernel="rbf", gamma=gamma, random_state=seed)


def _data(n=300, n_targets=None, seed=0):
    X, y = make_friedman1(n_samples=n, noise=1.0, random_state=seed)
    if n_targets is not None:
        rng = np.random.default_rng(seed)
        y = np.column_stack(
            [y] + [y * rng.normal() + rng.normal(size=n) for _ in range(n_targets - 1)]
        )
    return X, y


def _rel(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - ref)) / np.max(np.abs(ref)))


class _RecordingFeatures(TrigonometricRandomFeatures):
    """Records the largest number of rows mapped at once."""

    def transform(self, X):
        type(self).largest = max(getattr(type(self), "largest", 0), X.shape[0])
        return super().transform(X)


# -- equality with scikit-learn on materialized features --------------------------------
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_targets", [None, 1, 3])
@pytest.mark.parametrize("batch_size", [1, 37, 10_000])
def test_equals_ridge_on_materialized_features(fit_intercept, weighted, n_targets, batch_size):
    X, y = _data(n_targets=n_targets)
    weights = np.random.default_rng(1).uniform(0, 3, len(X)) if weighted else None
    features = _features()
    model = RandomFeatureRidge(
        features, alphas=(0.3,), fit_intercept=fit_intercept, batch_size=batch_size
    ).fit(X, y, sample_weight=weights)
    Z = clone(features).fit(X).transform(X)
    ridge = Ridge(alpha=0.3, fit_intercept=fit_intercept).fit(Z, y, sample_weight=weights)
    assert model.coef_.shape == ridge.coef_.shape
    assert _rel(model.coef_, ridge.coef_) < RTOL
    assert np.abs(np.asarray(model.intercept_) - ridge.intercept_).max() < RTOL * np.abs(y).max()
    pipeline = make_pipeline(clone(features), Ridge(alpha=0.3, fit_intercept=fit_intercept))
    pipeline.fit(X, y, ridge__sample_weight=weights)
    assert model.predict(X).shape == pipeline.predict(X).shape
    assert _rel(model.predict(X), pipeline.predict(X)) < RTOL


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_targets", [None, 2])
def test_alpha_and_cv_values_equal_ridgecv(fit_intercept, weighted, n_targets):
    X, y = _data(n=400, n_targets=n_targets, seed=3)
    weights = np.random.default_rng(2).uniform(0.2, 2, len(X)) if weighted else None
    features = _features(m=96)
    model = RandomFeatureRidge(
        features, alphas=ALPHAS, fit_intercept=fit_intercept, batch_size=53
    ).fit(X, y, sample_weight=weights)
    Z = clone(features).fit(X).transform(X)
    ridge = RidgeCV(alphas=ALPHAS, fit_intercept=fit_intercept, store_cv_results=True)
    ridge.fit(Z, y, sample_weight=weights)
    assert model.cv_criterion_ == "loo"
    assert model.alpha_ == ridge.alpha_
    reference = ridge.cv_results_.mean(axis=0)  # (n_alphas,) or (n_targets, n_alphas)
    assert model.cv_values_.shape == reference.shape
    assert _rel(model.cv_values_, reference) < 1e-7
    assert model.best_score_ == pytest.approx(ridge.best_score_, rel=1e-8)
    assert _rel(model.coef_, ridge.coef_) < RTOL


def test_grid_selects_an_interior_alpha():
    """The grid test above is only meaningful if the choice is not an end of the grid."""
    X, y = _data(n=400, seed=3)
    model = RandomFeatureRidge(_features(m=96), alphas=ALPHAS).fit(X, y)
    assert ALPHAS[0] < model.alpha_ < ALPHAS[-1]


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_classifier_equals_ridge_classifier(n_classes, fit_intercept):
    X, y = _data(n=500, seed=4)
    labels = np.digitize(y, np.quantile(y, np.linspace(0, 1, n_classes + 1)[1:-1]))
    labels = np.array(["low", "mid", "top"])[labels]
    features = _features(m=80)
    Z = clone(features).fit(X).transform(X)
    model = RandomFeatureRidgeClassifier(
        features, alphas=(0.5,), fit_intercept=fit_intercept, batch_size=61
    ).fit(X, labels)
    reference = RidgeClassifier(alpha=0.5, fit_intercept=fit_intercept).fit(Z, labels)
    assert list(model.classes_) == list(reference.classes_)
    assert _rel(model.coef_, reference.coef_) < RTOL
    assert _rel(model.decision_function(X), reference.decision_function(Z)) < RTOL
    assert (model.predict(X) == reference.predict(Z)).all()
    grid = RandomFeatureRidgeClassifier(features, alphas=ALPHAS, fit_intercept=fit_intercept)
    grid.fit(X, labels)
    reference_cv = RidgeClassifierCV(alphas=ALPHAS, fit_intercept=fit_intercept).fit(Z, labels)
    assert grid.alpha_ == reference_cv.alpha_
    assert grid.best_score_ == pytest.approx(reference_cv.best_score_, rel=1e-8)
    assert _rel(grid.coef_, reference_cv.coef_) < RTOL


def test_gcv_matches_the_hat_matrix_oracle():
    """partial_fit selects by GCV: n RSS / (n - tr H)^2 with the explicit n x n hat matrix."""
    X, y = _data(n=200, seed=5)
    features = _features(m=48)
    model = RandomFeatureRidge(features, alphas=ALPHAS).partial_fit(X, y)
    assert model.cv_criterion_ == "gcv"
    Z = clone(features).fit(X).transform(X)
    Zc, yc = Z - Z.mean(axis=0), y - y.mean()
    n = len(y)
    expected = []
    for alpha in ALPHAS:
        hat = Zc @ np.linalg.solve(Zc.T @ Zc + alpha * np.eye(Z.shape[1]), Zc.T)
        hat += 1.0 / n  # the intercept's column of ones
        residual = y - (hat @ yc + y.mean() - yc.mean())
        expected.append(n * residual @ residual / (n - np.trace(hat)) ** 2)
    assert _rel(model.cv_values_, expected) < 1e-8
    assert model.alpha_ == ALPHAS[int(np.argmin(expected))]


# -- streaming ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 119), max_size=6, unique=True),
    batch_size=st.integers(1, 50),
    weighted=st.booleans(),
    fit_intercept=st.booleans(),
)
def test_fit_equals_partial_fit_over_any_split(cuts, batch_size, weighted, fit_intercept):
    X, y = _data(n=120, n_targets=2, seed=6)
    weights = np.random.default_rng(7).uniform(0, 2, len(X)) if weighted else None
    kwargs = dict(alphas=(0.2,), fit_intercept=fit_intercept, batch_size=batch_size)
    whole = RandomFeatureRidge(_features(m=32), **kwargs).fit(X, y, sample_weight=weights)
    streamed = RandomFeatureRidge(_features(m=32), **kwargs)
    bounds = [0, *sorted(cuts), len(X)]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        w = None if weights is None else weights[start:stop]
        streamed.partial_fit(X[start:stop], y[start:stop], sample_weight=w)
    assert streamed.statistics_.n_samples == len(X)
    assert _rel(streamed.statistics_.feature_scatter, whole.statistics_.feature_scatter) < 1e-10
    assert _rel(streamed.coef_, whole.coef_) < RTOL
    assert _rel(streamed.predict(X), whole.predict(X)) < RTOL
    assert _rel(streamed.noise_variance_, whole.noise_variance_) < RTOL


def test_never_maps_more_than_one_block():
    X, y = _data(n=1000)
    _RecordingFeatures.largest = 0
    features = _RecordingFeatures(64, kernel="rbf", gamma=0.1, random_state=0)
    model = RandomFeatureRidge(features, alphas=ALPHAS, batch_size=128).fit(X, y)
    model.predict(X, return_std=True)
    assert _RecordingFeatures.largest == 128


def test_data_dependent_features_are_fitted_on_the_first_block():
    X, y = _data(n=600)
    X[300:] *= 3.0  # later rows would change the fitted A
    features = OptimalPositiveRandomFeatures(32, kernel="rbf", gamma=0.05, random_state=0)
    model = RandomFeatureRidge(features, batch_size=200).fit(X, y)
    assert model.features_.A_ == clone(features).fit(X[:200]).A_
    assert model.features_.A_ != clone(features).fit(X).A_


def test_statistics_merge_is_exact_for_shifted_blocks():
    """Blocks with very different means: the pairwise update keeps the centring exact."""
    rng = np.random.default_rng(8)
    Z = rng.normal(size=(500, 5)) + 1e4 * (np.arange(500) >= 250)[:, None]
    y = rng.normal(size=500)
    parts = RidgeStatistics.from_block(Z[:250], y[:250]).merge(
        RidgeStatistics.from_block(Z[250:], y[250:])
    )
    centred = Z - Z.mean(axis=0)
    assert _rel(parts.feature_scatter, centred.T @ centred) < 1e-12
    assert _rel(parts.cross_scatter[:, 0], centred.T @ (y - y.mean())) < 1e-10


def test_zero_weights_equal_removed_rows():
    X, y = _data(n=200)
    weights = np.ones(len(X))
    weights[::3] = 0
    a = RandomFeatureRidge(_features(), batch_size=17).fit(X, y, sample_weight=weights)
    b = RandomFeatureRidge(_features(), batch_size=17).fit(X[weights > 0], y[weights > 0])
    assert _rel(a.coef_, b.coef_) < RTOL


# -- dtypes, multi-output, meta-estimators ----------------------------------------------
def test_float32_in_float32_out():
    X, y = _data()
    X32 = X.astype(np.float32)
    model32 = RandomFeatureRidge(_features(), alphas=ALPHAS).fit(X32, y)
    model64 = RandomFeatureRidge(_features(), alphas=ALPHAS).fit(X, y)
    assert model32.coef_.dtype == np.float32
    mean, std = model32.predict(X32, return_std=True)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    assert model32.predict(X).dtype == np.float64
    assert model32.alpha_ == model64.alpha_
    assert _rel(mean, model64.predict(X)) < 1e-4


def test_multi_output_predict_and_std_shapes():
    X, y = _data(n_targets=3)
    model = RandomFeatureRidge(_features(), alphas=ALPHAS).fit(X, y)
    mean, std = model.predict(X[:7], return_std=True)
    assert mean.shape == std.shape == (7, 3)
    assert model.noise_variance_.shape == (3,)
    single = RandomFeatureRidge(_features(), alphas=(model.alpha_,)).fit(X, y[:, 1])
    assert _rel(mean[:, 1], single.predict(X[:7])) < RTOL


def test_grid_search_over_feature_gamma_matches_the_pipeline():
    X, y = _data(n=300)
    gammas = [0.01, 0.1, 1.0]
    search = GridSearchCV(
        RandomFeatureRidge(_features(), alphas=(0.1,)), {"features__gamma": gammas}, cv=3
    ).fit(X, y)
    pipeline = make_pipeline(_features(), Ridge(alpha=0.1))
    reference = GridSearchCV(pipeline, {"trigonometricrandomfeatures__gamma": gammas}, cv=3).fit(
        X, y
    )
    assert (
        search.best_params_["features__gamma"]
        == reference.best_params_["trigonometricrandomfeatures__gamma"]
    )
    assert (
        _rel(search.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"]) < 1e-8
    )
    assert search.best_estimator_.features_.gamma == search.best_params_["features__gamma"]


def test_clone_and_pickle():
    X, y = _data()
    model = RandomFeatureRidge(_features(), alphas=ALPHAS).fit(X, y)
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(restored.predict(X), model.predict(X))
    assert np.array_equal(
        restored.predict(X, return_std=True)[1], model.predict(X, return_std=True)[1]
    )
    fresh = clone(model)
    assert not hasattr(fresh, "coef_")
    assert np.array_equal(fresh.fit(X, y).predict(X), model.predict(X))


# -- predictive variance ------------------------------------------------------------------
def test_predictive_std_equals_the_dual_gaussian_process_formula():
    """sigma^2 (1 + 1/n + z^T (S + a I)^-1 z) equals the GP form with kernel Zc Zc^T / a."""
    X, y = _data(n=150)
    alpha = 0.7
    features = _features(m=40)
    model = RandomFeatureRidge(features, alphas=(alpha,)).fit(X, y)
    Z = clone(features).fit(X).transform(X)
    X_new = _data(n=20, seed=9)[0]
    Z_new = clone(features).fit(X).transform(X_new)
    mu = Z.mean(axis=0)
    Zc, Zc_new = Z - mu, Z_new - mu
    K, K_cross = Zc @ Zc.T, Zc_new @ Zc.T
    prior = np.einsum("ij,ij->i", Zc_new, Zc_new)
    posterior = (
        prior - np.einsum("ij,ji->i", K_cross, np.linalg.solve(K + alpha * np.eye(150), K_cross.T))
    ) / alpha
    residual = y - model.predict(X)
    coef = model.coef_
    sigma2 = (residual @ residual + alpha * coef @ coef) / (150 - 1)
    assert model.noise_variance_ == pytest.approx(sigma2, rel=1e-8)
    expected = np.sqrt(sigma2 * (1 + 1 / 150 + posterior))
    assert _rel(model.predict(X_new, return_std=True)[1], expected) < 1e-8


def _gp_coverage(seed, *, n_train=300, n_test=2000, gamma=1.0, noise=0.3, m=512):
    """|y - mean| / std on held-out targets of one draw of a GP with the model's kernel."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 4, size=(n_train + n_test, 2))
    K = rbf_kernel(X, gamma=gamma) + 1e-8 * np.eye(len(X))
    y = np.linalg.cholesky(K) @ rng.normal(size=len(X)) + noise * rng.normal(size=len(X))
    features = TrigonometricRandomFeatures(m, kernel="rbf", gamma=gamma, random_state=seed)
    # prior w ~ N(0, sigma^2 / alpha): the GP has unit signal variance, so alpha = noise^2
    model = RandomFeatureRidge(features, alphas=(noise**2,)).fit(X[:n_train], y[:n_train])
    mean, std = model.predict(X[n_train:], return_std=True)
    return np.abs(y[n_train:] - mean) / std, np.abs(y[n_train:] - mean) / np.sqrt(
        model.noise_variance_
    )


def test_95_percent_intervals_cover_95_percent_of_a_gaussian_process():
    """Pooled over 4 draws (8000 held-out targets, binomial sd 0.24%): coverage in [93%, 97%].

    The band is tight enough that intervals 0.8x or 1.25x as wide (nominal 88% and
    98%) fail it, and that dropping the posterior term (noise only) is visibly worse.
    """
    scores, noise_only = map(np.concatenate, zip(*(_gp_coverage(s) for s in range(4)), strict=True))
    z = 1.959963984540054
    coverage = np.mean(scores <= z)
    assert 0.93 <= coverage <= 0.97, coverage
    assert np.mean(scores <= 0.8 * z) < 0.93
    assert np.mean(scores <= 1.25 * z) > 0.97
    assert np.mean(noise_only <= z) < coverage - 0.01


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alphas": (1.0, -1.0)}, "alphas"),
        ({"alphas": ()}, "alphas"),
        ({"alphas": (np.nan,)}, "alphas"),
        ({"batch_size": 0}, "batch_size"),
        ({"features": "rbf"}, "features"),
        ({"fit_intercept": "yes"}, "fit_intercept"),
    ],
)
def test_bad_parameters_name_the_parameter(params, match):
    X, y = _data(n=50)
    with pytest.raises((ValueError, TypeError), match=match):
        RandomFeatureRidge(**params).fit(X, y)


def test_bad_inputs_name_the_argument():
    X, y = _data(n=50)
    model = RandomFeatureRidge(_features())
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(X, y, sample_weight=np.ones(49))
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(X, y, sample_weight=-np.ones(50))
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(X, y, sample_weight=np.zeros(50))
    model.fit(X, y)
    with pytest.raises(TypeError, match="return_std"):
        model.predict(X, return_std="yes")
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:, :5], y)
    with pytest.raises(ValueError, match="target"):
        model.partial_fit(X, np.column_stack([y, y]))
    classifier = RandomFeatureRidgeClassifier(_features())
    with pytest.raises(ValueError, match="classes"):
        classifier.partial_fit(X, y > 10)
    classifier.partial_fit(X, y > 10, classes=[False, True])
    with pytest.raises(ValueError, match="classes"):
        classifier.partial_fit(X, y > 10, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="not in classes"):
        classifier.partial_fit(X, np.where(y > 10, 5, 0))
    with pytest.raises(ValueError, match="two classes"):
        RandomFeatureRidgeClassifier(_features()).fit(X, np.ones(50))


def test_encode_labels_matches_label_binarizer():
    from sklearn.preprocessing import LabelBinarizer

    y = np.array([3, 1, 2, 2, 1])
    for labels in (y, y % 2):
        binarizer = LabelBinarizer(pos_label=1, neg_label=-1).fit(labels)
        assert np.array_equal(
            encode_labels(labels, binarizer.classes_), binarizer.transform(labels)
        )


# -- favorkern.regression: chunked data and the streaming fit -----------------------------
from favorkern.datasets import iter_chunks  # noqa: E402
from favorkern.regression import fit_streaming, make_regressor  # noqa: E402


def test_streaming_method_equals_the_pipeline_in_compare_regression():
    X, y = _data(n=300)
    kwargs = dict(n_components=128, gamma=0.1, alpha=0.05, random_state=3)
    pipeline = make_regressor("Trigonometric (orthogonal)", **kwargs).fit(X, y)
    streaming = make_regressor("Trigonometric (streaming)", **kwargs).fit(X, y)
    assert _rel(streaming.predict(X), pipeline.predict(X)) < RTOL


def test_iter_chunks_reads_a_csv_in_bounded_chunks(tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = _data(n=1050)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(10)]).assign(target=y)
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    chunks = list(iter_chunks(path, target="target", chunksize=200))
    assert [len(c[1]) for c in chunks] == [200] * 5 + [50]
    assert np.allclose(np.vstack([c[0] for c in chunks]), X, rtol=1e-15)
    assert np.allclose(np.concatenate([c[1] for c in chunks]), y, rtol=1e-15)
    assert sum(len(c[1]) for c in iter_chunks(path, target="target", n_samples=333)) == 333
    result = fit_streaming(path, target="target", chunksize=300, n_components=128, gamma=0.05)
    assert result["n_train"] + result["n_test"] == 1050
    assert result["test_r2"] > 0.7


def test_iter_chunks_errors(tmp_path):
    pd = pytest.importorskip("pandas")
    with pytest.raises(FileNotFoundError, match="not found"):
        iter_chunks(tmp_path / "absent.csv", target="y")
    path = tmp_path / "bad.csv"
    pd.DataFrame({"a": [1.0, 2.0, None], "b": ["u", "v", "w"], "y": [1, 2, 3]}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match="target"):
        iter_chunks(path)
    with pytest.raises(ValueError, match="'nope' not found"):
        list(iter_chunks(path, target="nope"))
    with pytest.raises(ValueError, match="non-numeric columns 'b'"):
        list(iter_chunks(path, target="y"))
    with pytest.raises(ValueError, match="target applies to files"):
        iter_chunks("friedman1", target="y")
    with pytest.raises(ValueError, match="chunksize"):
        iter_chunks("friedman1", chunksize=0)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "data.parquet").write_bytes(b"PAR1")
        with pytest.raises(ValueError, match="pyarrow"):
            iter_chunks(tmp_path / "data.parquet", target="y")


def test_friedman1_stream_is_reproducible_and_bounded():
    first = list(iter_chunks("friedman1", n_samples=2500, chunksize=1000, random_state=4))
    again = list(iter_chunks("friedman1", n_samples=2500, chunksize=1000, random_state=4))
    assert [len(y) for _, y in first] == [1000, 1000, 500]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0][0], first[1][0])
    result = fit_streaming("friedman1", n_samples=20000, chunksize=4000, n_components=256)
    assert result["test_r2"] > 0.85
    assert result["peak_rss_mb"] >= result["rss_before_mb"] > 0


def test_streamed_blocks_with_drifting_means_stay_exact():
    """One call accumulates around the first block's mean; later blocks far from it."""
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(10)
    X = rng.normal(size=(400, 4)) + 50.0 * (np.arange(400) >= 200)[:, None]
    y = X @ rng.normal(size=4) + rng.normal(size=400)
    statistics = RidgeStatistics.from_features(FunctionTransformer().fit(X), X, y, batch_size=10)
    centred = X - X.mean(axis=0)
    assert _rel(statistics.feature_scatter, centred.T @ centred) < 1e-10
    assert _rel(statistics.cross_scatter[:, 0], centred.T @ (y - y.mean())) < 1e-10
    assert statistics.target_scatter[0] == pytest.approx(np.sum((y - y.mean()) ** 2), rel=1e-10)


# -- penalty selection with scores that are not finite --------------------------------
def _trig(m=64):
    return TrigonometricRandomFeatures(m, random_state=0)


def test_partial_fit_gcv_ignores_an_alpha_whose_score_is_nan():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X[:, 0] + 0.1 * rng.normal(size=200)
    model = RandomFeatureRidge(_trig(), alphas=[1e308, 1.0]).partial_fit(X, y)
    # 1e308 is a valid penalty: its GCV score is finite (the plain mean's) but worse
    assert np.isfinite(model.cv_values_).all()
    assert model.alpha_ == 1.0 and model.score(X, y) > 0.9
    ref = RandomFeatureRidge(_trig(), alphas=[1.0]).fit(X, y)
    # eigendecomposition (grid) against Cholesky (one alpha): equal to rounding
    np.testing.assert_allclose(model.predict(X), ref.predict(X), rtol=1e-7, atol=1e-9)


def test_loo_ignores_an_alpha_whose_score_is_nan_and_refuses_a_grid_without_finite_scores():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    y = X[:, 0]
    model = RandomFeatureRidge(_trig(), alphas=[1e-320, 1.0]).fit(X, y)
    assert np.isnan(model.cv_values_[0])
    assert model.alpha_ == 1.0
    assert np.abs(model.predict(X)).max() < 10
    with pytest.raises(ValueError, match="no penalty in alphas has a finite leave-one-out"):
        RandomFeatureRidge(_trig(), alphas=[1e-320, 2e-320]).fit(X, y)


def test_bad_alphas_are_refused_before_any_row_is_transformed():
    transformed = []

    from favorkern import PositiveRandomFeatures

    class Counting(PositiveRandomFeatures):
        def transform(self, X):
            transformed.append(X.shape[0])
            return super().transform(X)

    X = np.random.default_rng(0).normal(size=(500, 3))
    y = X[:, 0]
    for alphas in ([1.0, -1.0], [1.0, np.nan], [1.0, np.inf]):
        for method in ("fit", "partial_fit"):
            model = RandomFeatureRidge(Counting(8, random_state=0), alphas=alphas, batch_size=50)
            with pytest.raises(ValueError, match="alphas must hold finite numbers > 0"):
                getattr(model, method)(X, y)
    assert transformed == []


def test_loo_memory_does_not_grow_with_the_grid(monkeypatch):
    # the (rows, targets, alphas) arrays of the leave-one-out pass come in slices that
    # fit the block budget: compare with one slice per alpha and with the whole grid
    from favorkern import _config

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 2))
    alphas = np.logspace(-4, 2, 40)
    model = RandomFeatureRidge(_trig(32), alphas=alphas, batch_size=100)
    whole = model.fit(X, y).cv_values_
    monkeypatch.setattr(_config, "RIDGE_BLOCK_BYTES", 8 * 100 * 3 * 5)  # 5 alphas a slice
    from favorkern.linear_model import _solver

    calls = []
    real = _solver.RidgeSolver._loo_slice

    def spy(self, U, squares, centred, weights, part):
        calls.append(part.size)
        return real(self, U, squares, centred, weights, part)

    monkeypatch.setattr(_solver.RidgeSolver, "_loo_slice", spy)
    sliced = clone(model).fit(X, y).cv_values_
    assert max(calls) == 5 and sum(calls) == 40 * 3  # 3 blocks of 100 rows
    np.testing.assert_allclose(sliced, whole, rtol=1e-12)
