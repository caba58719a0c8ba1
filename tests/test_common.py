"""scikit-learn's estimator checks, plus the ones parametrize_with_checks leaves out."""

import pytest
from sklearn.utils.estimator_checks import (
    check_get_feature_names_out_error,
    check_global_output_transform_pandas,
    check_param_validation,
    check_set_output_transform,
    check_set_output_transform_pandas,
    check_transformer_get_feature_names_out,
    check_transformer_get_feature_names_out_pandas,
    parametrize_with_checks,
)

from favorkern import (
    GeneralizedRandomFeatures,
    HyperbolicRandomFeatures,
    OptimalPositiveRandomFeatures,
    PositiveRandomFeatures,
    RandomFeatures,
    TrigonometricRandomFeatures,
)

ESTIMATORS = [
    cls(kernel=kernel, projection=projection)
    for cls in (PositiveRandomFeatures, HyperbolicRandomFeatures, TrigonometricRandomFeatures)
    for kernel in ("softmax", "rbf")
    for projection in ("orthogonal", "gaussian")
] + [GeneralizedRandomFeatures(function=f) for f in ("relu", "abs", "exp", "identity")]

ESTIMATORS += [
    OptimalPositiveRandomFeatures(),
    OptimalPositiveRandomFeatures(A=-0.1, kernel="rbf"),
    RandomFeatures("saderf"),
    RandomFeatures("hyperbolic", projection="simplex"),
]

# Odd widths exercise the unpaired output of the paired maps.
ESTIMATORS += [
    HyperbolicRandomFeatures(n_components=7),
    TrigonometricRandomFeatures(n_components=7),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


EXTRA_CHECKS = [
    check_param_validation,
    check_set_output_transform,
    check_set_output_transform_pandas,
    check_global_output_transform_pandas,
    check_transformer_get_feature_names_out,
    check_transformer_get_feature_names_out_pandas,
    check_get_feature_names_out_error,
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
@pytest.mark.parametrize("check", EXTRA_CHECKS, ids=lambda c: c.__name__)
def test_checks_left_out_by_parametrize_with_checks(estimator, check):
    pytest.importorskip("pandas")
    check(type(estimator).__name__, estimator)
