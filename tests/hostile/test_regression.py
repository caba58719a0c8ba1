"""favorkern.regression under hostile conditions: arguments that are wrong."""

from __future__ import annotations

import numpy as np
import pytest


def test_regression_arguments_name_what_is_wrong():
    from favorkern.regression import compare_regression, select_gamma_alpha

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(60, 3)), rng.normal(size=60)
    result = compare_regression(X, y, n_components=[8], methods="RBFSampler", cv_samples=40)
    assert set(result["method"]) == {"RBFSampler"}
    with pytest.raises(ValueError, match="gammas must hold at least one value"):
        select_gamma_alpha(X, y, gammas=[])
    with pytest.raises(ValueError, match="alphas must hold at least one value"):
        select_gamma_alpha(X, y, alphas=[])
