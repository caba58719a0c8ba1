"""Closed-form MSE of the dense-exponential maps (SDERF, ADERF, SADERF) at fitted constants."""

from __future__ import annotations

import math

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from favorkern.diagnostics import convergence, empirical_mse, theoretical_mse, variance_study
from favorkern.feature_maps import feature_map_names, get_feature_map

DERF = ("sderf", "aderf")
GAMMA = 0.25  # input_scale 0.5


def anisotropic_sets(seed, n=300, d=4, key_scale=0.5):
    """Queries and keys with unequal, differently ordered scales (and a mean offset)."""
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(n, d)) * np.linspace(2.0, 0.2, d) + 0.3
    K = key_scale * rng.normal(size=(n, d)) * np.linspace(0.3, 1.5, d)
    return Q, K


def fitted(name, Q, K, gamma=GAMMA):
    return get_feature_map(name).fit(Q, K, input_scale=math.sqrt(gamma))


def test_the_fitted_maps_declare_closed_forms():
    names = feature_map_names(closed_form=True)
    for name in ("saderf", "sderf", "aderf", "whitened"):
        assert name in names
    assert "fitted" not in names  # not an unbiased estimator: no variance formula
    assert get_feature_map("sderf").closed_form_projections("chi") == ("gaussian",)
    assert get_feature_map("aderf").closed_form_projections("fixed") == ()
    assert get_feature_map("saderf").closed_form_projections("chi") == (
        "gaussian", "orthogonal", "simplex",
    )  # fmt: skip


# Monte Carlo: 20,000 trials of m = 8 rows; norms are moderate (|z|^2 <~ 2 in every
# direction), so the per-trial squared error has finite, moderate kurtosis and the
# standard error is trustworthy: every pair within 4.5 se of the closed form.
@pytest.mark.parametrize(
    "name, projection",
    [("sderf", "gaussian"), ("aderf", "gaussian"), ("saderf", "gaussian"),
     ("saderf", "orthogonal"), ("saderf", "simplex"), ("whitened", "gaussian"),
     ("whitened", "orthogonal")],
)  # fmt: skip
def test_closed_form_matches_monte_carlo(name, projection):
    Q, K = anisotropic_sets(0)
    constants = fitted(name, Q, K)
    rng = np.random.default_rng(1)
    # pairs from the fitted sets and pairs off them (isotropic, and one large axis)
    x = np.vstack([Q[:4], rng.normal(scale=0.6, size=(2, 4)), [[2.5, 0.0, 0.0, 0.1]]])
    y = np.vstack([K[4:8], rng.normal(scale=0.6, size=(2, 4)), [[0.3, 0.2, 0.0, -1.0]]])
    theory = theoretical_mse(x, y, feature_map=name, n_components=8, projection=projection,
                             gamma=GAMMA, constants=constants)  # fmt: skip
    mc = empirical_mse(x, y, feature_map=name, n_components=8, projection=projection,
                       gamma=GAMMA, constants=constants, n_trials=20000,
                       random_state=2)  # fmt: skip
    z = (mc.mse - theory) / mc.se
    assert np.all(np.abs(z) < 4.5), z
    assert np.all(np.abs(mc.mse / theory - 1) < 0.1), mc.mse / theory  # se is a few %
    unbiased = (mc.mean - mc.kernel) / mc.mean_se
    assert np.all(np.abs(unbiased) < 4.5), unbiased


@pytest.mark.parametrize("name", DERF)
def test_closed_form_matches_monte_carlo_at_larger_width_float64(name):
    # m = 64, another seed and keys on a very different scale (ADERF's balancing matters)
    Q, K = anisotropic_sets(3, d=3, key_scale=0.15)
    constants = fitted(name, Q, 4 * K)
    x, y = Q[10:14], 4 * K[20:24]
    theory = theoretical_mse(x, y, feature_map=name, n_components=64, projection="gaussian",
                             gamma=GAMMA, constants=constants)  # fmt: skip
    mc = empirical_mse(x, y, feature_map=name, n_components=64, projection="gaussian",
                       gamma=GAMMA, constants=constants, n_trials=8000, random_state=4)  # fmt: skip
    z = (mc.mse - theory) / mc.se
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.parametrize("name", ("sderf", "aderf", "saderf"))
def test_closed_form_matches_the_printed_full_matrix_variance(name):
    # The variance of :ref:`theory-favor-sharp` with dense A = R^T diag(a) R and
    # B_k = (I - 4A)^(1/2) T_k.
    Q, K = anisotropic_sets(5, d=5)
    constants = fitted(name, Q, K)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 6, 5)) * [[1.5, 0.2, 1.0, 0.7, 0.1]]
    A, B1, B2 = naive.derf_full_matrices(constants, GAMMA, name)
    expected = naive.derf_log_mse_paper(x, y, A, B1, B2, m=16)
    got = theoretical_mse(x, y, feature_map=name, n_components=16, projection="gaussian",
                          gamma=GAMMA, constants=constants, log=True)  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", DERF)
