"""favorkern.features under hostile conditions: parameters set after fit, feature rows
that underflow, the optimal map at huge norms.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from favorkern import (
    GeneralizedRandomFeatures,
    HyperbolicRandomFeatures,
    OptimalPositiveRandomFeatures,
    PositiveRandomFeatures,
    RandomFeatures,
    TrigonometricRandomFeatures,
)
from favorkern._warnings import ApproximationWarning, FeatureUnderflowWarning
from favorkern.feature_maps.optimal import optimal_gerf_a

from .shared import no_warnings

TRANSFORMERS = [
    PositiveRandomFeatures,
    HyperbolicRandomFeatures,
    TrigonometricRandomFeatures,
    OptimalPositiveRandomFeatures,
    GeneralizedRandomFeatures,
]


def _make(cls, n_components):
    if cls == "RandomFeatures":
        return RandomFeatures("positive", n_components, random_state=0)
    return cls(n_components, random_state=0)


@pytest.mark.parametrize("cls", [*TRANSFORMERS, "RandomFeatures"], ids=str)
def test_set_params_gamma_after_fit_keeps_the_fitted_state(cls):
    # Documented: transform uses the state fitted by fit; set_params applies at the next fit.
    X = np.random.default_rng(0).normal(scale=0.3, size=(12, 4))
    est = _make(cls, 8).fit(X)
    before = est.transform(X)
    est.set_params(gamma=-1)
    np.testing.assert_array_equal(est.transform(X), before)  # not NaN, not changed
    with pytest.raises(ValueError, match="gamma"):
        est.fit(X)


@pytest.mark.parametrize("cls", [*TRANSFORMERS, "RandomFeatures"], ids=str)
def test_set_params_n_components_after_fit_applies_at_the_next_fit(cls):
    X = np.random.default_rng(1).normal(scale=0.3, size=(12, 4))
    est = _make(cls, 8).fit(X)
    before = est.transform(X)
    est.set_params(n_components=16)
    after = est.transform(X)  # no broadcast error, and not a silent mix of the two widths
    assert after.shape == (12, 8)
    np.testing.assert_array_equal(after, before)
    assert est.fit(X).transform(X).shape == (12, 16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [PositiveRandomFeatures, HyperbolicRandomFeatures],
                         ids=lambda c: c.__name__)  # fmt: skip
def test_underflowing_feature_rows_warn_once_with_their_count(cls, dtype):
    rng = np.random.default_rng(2)
    X = rng.normal(scale=0.2, size=(10, 4))
    est = cls(16, random_state=0).fit(X)
    X[[1, 4, 7]] *= 500.0  # exp(w.x - |x|^2 / 2) below the smallest float in every feature
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Z = est.transform(X.astype(dtype))
    relevant = [w for w in caught if issubclass(w.category, ApproximationWarning)]
    assert len(relevant) == 1 and issubclass(relevant[0].category, FeatureUnderflowWarning)
    assert "3 of 10 rows" in str(relevant[0].message)
    assert Z.dtype == dtype and np.isfinite(Z).all()
    assert np.flatnonzero(~Z.any(axis=1)).tolist() == [1, 4, 7]


def test_ordinary_input_does_not_warn_about_underflow():
    X = np.random.default_rng(3).normal(size=(200, 8)).astype(np.float32)
    context = no_warnings()
    try:
        for cls in (PositiveRandomFeatures, HyperbolicRandomFeatures):
            cls(64, random_state=0).fit_transform(X)
        OptimalPositiveRandomFeatures(64, random_state=0).fit_transform(X)
    finally:
        context.__exit__(None, None, None)


def test_optimal_fit_at_huge_norms_has_finite_a_and_warned_zero_features():
    X = np.random.default_rng(4).normal(size=(20, 4)) * 1e160  # |x|^2 overflows float64
    est = OptimalPositiveRandomFeatures(16, random_state=0).fit(X)
    assert np.isfinite(est.A_) and est.A_ < 0
    with pytest.warns(FeatureUnderflowWarning, match="20 of 20 rows"):
        Z = est.transform(X)
    assert np.isfinite(Z).all() and not Z.any()  # exp(x.y) itself is beyond float64 here


@pytest.mark.parametrize("phi", [1e-12, 0.01, 1.0, 100.0, 1e6])
def test_optimal_a_star_matches_the_closed_form(phi):
    d = 16
    direct = (d - 2 * phi - np.sqrt((2 * phi + d) ** 2 + 8 * d * phi)) / (16 * d)
    # the direct form cancels for small phi: compare where it is accurate
    tolerance = 1e-9 if phi >= 0.01 else 1e-3
    assert float(optimal_gerf_a(phi, d)) == pytest.approx(direct, rel=tolerance)


@pytest.mark.parametrize("phi", [1e200, 1e308, np.inf])
def test_optimal_a_star_finite_and_asymptotic_at_huge_phi(phi):
    d = 16
    a = float(optimal_gerf_a(phi, d))
    assert np.isfinite(a)
    expected = -min(phi, np.finfo(np.float64).max) / (4 * d)  # A* -> -phi / (4 d)
    assert a == pytest.approx(expected, rel=1e-12)
