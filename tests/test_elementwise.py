"""The elementwise kernels chosen by measurement (favorkern._elementwise), every one of
them against numpy, whichever this machine chooses."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from favorkern import _elementwise as elementwise
from favorkern._elementwise import EXP_KERNELS, ExpKernel, exp_kernel, sincos_kernel, sq_norms
from favorkern._numba.vmath import SIN_COS_F32_ERROR

# Documented accuracy of each candidate for normal results, in ulp of the result:
# the polynomials 1 ulp; numpy's float32 exp on its AVX2/AVX-512 path is within
# 2.52 ulp (numpy's own bound; measured 2.38 here), its other kernels within 1.
BOUND = {name: 1.0 for name in EXP_KERNELS}
BOUND_F32_NUMPY_EXP = 2.52

needs_longdouble = pytest.mark.skipif(
    np.finfo(np.longdouble).nmant < 60, reason="float64 oracle needs 80-bit long double"
)


@pytest.fixture
def fresh_choices(monkeypatch):
    """Choices read the environment again, and are forgotten afterwards."""
    elementwise.reset_choices()
    yield monkeypatch
    elementwise.reset_choices()


def _oracle(x, base2):
    """``exp(x)`` / ``2^x`` in extended precision (float64 for float32 inputs)."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    with np.errstate(over="ignore"):
        return (np.exp2 if base2 else np.exp)(x.astype(wide))


def _ulp_errors(got, ref, dtype):
    """``|got - ref|`` in ulp of ``ref`` rounded to ``dtype`` (normal results only)."""
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = ref.astype(dtype)
    info = np.finfo(dtype)
    normal = np.isfinite(rounded) & (rounded >= info.tiny)
    ulp = np.spacing(rounded[normal]).astype(ref.dtype)
    return np.abs(got[normal].astype(ref.dtype) - ref[normal]) / ulp, normal


def _bound(name, dtype):
    if name == "numpy-exp" and dtype == np.float32:
        return BOUND_F32_NUMPY_EXP
    return BOUND[name]


