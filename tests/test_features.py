"""The transformers estimate their kernels; dtypes, errors, large norms, sklearn tooling."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from favorkern import (
    GeneralizedRandomFeatures,
    HyperbolicRandomFeatures,
    OptimalPositiveRandomFeatures,
    PositiveRandomFeatures,
    TrigonometricRandomFeatures,
    draw_projection,
    softmax_kernel,
)
from favorkern._warnings import FeatureUnderflowWarning
from favorkern.feature_maps import FeatureOverflowWarning, apply_feature_map

KERNEL_MAPS = (PositiveRandomFeatures, HyperbolicRandomFeatures, TrigonometricRandomFeatures)


def _redraw(estimator, n_dims, seed):
    """Draw the projection exactly as ``fit`` does, without re-validating X each trial."""
    rng = np.random.RandomState(seed)
    estimator.projection_ = draw_projection(
        estimator._n_projections(),
        n_dims,
        projection=estimator.projection,
        norms=estimator.norms,
        random_state=rng,
    )
    estimator.draws_ = estimator._get_feature_map().draw(estimator.n_components, rng)


def _monte_carlo(estimator, X, n_trials, seed0=0):
    """Kernel estimates phi(X) phi(X)^T over independent projections: (trials, n, n)."""
    estimator = clone(estimator).fit(X)
    estimates = np.empty((n_trials, len(X), len(X)))
    for trial in range(n_trials):
        _redraw(estimator, X.shape[1], seed0 + trial)
        phi = apply_feature_map(X, estimator._spec())
        estimates[trial] = phi @ phi.T
    return estimates


def _exact(estimator, X):
    gamma = estimator.gamma
    if isinstance(estimator, GeneralizedRandomFeatures):
        return _generalized_kernel(estimator.function, np.sqrt(gamma) * X)
    if estimator.kernel == "rbf":
        return rbf_kernel(X, gamma=gamma)
    return softmax_kernel(X, gamma=gamma)


def _generalized_kernel(function, X):
    """E_w[f(w.x) f(w.y)], w ~ N(0, I), in closed form."""
    norms = np.linalg.norm(X, axis=1)
    outer = np.outer(norms, norms)
    cos = np.clip((X @ X.T) / outer, -1.0, 1.0)
    angle = np.arccos(cos)
    if function == "identity":
        return X @ X.T
    if function == "relu":  # arc-cosine kernel of order 1 (Cho & Saul 2009)
        return outer * (np.sin(angle) + (np.pi - angle) * cos) / (2 * np.pi)
    if function == "abs":
        return outer * (2 / np.pi) * (np.sqrt(1 - cos**2) + cos * np.arcsin(cos))
    if function == "exp":
        sq = norms**2
        return np.exp(0.5 * (sq[:, None] + sq[None, :] + 2 * X @ X.T))
    raise AssertionError(function)


def _assert_unbiased(estimates, exact, n_sigma=4.5):
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))
    # Some entries are deterministic (trig softmax diagonal): floor se at rounding level.
    tolerance = n_sigma * se + 1e-10 * np.abs(exact)
    z = np.abs(mean - exact) / np.maximum(se, 1e-300)
    assert np.all(np.abs(mean - exact) <= tolerance), f"max |mean - exact| / se = {z.max():.2f}"


# Three points in d = 8 with norms 0.5..0.9 and mixed angles: all kernels O(1).
_RNG = np.random.default_rng(12345)
_DIRECTIONS = _RNG.normal(size=(3, 8))
X_PAIRS = _DIRECTIONS / np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True) * [[0.5], [0.7], [0.9]]


@pytest.mark.parametrize("cls", KERNEL_MAPS)
@pytest.mark.parametrize("kernel", ["softmax", "rbf"])
@pytest.mark.parametrize("projection", ["orthogonal", "gaussian"])
@pytest.mark.parametrize("n_components", [12, 13])
def test_kernel_maps_are_unbiased(cls, kernel, projection, n_components):
    estimator = cls(n_components, kernel=kernel, gamma=0.8, projection=projection)
    estimates = _monte_carlo(estimator, X_PAIRS, n_trials=2000)
    _assert_unbiased(estimates, _exact(estimator, X_PAIRS))


@pytest.mark.parametrize("projection", ["simplex", "structured"])
@pytest.mark.parametrize("cls", KERNEL_MAPS)
def test_new_projections_keep_maps_unbiased(cls, projection):
    # Simplex rows are exactly marginally Gaussian (unbiased); structured (SORF) rows only
    # approximately, with a bias below the Monte-Carlo resolution at these norms.
    estimator = cls(11, kernel="softmax", gamma=0.8, projection=projection)
    estimates = _monte_carlo(estimator, X_PAIRS, n_trials=2000)
    _assert_unbiased(estimates, _exact(estimator, X_PAIRS))


@pytest.mark.parametrize("A", [None, -0.4, 0.03])
@pytest.mark.parametrize("kernel", ["softmax", "rbf"])
@pytest.mark.parametrize("projection", ["orthogonal", "gaussian", "simplex"])
def test_optimal_positive_features_are_unbiased(A, kernel, projection):
    estimator = OptimalPositiveRandomFeatures(
        9, kernel=kernel, gamma=0.8, A=A, projection=projection
    )
    estimates = _monte_carlo(estimator, X_PAIRS, n_trials=2000)
    _assert_unbiased(estimates, _exact(estimator, X_PAIRS))


def test_optimal_a_matches_theory_table():
    # :ref:`theory-log-variance-table`: d = 64, |x + y|^2 = 100 -> A* = -0.472; d = 16, 2 -> -0.053.
    from favorkern.feature_maps.optimal import optimal_gerf_a

    assert optimal_gerf_a(100.0, 64) == pytest.approx(-0.47236, abs=1e-5)
    assert optimal_gerf_a(2.0, 16) == pytest.approx(-0.053174, abs=1e-6)
    assert optimal_gerf_a(0.0, 16) == 0.0
    d, phi = 32, 7.0
    direct = (d - 2 * phi - np.sqrt((2 * phi + d) ** 2 + 8 * d * phi)) / (16 * d)
    assert optimal_gerf_a(phi, d) == pytest.approx(direct, rel=1e-12)


def test_optimal_a_fitted_by_homogeneity_heuristic():
    X = np.random.default_rng(3).normal(loc=0.1, scale=0.4, size=(50, 8))
    est = OptimalPositiveRandomFeatures(16, gamma=0.5, random_state=0).fit(X)
    pairs = 0.5 * np.sum((X[:, None, :] + X[None, :, :]) ** 2, axis=2)  # gamma |x + y|^2
    from favorkern.feature_maps.optimal import optimal_gerf_a

    assert est.A_ == pytest.approx(optimal_gerf_a(pairs.mean(), 8), rel=1e-10)
    sparse_est = OptimalPositiveRandomFeatures(16, gamma=0.5, random_state=0).fit(sp.csr_matrix(X))
    assert sparse_est.A_ == pytest.approx(est.A_, rel=1e-10)
    zero = OptimalPositiveRandomFeatures(16, A=0.0, random_state=0).fit(X)
    np.testing.assert_allclose(
        zero.transform(X),
        PositiveRandomFeatures(16, random_state=0).fit(X).transform(X),
        rtol=1e-12,
    )


def test_optimal_features_reduce_variance_at_large_norms():
    # :ref:`theory-log-variance-table`: d = 16, x orthogonal to y, |x|^2 = |y|^2 = 4: at
    # A* = -0.177 the per-projection variance is e^3.19 = 24x below the positive features'
    # closed form (Lemma 2; Monte Carlo of the positive features is too heavy-tailed to use here).
    from favorkern.feature_maps.optimal import optimal_gerf_a

    d, m = 16, 16
    X = np.zeros((2, d))
    X[0, 0] = X[1, 1] = 2.0
    exact = np.exp(X[0] @ X[1])
    z_sq = 8.0
    positive_mse = np.exp(-8.0) * (np.exp(2 * z_sq) - np.exp(z_sq)) / m
    a_star = optimal_gerf_a(z_sq, d)
    assert a_star == pytest.approx(-0.177, abs=1e-3)
    est = OptimalPositiveRandomFeatures(m, A=a_star, projection="gaussian")
    estimates = _monte_carlo(est, X, 4000)[:, 0, 1]
    optimal_mse = np.mean((estimates - exact) ** 2)
    assert optimal_mse < 0.1 * positive_mse


@pytest.mark.parametrize("function", ["relu", "abs", "exp", "identity"])
@pytest.mark.parametrize("projection", ["orthogonal", "gaussian"])
def test_generalized_maps_are_unbiased(function, projection):
    estimator = GeneralizedRandomFeatures(10, function=function, gamma=1.3, projection=projection)
    estimates = _monte_carlo(estimator, X_PAIRS, n_trials=2000)
    _assert_unbiased(estimates, _exact(estimator, X_PAIRS))


AXIS_PAIR = np.zeros((1, 16))
AXIS_PAIR[0, 0] = 0.8


def test_axis_aligned_pair_is_unbiased_and_raw_qr_is_not():
    # :ref:`theory-qr-sign`: x = y = 0.8 e_1, d = m = 16.
    estimator = PositiveRandomFeatures(16, projection="orthogonal")
    exact = softmax_kernel(AXIS_PAIR)[0, 0]
    estimates = _monte_carlo(estimator, AXIS_PAIR, n_trials=4000)
    _assert_unbiased(estimates, np.array([[exact]]))

    # The same test has the power to reject the reference code's raw (sign-uncorrected)
    # QR, whose mean is ~0.95 SM here: batched over 20000 draws.
    d, n_trials = 16, 20000
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.standard_normal((n_trials, d, d)))
    W = np.swapaxes(q, 1, 2) * np.sqrt(rng.chisquare(d, size=(n_trials, d, 1)))
    x = AXIS_PAIR[0]
    phi = np.exp(W @ x - x @ x / 2) / np.sqrt(d)
    raw = np.sum(phi * phi, axis=1)
    z = (raw.mean() - exact) / (raw.std(ddof=1) / np.sqrt(n_trials))
    assert z < -4.5, f"raw QR should be biased low, got z = {z:.2f}"


def _pair_with(sum_sq=None, diff_sq=None, d=16):
    """x, y (rows) with |x + y|^2 = sum_sq and x = y, or |x - y|^2 = diff_sq and x = -y."""
    e = np.zeros(d)
    e[0] = 1.0
    if sum_sq is not None:
        x = 0.5 * np.sqrt(sum_sq) * e
        return np.stack([x, x])
    x = 0.5 * np.sqrt(diff_sq) * e
    return np.stack([x, -x])


@pytest.mark.parametrize(
    "estimator, X, predicted_ratio",
    [
        # :ref:`theory-gain-table`: trig ORF/iid = 0.158 at |x - y|^2 = 1, d = m = 16.
        (TrigonometricRandomFeatures(32, kernel="rbf", gamma=0.5), _pair_with(diff_sq=1.0), 0.158),
        # positive ORF/iid = 0.731 at |x + y|^2 = 1, d = m = 64.
        (PositiveRandomFeatures(64, gamma=1.0), _pair_with(sum_sq=1.0, d=64), 0.731),
    ],
    ids=["trig-rbf-d16", "positive-softmax-d64"],
)
def test_orthogonal_beats_iid_where_theory_predicts_a_gap(estimator, X, predicted_ratio):
    exact = _exact(estimator, X)[0, 1]
    mse = {}
    for projection in ("orthogonal", "gaussian"):
        est = _monte_carlo(clone(estimator).set_params(projection=projection), X, 3000)[:, 0, 1]
        mse[projection] = np.mean((est - exact) ** 2)
    ratio = mse["orthogonal"] / mse["gaussian"]
    assert ratio < 1.0
    assert ratio == pytest.approx(predicted_ratio, rel=0.25)


def test_fit_draws_what_the_test_harness_draws():
    X = X_PAIRS
    for cls in KERNEL_MAPS:
        fitted = cls(13, random_state=7).fit(X)
        redrawn = cls(13).fit(X)
        _redraw(redrawn, X.shape[1], 7)
        np.testing.assert_array_equal(fitted.transform(X), redrawn.transform(X))


@pytest.mark.parametrize("cls", KERNEL_MAPS + (GeneralizedRandomFeatures,))
def test_same_seed_same_features_and_float32_preserved(cls):
    X = np.random.default_rng(0).normal(scale=0.3, size=(20, 5))
    a = cls(9, random_state=3).fit(X)
    b = cls(9, random_state=3).fit(X)
    np.testing.assert_array_equal(a.projection_, b.projection_)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    Z32 = a.transform(X.astype(np.float32))
    assert Z32.dtype == np.float32
    np.testing.assert_allclose(Z32, a.transform(X), rtol=2e-5, atol=1e-6)
    assert a.transform(X.astype(np.int64)).dtype == np.float64


@pytest.mark.parametrize("cls", KERNEL_MAPS)
def test_sparse_input_matches_dense(cls):
    X = sp.random(30, 12, density=0.3, format="csr", random_state=0, dtype=np.float64)
    est = cls(16, random_state=0).fit(X)
    np.testing.assert_allclose(est.transform(X), est.transform(X.toarray()), rtol=1e-12)
    Z = est.transform(X.astype(np.float32))
    assert Z.dtype == np.float32


def test_threaded_row_blocks_match_single_thread(monkeypatch):
    X = np.random.default_rng(1).normal(scale=0.2, size=(5000, 32))
    est = PositiveRandomFeatures(256, random_state=0).fit(X)
    threaded = est.transform(X)
    monkeypatch.setenv("FAVORKERN_NUM_THREADS", "1")
    single = est.transform(X)
    np.testing.assert_allclose(threaded, single, rtol=1e-12)


# -- large norms --------------------------------------------------------------------


@pytest.mark.parametrize("dtype, norm", [(np.float64, 1e3), (np.float32, 1e2)])
@pytest.mark.parametrize("cls", (PositiveRandomFeatures, HyperbolicRandomFeatures))
@pytest.mark.parametrize("kernel", ["softmax", "rbf"])
def test_large_norms_stay_finite_for_exp_maps(dtype, norm, cls, kernel):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 16))
    X *= norm / np.linalg.norm(X, axis=1, keepdims=True)
    X[0] *= 1e-3  # one small-norm row among large ones
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the large rows' features underflow to 0: said by this warning, nothing else
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        Z = cls(64, kernel=kernel, random_state=0).fit(X).transform(X.astype(dtype))
    assert Z.dtype == dtype
    assert np.isfinite(Z).all()


@pytest.mark.parametrize("dtype, norm", [(np.float64, 1e3), (np.float32, 1e2)])
def test_large_norms_rbf_trig_finite(dtype, norm):
    X = np.random.default_rng(0).normal(size=(50, 16)) * norm / 4
    Z = (
        TrigonometricRandomFeatures(64, kernel="rbf", random_state=0)
        .fit(X)
        .transform(X.astype(dtype))
    )
    assert np.isfinite(Z).all()


def test_trig_softmax_overflow_is_loud():
    X = np.full((3, 4), 30.0)  # exp(|x|^2 / 2) = exp(1800) overflows float64
    est = TrigonometricRandomFeatures(8, random_state=0).fit(X)
    with pytest.warns(FeatureOverflowWarning, match="overflow float64"):
        est.transform(X)
    with pytest.warns(FeatureOverflowWarning, match="overflow float32"):
        est.transform((X / 3).astype(np.float32))  # exp(200): fine in float64, not float32


def test_exp_feature_overflow_in_float32_is_loud():
    # d = 400: max |w|^2 / 2 > 88.7, so the float32 exponent can overflow for x ~ w.
    d = 400
    est = PositiveRandomFeatures(8, projection="gaussian", random_state=0).fit(np.zeros((1, d)))
    X = est.projection_[:1].astype(np.float32)
    with pytest.warns(FeatureOverflowWarning, match="float32"):
        est.transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(est.transform(X.astype(np.float64))).all()


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", KERNEL_MAPS + (GeneralizedRandomFeatures,))
@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "infinity"),
        (np.zeros(4), "2D array"),
        (np.zeros((2, 2, 2)), "dim"),
        (np.zeros((0, 3)), "0 sample"),
        (np.array([["a", "b"]]), "convert|numeric|dtype"),
    ],
    ids=["nan", "inf", "1d", "3d", "empty", "strings"],
)
def test_bad_X(cls, X, match):
    with pytest.raises(ValueError, match=match):
        cls().fit(X)
    fitted = cls(4, random_state=0).fit(np.zeros((2, 2)))
    if X.ndim == 2 and X.shape[1] == 2:
        with pytest.raises(ValueError, match=match):
            fitted.transform(X)


@pytest.mark.parametrize("cls", KERNEL_MAPS)
def test_wrong_number_of_features_at_transform(cls):
    est = cls(4).fit(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="5 features"):
        est.transform(np.zeros((3, 4)))


@pytest.mark.parametrize(
    "params, name",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": np.inf}, "gamma"),
        ({"kernel": "laplace"}, "kernel"),
        ({"projection": "hadamard"}, "projection"),
        ({"norms": "unit"}, "norms"),
    ],
)
@pytest.mark.parametrize("cls", KERNEL_MAPS)
def test_bad_parameters_name_the_parameter(cls, params, name):
    with pytest.raises(ValueError, match=name):
        cls(**params).fit(np.zeros((2, 3)))


def test_generalized_bad_function():
    with pytest.raises(ValueError, match="function"):
        GeneralizedRandomFeatures(function="tanh").fit(np.zeros((2, 3)))
    est = GeneralizedRandomFeatures(4, function=lambda u: u[:, :1]).fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="function"):
        est.transform(np.zeros((2, 3)))


def test_generalized_callable_function():
    X = np.random.default_rng(0).normal(size=(6, 3))
    a = GeneralizedRandomFeatures(8, function=np.tanh, random_state=0).fit_transform(X)
    W = draw_projection(8, 3, random_state=0)
    np.testing.assert_allclose(a, np.tanh(X @ W.T) / np.sqrt(8), rtol=1e-12)


# -- properties -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 10),
    n_components=st.integers(1, 33),
    cls=st.sampled_from(KERNEL_MAPS + (GeneralizedRandomFeatures,)),
    dtype=st.sampled_from([np.float32, np.float64]),
    projection=st.sampled_from(["orthogonal", "gaussian"]),
    seed=st.integers(0, 1000),
)
def test_shapes_dtypes_and_finiteness(n, d, n_components, cls, dtype, projection, seed):
    X = np.random.default_rng(seed).normal(scale=0.5, size=(n, d)).astype(dtype)
    est = cls(n_components, projection=projection, random_state=seed)
    Z = est.fit_transform(X)
    assert Z.shape == (n, n_components)
    assert Z.dtype == dtype
    assert np.isfinite(Z).all()
    assert len(est.get_feature_names_out()) == n_components
    if cls in (PositiveRandomFeatures, HyperbolicRandomFeatures):
        assert (Z >= 0).all()


@settings(max_examples=25, deadline=None)
@given(
    cls=st.sampled_from(KERNEL_MAPS),
    kernel=st.sampled_from(["softmax", "rbf"]),
    n_components=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_rows_sum_estimates_the_kernel_at_zero_input(cls, kernel, n_components, seed):
    # At x = 0 the maps are deterministic: phi(0).phi(0) = k(0, 0) = 1 exactly (except
    # the random-phase unpaired output of an odd-width trigonometric map).
    if cls is TrigonometricRandomFeatures:
        n_components += n_components % 2
    Z = cls(n_components, kernel=kernel, random_state=seed).fit_transform(np.zeros((1, 4)))
    assert (Z @ Z.T).item() == pytest.approx(1.0, rel=1e-12)


# -- scikit-learn tooling --------------------------------------------------------------


def test_pipeline_gridsearch_clone_pickle():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=120)
    pipe = make_pipeline(
        StandardScaler(), TrigonometricRandomFeatures(64, kernel="rbf", random_state=0), Ridge()
    )
    search = GridSearchCV(
        pipe,
        {
            "trigonometricrandomfeatures__gamma": [0.1, 0.5],
            "trigonometricrandomfeatures__n_components": [32, 65],
        },
        cv=3,
    ).fit(X, y)
    assert search.best_score_ > 0.5
    best = search.best_estimator_
    restored = pickle.loads(pickle.dumps(best))
    np.testing.assert_array_equal(restored.predict(X), best.predict(X))
    cloned = clone(best[1])
    assert cloned.get_params() == best[1].get_params()
    assert not hasattr(cloned, "projection_")


def test_set_output_pandas_names():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(5, 3)), columns=["a", "b", "c"])
    est = HyperbolicRandomFeatures(6, random_state=0).set_output(transform="pandas").fit(X)
    out = est.transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"hyperbolicrandomfeatures{i}" for i in range(6)]
    assert list(est.feature_names_in_) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "cls", [PositiveRandomFeatures, OptimalPositiveRandomFeatures, GeneralizedRandomFeatures]
)
@pytest.mark.parametrize("norms", ["chi", "fixed"])
def test_structured_fast_transform_matches_dense_product(cls, norms):
    # d_pad = 1024 >= SORF_MIN_PADDED_DIMS: transform runs the numba Walsh-Hadamard path.
    X = np.random.default_rng(0).normal(scale=0.02, size=(37, 600))
    est = cls(700, projection="structured", norms=norms, random_state=0).fit(X)
    assert est._spec().projector is not None
    fast = est.transform(X)
    fast32 = est.transform(X.astype(np.float32))
    est.projection_ = est.projection_.copy()  # a replaced projection falls back to BLAS
    assert est._spec().projector is None
    dense = est.transform(X)
    np.testing.assert_allclose(fast, dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())
    np.testing.assert_allclose(fast32, dense, rtol=2e-5, atol=1e-6 * np.abs(dense).max())
    assert fast32.dtype == np.float32
    again = pickle.loads(
        pickle.dumps(cls(700, projection="structured", norms=norms, random_state=0).fit(X))
    )
    np.testing.assert_array_equal(again.transform(X), fast)


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_boolean_n_components_is_refused(value):
    from sklearn.utils._param_validation import InvalidParameterError

    from favorkern import PositiveRandomFeatures, RandomFeatures

    X = np.random.default_rng(0).normal(size=(5, 3))
    for estimator in (
        PositiveRandomFeatures(n_components=value),
        RandomFeatures(n_components=value),
    ):
        with pytest.raises(
            InvalidParameterError, match="'n_components' parameter .* must be an int"
        ):
            estimator.fit(X)
