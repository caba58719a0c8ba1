"""Tests of favorkern.regression, favorkern.datasets and the ``favorkern regress`` command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_diabetes
from sklearn.kernel_approximation import Nystroem
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from favorkern import exact_kernel
from favorkern.cli import main
from favorkern.datasets import load_dataset
from favorkern.regression import (
    EXACT,
    METHODS,
    _SoftmaxFromGaussian,
    compare_regression,
    make_regressor,
    select_gamma_alpha,
    summarize_regression,
)

# gamma and alpha as cross-validation chooses them on diabetes (rbf: 0.0125-0.025, 0.3-1)
GAMMA = {"rbf": 0.025, "softmax": 0.01}
ALPHA = 1.0


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    # Products of a few hundred rows: a second BLAS thread only contends with the
    # other processes on a shared machine (measured 10x slower under load).
    with threadpool_limits(1, "blas"):
        yield


@pytest.fixture(scope="module")
def diabetes_split():
    X, y = load_diabetes(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0)


def _prediction_error(split, method, kernel, n_components, seeds):
    """Mean over seeds of |p_m - p_exact| / |p_exact - mean(y)| on the test rows."""
    X_train, X_test, y_train, _ = split
    params = {"kernel": kernel, "gamma": GAMMA[kernel], "alpha": ALPHA}
    exact = make_regressor(EXACT, **params).fit(X_train, y_train).predict(X_test)
    errors = []
    for seed in seeds:
        model = make_regressor(method, n_components=n_components, random_state=seed, **params)
        approx = model.fit(X_train, y_train).predict(X_test)
        errors.append(np.linalg.norm(approx - exact) / np.linalg.norm(exact - y_train.mean()))
    return float(np.mean(errors))


@pytest.mark.parametrize(
    ("method", "kernel"),
    [
        ("Trigonometric (orthogonal)", "rbf"),
        ("Trigonometric (orthogonal)", "softmax"),
        ("Positive (orthogonal)", "softmax"),
        ("Hyperbolic (orthogonal)", "softmax"),
    ],
)
def test_pipeline_converges_to_exact_kernel_ridge(diabetes_split, method, kernel):
    # Monte-Carlo rate: sqrt(64 / 2048) = 0.18; measured 0.18-0.20 over 10 seeds.
    small = _prediction_error(diabetes_split, method, kernel, 64, seeds=range(8))
    large = _prediction_error(diabetes_split, method, kernel, 2048, seeds=range(8))
    assert large < small / 4, (small, large)
    assert large < 0.05


@pytest.mark.parametrize("method", ["Positive (orthogonal)", "Hyperbolic (orthogonal)"])
def test_positive_rbf_pipelines_converge_to_exact_kernel_ridge(diabetes_split, method):
    # With the rbf kernel the positive maps' log-normal weights make the predictions
    # converge more slowly at these widths (measured ratio 0.23-0.29 over 10 seeds),
    # so only halving is asserted here.
    small = _prediction_error(diabetes_split, method, "rbf", 64, seeds=range(5))
    large = _prediction_error(diabetes_split, method, "rbf", 2048, seeds=range(5))
    assert large < small / 2, (small, large)
    assert large < 0.1


def test_softmax_from_gaussian_nystroem_is_exact_softmax_nystroem():
    X = StandardScaler().fit_transform(load_diabetes().data[:60])
    gamma = 0.05
    features = _SoftmaxFromGaussian(Nystroem(n_components=60, random_state=0), gamma=gamma)
    phi = features.fit(X).transform(X)
    # all rows are landmarks, so Nystroem reproduces the kernel on them exactly
    exact = exact_kernel(X, kernel="softmax", gamma=gamma)
    np.testing.assert_allclose(phi @ phi.T, exact, rtol=1e-6)
    assert features.features_.gamma == gamma / 2


def test_select_gamma_alpha_matches_grid_search_of_kernel_ridge():
    X, y = load_diabetes(return_X_y=True)
    X, y = StandardScaler().fit_transform(X[:150]), y[:150]
    gammas, alphas = [0.005, 0.02, 0.1], [0.01, 0.3, 3.0]
    chosen = select_gamma_alpha(X, y, gammas=gammas, alphas=alphas, cv=3, random_state=0)
    centred = TransformedTargetRegressor(
        KernelRidge(kernel="rbf"), transformer=StandardScaler(with_std=False)
    )
    search = GridSearchCV(
        centred,
        {"regressor__gamma": gammas, "regressor__alpha": alphas},
        cv=KFold(3, shuffle=True, random_state=0),
        scoring="neg_mean_squared_error",
    ).fit(X, y)
    best = search.best_params_
    assert chosen == (best["regressor__gamma"], best["regressor__alpha"])


def test_select_gamma_alpha_softmax_default_grid_stays_small():
    X, y = load_diabetes(return_X_y=True)
    gamma, alpha = select_gamma_alpha(X, y, kernel="softmax", max_samples=200)
    assert gamma <= 0.5 / X.shape[1]
    assert alpha > 0


def test_compare_regression_rows_and_attributes():
    X, y = load_diabetes(return_X_y=True)
    results = compare_regression(X, y, n_components=[8, 32], n_repeats=2, cv_samples=150)
    assert set(results["method"]) == set(METHODS)
    assert len(results) == 1 + 2 * 2 * (len(METHODS) - 1)
    assert results.attrs["n_train"] == 331 and not results.attrs["exact_skipped"]
    exact = results[results["method"] == EXACT]
    assert exact["n_components"].isna().all() and (exact["kernel_error"] == 0).all()
    approx = results[results["method"] != EXACT]
    assert ((approx["kernel_error"] > 0) & (approx["kernel_error"] < 1)).all()
    summary = summarize_regression(results)
    assert list(summary["method"][:2]) == [EXACT, METHODS[0]]
    assert (summary["n_repeats"].iloc[1:] == 2).all()
    # wider maps approximate the kernel better, averaged over methods
    by_width = approx.groupby("n_components")["kernel_error"].mean()
    assert by_width[32] < by_width[8]


def test_compare_regression_skips_exact_above_max_exact():
    X, y, _ = load_dataset("friedman1", n_samples=400)
    results = compare_regression(
        X, y, n_components=[8], methods=["RBFSampler", EXACT], max_exact=100, gamma=0.1, alpha=1.0
    )
    assert list(results["method"]) == ["RBFSampler"]
    assert results.attrs["exact_skipped"]
    assert results.attrs["gamma"] == 0.1


def test_make_regressor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        make_regressor("Fourier")
    with pytest.raises(ValueError, match="kernel"):
        make_regressor("RBFSampler", kernel="laplacian")
    with pytest.raises(ValueError, match="gamma"):
        make_regressor("RBFSampler", gamma=-1.0)


# -- data loading -------------------------------------------------------------------
@pytest.fixture
def diabetes_csv(tmp_path):
    frame = load_diabetes(as_frame=True).frame
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_load_dataset_from_csv(diabetes_csv):
    path, frame = diabetes_csv
    X, y, name = load_dataset(path, target="target")
    assert X.shape == (442, 10) and name == "diabetes.csv (n=442, d=10)"
    np.testing.assert_allclose(y, frame["target"])
    X_small, _, _ = load_dataset(path, target="target", n_samples=50)
    assert X_small.shape == (50, 10)


def test_load_dataset_errors(tmp_path, diabetes_csv):
    path, frame = diabetes_csv
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "absent.csv", target="y")
    with pytest.raises(ValueError, match="unknown data set 'housing'"):
        load_dataset("housing")
    with pytest.raises(ValueError, match="needs --target"):
        load_dataset(path)
    with pytest.raises(ValueError, match="'price' not found.*'bmi'"):
        load_dataset(path, target="price")
    with pytest.raises(ValueError, match="CSV files only"):
        load_dataset("diabetes", target="target")
    text = frame.assign(city=["a", "b"] * 221)
    text.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ValueError, match="non-numeric feature columns.*'city'"):
        load_dataset(tmp_path / "text.csv", target="target")
    holes = frame.astype({"bmi": float})
    holes.loc[3, "bmi"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(ValueError, match="missing values.*'bmi'"):
        load_dataset(tmp_path / "holes.csv", target="target")
    frame.assign(target=["x"] * 442).to_csv(tmp_path / "label.csv", index=False)
    with pytest.raises(ValueError, match="target column 'target' is not numeric"):
        load_dataset(tmp_path / "label.csv", target="target")


# -- the command --------------------------------------------------------------------
TINY = ["--n-components", "8,16", "--cv-samples", "120", "--no-progress"]


def test_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["regress", "--out", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "| KernelRidge (exact) | exact |" in stdout
    assert "Trigonometric (orthogonal) kernel error / RBFSampler's" in stdout
    table = pd.read_csv(out / "regress.csv")
    assert len(table) == 1 + 2 * (len(METHODS) - 1)
    assert set(table.columns) >= {"method", "n_components", "fit_time", "test_r2", "kernel_error"}
    assert table["test_r2"].notna().all()
    assert (out / "regress.md").read_text().startswith("# favorkern regress: diabetes")
    assert (out / "regress.png").stat().st_size > 1000


def test_command_csv_softmax_and_skipped_exact(tmp_path, capsys, diabetes_csv):
    path, _ = diabetes_csv
    args = ["regress", "--data", str(path), "--target", "target", "--kernel", "softmax"]
    args += ["--out", str(tmp_path), "--max-exact", "100", "--no-plot", *TINY]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "exact KernelRidge skipped" in stdout and "kernel softmax" in stdout
    assert not (tmp_path / "regress.png").exists()
    assert EXACT not in set(pd.read_csv(tmp_path / "regress.csv")["method"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "{tmp}/absent.csv", "--target", "y"], "data file not found"),
        (["--data", "{csv}", "--target", "price"], "target column 'price' not found"),
        (["--data", "{text}", "--target", "target"], "non-numeric feature columns"),
        (["--data", "nonsense"], "unknown data set 'nonsense'"),
    ],
)
def test_command_errors(tmp_path, capsys, diabetes_csv, extra, message):
    path, frame = diabetes_csv
    text = tmp_path / "text.csv"
    frame.assign(city="Paris").to_csv(text, index=False)
    extra = [a.format(tmp=tmp_path, csv=path, text=text) for a in extra]
    assert main(["regress", "--out", str(tmp_path / "out"), *extra, *TINY]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("favorkern regress: error: ")
    assert message in stderr
    assert not (tmp_path / "out").exists()


def test_command_rejects_bad_widths(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["regress", "--n-components", "16,abc"])
    assert exit_info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_n_chunks_counts_what_iter_chunks_yields(diabetes_csv):
    from favorkern.datasets import DEFAULT_CHUNKSIZE, FRIEDMAN1_ROWS, iter_chunks, n_chunks

    for n_samples, chunksize in [(250, 100), (300, 100), (7, 10)]:
        chunks = list(iter_chunks("friedman1", n_samples=n_samples, chunksize=chunksize))
        assert n_chunks("friedman1", n_samples=n_samples, chunksize=chunksize) == len(chunks)
    assert n_chunks("friedman1") == -(-FRIEDMAN1_ROWS // DEFAULT_CHUNKSIZE)
    path, _ = diabetes_csv
    assert n_chunks(path) is None
    with pytest.raises(ValueError, match="chunksize"):
        n_chunks("friedman1", chunksize=0)


def test_command_streams_friedman1_and_csv(tmp_path, capsys):
    out = tmp_path / "stream"
    argv = ["regress", "--stream", "--data", "friedman1", "--n-samples", "3000",
            "--chunksize", "700", "--n-components", "32,64", "--gamma", "0.05",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    import pandas as pd

    table = pd.read_csv(out / "regress.csv")
    assert list(table["n_components"]) == [32, 64]
    assert (table["n_train"] + table["n_test"] == 3000).all()
    assert (table["test_r2"] > 0.3).all() and (table["peak_rss_mb"] > 0).all()
    assert not (out / "regress.png").exists()
    # a CSV file is streamed the same way and needs its target column
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(y=np.sin(X[:, 0]) + X[:, 1])
    frame.to_csv(tmp_path / "data.csv", index=False)
    csv_out = tmp_path / "csv"
    argv = ["regress", "--stream", "--data", str(tmp_path / "data.csv"), "--target", "y",
            "--chunksize", "200", "--n-components", "64", "--gamma", "0.2",
            "--out", str(csv_out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert pd.read_csv(csv_out / "regress.csv")["test_r2"].iloc[0] > 0.5
    capsys.readouterr()
    code = main(["regress", "--stream", "--data", str(tmp_path / "data.csv"),
                 "--out", str(tmp_path / "x"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert "--target" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- the command: options, odd files and output folders ----------------------------------
def _regress(capsys, *argv):
    code = main(["regress", *map(str, argv), "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--n-samples", "100", "--chunksize", "10", "--test-size", "0.6"], "--chunksize 10"),
        (["--n-samples", "100", "--chunksize", "100", "--test-size", "0.95"], "--test-size 0.95"),
        (["--n-samples", "100", "--chunksize", "100", "--test-size", "0.01"], "--test-size 0.01"),
    ],
)
def test_stream_with_too_few_rows_names_the_options(tmp_path, capsys, extra, named):
    code, err = _regress(capsys, "--stream", "--data", "friedman1", "--n-components", "8",
                         "--out", tmp_path / "out", *extra)  # fmt: skip
    assert code == 2
    assert named in err and "test_fraction" not in err and "chunksize=" not in err
    assert "n_splits" not in err  # not scikit-learn's message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stream", "--data", "friedman1", "--repeats", "3"], "--repeats does not apply with"),
        (["--stream", "--data", "friedman1", "--cv-samples", "50", "--max-exact", "9"],
         "--cv-samples, --max-exact do not apply with --stream"),
        (["--chunksize", "500"], "--chunksize does not apply without --stream"),
    ],
)  # fmt: skip
def test_options_that_do_not_apply_are_refused(tmp_path, capsys, extra, message):
    code, err = _regress(capsys, *extra, "--out", tmp_path / "out")
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stream", [False, True])
def test_header_only_csv_has_no_data_rows(tmp_path, capsys, stream):
    (tmp_path / "empty.csv").write_text("a,b,y\n")
    mode = ["--stream"] if stream else []
    data = ["--data", tmp_path / "empty.csv", "--target", "y"]
    code, err = _regress(capsys, *mode, *data, "--out", tmp_path / "out")
    assert code == 2
    assert "no data rows" in err and "non-numeric" not in err


@pytest.mark.parametrize("stream", [False, True])
def test_duplicate_header_names_are_refused_before_pandas_reads(tmp_path, capsys, monkeypatch,
                                                                stream):  # fmt: skip
    path = tmp_path / "dups.csv"
    path.write_text(",".join(["a"] * 200_000) + ",y\n" + ",".join(["1"] * 200_001) + "\n")

    def refuse(*args, **kwargs):
        raise AssertionError("pandas read the file before the header was checked")

    monkeypatch.setattr(pd, "read_csv", refuse)
    code, err = _regress(capsys, *(["--stream"] if stream else []), "--data", path,
                         "--target", "y", "--out", tmp_path / "out")  # fmt: skip
    assert code == 2
    assert "duplicate column names" in err and "'a' (200000 times)" in err


def test_overwrite_removes_results_the_new_run_does_not_write(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "regress.png").write_bytes(b"an old plot")
    stream = ["--stream", "--data", "friedman1", "--n-samples", "400", "--chunksize", "400",
              "--n-components", "8", "--gamma", "0.05", "--out", out]  # fmt: skip
    code, err = _regress(capsys, *stream)
    assert code == 2 and "already holds regress.png" in err  # refused without --overwrite
    assert _regress(capsys, *stream, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["regress.csv", "regress.md"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_new_output_folder_follows_the_umask(tmp_path, capsys, mask):
    import os
    import stat

    old = os.umask(mask)
    try:
        out = tmp_path / "new" / "out"
        code, _ = _regress(capsys, "--stream", "--data", "friedman1", "--n-samples", "400",
                           "--chunksize", "400", "--n-components", "8", "--gamma", "0.05",
                           "--out", out)  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "regress.md").stat().st_mode) == 0o666 & ~mask


def test_accuracy_section_pairs_the_best_of_each_side():
    from favorkern._commands.regress import format_accuracy

    summary = pd.DataFrame(
        {
            "method": [EXACT, "Trigonometric (orthogonal)", "NystroemFeatures (leverage)",
                       "RBFSampler", "Nystroem", "Trigonometric (orthogonal)", "Nystroem"],
            "n_components": [0, 16, 16, 16, 16, 64, 64],
            "test_r2": [0.9, 0.5, 0.7, 0.6, 0.65, 0.8, 0.85],
        }
    )  # fmt: skip
    lines = format_accuracy(summary).splitlines()
    assert lines[2] == (
        "| 16 | NystroemFeatures (leverage) | 0.7000 | Nystroem | 0.6500 | +0.0500 |"
    )
    assert lines[3] == "| 64 | Trigonometric (orthogonal) | 0.8000 | Nystroem | 0.8500 | -0.0500 |"
    assert len(lines) == 4  # the exact model has no width: no row of its own
    only_ours = summary[~summary["method"].isin(["RBFSampler", "Nystroem"])]
    assert format_accuracy(only_ours).startswith("(needs")


@pytest.mark.parametrize(
    "method", ["Trigonometric distinct (orthogonal)", "NystroemFeatures (leverage)"]
)
def test_new_methods_converge_to_exact_kernel_ridge(method):
    # Nystroem on every training row and distinct frequencies at a large width both
    # approach exact kernel ridge with the same gamma and alpha.
    X, y = load_diabetes(return_X_y=True)
    X, y = X[:200], y[:200]
    exact = make_regressor(EXACT, gamma=GAMMA["rbf"], alpha=ALPHA).fit(X, y).predict(X)
    width = 200 if method.startswith("Nystroem") else 4096
    model = make_regressor(method, n_components=width, gamma=GAMMA["rbf"], alpha=ALPHA)
    approx = model.fit(X, y).predict(X)
    tolerance = 1e-6 if method.startswith("Nystroem") else 0.05
    assert np.linalg.norm(approx - exact) < tolerance * np.linalg.norm(exact - y.mean())