def _inputs(dtype, base2, seed=0):
    """Random logits over the whole range (overflow and subnormal results included)
    and densely where features live."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        low, high = (-155.0, 130.0) if base2 else (-106.0, 90.0)
    else:
        low, high = (-1080.0, 1026.0) if base2 else (-748.0, 711.0)
    parts = [
        rng.uniform(low, high, 200_000),
        rng.uniform(-30, 30, 200_000),
        rng.uniform(-1, 1, 50_000),
    ]
    return np.concatenate(parts).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=needs_longdouble)])
@pytest.mark.parametrize("name", EXP_KERNELS)
def test_every_exp_kernel_is_within_its_bound_of_the_correctly_rounded_result(name, dtype):
    kernel = ExpKernel(name)
    x = _inputs(dtype, kernel.base2)
    got = x.copy()
    with np.errstate(over="ignore", under="ignore"):
        kernel.exp(got)
    assert got.dtype == dtype
    ref = _oracle(x, kernel.base2)
    errors, normal = _ulp_errors(got, ref, dtype)
    assert normal.sum() > 300_000
    assert errors.max() <= _bound(name, dtype)
    # subnormal results: within one unit of the smallest subnormal, zero and inf exact
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):
        rounded = ref.astype(dtype)
    tiny = np.isfinite(rounded) & ~normal
    step = float(info.smallest_subnormal)
    assert np.all(np.abs(got[tiny].astype(ref.dtype) - ref[tiny]) <= 1.5 * step)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(rounded))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", EXP_KERNELS)
def test_every_exp_kernel_follows_numpy_on_special_values(name, dtype):
    kernel = ExpKernel(name)
    info = np.finfo(dtype)
    specials = np.array(
        [
            np.nan,
            -np.nan,
            np.inf,
            -np.inf,
            0.0,
            -0.0,
            1.0,
            -1.0,
            info.max,
            -info.max,
            info.tiny,
            -info.tiny,
            info.smallest_subnormal,
            info.eps,
            88.72,
            88.73,
            -87.33,
            -103.9,
            -104.1,
            127.99,
            128.0,
            128.01,
            -149.0,
            -150.0,
            -151.0,
            709.78,
            709.79,
            -745.13,
            -745.14,
            1023.99,
            1024.0,
            -1074.0,
            -1075.0,
            -1076.0,
            3e8,
            -3e8,
        ],
        dtype=np.float64,
    )
    with np.errstate(over="ignore"):
        x = specials.astype(dtype)
    got = x.copy()
    kernel.exp(got)
    with np.errstate(over="ignore", under="ignore"):
        ref = (np.exp2 if kernel.base2 else np.exp)(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_array_equal(got == 0, ref == 0)
    finite = np.isfinite(ref) & (ref >= info.tiny)
    assert np.all(np.abs(got[finite] - ref[finite]) <= 3 * np.spacing(ref[finite]))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(EXP_KERNELS),
    st.sampled_from([np.float32, np.float64]),
    st.integers(1, 9),
    st.integers(1, 40),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_shifted_exp_is_numpy_subtract_clip_then_exp(
    name, dtype, rows, cols, clip, transposed, seed
):
    rng = np.random.default_rng(seed)
    kernel = ExpKernel(name)
    # exponents within +-60: normal results (the ranges' ends are tested above)
    x = np.clip(rng.normal(size=(rows, cols)) * 8, -30, 30).astype(dtype)
    offset = np.clip(rng.normal(size=rows) * 8, -30, 30).astype(dtype)
    got = x.T.copy().T if transposed else x.copy()
    kernel.exp_shifted(got, offset, clip)
    arg = x - offset[:, None]
    if clip:
        arg = np.minimum(arg, 0)
    with np.errstate(over="ignore", under="ignore"):
        ref = (np.exp2 if kernel.base2 else np.exp)(arg.astype(np.float64))
    np.testing.assert_allclose(got, ref.astype(dtype), rtol=4 * np.finfo(dtype).eps, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(EXP_KERNELS),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 6),
    st.integers(0, 5),
    st.integers(0, 2**32 - 1),
)
def test_exp_pairs_are_the_exp_of_u_and_of_total_minus_u(name, dtype, p, extra, seed):
    rng = np.random.default_rng(seed)
    kernel = ExpKernel(name)
    rows = 5
    a = (rng.normal(size=(rows, 2 * p + extra)) * 10).astype(dtype)
    total = (rng.normal(size=rows) * 10).astype(dtype)
    ref = a.astype(np.float64)
    ref[:, p : 2 * p] = total[:, None] - a[:, :p]  # the partner's logit in the dtype
    ref = (np.exp2 if kernel.base2 else np.exp)(ref)
    kernel.exp_pairs(a, p, total)
    np.testing.assert_allclose(a, ref.astype(dtype), rtol=8 * np.finfo(dtype).eps)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (3, 5), elements=st.floats(width=32, allow_nan=True)))
def test_polynomial_exp_special_values_follow_numpy_under_hypothesis(x):
    for name in ("numba-exp", "numba-exp2"):
        kernel = ExpKernel(name)
        got = x.copy()
        kernel.exp(got)
        with np.errstate(over="ignore", under="ignore"):
            ref = (np.exp2 if kernel.base2 else np.exp)(x.astype(np.float64)).astype(np.float32)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
        ok = np.isfinite(ref)
        assert np.all(np.abs(got[ok] - ref[ok]) <= np.spacing(np.abs(ref[ok])) + 2**-149)


def test_natural_kernel_of_a_base2_kernel_takes_natural_logits():
    for name in EXP_KERNELS:
        natural = ExpKernel(name).natural()
        assert natural.unit == 1.0 and not natural.base2
        assert natural.numba == ExpKernel(name).numba


def test_unknown_kernel_name_is_a_value_error():
    with pytest.raises(ValueError, match="exp kernel"):
        ExpKernel("fast-exp")


@pytest.mark.parametrize("name", EXP_KERNELS)
def test_environment_variable_forces_the_kernel(fresh_choices, name):
    fresh_choices.setenv(elementwise.ENV_EXP, name)
    assert exp_kernel(np.float32).name == name
    assert exp_kernel(np.float64, work=1).name == name
    assert elementwise.chosen_kernels()["exp float32"] == name


def test_bad_environment_value_names_the_variable(fresh_choices):
    fresh_choices.setenv(elementwise.ENV_EXP, "fastest")
    with pytest.raises(ValueError, match="FAVORKERN_EXP"):
        exp_kernel(np.float32)
    fresh_choices.setenv(elementwise.ENV_SINCOS, "svml")
    with pytest.raises(ValueError, match="FAVORKERN_SINCOS"):
        sincos_kernel(np.float32)


def test_the_timed_choice_is_one_of_the_candidates_and_kept(fresh_choices):
    fresh_choices.delenv(elementwise.ENV_EXP, raising=False)
    first = exp_kernel(np.float32)
    assert first.name in EXP_KERNELS
    assert exp_kernel(np.float32) is first  # cached: one kernel per process
    assert sincos_kernel(np.float64) in elementwise.SINCOS_KERNELS


def test_small_calls_keep_to_numpy_without_loading_numba():
    code = (
        "import sys, numpy as np\n"
        "from favorkern import _config\n"
        "from favorkern._elementwise import exp_kernel\n"
        "k = exp_kernel(np.float32, work=_config.NUMBA_MIN_WORK - 1)\n"
        "assert k.name.startswith('numpy'), k\n"
        "assert 'numba' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != elementwise.ENV_EXP}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("name", EXP_KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_agrees_whichever_exp_kernel_is_forced(fresh_choices, name, causal):
    from favorkern import draw_projection, favor_attention

    rng = np.random.default_rng(3)
    Q, K, V = (rng.normal(scale=0.5, size=(700, 16)).astype(np.float32) for _ in range(3))
    W = draw_projection(64, 16, random_state=0)
    fresh_choices.setenv(elementwise.ENV_EXP, "numpy-exp")
    elementwise.reset_choices()
    ref = favor_attention(Q, K, V, projection_matrix=W, causal=causal)
    fresh_choices.setenv(elementwise.ENV_EXP, name)
    elementwise.reset_choices()
    got = favor_attention(Q, K, V, projection_matrix=W, causal=causal)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("feature_map", ["positive", "hyperbolic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", EXP_KERNELS)
def test_transforms_agree_whichever_exp_kernel_is_forced(fresh_choices, name, dtype, feature_map):
    from favorkern.features import RandomFeatures

    X = np.random.default_rng(4).normal(scale=0.4, size=(300, 8)).astype(dtype)
    est = RandomFeatures(feature_map, n_components=64, random_state=0).fit(X)
    fresh_choices.setenv(elementwise.ENV_EXP, "numpy-exp")
    elementwise.reset_choices()
    ref = est.transform(X).astype(np.float64)
    fresh_choices.setenv(elementwise.ENV_EXP, name)
    elementwise.reset_choices()
    got = est.transform(X)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=16 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trigonometric_transform_agrees_whichever_sincos_kernel_is_forced(fresh_choices, dtype):
    from favorkern import TrigonometricRandomFeatures

    X = np.random.default_rng(5).normal(size=(200, 6)).astype(dtype)
    est = TrigonometricRandomFeatures(64, random_state=0).fit(X)
    results = {}
    for name in elementwise.SINCOS_KERNELS:
        fresh_choices.setenv(elementwise.ENV_SINCOS, name)
        elementwise.reset_choices()
        results[name] = est.transform(X)
        chosen = elementwise.chosen_kernels()[f"sincos {np.dtype(dtype).name}"]
        assert chosen == elementwise.sincos_name(name, dtype)
        assert results[name].dtype == dtype
    # features are r cos and r sin with |r| <= max: within a few ulp of that, and the
    # float32 reduction within its absolute bound (times r) of it
    scale = np.abs(results["numpy"]).max()
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(results["numba"], results["numpy"], rtol=0, atol=4 * eps * scale)
    bound = SIN_COS_F32_ERROR + 2 * eps if dtype == np.float32 else 4 * eps
    np.testing.assert_allclose(
        results["numba-float32"], results["numpy"], rtol=0, atol=bound * scale
    )


def test_float32_sincos_candidate_means_numba_in_float64(fresh_choices):
    fresh_choices.setenv(elementwise.ENV_SINCOS, "numba-float32")
    assert sincos_kernel(np.float64) == "numba"
    assert sincos_kernel(np.float32) == "numba-float32"


@pytest.mark.parametrize("name", EXP_KERNELS)
def test_kernels_pickle_by_name_and_still_work(name):
    import pickle

    kernel = ExpKernel(name)
    a = np.array([[0.0, 1.0]], dtype=np.float32)
    kernel.exp(a.copy())  # resolves the numba functions of a numba kernel
    again = pickle.loads(pickle.dumps(kernel))
    assert again.name == name and again.unit == kernel.unit
    b = a * np.float32(kernel.unit)
    again.exp(b)
    np.testing.assert_allclose(b, [[1.0, np.e]], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(0, 9), st.integers(1, 70)),
        elements=st.floats(-1e6, 1e6, width=32),
    )
)
def test_sq_norms_match_the_float64_sum_of_squares(X):
    got = sq_norms(X)
    assert got.dtype == np.float64 and got.shape == (X.shape[0],)
    ref = (X.astype(np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-12 if X.dtype == np.float64 else 1e-6)
