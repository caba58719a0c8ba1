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
