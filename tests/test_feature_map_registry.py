"""The registry: a map written outside favorkern works everywhere by its name."""

import dask.array as da
import numpy as np
import pytest

import favorkern
import favorkern.dask
from favorkern import RandomFeatures, favor_attention
from favorkern.diagnostics import empirical_mse
from favorkern.feature_maps import (
    FeatureMap,
    FeatureMapSpec,
    feature_map_names,
    get_feature_map,
    register_feature_map,
    unregister_feature_map,
)


class CopiedPositive(FeatureMap):
    """Positive features written from the public pieces only: exp(w.x' - |x'|^2/2)/sqrt(m)."""

    name = "copied_positive"
    summary = "a copy of the positive map, registered by user code"

    def spec(self, projection, *, n_components, input_scale, kernel="softmax", constants=None,
             draws=None, sorf=None):  # fmt: skip
        sq = 1.0 if kernel == "rbf" else 0.5
        return FeatureMapSpec(
            projection * input_scale,
            "exp",
            sq_coef=sq * input_scale**2,
            log_scale=-0.5 * np.log(projection.shape[0]),
        )


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_feature_map(CopiedPositive(), replace=True)
    yield
    unregister_feature_map("copied_positive")


def test_user_map_is_listed():
    assert "copied_positive" in feature_map_names()
    assert "copied_positive" in feature_map_names(kernel="softmax", closed_form=False)
    assert get_feature_map("copied_positive").outputs_per_projection == 1


@pytest.mark.parametrize("kernel", ["softmax", "rbf"])
def test_random_features_same_numbers(kernel):
    X = np.random.default_rng(0).normal(scale=0.3, size=(20, 6))
    ours = RandomFeatures("copied_positive", 64, kernel=kernel, gamma=0.7, random_state=3)
    ref = RandomFeatures("positive", 64, kernel=kernel, gamma=0.7, random_state=3)
    # two specs built by different code (the built-in map folds its constants in its
    # own order): the same numbers up to a few roundings, not bit for bit
    np.testing.assert_allclose(ours.fit_transform(X), ref.fit_transform(X), rtol=1e-13, atol=0)
    np.testing.assert_allclose(
        ours.transform(X.astype(np.float32)), ref.transform(X.astype(np.float32)), rtol=2e-6
    )


@pytest.mark.parametrize("causal", [False, True])
def test_favor_attention_same_numbers(causal):
    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 40, 8))
    kwargs = dict(causal=causal, n_components=32, random_state=5)
    ours = favor_attention(Q, K, V, feature_map="copied_positive", **kwargs)
    ref = favor_attention(Q, K, V, feature_map="positive", **kwargs)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)


def test_empirical_mse_same_numbers():
    x = np.array([0.3, 0.1, 0.0, 0.2])
    y = np.array([0.1, -0.2, 0.3, 0.0])
    kwargs = dict(n_components=8, n_trials=500, random_state=0)
    ours = empirical_mse(x, y, feature_map="copied_positive", **kwargs)
    ref = empirical_mse(x, y, feature_map="positive", **kwargs)
    assert ours.mse == ref.mse and ours.mean == ref.mean


def test_dask_transform_and_attention_same_numbers():
    X = np.random.default_rng(2).normal(scale=0.3, size=(30, 6))
    ours = RandomFeatures("copied_positive", 16, random_state=0).fit(X)
    ref = RandomFeatures("positive", 16, random_state=0).fit(X)
    got = favorkern.dask.transform(ours, da.from_array(X, chunks=(7, 6))).compute(scheduler="sync")
    # blocks of 7 rows against one block of 30: BLAS may take other kernels (other
    # summation orders) for other block shapes, so the entries agree to a few ulp only
    np.testing.assert_allclose(got, ref.transform(X), rtol=8 * np.finfo(float).eps, atol=0)
    rng = np.random.default_rng(3)
    Q, K, V = rng.normal(scale=0.5, size=(3, 50, 8))
    chunked = [da.from_array(A, chunks=(16, 8)) for A in (Q, K, V)]
    out = favorkern.dask.favor_attention(
        *chunked, causal=True, feature_map="copied_positive", n_components=16, random_state=0
    ).compute(scheduler="sync")
    ref_out = favor_attention(Q, K, V, causal=True, n_components=16, random_state=0)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-14)


