"""Closed forms beyond FAVOR+: GERF/OPRF at any A, simplex blocks; structured (SORF) by MC."""

import naive
import numpy as np
import pytest

from favorkern.diagnostics import empirical_mse, theoretical_mse, variance_study


def _pair(sum_sq, d):
    x = np.zeros(d)
    x[0] = 0.5 * np.sqrt(sum_sq)
    return x, x.copy()


@pytest.mark.parametrize(
    "d, sum_sq, orf, simplex, hyperbolic_orf",
    [
        # :ref:`theory-gain-table`: MSE_design / MSE_iid at m = d, x = y.
        (16, 0.25, 0.911, 0.077, 0.021),
        (16, 1.0, 0.782, 0.274, 0.098),
        (16, 2.0, 0.791, 0.552, 0.223),
        (16, 4.0, 0.922, 0.882, 0.413),
        (64, 0.25, 0.896, 0.028, 0.006),
        (64, 1.0, 0.731, 0.171, 0.047),
        (64, 2.0, 0.722, 0.433, 0.154),
        (64, 4.0, 0.879, 0.818, 0.370),
    ],
)
def test_gain_table(d, sum_sq, orf, simplex, hyperbolic_orf):
    x, y = _pair(sum_sq, d)
    iid = theoretical_mse(x, y, feature_map="positive", n_components=d, projection="gaussian")
    ratio = {
        name: theoretical_mse(x, y, feature_map=f, n_components=naive.width(f, d), projection=p)
        / iid
        for name, f, p in [
            ("orf", "positive", "orthogonal"),
            ("simplex", "positive", "simplex"),
            ("hyperbolic_orf", "hyperbolic", "orthogonal"),
        ]
    }
    assert ratio["orf"] == pytest.approx(orf, abs=1.5e-3)
    assert ratio["simplex"] == pytest.approx(simplex, abs=1.5e-3)
    assert ratio["hyperbolic_orf"] == pytest.approx(hyperbolic_orf, abs=1.5e-3)


@pytest.mark.parametrize(
    "d, s, log_var_optimal, log_var_positive",
    # :ref:`theory-log-variance-table`: per-projection log variance, x orthogonal to y,
    # |x|^2 = |y|^2 = s.
    [(16, 1, 1.44, 1.86), (16, 4, 4.81, 8.00), (16, 16, 11.0, 32.0), (64, 50, 38.8, 100.0)],
)
def test_gerf_log_variance_table(d, s, log_var_optimal, log_var_positive):
    x, y = np.zeros(d), np.zeros(d)
    x[0] = y[1] = np.sqrt(s)
    opt = theoretical_mse(
        x, y, feature_map="optimal", n_components=1, projection="gaussian", log=True
    )
    pos = theoretical_mse(
        x, y, feature_map="positive", n_components=1, projection="gaussian", log=True
    )
    assert opt == pytest.approx(log_var_optimal, abs=0.06)
    assert pos == pytest.approx(log_var_positive, abs=0.06)


def test_gerf_at_zero_is_positive_and_optimal_a_minimizes():
    rng = np.random.default_rng(0)
    x, y = rng.normal(scale=0.3, size=(2, 5, 8))
    for projection in ("gaussian", "orthogonal", "simplex"):
        np.testing.assert_allclose(
            theoretical_mse(
                x, y, feature_map="optimal", A=0.0, n_components=12, projection=projection
            ),
            theoretical_mse(x, y, feature_map="positive", n_components=12, projection=projection),
            rtol=1e-10,
        )
    # A* minimizes the iid variance over A for each pair.
    best = theoretical_mse(x, y, feature_map="optimal", n_components=4, projection="gaussian")
    for A in (-0.5, -0.2, -0.05, 0.0, 0.05):
        assert np.all(
            best
            <= theoretical_mse(
                x, y, feature_map="optimal", A=A, n_components=4, projection="gaussian"
            )
            * (1 + 1e-12)
        )


# (features, projection, A, m) in d = 16: m < d, m = d and m > d (partial block).
CONFIGS = [
    (f, p, A, m)
    for f, A in [("optimal", None), ("optimal", -0.3), ("optimal", 0.04), ("positive", None)]
    for p in ("gaussian", "orthogonal", "simplex")
    for m in (8, 24)
    if not (f == "positive" and p != "simplex")
] + [
    ("hyperbolic", "simplex", None, 8),
    ("hyperbolic", "simplex", None, 16),
    ("optimal", "simplex", None, 16),
]


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 16))
    y = rng.normal(size=(4, 16))
    # |x + y|^2 <= ~0.8: moderate tails (:ref:`theory-heavy-tails`)
    scale = np.array([0.12, 0.15, 0.18, 0.2])[:, None]
    return x / np.linalg.norm(x, axis=1, keepdims=True) * scale * 2, y / np.linalg.norm(
        y, axis=1, keepdims=True
    ) * scale * 2


