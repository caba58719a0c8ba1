"""favorkern.linear_model under hostile conditions: targets with NaN, of the wrong
length or beyond float64 squares, in every ridge path.
"""

from __future__ import annotations

import numpy as np
import pytest

from favorkern import (
    PositiveRandomFeatures,
)


def test_targets_with_nan_or_wrong_length_are_refused_in_every_ridge_path(dask_sync):
    """NaN targets gave a model of NaN coefficients (dask, statistics) without an error."""
    import dask.array as da

    import favorkern.dask as fd
    from favorkern import RandomFeatureRidge
    from favorkern.linear_model import RidgeStatistics

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = X.sum(axis=1)
    features = PositiveRandomFeatures(16, random_state=0).fit(X)
    for bad in (np.nan, np.inf):
        y_bad = y.copy()
        y_bad[45] = bad
        with pytest.raises(ValueError, match="targets y contain NaN or infinity"):
            fd.fit(RandomFeatureRidge(alphas=[0.1, 1.0]), da.from_array(X, chunks=20),
                   da.from_array(y_bad, chunks=20)).coef_  # fmt: skip
        with pytest.raises(ValueError, match="targets y contain NaN or infinity"):
            RidgeStatistics.from_features(features, X, y_bad)
    with pytest.raises(ValueError, match="must have 50 rows like X"):
        RidgeStatistics.from_features(features, X, y[:-1])


def test_ridge_targets_beyond_float64_squares_and_failed_first_partial_fit():
    from sklearn.exceptions import NotFittedError

    from favorkern import RandomFeatureRidge, RandomFeatureRidgeClassifier
    from favorkern.diagnostics import empirical_mse

    X = np.random.default_rng(5).normal(size=(50, 3))
    with pytest.raises(ValueError, match="sums of their squares would overflow"):
        RandomFeatureRidge(alphas=[0.1, 1.0, 10.0]).fit(X, X.sum(axis=1) * 1e160)
    model = RandomFeatureRidgeClassifier()
    with pytest.raises(ValueError, match="labels not in classes"):
        model.partial_fit(X[:3], ["a", "b", "c"], classes=[0, 1, 2])
    assert not hasattr(model, "classes_")
    with pytest.raises(NotFittedError):
        model.predict(X)
    with pytest.raises(ValueError, match="n_trials must be"):
        empirical_mse(X[:2], X[2:4], feature_map="positive", n_components=8, n_trials=1)
