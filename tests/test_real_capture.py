"""Attention captured from a real model (SmolLM2-135M-Instruct), without the model.

``tests/data/smollm2_qkv_small.npz`` holds post-RoPE queries, keys and values of two
layers (0 and 18; 9 query heads sharing 3 key/value heads, head dimension 64) on the
first 32 tokens of one calibration and one evaluation text (pydoc topics), float16.
It was written by ``benchmarks/capture_real_attention.py --layers 0 18 --tokens 32``,
which checks that exact causal attention recomputed from the capture reproduces the
model's own attention output (relative row error below 1e-4 in float32, 5e-3 after
the float16 rounding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from favorkern import favor_attention, softmax_attention

FIXTURE = Path(__file__).resolve().parent / "data" / "smollm2_qkv_small.npz"
N_HEADS, N_KV_HEADS, HEAD_DIM, L = 9, 3, 64, 32

# FAVOR+ (positive features, orthogonal projections, causal, m = 256) on the
# evaluation text: per layer, the median over heads of each head's median relative
# row error.  Measured with random_state = 0 to 19: 0.58-1.09 on layer 0 (0.95 at
# seed 0) and 0.78-1.03 on layer 18 (0.82 at seed 0); predicting the running mean of
# the values gives 0.66 and 0.98.  Real heads have |q'| |k'| of 8-35 in logit units,
# far beyond where FAVOR+ converges.  The band is that spread widened ~2x: below it,
# the estimator changed (measure again); above it, it broke.
FAVOR_BAND = (0.3, 1.5)


@pytest.fixture(scope="module")
def capture():
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _head_inputs(capture, text, layer):
    """Q (9, L, 64), and K, V repeated from 3 to 9 heads, float32."""
    q = capture["q"][text, layer].astype(np.float32)
    k = np.repeat(capture["k"][text, layer].astype(np.float32), N_HEADS // N_KV_HEADS, axis=0)
    v = np.repeat(capture["v"][text, layer].astype(np.float32), N_HEADS // N_KV_HEADS, axis=0)
    return q, k, v


def test_fixture_shapes_dtypes_metadata(capture):
    n_texts, n_layers = 2, 2
    assert capture["q"].shape == (n_texts, n_layers, N_HEADS, L, HEAD_DIM)
    assert capture["k"].shape == capture["v"].shape == (n_texts, n_layers, N_KV_HEADS, L, HEAD_DIM)
    for name in ("q", "k", "v"):
        assert capture[name].dtype == np.float16
        assert np.all(np.isfinite(capture[name]))
        # Not degenerate: every head varies over tokens.
        assert np.all(capture[name].astype(np.float32).std(axis=-2).max(axis=-1) > 0.01)
    assert capture["layers"].tolist() == [0, 18]
    assert float(capture["scaling"]) == pytest.approx(HEAD_DIM**-0.5)
    assert capture["splits"].tolist() == ["calibration", "evaluation"]
    assert capture["text_names"][0] != capture["text_names"][1]
    assert capture["tokens"].shape == (n_texts, L)
    metadata = json.loads(str(capture["metadata"]))
    assert (metadata["n_heads"], metadata["n_kv_heads"], metadata["head_dim"]) == (
        N_HEADS,
        N_KV_HEADS,
        HEAD_DIM,
    )
    assert max(metadata["check_max_relative_row_error"].values()) < 1e-4


@pytest.mark.parametrize("text", [0, 1])
@pytest.mark.parametrize("layer", [0, 1])
def test_exact_causal_attention_on_real_heads(capture, text, layer):
    q, k, v = _head_inputs(capture, text, layer)
    scale = float(capture["scaling"])
    out = softmax_attention(q, k, v, causal=True, gamma=scale)
    assert out.shape == (N_HEADS, L, HEAD_DIM) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    # Row 0 sees only key 0; every row is a convex combination of its prefix's values.
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-6, atol=1e-6)
    prefix_max = np.maximum.accumulate(v, axis=1)
    prefix_min = np.minimum.accumulate(v, axis=1)
    assert np.all(out <= prefix_max + 1e-5) and np.all(out >= prefix_min - 1e-5)
    # float32 agrees with a float64 recomputation.
    out64 = softmax_attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True, gamma=scale)
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_favor_error_on_real_heads_within_measured_band(capture, layer):
    text = capture["splits"].tolist().index("evaluation")
    q, k, v = _head_inputs(capture, text, layer)
    scale = float(capture["scaling"])
    exact = softmax_attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True, gamma=scale)
    approx = favor_attention(
        q, k, v, causal=True, n_components=256, feature_map="positive", gamma=scale, random_state=0
    )
    assert approx.dtype == np.float32 and np.all(np.isfinite(approx))
    rows = np.linalg.norm(approx - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
    error = float(np.median(np.median(rows, axis=-1)))
    assert FAVOR_BAND[0] <= error <= FAVOR_BAND[1], error
