"""favorkern.attention.layer: FavorAttention's held projection, its arguments and decoding."""

import inspect
import pickle

import numpy as np
import pytest

import favorkern
from favorkern import FavorAttention, RandomFeatures


def test_replaced_projection_reaches_decoding():
    """After a first step, a replaced projection_ was ignored by initial_state and step
    (a cached copy): decoding disagreed with the layer's own call by 0.38."""
    rng = np.random.default_rng(0)
    Q, K, V = rng.normal(scale=0.5, size=(3, 20, 8))
    layer = FavorAttention(n_components=16, causal=True, random_state=0).fit(8)
    state = layer.initial_state(dv=8)
    layer.step(Q[:1], K[:1], V[:1], state)
    layer.projection_ = layer.projection_ * 2.0
    fresh = layer.initial_state(dv=8)
    steps = [layer.step(Q[t : t + 1], K[t : t + 1], V[t : t + 1], fresh)[0] for t in range(20)]
    np.testing.assert_allclose(np.concatenate(steps), layer(Q, K, V), rtol=1e-12, atol=1e-14)
    # the state of the old projection is refused, not continued
    with pytest.raises(ValueError, match="another attention"):
        layer.step(Q[:1], K[:1], V[:1], state)


def test_arguments_in_the_order_of_random_features():
    """FavorAttention(feature_map, n_components, *, ...) as RandomFeatures."""
    params = list(inspect.signature(FavorAttention).parameters.values())
    assert [p.name for p in params[:2]] == list(inspect.signature(RandomFeatures).parameters)[:2]
    assert all(p.kind is p.KEYWORD_ONLY for p in params[2:])
    layer = FavorAttention("hyperbolic", 32, causal=True)
    assert (layer.feature_map, layer.n_components, layer.causal) == ("hyperbolic", 32, True)
    with pytest.raises(TypeError):
        FavorAttention("positive", 32, "gaussian")


def test_pickled_layer_keeps_its_projection():
    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(scale=0.5, size=(3, 12, 4))
    layer = FavorAttention(n_components=8, random_state=0)
    out = layer(Q, K, V)
    again = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(again.projection_, layer.projection_)
    np.testing.assert_array_equal(again(Q, K, V), out)
    assert not hasattr(FavorAttention(), "projection_")


def test_projection_matrix_and_constants_as_favor_attention():
    """The core parameters of favor_attention: a given projection and frozen constants."""
    rng = np.random.default_rng(3)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 30, 8))
    W = rng.normal(size=(16, 8))
    constants = [{"A": -0.05}, {"A": -0.1}]
    layer = FavorAttention("optimal", projection_matrix=W, constants=constants, causal=True)
    expected = favorkern.favor_attention(
        Q, K, V, causal=True, feature_map="optimal", projection_matrix=W, constants=constants
    )
    np.testing.assert_allclose(layer(Q, K, V), expected, rtol=1e-12)
    assert layer.n_components is None
    np.testing.assert_array_equal(layer.projection_, W)
    np.testing.assert_array_equal(layer.constants_["A"], [-0.05, -0.1])
    state = layer.initial_state((2,), 8)
    steps = [
        layer.step(Q[:, t : t + 1], K[:, t : t + 1], V[:, t : t + 1], state)[0] for t in range(30)
    ]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="nothing to draw"):
        layer.redraw()
    with pytest.raises(ValueError, match="fit\\(Q, K\\) would replace them"):
        layer.fit(Q, K)
    with pytest.raises(ValueError, match="n_components=32 needs 32 projections"):
        FavorAttention(n_components=32, projection_matrix=W)(Q, K, V)