def test_closed_form_matches_gauss_hermite_quadrature(name):
    # E[(f(w, x) f(w, y))^2] by a 48^3-node tensor grid over w, features evaluated in
    # the dense form D exp(w^T A w + w^T B x + x^T C x).
    Q, K = anisotropic_sets(7, d=3)
    constants = fitted(name, Q, K)
    A, B1, B2 = naive.derf_full_matrices(constants, GAMMA, name)
    for x, y in [(Q[0], K[1]), (Q[2], -K[3]), (np.array([1.0, -0.5, 0.2]), K[4])]:

        def product(w, x=x, y=y):
            return naive.derf_feature(w, x, A, B1) * naive.derf_feature(w, y, A, B2)

        second = naive.gaussian_expectation(lambda w: product(w) ** 2, 3)
        mean = naive.gaussian_expectation(product, 3)
        kernel = math.exp(GAMMA * x @ y)
        assert mean == pytest.approx(kernel, rel=1e-10)  # unbiased, by quadrature
        got = theoretical_mse(x, y, feature_map=name, n_components=2, projection="gaussian",
                              gamma=GAMMA, constants=constants)  # fmt: skip
        assert got == pytest.approx((second - kernel**2) / 2, rel=1e-8)


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    a_scale=st.floats(0.0, 3.0),
    norm=st.floats(0.01, 30.0),
    m=st.integers(1, 512),
)
def test_any_valid_constants_match_the_printed_formula(d, seed, a_scale, norm, m):
    # Random orthogonal R, A <= 0 (or up to just below 1/8), a well-conditioned T_q
    # with T_k = T_q^-T, pairs up to |x| = 30: the log-space closed form equals the
    # full-matrix formula everywhere (where the MSE itself overflows too).
    rng = np.random.default_rng(seed)
    R = np.linalg.qr(rng.normal(size=(d, d)))[0]
    a = -a_scale * rng.random(d)
    if seed % 2:
        a[0] = 0.12  # one direction near the finite-variance edge A < 1/8
    Tq = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    c = {"rotation": R, "A": a, "query_transform": Tq, "key_transform": np.linalg.inv(Tq).T}
    x, y = rng.normal(size=(2, 3, d))
    x *= norm / np.linalg.norm(x, axis=1, keepdims=True)
    A, B1, B2 = naive.derf_full_matrices(c, 1.0, "aderf")
    got = theoretical_mse(x, y, feature_map="aderf", n_components=m, projection="gaussian",
                          constants=c, log=True)  # fmt: skip
    np.testing.assert_allclose(got, naive.derf_log_mse_paper(x, y, A, B1, B2, m),
                               rtol=1e-8, atol=1e-8)  # fmt: skip


