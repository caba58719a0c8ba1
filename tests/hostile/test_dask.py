"""favorkern.dask under hostile conditions: masks and per-head constants as dask
arrays or wrong, sparse blocks, sharp logits in float32, values near the maximum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from favorkern import (
    FavorAttention,
    PositiveRandomFeatures,
    favor_attention,
)
from favorkern._warnings import FeatureUnderflowWarning

from .shared import qkv


def _chunked(da, *arrays, rows=16):
    return [da.from_array(X, chunks=X.shape[:-2] + (rows, X.shape[-1])) for X in arrays]


@pytest.mark.parametrize("causal", [False, True])
def test_dask_key_padding_mask_matches_in_memory(dask_sync, causal):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(2, 3, 40, 8), scale=0.5)
    mask = np.random.default_rng(6).random((2, 1, 40)) < 0.3
    mask[1, 0, :] = True  # a batch entry whose keys are all ignored
    expected = favor_attention(Q, K, V, causal=causal, key_padding_mask=mask, n_components=32,
                               random_state=0)  # fmt: skip
    out = dask_attention(*_chunked(dask_sync, Q, K, V), causal=causal, key_padding_mask=mask,
                         n_components=32, random_state=0).compute()  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    assert not out[1].any()


def test_dask_key_padding_mask_as_a_dask_array(dask_sync):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(40, 8), scale=0.5)
    mask = np.arange(40) % 3 == 0
    expected = favor_attention(Q, K, V, causal=True, key_padding_mask=mask, n_components=16,
                               random_state=0)  # fmt: skip
    out = dask_attention(*_chunked(dask_sync, Q, K, V, rows=7), causal=True,
                         key_padding_mask=dask_sync.from_array(mask, chunks=11),
                         n_components=16, random_state=0).compute()  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("mask", "error", "phrase"),
    [
        (np.ones(40), TypeError, "key_padding_mask must be a boolean"),
        (np.ones((2, 39), dtype=bool), ValueError, "key_padding_mask"),
    ],
    ids=["not-boolean", "wrong-length"],
)
def test_dask_key_padding_mask_rejected_clearly(dask_sync, mask, error, phrase):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(2, 40, 8))
    with pytest.raises(error, match=phrase):
        dask_attention(Q, K, V, key_padding_mask=mask, n_components=8)


def test_dask_per_head_frozen_constants_match_in_memory(dask_sync):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(2, 3, 40, 8), scale=0.5)
    att = FavorAttention(n_components=32, feature_map="optimal", random_state=0).fit(Q, K)
    assert att.constants_["A"].shape == (3,)  # one A per head
    sets = [att.frozen_constants(h) for h in range(3)]
    out = dask_attention(*_chunked(dask_sync, Q, K, V), feature_map="optimal", constants=sets,
                         projection_matrix=att.projection_).compute()  # fmt: skip
    np.testing.assert_allclose(out, att(Q, K, V), rtol=1e-10, atol=1e-12)
    shared = dask_attention(Q, K, V, feature_map="optimal", constants=sets[0],
                            projection_matrix=att.projection_).compute()  # fmt: skip
    assert np.abs(shared - out).max() > 1e-6  # the per-head sets were really used


@pytest.mark.parametrize(
    ("constants", "error", "phrase"),
    [
        ([{"A": -0.1}] * 2, ValueError, "constants has 2 per-head sets.*3 heads"),
        ("A", TypeError, "constants must be a dict"),
        ([], TypeError, "constants must be a dict"),
    ],
    ids=["count", "string", "empty"],
)
def test_dask_per_head_constants_rejected_clearly(dask_sync, constants, error, phrase):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(3, 16, 8))
    with pytest.raises(error, match=phrase):
        dask_attention(Q, K, V, feature_map="optimal", constants=constants, n_components=8)


def test_dask_transform_of_sparse_blocks_is_lazy_and_exact(dask_sync):
    from favorkern.dask import transform

    X = sp.random(30, 6, density=0.3, format="csr", random_state=0)
    est = PositiveRandomFeatures(8, random_state=0).fit(X)
    blocks = dask_sync.from_array(X.toarray(), chunks=(7, 6)).map_blocks(sp.csr_matrix)
    out = transform(est, blocks)
    assert out.chunks == ((7, 7, 7, 7, 2), (8,))
    np.testing.assert_allclose(out.compute(), est.transform(X), rtol=1e-12)


def test_dask_attention_rejects_sparse_blocks(dask_sync):
    from favorkern.dask import favor_attention as dask_attention

    X = dask_sync.from_array(np.ones((20, 4)), chunks=(5, 4)).map_blocks(sp.csr_matrix)
    with pytest.raises(TypeError, match="Q has scipy.sparse blocks"):
        dask_attention(X, X, X)


def test_dask_transformer_set_output_pandas_rejected_for_dask_input(dask_sync):
    pytest.importorskip("pandas")
    from favorkern.dask import DaskTransformer

    X = np.random.default_rng(7).normal(size=(20, 3))
    model = DaskTransformer(PositiveRandomFeatures(8, random_state=0)).fit(X)
    model.set_output(transform="pandas")
    with pytest.raises(ValueError, match="set_output"):
        model.transform(dask_sync.from_array(X, chunks=(5, 3)))
    frame = model.transform(X)  # in memory, the pandas output is fine
    assert frame.shape == (20, 8) and list(frame.columns) == list(model.get_feature_names_out())


@pytest.mark.parametrize("rows", [16, 100])
def test_dask_causal_float32_within_1e4_at_moderate_logits(dask_sync, rows):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(2, 512, 16), scale=10.0, dtype=np.float32)  # gamma |q||k| ~ 400
    expected = favor_attention(Q, K, V, causal=True, n_components=64, random_state=0)
    out = dask_attention(*_chunked(dask_sync, Q, K, V, rows=rows), causal=True, n_components=64,
                         random_state=0).compute()  # fmt: skip
    assert out.dtype == np.float32
    assert np.abs(out - expected).max() < 1e-4


def test_dask_causal_sharp_logits_float64_agree_and_float32_warns(dask_sync):
    # The documented regime: at gamma |q||k| ~ 3600 float32 normalizers are subnormal
    # (in memory float32 then computes in float64); float64 input gives the tight
    # agreement back.
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = qkv(shape=(2, 256, 16), scale=30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        expected = favor_attention(Q, K, V, causal=True, n_components=64, random_state=0)
    out = dask_attention(*_chunked(dask_sync, Q, K, V), causal=True, n_components=64,
                         random_state=0).compute()  # fmt: skip
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
def test_dask_attention_of_values_near_the_max_is_a_clear_error(dask_sync, causal):
    """Every output was inf or NaN, silently."""
    import dask.array as da

    import favorkern.dask as fd

    Q, K = np.random.default_rng(0).normal(size=(2, 64, 4))
    V = np.full((64, 2), 1e308)
    out = fd.favor_attention(*(da.from_array(X, chunks=(16, X.shape[1])) for X in (Q, K, V)),
                             causal=causal, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="attention outputs overflowed float64"):
            out.compute()
