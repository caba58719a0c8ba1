"""method="auto": exact attention below the measured crossover, FAVOR above it."""

import naive
import numpy as np
import pytest

from favorkern import FavorAttention, draw_projection, favor_attention, softmax_attention
from favorkern._config import EXACT_ATTENTION_CROSSOVER
from favorkern.attention.common import exact_is_faster


def test_rule_is_the_documented_inequality():
    m = 256
    edge = int(2 * EXACT_ATTENTION_CROSSOVER * m)
    assert exact_is_faster(edge, edge, m)
    assert not exact_is_faster(edge + 1, edge + 1, m)
    assert exact_is_faster(10, 10**6, m)  # few queries: exact is cheap
    assert not exact_is_faster(4096, 4096, 64)


@pytest.mark.parametrize("causal", [False, True])
def test_auto_is_exact_below_the_crossover(causal):
    rng = np.random.default_rng(0)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 60, 8))
    mask = None if causal else rng.random((2, 60)) < 0.2
    got = favor_attention(
        Q, K, V, causal=causal, method="auto", n_components=64, key_padding_mask=mask
    )
    np.testing.assert_array_equal(
        got, softmax_attention(Q, K, V, causal=causal, key_padding_mask=mask)
    )
    for h in range(2):
        ref = naive.softmax_attention(
            Q[h], K[h], V[h], causal=causal, key_padding_mask=None if mask is None else mask[h]
        )
        np.testing.assert_allclose(got[h], ref, rtol=1e-10, atol=1e-12)
    attention = FavorAttention(n_components=64, causal=causal, random_state=0)
    np.testing.assert_array_equal(attention(Q, K, V, method="auto", key_padding_mask=mask), got)


def test_auto_is_favor_above_the_crossover_and_for_other_kernels():
    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(scale=0.5, size=(3, 200, 8))
    W = draw_projection(16, 8, random_state=0)  # m = 16: 200 > 2 * 1.4 * 16
    assert not exact_is_faster(200, 200, 16)
    for causal in (False, True):
        np.testing.assert_array_equal(
            favor_attention(Q, K, V, causal=causal, projection_matrix=W, method="auto"),
            favor_attention(Q, K, V, causal=causal, projection_matrix=W, method="favor"),
        )
    # relu features estimate no softmax kernel: never replaced by exact attention
    W = draw_projection(64, 8, random_state=0)
    np.testing.assert_array_equal(
        favor_attention(
            Q[:50], K[:50], V[:50], projection_matrix=W, feature_map="relu", method="auto"
        ),
        favor_attention(Q[:50], K[:50], V[:50], projection_matrix=W, feature_map="relu"),
    )


def test_default_method_is_favor():
    rng = np.random.default_rng(2)
    Q, K, V = rng.normal(scale=0.5, size=(3, 40, 8))
    W = draw_projection(64, 8, random_state=0)
    got = favor_attention(Q, K, V, projection_matrix=W)
    np.testing.assert_allclose(got, naive.favor_attention(Q, K, V, W), rtol=1e-10)
    assert np.abs(got - softmax_attention(Q, K, V)).max() > 1e-6