def test_registry_errors():
    with pytest.raises(TypeError, match="feature_map must be an instance"):
        register_feature_map("positive")
    with pytest.raises(ValueError, match="registered already"):
        register_feature_map(CopiedPositive())
    bad = CopiedPositive()
    bad.name = "not a name"
    with pytest.raises(ValueError, match="identifier"):
        register_feature_map(bad)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        get_feature_map("nope")
    with pytest.raises(ValueError, match="feature_map must be one of"):
        RandomFeatures("nope").fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="kernel"):
        RandomFeatures("relu", kernel="rbf").fit(np.ones((3, 2)))


def test_unregister_unknown_name_is_named():
    with pytest.raises(ValueError, match="no feature map named 'absent'"):
        unregister_feature_map("absent")


def test_registry_is_read_safely_while_other_threads_change_it():
    import sys
    import threading

    from favorkern.feature_maps import PositiveFeatureMap

    errors, stop = [], threading.Event()

    def churn(i):
        k = 0
        while not stop.is_set():
            cls = type(f"Churn{i}_{k}", (PositiveFeatureMap,), {"name": f"churn{i}_{k}"})
            register_feature_map(cls())
            unregister_feature_map(f"churn{i}_{k}")
            k += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads inside the readers' loops
    threads = [threading.Thread(target=churn, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(5000):
            try:
                feature_map_names(kernel="softmax")
                get_feature_map("positive")
            except RuntimeError as error:  # dictionary changed size during iteration
                errors.append(error)
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert not errors


class ShortPositive(CopiedPositive):
    """Declares n_components outputs but gives one fewer."""

    name = "short_positive"

    def spec(self, projection, **kwargs):
        return super().spec(projection[:-1], **kwargs)


def test_a_map_whose_output_width_differs_from_its_declaration_is_refused():
    X = np.random.default_rng(0).normal(size=(10, 4))
    register_feature_map(ShortPositive())
    try:
        with pytest.raises(ValueError, match="'short_positive' declares n_components=8"):
            RandomFeatures("short_positive", 8, random_state=0).fit(X).transform(X)
        with pytest.raises(ValueError, match="'short_positive' declares n_components=8"):
            favor_attention(X, X, X, feature_map="short_positive", n_components=8)
        with pytest.raises(ValueError, match="'short_positive' declares n_components"):
            empirical_mse(X[0], X[1], feature_map="short_positive", n_components=8,
                          n_trials=4, random_state=0)  # fmt: skip
    finally:
        unregister_feature_map("short_positive")


def test_built_in_maps_cannot_be_unregistered_and_their_classes_keep_working():
    from favorkern import PositiveRandomFeatures

    for name in feature_map_names():
        if name == "copied_positive":
            continue
        with pytest.raises(ValueError, match=f"'{name}' is built into favorkern"):
            unregister_feature_map(name)
    X = np.random.default_rng(0).normal(size=(5, 3))
    assert PositiveRandomFeatures(4, random_state=0).fit_transform(X).shape == (5, 4)


def test_map_objects_have_distinct_identities_whatever_their_names():
    from favorkern.feature_maps._base import map_identity

    registered = get_feature_map("copied_positive")
    twin = CopiedPositive()
    assert map_identity(registered) == map_identity(registered)
    assert map_identity(twin) == map_identity(twin)
    assert map_identity(twin) != map_identity(registered)
    assert map_identity(twin) != map_identity(CopiedPositive())
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 4, 8))
    _, by_name = favor_attention(q, k, v, causal=True, feature_map="copied_positive",
                                 n_components=8, random_state=0, return_state=True)  # fmt: skip
    with pytest.raises(ValueError, match="made with the feature map"):
        favor_attention(q, k, v, causal=True, feature_map=twin, n_components=8,
                        random_state=0, initial_state=by_name)  # fmt: skip
