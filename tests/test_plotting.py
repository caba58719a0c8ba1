"""The figures of favorkern.plotting draw the numbers they are given."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from favorkern.plotting import plot_attention_error, plot_attention_speed, plot_regression

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_attention_speed_draws_the_three_timings():
    timing = pd.DataFrame(
        {
            "L": [64, 256, 1024],
            "exact (ms)": [0.1, 1.6, 25.6],
            "FAVOR+ (ms)": [0.2, 0.8, 3.2],
            "FAVOR+ causal (ms)": [0.4, 1.6, 6.4],
        }
    )
    ax = plot_attention_speed(timing, title="t").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for label, column in [
        ("exact softmax", "exact (ms)"),
        ("FAVOR+ bidirectional", "FAVOR+ (ms)"),
        ("FAVOR+ causal", "FAVOR+ causal (ms)"),
    ]:
        np.testing.assert_array_equal(lines[label].get_xdata(), timing["L"])
        np.testing.assert_array_equal(lines[label].get_ydata(), timing[column])
    assert ax.get_xscale() == ax.get_yscale() == "log" and ax.get_title() == "t"


def test_attention_error_averages_seeds_and_drops_unplottable_points():
    rows = []
    for sigma in (0.5, 1.0):
        for kind in ("positive", "trigonometric"):
            for seed, shift in enumerate((0.0, 0.2)):
                for m, error in [(32, 0.4), (8, 0.8)]:
                    rows.append((sigma, kind, "gaussian", m, seed, error + shift))
    errors = pd.DataFrame(
        rows,
        columns=["sigma", "feature_map", "projection", "n_components", "seed", "median_row_error"],
    )
    bad = (errors["sigma"] == 1.0) & (errors["feature_map"] == "trigonometric")
    errors.loc[bad & (errors["n_components"] == 8), "median_row_error"] = np.nan
    fig = plot_attention_error(errors, length=128)
    assert len(fig.axes) == 2
    left, right = ({line.get_label(): line for line in ax.get_lines()} for ax in fig.axes)
    # the mean over the two seeds, sorted by width
    np.testing.assert_array_equal(left["positive, gaussian"].get_xdata(), [8, 32])
    np.testing.assert_allclose(left["positive, gaussian"].get_ydata(), [0.9, 0.5])
    np.testing.assert_array_equal(right["trigonometric, gaussian"].get_xdata(), [32])
    assert fig.axes[1].get_title() == "Q, K entries ~ N(0, 1²), L = 128"


def test_regression_figure_draws_each_method_and_exact_as_a_line():
    results = pd.DataFrame(
        {
            "method": ["KernelRidge (exact)", "RBFSampler", "RBFSampler", "RBFSampler"],
            "n_components": [np.nan, 8, 8, 32],
            "repeat": [0, 0, 1, 0],
            "fit_time": [1.0] * 4,
            "predict_time": [0.1] * 4,
            "test_r2": [0.5, 0.2, 0.4, 0.45],
            "kernel_error": [0.0, 0.6, 0.4, 0.2],
        }
    )
    ax_error, ax_r2 = plot_regression(results).axes
    (sampler,) = ax_error.get_lines()
    np.testing.assert_array_equal(sampler.get_xdata(), [8, 32])
    np.testing.assert_allclose(sampler.get_ydata(), [0.5, 0.2])  # mean over repeats
    exact = [line for line in ax_r2.get_lines() if line.get_label() == "KernelRidge (exact)"]
    np.testing.assert_allclose(exact[0].get_ydata(), [0.5, 0.5])
