"""favorkern.feature_maps under hostile conditions: data constants that are wrong,
of the wrong shape or for a map without them; the fitted map's projection.
"""

from __future__ import annotations

import numpy as np
import pytest

from favorkern.diagnostics import theoretical_mse


@pytest.mark.parametrize("constants", [{"A": 0.3}, {"A": 0.25}, {"A": "abc"}, "x"])
def test_bad_constants_are_refused_everywhere(constants):
    """A GERF parameter beyond 1/4 made every output NaN silently (hybrid and dask)."""
    import dask.array as da

    import favorkern.dask as fd
    from favorkern import hybrid_attention

    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((3, 40, 8))
    error = TypeError if isinstance(constants, str) else ValueError
    with pytest.raises(error, match="constant"):
        hybrid_attention(Q, K, V, feature_map="optimal", constants=constants, causal=True,
                         window=2, random_state=0)  # fmt: skip
    blocks = [da.from_array(X, chunks=(20, 8)) for X in (Q, K, V)]
    with pytest.raises(error, match="constant"):
        fd.favor_attention(*blocks, causal=True, feature_map="optimal", constants=constants,
                           random_state=0)  # fmt: skip


_D = 6


def _wrong_shape_constants():
    """(map, constants with one constant of the wrong shape, its name, projection)."""
    from favorkern.feature_maps import get_feature_map

    rng = np.random.default_rng(3)
    Q, K = rng.standard_normal((2, 30, _D)) * 0.3
    cases = []
    for name, key, bad in [
        ("optimal", "A", np.full(3, -0.1)),
        ("optimal", "A", [[-0.1]]),
        ("saderf", "psi", np.ones(_D - 2)),
        ("sderf", "A", np.zeros(_D + 1)),
        ("sderf", "rotation", np.eye(_D - 1)),
        ("aderf", "query_transform", np.eye(_D)[:, :3]),
        ("whitened", "key_transform", np.eye(_D + 2)),
        ("whitened", "A", np.zeros(2)),
    ]:
        constants = dict(get_feature_map(name).fit(Q, K, input_scale=0.5))
        constants[key] = bad
        projection = "gaussian" if name in ("sderf", "aderf") else "orthogonal"
        cases.append(pytest.param(name, constants, key, projection, id=f"{name}-{key}"))
    return cases


@pytest.mark.parametrize("name, constants, key, projection", _wrong_shape_constants())
def test_constants_of_the_wrong_shape_name_the_constant(name, constants, key, projection):
    """Constants of another shape reached numpy (broadcast, reshape and scalar errors)."""
    from favorkern.diagnostics import empirical_mse

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 3, _D)) * 0.3
    match = f"constant '{key}' of feature map '{name}' must"
    with pytest.raises(ValueError, match=match):
        theoretical_mse(x, y, feature_map=name, n_components=16, projection=projection,
                        constants=constants)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        empirical_mse(x, y, feature_map=name, n_components=16, n_trials=20,
                      projection=projection, constants=constants)  # fmt: skip


def test_constants_for_a_map_without_them_are_refused():
    from favorkern import hybrid_attention

    Q, K, V = np.random.default_rng(1).standard_normal((3, 20, 8))
    with pytest.raises(ValueError, match="has no fitted constants"):
        hybrid_attention(Q, K, V, constants={"foo": 1}, causal=True, window=2, random_state=0)


def test_the_fitted_map_honours_the_callers_projection():
    """It drew 256 rows from its own seed whatever n_components, random_state and
    projection the transformer or layer was given."""
    from favorkern import FavorAttention, RandomFeatures
    from favorkern.diagnostics import empirical_mse
    from favorkern.feature_maps import feature_map_names

    X = np.random.default_rng(1).normal(size=(40, 3))
    one = RandomFeatures("fitted", n_components=16, random_state=1).fit(X)
    assert one.transform(X).shape == (40, 16)
    two = RandomFeatures("fitted", n_components=16, random_state=2, projection="gaussian")
    assert not np.array_equal(one.transform(X), two.fit(X).transform(X))
    # one input set: the identity maps, so the positive map with the transformer's rows
    positive = RandomFeatures("positive", n_components=16, random_state=1).fit(X)
    np.testing.assert_allclose(one.transform(X), positive.transform(X), rtol=1e-12)
    Q, K = np.random.default_rng(2).normal(size=(2, 30, 4))
    layer = FavorAttention(feature_map="fitted", n_components=8, random_state=3).fit(Q, K)
    np.testing.assert_array_equal(layer.constants_["projection"], layer.projection_)
    assert "fitted" not in feature_map_names(random=True)
    with pytest.raises(ValueError, match="fits its projection to data"):
        empirical_mse(X[:2], X[2:4], feature_map="fitted", n_components=16, n_trials=10)