def test_sderf_reduces_to_gerf_and_to_positive():
    rng = np.random.default_rng(8)
    x, y = rng.normal(scale=0.7, size=(2, 5, 4))
    rotation = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    for a in (0.0, -0.3):
        c = {"rotation": rotation, "A": np.full(4, a)}
        sderf = theoretical_mse(x, y, feature_map="sderf", n_components=8,
                                projection="gaussian", constants=c)  # fmt: skip
        gerf = theoretical_mse(x, y, feature_map="optimal", n_components=8,
                               projection="gaussian", A=a)  # fmt: skip
        np.testing.assert_allclose(sderf, gerf, rtol=1e-12)
    positive = theoretical_mse(x, y, feature_map="positive", n_components=8, projection="gaussian")
    c0 = {"rotation": rotation, "A": np.zeros(4)}
    np.testing.assert_allclose(
        theoretical_mse(x, y, feature_map="sderf", n_components=8, projection="gaussian",
                        constants=c0),
        positive, rtol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("projection", ["gaussian", "orthogonal", "simplex"])
def test_saderf_is_the_optimal_closed_form_on_the_rescaled_pair(projection):
    Q, K = anisotropic_sets(9)
    c = fitted("saderf", Q, K)
    x, y = Q[:5], K[:5]
    got = theoretical_mse(x, y, feature_map="saderf", n_components=8, projection=projection,
                          gamma=GAMMA, constants=c)  # fmt: skip
    want = theoretical_mse(x * c["psi"], y / c["psi"], feature_map="optimal", n_components=8,
                           projection=projection, gamma=GAMMA, A=c["A"])  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert not np.allclose(c["psi"], 1.0)


def test_whitened_is_the_optimal_closed_form_on_the_whitened_pair():
    Q, K = anisotropic_sets(15)
    c = fitted("whitened", Q, K)
    x, y = Q[:5], K[:5]
    got = theoretical_mse(x, y, feature_map="whitened", n_components=8, gamma=GAMMA,
                          constants=c)  # fmt: skip
    xt, yt = x @ c["query_transform"].T, y @ c["key_transform"].T
    want = theoretical_mse(xt, yt, feature_map="optimal", n_components=8, gamma=GAMMA, A=c["A"])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    bad = dict(c, key_transform=2 * c["key_transform"])  # q.k doubled: another kernel
    with pytest.raises(ValueError, match="change the inner products"):
        theoretical_mse(x, y, feature_map="whitened", n_components=8, constants=bad)


def test_fitted_maps_lower_the_mean_closed_form_mse_on_anisotropic_pairs():
    Q, K = anisotropic_sets(10, key_scale=1.0)
    i, j = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    x, y = Q[i.ravel()], K[j.ravel()]
    kwargs = dict(n_components=64, projection="gaussian", gamma=GAMMA, log=True)
    log_rel = {}
    for name in ("positive", "sderf", "aderf"):
        c = fitted(name, Q, K) or None
        log_rel[name] = np.mean(
            theoretical_mse(x, y, feature_map=name, constants=c, **kwargs)
            - 2 * GAMMA * (np.sum(x * y, axis=1))
        )
    assert log_rel["aderf"] < log_rel["sderf"] < log_rel["positive"]


def test_large_norms_stay_finite_in_log_space():
    Q, K = anisotropic_sets(11)
    for name in ("sderf", "aderf", "saderf"):
        c = fitted(name, Q, K)
        x = np.array([[40.0, 5.0, -3.0, 1.0], [40.0, 5.0, -3.0, 1.0], [1e3, 0.0, 0.0, 0.0]])
        y = np.array([[30.0, 2.0, 1.0, 0.0], [-40.0, -5.0, 3.0, -1.0], [-1e3, 0.0, 0.0, 1.0]])
        kwargs = dict(feature_map=name, n_components=16, projection="gaussian", gamma=GAMMA,
                      constants=c)  # fmt: skip
        logged = theoretical_mse(x, y, log=True, **kwargs)
        assert np.all(np.isfinite(logged)), (name, logged)
        A, B1, B2 = naive.derf_full_matrices(c, GAMMA, name)
        np.testing.assert_allclose(logged, naive.derf_log_mse_paper(x, y, A, B1, B2, 16),
                                   rtol=1e-9)  # fmt: skip
        with np.errstate(over="ignore"):
            direct = theoretical_mse(x, y, **kwargs)
        assert direct[0] == np.inf  # beyond float64, honestly
        assert not np.any(np.isnan(direct))
        if name == "sderf":  # x = -y: z = 0, a tiny MSE (not so after ADERF's T_q != T_k)
            assert logged[1] < -700 and direct[1] < 1e-300


def test_gerf_at_opposite_pair_with_fixed_a_has_positive_mse():
    # z = 0 with A != 0: the features still vary with |w|^2, so the MSE is not zero.
    x = np.array([0.3, -0.2, 0.5])
    theory = theoretical_mse(x, -x, feature_map="optimal", n_components=4,
                             projection="gaussian", A=-0.3)  # fmt: skip
    mc = empirical_mse(x, -x, feature_map="optimal", n_components=4, projection="gaussian",
                       A=-0.3, n_trials=20000, random_state=0)  # fmt: skip
    assert theory > 0
    assert abs(mc.mse - theory) < 4.5 * mc.se
    c = {"rotation": np.eye(3), "A": np.array([-0.3, 0.0, -0.1])}
    assert theoretical_mse(x, -x, feature_map="sderf", n_components=4, projection="gaussian",
                           constants=c) > 0  # fmt: skip
    assert theoretical_mse(x, -x, feature_map="sderf", n_components=4, projection="gaussian",
                           constants={"rotation": np.eye(3), "A": np.zeros(3)}) == 0.0  # fmt: skip


def _aderf_constants():
    Q, K = anisotropic_sets(12)
    return fitted("aderf", Q, K)


@pytest.mark.parametrize(
    "name, constants, kwargs, error, match",
    [
        ("sderf", None, {}, ValueError, r"needs its fitted constants \['rotation', 'A'\]"),
        ("aderf", "sderf", {}, ValueError, r"needs its fitted constants \['query_transform'"),
        ("saderf", None, {}, ValueError, r"needs its fitted constants \['psi', 'A'\]"),
        ("sderf", "sderf", {"projection": "orthogonal"}, ValueError, r"in \['gaussian'\]"),
        ("sderf", "sderf", {"norms": "fixed"}, ValueError, r"norms='fixed'"),
        ("sderf", "sderf", {"A": -0.1}, ValueError, "not both"),
        ("sderf", [("A", 1)], {}, TypeError, "constants must be a dict"),
        ("sderf", {"rotation": np.eye(3), "A": np.zeros(3)}, {}, ValueError, r"shape \(4, 4\)"),
        ("sderf", {"rotation": np.eye(4), "A": np.zeros(3)}, {}, ValueError, r"shape \(4,\)"),
        ("sderf", {"rotation": 2 * np.eye(4), "A": np.zeros(4)}, {}, ValueError, "orthogonal"),
        ("sderf", {"rotation": np.eye(4), "A": np.full(4, 0.2)}, {}, ValueError, "< 1/8"),
        ("sderf", {"rotation": np.eye(4), "A": np.array([0, np.nan, 0, 0])}, {}, ValueError,
         "not finite"),
        ("aderf", "aderf_bad", {}, ValueError, "query_transform\\^T key_transform = I"),
        ("saderf", {"psi": np.ones(4), "A": 0.2}, {}, ValueError, "A must be a finite number"),
        ("positive", {"A": -0.1}, {}, ValueError, r"keys \['A'\] that feature map 'positive'"),
        ("saderf", {"psi": np.ones(4), "A": 0.0, "rotation": np.eye(4)}, {}, ValueError,
         "does not use"),
    ],
)  # fmt: skip
def test_bad_constants_are_named(name, constants, kwargs, error, match):
    Q, K = anisotropic_sets(12)
    if constants == "sderf":
        constants = fitted("sderf", Q, K)
    elif constants == "aderf_bad":
        constants = dict(_aderf_constants(), key_transform=np.eye(4) * 2)
    options = {"projection": "gaussian", **kwargs}
    with pytest.raises(error, match=match):
        theoretical_mse(Q[:2], K[:2], feature_map=name, n_components=8, constants=constants,
                        **options)  # fmt: skip


def test_empirical_mse_takes_constants_or_a_not_both():
    Q, K = anisotropic_sets(13)
    c = fitted("sderf", Q, K)
    with pytest.raises(ValueError, match="not both"):
        empirical_mse(Q[0], K[0], feature_map="sderf", n_components=8, constants=c, A=-0.1)
    with pytest.raises(ValueError, match="needs its fitted constants"):
        empirical_mse(Q[0], K[0], feature_map="sderf", n_components=8, constants={"A": c["A"]})


def test_variance_study_and_convergence_use_the_closed_form():
    study = variance_study(n_dims=4, n_components=[8], feature_maps=["sderf", "aderf"],
                           projection=["gaussian", "orthogonal"], n_trials=3000)  # fmt: skip
    iid = study[study["projection"] == "gaussian"]
    assert iid["theoretical_mse"].notna().all()
    assert study[study["projection"] == "orthogonal"]["theoretical_mse"].isna().all()
    # per-pair fits in both; the default pairs have moderate norms
    z = iid["z"][np.isfinite(iid["z"])]
    assert (z.abs() < 4.5).all(), iid[["feature_map", "pair", "z"]]
    X = np.random.default_rng(14).normal(scale=0.3, size=(30, 4))
    errors = convergence(X, feature_map="sderf", projection="gaussian", n_components=[16, 256],
                         n_repeats=2, random_state=0)  # fmt: skip
    rel = errors.groupby("n_components")["theoretical_rel_rmse"].first()
    assert rel[256] == pytest.approx(rel[16] / 4, rel=1e-12)  # iid: MSE = Var1 / m
