"""favorkern.dask.favor_attention: the in-memory plan's fallback and warnings, chunk by chunk."""

import warnings

import numpy as np
import pytest

import favorkern
from favorkern import draw_projection
from favorkern._warnings import FeatureUnderflowWarning

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
fd = pytest.importorskip("favorkern.dask")


def _sharp_last_query(s=30.0, L=64, d=8, seed=0):
    """Keys along ``u`` and a last query along ``-u``: that query's feature products are
    below float32's range, not float64's (as in tests/test_attention_plan.py)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    Q = rng.normal(size=(L, d))
    K = s * u + 0.3 * rng.normal(size=(L, d))
    V = rng.normal(size=(L, 4))
    Q[-1] = -s * u
    return [X.astype(np.float32) for X in (Q, K, V)]


@pytest.mark.parametrize("causal", [False, True])
def test_float32_rows_lost_come_from_float64_as_in_memory(causal):
    """The dask graph returned such rows as 0, silently; in memory they come from float64."""
    Q, K, V = _sharp_last_query()
    kwargs = dict(
        causal=causal, projection_matrix=draw_projection(64, 8, random_state=0), gamma=1.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureUnderflowWarning)
        expected = favorkern.favor_attention(Q, K, V, **kwargs)
        with dask.config.set(scheduler="synchronous"):
            chunked = [da.from_array(X, chunks=(16, X.shape[1])) for X in (Q, K, V)]
            got = fd.favor_attention(*chunked, **kwargs).compute()
    assert got.dtype == np.float32 and got[-1].any()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_rows_float64_loses_too_are_warned():
    """Rows that stay 0 are counted and warned, as in memory (the graph was silent)."""
    rng = np.random.default_rng(0)
    Q, K, V = rng.normal(size=(3, 2, 64, 8)) * np.array([10.0, 10.0, 1.0])[:, None, None, None]
    kwargs = dict(gamma=1e4, n_components=64, random_state=0)
    with pytest.warns(FeatureUnderflowWarning, match="attention output rows are 0"):
        expected = favorkern.favor_attention(Q, K, V, **kwargs)
    chunked = [da.from_array(X, chunks=(2, 32, 8)) for X in (Q, K, V)]
    with dask.config.set(scheduler="synchronous"):
        with pytest.warns(FeatureUnderflowWarning, match="attention output rows are 0") as caught:
            got = fd.favor_attention(*chunked, **kwargs).compute()
    counted = sum(int(str(w.message).split()[0]) for w in caught)
    assert counted == int(np.count_nonzero(~got.any(axis=-1))) > 0
    np.testing.assert_array_equal(~got.any(axis=-1), ~expected.any(axis=-1))


def test_masked_and_zero_value_rows_are_not_warned():
    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(size=(3, 2, 32, 4)).astype(np.float32)
    V[1] = 0.0  # head 1: zero values
    mask = np.zeros((2, 32), dtype=bool)
    mask[0, :20] = True  # head 0: rows 0..19 see only ignored keys (causal)
    chunked = [da.from_array(X, chunks=(2, 8, 4)) for X in (Q, K, V)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureUnderflowWarning)
        with dask.config.set(scheduler="synchronous"):
            out = fd.favor_attention(
                *chunked, causal=True, key_padding_mask=mask, n_components=16, random_state=0
            ).compute()
    assert not out[0, :20].any() and not out[1].any() and out[0, 20:].all()


def test_float32_causal_at_sharp_logits_as_in_memory():
    """At input scale 50 the graph returned 119 of 400 rows as zeros, silently (in memory:
    none, the float64 fallback); now both agree to float32 rounding."""
    rng = np.random.default_rng(0)
    rng.normal(size=(2, 400, 16))  # skipped: the next draws are a case the graph lost
    rng.normal(size=(400, 8))
    Q, K = (rng.normal(size=(2, 400, 16)) * 50.0).astype(np.float32)
    V = rng.normal(size=(400, 8)).astype(np.float32)
    kwargs = dict(causal=True, n_components=64, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureUnderflowWarning)
        expected = favorkern.favor_attention(Q, K, V, **kwargs)
        chunked = [da.from_array(X, chunks=(100, X.shape[1])) for X in (Q, K, V)]
        with dask.config.set(scheduler="synchronous"):
            got = fd.favor_attention(*chunked, **kwargs).compute()
    assert got.any(axis=-1).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
