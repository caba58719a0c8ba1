"""favorkern.attention.values: power-of-two scaling of values near the largest float.

Sums of ``n`` values weighted by at most 1 must not overflow, the scaling must be
undone exactly (a power of two, so the columns' relative precision is kept), and it
must be the smallest that is safe.  The state check refuses what a carried state
could not hold, with a message that names ``V`` and says what to do.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from favorkern import favor_attention
from favorkern.attention.values import check_state_values, scaled_values, unscale

DTYPES = [np.float32, np.float64]


def _values(seed, dtype, n_rows, n_cols, log2_peaks):
    """Columns of random signs and magnitudes up to ``2^log2_peak`` each, some zeros."""
    rng = np.random.default_rng(seed)
    mantissa = rng.uniform(-1.0, 1.0, size=(n_rows, n_cols))
    mantissa[rng.random((n_rows, n_cols)) < 0.1] = 0.0
    return np.ldexp(mantissa, np.asarray(log2_peaks)[np.newaxis, :]).astype(dtype)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    n_terms=st.integers(1, 10**6),
    n_cols=st.integers(1, 4),
    data=st.data(),
)
def test_scaled_sums_cannot_overflow_and_unscale_is_exact(seed, dtype, n_terms, n_cols, data):
    top = np.finfo(dtype).maxexp
    peaks = data.draw(st.lists(st.integers(top - 40, top), min_size=n_cols, max_size=n_cols))
    V = _values(seed, dtype, 7, n_cols, peaks)
    scaled, exponents = scaled_values(V, n_terms)
    assert scaled.dtype == V.dtype and scaled.shape == V.shape
    finfo = np.finfo(dtype)
    bound = float(finfo.max) / 4.0  # the margin the module keeps for rounding
    assert float(np.abs(scaled).max()) * n_terms <= bound
    if exponents is None:
        assert scaled is V
        return
    assert exponents.dtype == np.int32 and np.all(exponents >= 0)
    back = unscale(scaled.copy(), exponents)
    # exact wherever the scaled value stayed a normal number; below, the loss is less
    # than the smallest normal times 2^e, far below one ulp of the column's peak
    lost = np.ldexp(np.float64(finfo.tiny), exponents.astype(np.int64))
    normal = np.abs(V) >= lost
    np.testing.assert_array_equal(back[normal], V[normal])
    error = np.abs(back.astype(np.float64) - V)
    assert np.all(error[~normal] <= np.broadcast_to(lost, V.shape)[~normal])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_terms", [1, 1000, 2**20])
def test_the_exponent_is_the_smallest_that_is_safe(dtype, n_terms):
    finfo = np.finfo(dtype)
    limit = float(finfo.max) / (4.0 * n_terms)
    V = np.array([[finfo.max, 1.0, limit * 3.0, -limit * 1.01]], dtype=dtype)
    scaled, e = scaled_values(V, n_terms)
    peak = np.abs(V.astype(np.float64)).max(axis=0)
    assert e[1] == 0  # a small column is left alone
    for col in np.flatnonzero(e):
        assert peak[col] / 2.0 ** int(e[col]) <= limit  # safe
        assert peak[col] / 2.0 ** (int(e[col]) - 1) > limit  # one power less is not


@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_brings_every_large_column_to_at_most_one(dtype):
    V = np.array([[3.0, 0.25, -1000.0], [-7.5, 0.5, 2.0]], dtype=dtype)
    scaled, e = scaled_values(V, 10, unit=True)
    assert e.tolist() == [3, 0, 10]
    col_max = np.abs(scaled).max(axis=0)
    assert np.all(col_max <= 1.0) and np.all(col_max[e > 0] > 0.5)
    np.testing.assert_array_equal(unscale(scaled.copy(), e), V)


def test_extremes_passed_by_the_caller_are_used():
    V = np.array([[1e307, 1.0]])
    assert scaled_values(V, 10, extremes=(0.0, 1.0))[1] is None  # the caller's word
    assert scaled_values(V, 10)[1] is not None


def test_empty_values_are_returned_unscaled():
    V = np.empty((0, 3), dtype=np.float32)
    scaled, e = scaled_values(V, 10**9)
    assert scaled is V and e is None
    check_state_values(V, 10**9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_check_refuses_values_whose_sums_could_overflow(dtype):
    finfo = np.finfo(dtype)
    n_terms = 1 << 16
    limit = float(finfo.max) / (4.0 * n_terms)
    check_state_values(np.array([[limit, -limit]], dtype=dtype), n_terms)  # at the limit
    message = rf"V has values up to .*overflow {np.dtype(dtype)}"
    with pytest.raises(ValueError, match=message) as info:
        check_state_values(np.array([[1.0], [-limit * 1.01]], dtype=dtype), n_terms)
    assert ("pass float64" in str(info.value)) == (dtype == np.float32)
    # non-finite values are the finiteness check's to report, not this one's
    check_state_values(np.array([[np.inf, 1.0]], dtype=dtype), n_terms)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_of_scaled_values_is_the_attention_of_the_values_scaled_back(causal):
    """Outputs are linear in V: values near the float32 max give the outputs of the same
    values divided by 2^e, multiplied back, finite and to float32 precision."""
    rng = np.random.default_rng(0)
    Q, K = (rng.normal(scale=0.5, size=(40, 8)).astype(np.float32) for _ in range(2))
    V = rng.uniform(-1.0, 1.0, size=(40, 3)).astype(np.float32)
    huge = V * np.float32(2.0**127)
    out = favor_attention(Q, K, huge, causal=causal, n_components=32, random_state=0)
    ref = favor_attention(Q, K, V, causal=causal, n_components=32, random_state=0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(
        out / np.float32(2.0**127), ref, rtol=0, atol=1e-5 * float(np.abs(ref).max())
    )
