"""favorkern.diagnostics under hostile conditions: norms where the closed forms
overflow, bad parameters, pairs where the estimator is exact.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from favorkern._warnings import FeatureUnderflowWarning
from favorkern.diagnostics import theoretical_mse


@pytest.mark.parametrize("norm", [19.0, 25.0, 40.0])
@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
def test_trigonometric_mse_at_large_norms_is_zero_when_exact(norm, projection):
    # x = y: Var1 = e^{2|x|^2} (1 - e^0)^2 / 2 = 0; the product form gave inf * 0 = NaN.
    x = np.zeros(4)
    x[0] = norm
    direct = theoretical_mse(x, x, feature_map="trigonometric", n_components=16,
                             projection=projection)  # fmt: skip
    assert direct == 0.0
    log = theoretical_mse(x, x, feature_map="trigonometric", n_components=16,
                          projection=projection, log=True)  # fmt: skip
    assert log == -np.inf


def test_trigonometric_mse_direct_is_exp_of_log_beyond_overflow():
    x = np.array([[10.0, 0, 0, 0], [0.1, 0.2, 0, 0], [19.0, 0, 0, 0]])
    y = np.array([[0, 10.0, 0, 0], [0.2, 0.1, 0, 0], [0, 19.0, 0, 0]])
    log = theoretical_mse(x, y, feature_map="trigonometric", n_components=16, log=True)
    with np.errstate(over="ignore"):
        expected = np.exp(log)
    direct = theoretical_mse(x, y, feature_map="trigonometric", n_components=16)
    assert not np.isnan(direct).any()
    np.testing.assert_array_equal(direct, expected)  # inf where e^{|x|^2+|y|^2} overflows
    assert direct[2] == np.inf and np.isfinite(log[2])


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"feature_map": "nope", "n_components": 4}, ValueError, "feature_map"),
        ({"feature_map": "hyperbolic", "n_components": 5}, ValueError, "n_components"),
        ({"feature_map": "positive", "n_components": 0}, ValueError, "n_components"),
        ({"feature_map": "positive", "n_components": 4, "gamma": -1}, ValueError, "gamma"),
        ({"feature_map": "positive", "n_components": 4, "log": "yes"}, TypeError, "log"),
        ({"feature_map": "positive", "n_components": 4, "projection": "haar"}, ValueError,
         "projection"),
        ({"feature_map": "optimal", "n_components": 4, "A": 0.2}, ValueError, "A must"),
    ],
    ids=["feature_map", "odd-width", "zero-width", "gamma", "log", "projection", "A"],
)  # fmt: skip
def test_theoretical_mse_bad_parameters_named(kwargs, error, name):
    x = np.full(4, 0.1)
    with pytest.raises(error, match=name):
        theoretical_mse(x, x, **kwargs)


def test_theoretical_mse_nonfinite_pair_named():
    with pytest.raises(ValueError, match="x contains NaN"):
        theoretical_mse(np.array([np.nan, 1.0]), np.ones(2), feature_map="positive",
                        n_components=4)  # fmt: skip


def test_variance_study_leaves_exact_pairs_undefined():
    """A closed-form MSE of exactly 0 gave ratio inf and z ~ 5 from rounding noise."""
    from favorkern.diagnostics import variance_study

    x = np.array([[0.3, 0.1, 0.2], [0.2, -0.1, 0.4]])
    y = np.array([-x[0], x[1] * 0.5])  # the first pair: y = -x, exact for positive features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        study = variance_study(x, y, feature_maps="positive", n_components=[8],
                               projection="gaussian", n_trials=200, random_state=0)  # fmt: skip
    exact = study["theoretical_mse"] == 0
    assert exact.sum() == 1 and study.loc[exact, ["ratio", "z"]].isna().all(axis=None)
    assert np.isfinite(study.loc[~exact, ["ratio", "z"]].to_numpy()).all()


def test_convergence_at_huge_norms_has_no_nan():
    """The exact kernel overflowed float64, so every relative error was inf / inf."""
    from favorkern.diagnostics import convergence

    X = np.random.default_rng(7).normal(size=(5, 3)) * 30.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        table = convergence(X, n_components=[16], n_repeats=2, random_state=0)
    columns = ["max_rel_error", "mean_rel_error", "theoretical_rel_rmse"]
    assert not table[columns].isna().any(axis=None)
    assert (table["max_rel_error"] >= 0).all()