@pytest.mark.parametrize("features, projection, A, m", CONFIGS)
def test_monte_carlo_agrees_with_closed_form(pairs, features, projection, A, m):
    x, y = pairs
    theory = theoretical_mse(
        x,
        y,
        feature_map=features,
        n_components=naive.width(features, m),
        projection=projection,
        A=A,
    )
    mc = empirical_mse(
        x,
        y,
        feature_map=features,
        n_components=naive.width(features, m),
        projection=projection,
        A=A,
        n_trials=20000,
        random_state=11,
    )
    z = (mc.mse - theory) / mc.se
    assert np.all(np.abs(z) < 4.5), z


def test_simplex_told_apart_from_orthogonal(pairs):
    # At m = d and small |z|, simplex blocks have several-fold lower MSE than orthogonal.
    x, y = pairs
    mc = empirical_mse(
        x,
        y,
        feature_map="positive",
        n_components=16,
        projection="simplex",
        n_trials=20000,
        random_state=3,
    )
    simplex = theoretical_mse(x, y, feature_map="positive", n_components=16, projection="simplex")
    orthogonal = theoretical_mse(
        x, y, feature_map="positive", n_components=16, projection="orthogonal"
    )
    assert np.all(simplex < 0.5 * orthogonal)
    assert np.all((mc.mse - orthogonal) / mc.se < -10)


def test_log_and_direct_agree_for_new_forms(pairs):
    x, y = pairs
    for features, projection in [
        ("optimal", "gaussian"),
        ("optimal", "simplex"),
        ("hyperbolic", "simplex"),
        ("positive", "simplex"),
    ]:
        direct = theoretical_mse(
            x * 3,
            y * 3,
            feature_map=features,
            n_components=naive.width(features, 24),
            projection=projection,
        )
        logged = theoretical_mse(
            x * 3,
            y * 3,
            feature_map=features,
            n_components=naive.width(features, 24),
            projection=projection,
            log=True,
        )
        np.testing.assert_allclose(np.log(direct), logged, rtol=1e-8)
    big = np.full(16, 8.0)
    assert np.isinf(
        theoretical_mse(big, big, feature_map="optimal", n_components=4, projection="gaussian")
    )
    assert np.isfinite(
        theoretical_mse(
            big, big, feature_map="optimal", n_components=4, projection="gaussian", log=True
        )
    )


def test_structured_projection_bias_and_mse_near_orthogonal():
    # SORF has no closed form: its bias is below MC resolution and its MSE within 10% of
    # the orthogonal closed form at d = 64 (Yu et al. 2016: MSE ~ ORF).
    rng = np.random.default_rng(5)
    d = 64
    x = rng.normal(size=(3, d))
    x *= 0.35 / np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.normal(size=(3, d))
    y *= 0.35 / np.linalg.norm(y, axis=1, keepdims=True)
    mc = empirical_mse(
        x,
        y,
        feature_map="positive",
        n_components=64,
        projection="structured",
        n_trials=6000,
        random_state=9,
    )
    assert np.all(np.abs(mc.mean - mc.kernel) < 4.5 * mc.mean_se)
    orthogonal = theoretical_mse(
        x, y, feature_map="positive", n_components=64, projection="orthogonal"
    )
    np.testing.assert_allclose(mc.mse, orthogonal, rtol=0.10)


def test_errors_name_the_parameter():
    x = np.ones(4) * 0.1
    with pytest.raises(ValueError, match="simplex"):
        theoretical_mse(x, x, feature_map="trigonometric", n_components=8, projection="simplex")
    with pytest.raises(ValueError, match="norms='fixed'"):
        theoretical_mse(
            x, x, feature_map="optimal", n_components=4, projection="gaussian", norms="fixed"
        )
    with pytest.raises(ValueError, match="A must"):
        theoretical_mse(x, x, feature_map="optimal", n_components=4, projection="gaussian", A=0.2)
    with pytest.raises(TypeError, match="A must"):
        theoretical_mse(
            x, x, feature_map="optimal", n_components=4, projection="gaussian", A="small"
        )
    with pytest.raises(ValueError, match="projection"):
        theoretical_mse(x, x, feature_map="positive", n_components=4, projection="structured")


def test_study_includes_new_estimators():
    study = variance_study(n_components=[8], n_trials=200, projection=["simplex", "structured"])
    assert set(study["feature_map"]) == {"positive", "hyperbolic", "trigonometric", "optimal"}
    has_theory = study["theoretical_mse"].notna()
    assert not has_theory[study["projection"] == "structured"].any()
    assert not has_theory[
        (study["projection"] == "simplex") & (study["feature_map"] == "trigonometric")
    ].any()
    assert has_theory[
        (study["projection"] == "simplex") & (study["feature_map"] == "optimal")
    ].all()
