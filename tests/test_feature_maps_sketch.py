"""TensorSketch features of the truncated exponential (``feature_map="tensorsketch"``)."""

import math

import numpy as np
import pytest
from naive import naive_tensor_sketch
from sklearn.utils.estimator_checks import parametrize_with_checks

from favorkern import RandomFeatures, favor_attention, softmax_attention
from favorkern.diagnostics import empirical_mse, variance_study
from favorkern.feature_maps import TensorSketchFeatureMap, apply_feature_map, get_feature_map
from favorkern.feature_maps.sketch import count_sketch_matrices


def test_features_match_the_naive_sketch():
    fmap = get_feature_map("tensorsketch")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 7))
    W = rng.normal(size=(3, 7))
    spec = fmap.spec(W, n_components=1 + 3 * 8, input_scale=0.5)
    C = count_sketch_matrices(W, 8)
    np.testing.assert_allclose(apply_feature_map(X, spec), naive_tensor_sketch(0.5 * X, C),
                               rtol=1e-10, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_unbiased_for_the_truncated_series(degree):
    fmap = TensorSketchFeatureMap(degree, name=f"sketch{degree}")
    rng = np.random.default_rng(degree)
    x, y = rng.normal(size=(2, 4, 6)) * 0.4
    mc = empirical_mse(x, y, feature_map=fmap, n_components=1 + degree * 16,
                       projection="gaussian", n_trials=3000, random_state=0)  # fmt: skip
    s = np.einsum("ij,ij->i", x, y)
    truncated = sum(s**k / math.factorial(k) for k in range(degree + 1))
    assert np.all(np.abs(mc.mean - truncated) < 4.5 * mc.mean_se)


def test_count_sketches_are_uniform_and_signed():
    C = count_sketch_matrices(np.random.default_rng(1).normal(size=(1, 40000)), 4)[0]
    assert np.all(np.abs(C).sum(axis=0) == 1)
    np.testing.assert_allclose(np.abs(C).sum(axis=1) / 40000, 0.25, atol=0.01)
    assert abs(C.sum()) < 4.5 * np.sqrt(40000)


def test_width_and_parameters_are_checked():
    X = np.ones((2, 3))
    with pytest.raises(ValueError, match="n_components must be at least 1 \\+ degree = 4"):
        RandomFeatures("tensorsketch", n_components=3).fit(X).transform(X)
    with pytest.raises(ValueError, match="degree"):
        TensorSketchFeatureMap(0)
    Z = RandomFeatures("tensorsketch", n_components=12, random_state=0).fit_transform(X)
    assert Z.shape == (2, 12) and not Z[:, 10:].any()


def test_float32_and_attention_and_study():
    rng = np.random.default_rng(2)
    X = rng.normal(scale=0.3, size=(6, 5)).astype(np.float32)
    Z = RandomFeatures("tensorsketch", n_components=64, random_state=0).fit_transform(X)
    assert Z.dtype == np.float32
    Q, K, V = rng.normal(scale=0.4, size=(3, 2, 16, 4))
    for causal in (False, True):
        out = favor_attention(Q, K, V, feature_map="tensorsketch", n_components=1024,
                              projection="gaussian", causal=causal, random_state=0)  # fmt: skip
        assert np.abs(out - softmax_attention(Q, K, V, causal=causal)).mean() < 0.1
    study = variance_study(n_components=[64], feature_maps=["tensorsketch", "hrf"],
                           projection="gaussian", n_trials=50)  # fmt: skip
    assert set(study["feature_map"]) == {"tensorsketch", "hrf"}
    assert study.loc[study["feature_map"] == "hrf", "theoretical_mse"].notna().all()


def test_dask_transform_matches():
    da = pytest.importorskip("dask.array")
    from favorkern.dask import transform

    X = np.random.default_rng(3).normal(size=(40, 3))
    rf = RandomFeatures("tensorsketch", n_components=31, random_state=0).fit(X)
    got = transform(rf, da.from_array(X, chunks=(15, 3))).compute()
    np.testing.assert_allclose(got, rf.transform(X), rtol=1e-12, atol=1e-15)


def _expected_failures(estimator):
    reason = "the check sets n_components=1, below the map's width 1 + degree"
    return dict.fromkeys(
        ("check_methods_sample_order_invariance", "check_methods_subset_invariance"), reason
    )


@parametrize_with_checks(
    [RandomFeatures("tensorsketch", n_components=64)], expected_failed_checks=_expected_failures
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
