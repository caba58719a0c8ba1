"""Closed-form MSE against Monte Carlo through the library's feature maps; studies, plots, CLI.

The Monte-Carlo configurations keep ``e^{4|z|^2} / m`` moderate (:ref:`theory-heavy-tails`), so
that the sample standard errors are trustworthy, and use fixed seeds.
"""

import subprocess
import sys

import naive
import numpy as np
import pytest

from favorkern import (
    HyperbolicRandomFeatures,
    PositiveRandomFeatures,
    TrigonometricRandomFeatures,
    draw_projection,
)
from favorkern.diagnostics import (
    attention_error,
    convergence,
    default_pairs,
    empirical_mse,
    theoretical_mse,
    variance_study,
)
from favorkern.diagnostics.monte_carlo import draw_trials
from favorkern.feature_maps._variance import orthogonal_deficit, trig_gap

FEATURES = ("positive", "hyperbolic", "trigonometric")  # the Performer's three
N_TRIALS = 20000
Z_LIMIT = 4.5


def _pairs(d, specs, seed):
    """Pairs with given norms and angles in a random plane of R^d."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u, v = basis[:, 0], basis[:, 1]
    x = np.array([a * u for a, _, _ in specs])
    y = np.array([b * (np.cos(t) * u + np.sin(t) * v) for _, b, t in specs])
    return x, y


# (|x|, |y|, angle): |z|^2 = 0.58, 0.25, 0.14, 0.85; |delta|^2 = 0.08, 0.50, 1.00, 0.27.
PAIR_SPECS = [(0.4, 0.35, 0.3), (0.35, 0.35, np.pi / 2), (0.5, 0.5, 2.2), (0.6, 0.45, 1.0)]

# (d, projection, m): m < d, m = d, m > d with a partial block (d = 16), and d = 64.
# Orthogonal draws at d = 64 cost a 64 x 64 QR per trial in draw_projection (~0.6 ms
# here): 20000 of them do not fit the time budget, so the d = 64 orthogonal closed form
# is checked against :ref:`theory-gain-table` (test_orthogonal_gain_table) instead.
MC_SETTINGS = [
    (16, "gaussian", 8),
    (16, "gaussian", 16),
    (16, "gaussian", 24),
    (16, "orthogonal", 8),
    (16, "orthogonal", 16),
    (16, "orthogonal", 24),
    (64, "gaussian", 32),
]


@pytest.fixture(scope="module")
def monte_carlo():
    """Every (setting, features) once: the draws of a setting are shared by the maps."""
    results = {}
    for index, (d, projection, m) in enumerate(MC_SETTINGS):
        x, y = _pairs(d, PAIR_SPECS, seed=index)
        rng = np.random.RandomState(1000 + index)
        draws = draw_trials(N_TRIALS, m, d, projection, "chi", rng)
        for features in FEATURES:
            mc = empirical_mse(
                x, y, feature_map=features, n_components=naive.width(features, m), projections=draws
            )
            results[(d, projection, m, features)] = (x, y, mc)
    return results


def test_monte_carlo_agrees_with_closed_form(monte_carlo):
    z_scores = []
    for (d, projection, m, features), (x, y, mc) in monte_carlo.items():
        theory = theoretical_mse(
            x, y, feature_map=features, n_components=naive.width(features, m), projection=projection
        )
        assert mc.n_trials >= 20000
        z = (mc.mse - theory) / mc.se
        assert np.all(np.abs(z) < Z_LIMIT), (d, projection, m, features, z)
        # unbiased: the mean estimate is the kernel
        assert np.all(np.abs(mc.mean - mc.kernel) < Z_LIMIT * mc.mean_se)
        z_scores.extend(z)
    assert len(z_scores) >= 30  # configurations = setting x features x pair
    assert len(z_scores) == len(MC_SETTINGS) * len(FEATURES) * len(PAIR_SPECS)


def test_orthogonal_told_apart_from_iid(monte_carlo):
    # trigonometric, d = m = 16, |delta|^2 = 1: the orthogonal MSE is ~6x smaller
    x, y, mc = monte_carlo[(16, "orthogonal", 16, "trigonometric")]
    iid = theoretical_mse(x, y, feature_map="trigonometric", n_components=32, projection="gaussian")
    ort = theoretical_mse(
        x, y, feature_map="trigonometric", n_components=32, projection="orthogonal"
    )
    assert ort[2] < 0.25 * iid[2]
    assert abs(mc.mse[2] - ort[2]) < Z_LIMIT * mc.se[2]
    assert (iid[2] - mc.mse[2]) > 20 * mc.se[2]
    # hyperbolic, d = m = 16
    x, y, mc = monte_carlo[(16, "orthogonal", 16, "hyperbolic")]
    iid = theoretical_mse(x, y, feature_map="hyperbolic", n_components=32, projection="gaussian")
    ort = theoretical_mse(x, y, feature_map="hyperbolic", n_components=32, projection="orthogonal")
    assert np.all(np.abs(mc.mse - ort) < Z_LIMIT * mc.se)
    assert np.all(iid - mc.mse > 10 * mc.se)
    # and the iid Monte Carlo is told apart from the orthogonal closed form
    x, y, mc = monte_carlo[(16, "gaussian", 16, "hyperbolic")]
    assert np.all(mc.mse - ort > 10 * mc.se)


@pytest.mark.parametrize("features", FEATURES)
def test_fixed_norms_bias_plus_variance(features):
    d = 16
    x, y = _pairs(d, [(0.5, 0.5, 0.6), (0.7, 0.6, 2.0)], seed=7)
    for projection, m in (("gaussian", 8), ("orthogonal", 16)):
        mc = empirical_mse(
            x,
            y,
            feature_map=features,
            n_components=naive.width(features, m),
            projection=projection,
            norms="fixed",
            n_trials=N_TRIALS if projection == "gaussian" else 5000,
            random_state=3,
        )
        theory = theoretical_mse(
            x,
            y,
            feature_map=features,
            n_components=naive.width(features, m),
            projection=projection,
            norms="fixed",
        )
        assert np.all(np.abs(mc.mse - theory) < Z_LIMIT * mc.se), (projection, mc.mse, theory)


@pytest.mark.parametrize(
    "features, transformer",
    [
        ("positive", PositiveRandomFeatures),
        ("hyperbolic", HyperbolicRandomFeatures),
        ("trigonometric", TrigonometricRandomFeatures),
    ],
)
def test_trials_are_the_transformers_estimates(features, transformer):
    """The stacked Monte Carlo gives, trial by trial, what the fitted transformer gives."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(scale=0.4, size=(2, 3, 8))
    draws = np.stack([draw_projection(6, 8, random_state=seed) for seed in range(5)])
    mc = empirical_mse(
        x,
        y,
        feature_map=features,
        n_components=naive.width(features, 6),
        gamma=0.7,
        projections=draws,
        n_groups=5,
    )
    width = 6 if features == "positive" else 12
    estimates = []
    for W in draws:
        fitted = transformer(width, gamma=0.7, random_state=0).fit(x)
        fitted.projection_ = W
        estimates.append(np.einsum("ij,ij->i", fitted.transform(x), fitted.transform(y)))
    estimates = np.array(estimates).T
    kernel = np.exp(0.7 * np.sum(x * y, axis=1))
    np.testing.assert_allclose(mc.mean, estimates.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(mc.mse, ((estimates - kernel[:, None]) ** 2).mean(axis=1), rtol=1e-9)


# -- closed forms ----------------------------------------------------------------------


def test_lemma2_iid_formulas():
    rng = np.random.default_rng(1)
    x, y = rng.normal(scale=0.5, size=(2, 20, 5))
    m, gamma = 7, 0.8
    xs, ys = np.sqrt(gamma) * x, np.sqrt(gamma) * y
    z2 = np.sum((xs + ys) ** 2, 1)
    d2 = np.sum((xs - ys) ** 2, 1)
    sm = np.exp(np.sum(xs * ys, 1))
    pos = np.exp(z2) * sm**2 * (1 - np.exp(-z2)) / m
    trig = np.exp(z2) * sm**-2 * (1 - np.exp(-d2)) ** 2 / (2 * m)
    hyp = 0.5 * (1 - np.exp(-z2)) * pos
    for features, expected in (("positive", pos), ("trigonometric", trig), ("hyperbolic", hyp)):
        got = theoretical_mse(
            x,
            y,
            feature_map=features,
            n_components=naive.width(features, m),
            projection="gaussian",
            gamma=gamma,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_orthogonal_gain_table():
    """:ref:`theory-gain-table`: MSE_design / MSE_iid at m = d for x = y."""
    table = {
        16: [(0.25, 0.911, 0.021, 0.150), (1, 0.782, 0.098, 0.158), (4, 0.922, 0.413, 0.671)],
        64: [(0.25, 0.896, 0.006, 0.044), (2, 0.722, 0.154, 0.276), (4, 0.879, 0.370, 0.691)],
    }
    for d, rows in table.items():
        for s, orf, hyp_orf, trig_orf in rows:
            x = np.zeros(d)
            x[3] = np.sqrt(s) / 2
            iid = theoretical_mse(
                x, x, feature_map="positive", n_components=d, projection="gaussian"
            )
            ort = theoretical_mse(
                x, x, feature_map="positive", n_components=d, projection="orthogonal"
            )
            hyp = theoretical_mse(
                x, x, feature_map="hyperbolic", n_components=2 * d, projection="orthogonal"
            )
            t_iid = theoretical_mse(
                x, -x, feature_map="trigonometric", n_components=2 * d, projection="gaussian"
            )
            t_ort = theoretical_mse(
                x, -x, feature_map="trigonometric", n_components=2 * d, projection="orthogonal"
            )
            assert round(ort / iid, 3) == orf
            assert round(hyp / iid, 3) == hyp_orf
            assert round(t_ort / t_iid, 3) == trig_orf


def test_series_match_mpmath():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    s = np.array([1e-5, 0.3, 1.0, 4.0, 25.0, 150.0, 900.0])
    for d in (1, 3, 16, 64):
        half = mp.mpf(d) / 2
        q = orthogonal_deficit(s, d)
        ref = [float(1 - mp.exp(-mp.mpf(v)) * mp.hyp1f1(d, half, mp.mpf(v) / 2)) for v in s]
        np.testing.assert_allclose(q, ref, rtol=1e-10)
        gap = trig_gap(s, d)
        ref = [float(mp.hyp1f1(d, half, -mp.mpf(v) / 2) - mp.exp(-mp.mpf(v))) for v in s]
        np.testing.assert_allclose(gap, ref, rtol=1e-8, atol=1e-15)


@pytest.mark.parametrize("d", [4, 16])
def test_theorem2_bound(d):
    """Performer Theorem 2 (m <= d) and its stacked-block form (m > d), positive features."""
    rng = np.random.default_rng(d)
    x = rng.normal(size=(300, d)) * rng.uniform(0.05, 1.5, size=(300, 1)) / np.sqrt(d)
    y = rng.normal(size=(300, d)) * rng.uniform(0.05, 1.5, size=(300, 1)) / np.sqrt(d)
    sm = np.exp(np.sum(x * y, 1))
    lam = np.exp(-(np.sum(x * x, 1) + np.sum(y * y, 1)) / 2)
    for m in (2, d // 2, d, d + 3, 3 * d):
        k, r = divmod(m, d)
        pairs = k * d * (d - 1) + r * (r - 1)
        iid = theoretical_mse(x, y, feature_map="positive", n_components=m, projection="gaussian")
        ort = theoretical_mse(x, y, feature_map="positive", n_components=m, projection="orthogonal")
        bound = iid - (pairs / m**2) * (2 / (d + 2)) * (sm - lam) ** 2
        if m <= d:  # the printed form
            printed = iid - (2 * (m - 1) / (m * (d + 2))) * (sm - lam) ** 2
            np.testing.assert_allclose(bound, printed, rtol=1e-12)
        assert np.all(ort <= bound * (1 + 1e-10) + 1e-300)
        hyp_ort = theoretical_mse(
            x, y, feature_map="hyperbolic", n_components=2 * m, projection="orthogonal"
        )
        assert np.all(
            hyp_ort
            <= theoretical_mse(
                x, y, feature_map="hyperbolic", n_components=2 * m, projection="gaussian"
            )
        )


def test_theorem2_bound_holds_for_the_monte_carlo(monte_carlo):
    x, y, mc = monte_carlo[(16, "orthogonal", 16, "positive")]
    d = m = 16
    sm = np.exp(np.sum(x * y, 1))
    lam = np.exp(-(np.sum(x * x, 1) + np.sum(y * y, 1)) / 2)
    iid = theoretical_mse(x, y, feature_map="positive", n_components=m, projection="gaussian")
    bound = iid - (2 * (m - 1) / (m * (d + 2))) * (sm - lam) ** 2
    assert np.all(mc.mse <= bound + Z_LIMIT * mc.se)


@pytest.mark.parametrize("norms", ["chi", "fixed"])
@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("features", FEATURES)
def test_log_and_direct_agree(features, projection, norms):
    rng = np.random.default_rng(5)
    scale = rng.uniform(0.01, 4.0, size=(400, 1))
    x = rng.normal(size=(400, 12)) * scale
    y = rng.normal(size=(400, 12)) * scale[::-1]
    for m in (5, 12, 30):
        kwargs = dict(
            feature_map=features,
            n_components=naive.width(features, m),
            projection=projection,
            norms=norms,
        )
        direct = theoretical_mse(x, y, **kwargs)
        logged = theoretical_mse(x, y, log=True, **kwargs)
        both = np.isfinite(direct) & (direct > 0) & np.isfinite(logged)
        assert both.sum() > 100
        np.testing.assert_allclose(np.log(direct[both]), logged[both], rtol=0, atol=1e-8)


def test_log_is_finite_where_the_mse_overflows():
    d = 16
    x, y = _pairs(d, [(25.0, 25.0, 0.5), (40.0, 30.0, 1.6), (30.0, 30.0, 2.9)], seed=2)
    for features in FEATURES:
        for projection in ("gaussian", "orthogonal"):
            for norms in ("chi", "fixed"):
                kwargs = dict(
                    feature_map=features,
                    n_components=naive.width(features, 64),
                    projection=projection,
                    norms=norms,
                )
                with np.errstate(all="ignore"):
                    direct = theoretical_mse(x, y, **kwargs)
                logged = theoretical_mse(x, y, log=True, **kwargs)
                assert np.all(np.isfinite(logged)), (features, projection, norms, logged)
                assert np.isinf(direct).any() or features == "positive"
    # the positive closed form in log space: -log m + 2 x.y + |z|^2 + log(1 - e^-|z|^2)
    big = np.full(4, 20.0)
    expected = -np.log(4) + 2 * 1600 + 6400
    assert theoretical_mse(
        big, big, feature_map="positive", n_components=4, projection="gaussian", log=True
    ) == pytest.approx(expected, rel=1e-14)


def test_zero_mse_where_the_estimator_is_exact():
    x = np.array([0.3, -0.2, 0.1])
    assert (
        theoretical_mse(x, -x, feature_map="positive", n_components=3, projection="gaussian") == 0.0
    )
    assert (
        theoretical_mse(x, x, feature_map="trigonometric", n_components=6, projection="gaussian")
        == 0.0
    )
    assert (
        theoretical_mse(
            x, -x, feature_map="positive", n_components=3, projection="gaussian", log=True
        )
        == -np.inf
    )


def test_fig2_values():
    from favorkern.plotting import trig_positive_ratio

    # :ref:`theory-fig2`, l = 1 (and l = 2, phi = 3)
    cases = [(0.25, 1, 3.8e-5), (1.0, 1, 0.022), (np.pi / 2, 1, 0.43), (2.0, 1, 3.4),
             (2.5, 1, 35.5), (3.0, 1, 1.27e3), (3.0, 2, 4.9e7)]  # fmt: skip
    for angle, norm, expected in cases:
        assert trig_positive_ratio(angle, norm) == pytest.approx(expected, rel=0.02)


# -- input validation -------------------------------------------------------------------


def test_errors_name_the_parameter():
    x = np.ones(3)
    with pytest.raises(ValueError, match="feature_map"):
        theoretical_mse(x, x, feature_map="sine", n_components=3, projection="gaussian")
    with pytest.raises(TypeError, match="n_components"):
        theoretical_mse(x, x, feature_map="positive", n_components=2.5, projection="gaussian")
    with pytest.raises(ValueError, match="n_components"):
        theoretical_mse(x, x, feature_map="positive", n_components=0, projection="gaussian")
    with pytest.raises(ValueError, match="projection"):
        theoretical_mse(x, x, feature_map="positive", n_components=3, projection="haar")
    with pytest.raises(ValueError, match="norms"):
        theoretical_mse(
            x, x, feature_map="positive", n_components=3, projection="gaussian", norms="unit"
        )
    with pytest.raises(ValueError, match="gamma"):
        theoretical_mse(
            x, x, feature_map="positive", n_components=3, projection="gaussian", gamma=-1.0
        )
    with pytest.raises(TypeError, match="log"):
        theoretical_mse(
            x, x, feature_map="positive", n_components=3, projection="gaussian", log="yes"
        )
    with pytest.raises(ValueError, match="same number of dimensions"):
        theoretical_mse(
            x, np.ones(4), feature_map="positive", n_components=3, projection="gaussian"
        )
    with pytest.raises(ValueError, match="x contains NaN"):
        theoretical_mse(
            np.array([np.nan, 0, 0]),
            x,
            feature_map="positive",
            n_components=3,
            projection="gaussian",
        )
    with pytest.raises(TypeError, match="n_trials"):
        empirical_mse(
            x, x, feature_map="positive", n_components=3, projection="gaussian", n_trials=1.5
        )
    with pytest.raises(ValueError, match="projections"):
        empirical_mse(x, x, feature_map="positive", n_components=3, projections=np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match="pair_names"):
        variance_study(n_dims=4, n_components=2, n_trials=10, pair_names=["a"])


def test_shapes_and_scalars():
    x, y, names = default_pairs(8)
    out = theoretical_mse(x, y, feature_map="hyperbolic", n_components=8, projection="gaussian")
    assert out.shape == (4,)
    assert isinstance(
        theoretical_mse(
            x[0], y[0], feature_map="hyperbolic", n_components=8, projection="gaussian"
        ),
        float,
    )
    assert theoretical_mse(
        x, y[0], feature_map="positive", n_components=4, projection="gaussian"
    ).shape == (4,)
    mc = empirical_mse(
        x[1],
        y[1],
        feature_map="positive",
        n_components=4,
        projection="gaussian",
        n_trials=50,
        random_state=0,
    )
    assert isinstance(mc.mse, float) and mc.mom_low <= mc.mom <= mc.mom_high
    again = empirical_mse(
        x[1],
        y[1],
        feature_map="positive",
        n_components=4,
        projection="gaussian",
        n_trials=50,
        random_state=0,
    )
    assert again.mse == mc.mse


def test_draw_trials_are_draw_projection_blocks():
    W = draw_trials(3, 5, 4, "orthogonal", "chi", np.random.RandomState(0))
    assert W.shape == (3, 5, 4)
    for trial in W:
        directions = trial / np.linalg.norm(trial, axis=1, keepdims=True)
        gram = directions[:4] @ directions[:4].T
        np.testing.assert_allclose(gram, np.eye(4), atol=1e-12)


# -- studies, plots, command --------------------------------------------------------------


def test_variance_study_is_tidy():
    study = variance_study(n_dims=8, n_components=[4, 8], n_trials=300, random_state=0)
    expected = {"feature_map", "projection", "n_components", "pair", "kernel", "empirical_mse",
                "se", "theoretical_mse", "ratio"}  # fmt: skip
    assert expected <= set(study.columns)
    # 4 feature maps x 3 projections x 2 m x 4 pairs; no closed form for trig + simplex
    assert len(study) == 4 * 3 * 2 * 4
    assert study.groupby(["feature_map", "projection", "n_components"]).size().eq(4).all()
    assert np.all(np.abs(study["z"].dropna()) < 6)
    assert study["z"].isna().sum() == 2 * 4
    x, y = _pairs(5, [(0.3, 0.4, 1.0), (0.5, 0.2, 2.0)], seed=0)
    custom = variance_study(
        x, y, n_components=4, feature_maps="trigonometric", projection="orthogonal", n_trials=50
    )
    assert len(custom) == 2 and list(custom["pair"]) == ["pair0", "pair1"]
    assert custom["angle"].to_numpy() == pytest.approx([1.0, 2.0])


def test_convergence_decreases_with_m():
    X = np.random.default_rng(0).normal(scale=0.25, size=(40, 8))
    for features in ("positive", "trigonometric"):
        errors = convergence(
            X, feature_map=features, n_components=[16, 1024], n_repeats=2, random_state=0
        )
        assert set(errors.columns) >= {"n_components", "max_rel_error", "mean_rel_error"}
        means = errors.groupby("n_components")[["max_rel_error", "mean_rel_error"]].mean()
        assert means.loc[1024, "max_rel_error"] < means.loc[16, "max_rel_error"]
        assert means.loc[1024, "mean_rel_error"] < 0.5 * means.loc[16, "mean_rel_error"]
        theory = errors.groupby("n_components")["theoretical_rel_rmse"].first()
        assert theory[1024] == pytest.approx(theory[16] / 8, rel=0.2)


def test_attention_error():
    pytest.importorskip("favorkern.attention")
    rng = np.random.default_rng(0)
    Q, K, V = rng.normal(scale=0.6, size=(3, 2, 48, 8))
    small = attention_error(Q, K, V, n_components=512, random_state=0)
    large = attention_error(Q, K, V, n_components=16, random_state=0)
    assert small.shape == (2, 48)
    assert np.median(small) < np.median(large)
    causal = attention_error(Q, K, V, causal=True, n_components=256, random_state=0)
    assert causal.shape == (2, 48) and np.all(np.isfinite(causal))
    # the first causal row attends to one key: exact whatever the features
    assert np.all(causal[:, 0] < 1e-6)


def test_plots():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from favorkern.plotting import plot_mse_vs_width, plot_trig_positive_ratio

    study = variance_study(n_dims=4, n_components=[2, 4], n_trials=40, random_state=0)
    fig = plot_mse_vs_width(study)
    assert len(fig.axes) == 4
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes)
    plt.close(fig)
    fig = plot_trig_positive_ratio(n_angles=21, n_norms=11)
    assert len(fig.axes) == 3
    plt.close(fig)


def test_command_end_to_end(tmp_path, capsys):
    from favorkern.cli import main

    out = tmp_path / "study"
    code = main(
        ["variance", "--d", "4", "--n-components", "2,4", "--trials", "60", "--seed", "1",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    for name in ("variance.csv", "variance.md", "variance.png"):
        assert (out / name).stat().st_size > 0
    import pandas as pd

    study = pd.read_csv(out / "variance.csv")
    assert len(study) == 4 * 3 * 2 * 4
    printed = capsys.readouterr().out
    assert "| pair | feature_map | projection |" in printed
    assert "configurations within 4.5 se" in printed


def test_command_rejects_bad_arguments(capsys):
    from favorkern.cli import main

    with pytest.raises(SystemExit):
        main(["variance", "--n-components", "a,b"])
    assert "n-components" in capsys.readouterr().err


def test_import_stays_light():
    code = (
        "import sys, favorkern, favorkern.diagnostics; "
        "print(any(m in sys.modules for m in ('pandas', 'matplotlib', 'numba')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("projection", ["orthogonal", "gaussian", "simplex"])
def test_theoretical_mse_at_tiny_gamma_is_finite_and_scales_like_gamma_squared(projection):
    # the variance of phi(x).phi(y) falls like gamma^2 at small gamma: the closed form
    # must follow it down to the smallest floats, then round to 0 (never NaN)
    from favorkern.diagnostics import theoretical_mse
    from favorkern.feature_maps import get_feature_map

    x, y = np.array([0.3, 0.1, 0.2]), np.array([0.1, -0.2, 0.3])
    values = {}
    for gamma in (1e-300, 1e-200, 1e-150, 1e-120, 1e-100, 1e-60, 1e-20):
        for name in ("hyperbolic", "positive", "trigonometric"):
            if projection not in get_feature_map(name).closed_form_projections("chi"):
                continue
            kwargs = dict(feature_map=name, gamma=gamma, n_components=8, projection=projection)
            mse = float(np.ravel(theoretical_mse(x, y, **kwargs))[0])
            assert np.isfinite(mse) and mse >= 0, (name, gamma, mse)
            values[name, gamma] = mse
    for gamma in (1e-150, 1e-120, 1e-100, 1e-60):
        ratio = values["hyperbolic", gamma] / values["hyperbolic", 1e-20]
        np.testing.assert_allclose(ratio, (gamma / 1e-20) ** 2, rtol=1e-6)


@pytest.mark.parametrize(
    ("projection", "norms"), [("gaussian", "chi"), ("orthogonal", "chi"), ("orthogonal", "fixed")]
)
def test_empirical_mse_distinct_frequencies_matches_closed_form(projection, norms):
    # Distinct frequencies draw one random phase per output; the Monte-Carlo engine draws
    # them per stacked trial, so its MSE must match the closed form (pair variance plus
    # e^{|x'|^2+|y'|^2} / 2 per feature) within 4.5 standard errors (light tails: |z| ~ 0.4).
    from favorkern.feature_maps import TrigonometricFeatureMap

    rng = np.random.default_rng(3)
    x, y = 0.4 * rng.normal(size=(3, 8)), 0.4 * rng.normal(size=(3, 8))
    distinct = TrigonometricFeatureMap("distinct")
    mc = empirical_mse(x, y, feature_map=distinct, n_components=16, n_trials=6000,
                       projection=projection, norms=norms, random_state=0)  # fmt: skip
    closed = theoretical_mse(x, y, feature_map=distinct, n_components=16,
                             projection=projection, norms=norms)  # fmt: skip
    assert np.all(np.abs(mc.mse - closed) < 4.5 * mc.se)
    # Without phases the estimate would be cos(w.x' - w.y') + cos(w.x' + w.y'), biased:
    # with chi norms the estimator is unbiased (fixed norms carry the closed form's bias).
    if norms == "chi":
        assert np.all(np.abs(mc.mean - mc.kernel) < 4.5 * mc.mean_se)
    # The phases cost variance: paired frequencies have the smaller MSE at equal width.
    paired = theoretical_mse(x, y, feature_map="trigonometric", n_components=16,
                             projection=projection, norms=norms)  # fmt: skip
    assert np.all(paired < closed)
