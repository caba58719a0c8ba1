"""favorkern under hostile conditions: forks, threads, huge dimensions, bad files and paths.

Each case asserts either the exact error class with a message naming the parameter
(or option), or the correct finite result (with the documented warning where the
estimate is hopeless).  Sections by area: concurrency and fork, thin blocks, the
command line, transformers, attention, diagnostics, dask.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

import favorkern
from favorkern import (
    FavorAttention,
    GeneralizedRandomFeatures,
    HyperbolicRandomFeatures,
    OptimalPositiveRandomFeatures,
    PositiveRandomFeatures,
    RandomFeatures,
    TrigonometricRandomFeatures,
    draw_projection,
    favor_attention,
    softmax_attention,
)
from favorkern._parallel import ENV_THREADS, blas_single_thread, executor, n_threads
from favorkern._warnings import ApproximationWarning, FeatureUnderflowWarning
from favorkern.cli import main
from favorkern.diagnostics import theoretical_mse
from favorkern.feature_maps.optimal import optimal_gerf_a

# Large enough for the row-block thread pool: 1024 rows x 256 outputs >= 2^17 elements.
POOL_ROWS, POOL_DIMS, POOL_WIDTH = 1024, 16, 256
TIMEOUT = 120  # seconds; a hang fails the test instead of blocking the suite


def _blas_threads():
    return sorted(
        (lib["filepath"], lib["num_threads"])
        for lib in threadpool_info()
        if lib["user_api"] == "blas"
    )


def _pool_inputs():
    X = np.random.default_rng(0).standard_normal((POOL_ROWS, POOL_DIMS)).astype(np.float32) * 0.3
    return PositiveRandomFeatures(POOL_WIDTH, random_state=0).fit(X), X


def _use_pool_in_parent():
    """Start the shared pool's threads in this process (whatever the machine's core count)."""
    assert executor(2).submit(int, "7").result(timeout=TIMEOUT) == 7
    transformer, X = _pool_inputs()
    return transformer, X, transformer.transform(X)


# Module level: picklable by reference for spawn, forkserver and loky workers.
def _transform_in_worker(payload):
    transformer, X = payload
    # The pool of this process, directly (a copied pool without threads would hang).
    assert executor(2).submit(int, "5").result(timeout=TIMEOUT) == 5
    return transformer.transform(X)


def _worker_blas_threads(_):
    return _blas_threads()


# == concurrency and fork (favorkern._parallel) ========================================


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_pool_after_parent_used_thread_pool(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method} not available here")
    transformer, X, expected = _use_pool_in_parent()
    context = multiprocessing.get_context(method)
    with context.Pool(2) as pool:
        results = pool.map_async(_transform_in_worker, [(transformer, X)] * 2).get(timeout=TIMEOUT)
    for result in results:
        np.testing.assert_array_equal(result, expected)  # bit-identical to the parent


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_joblib_backends_after_parent_used_thread_pool(backend):
    joblib = pytest.importorskip("joblib")
    transformer, X, expected = _use_pool_in_parent()
    results = joblib.Parallel(n_jobs=2, backend=backend, timeout=TIMEOUT)(
        joblib.delayed(_transform_in_worker)((transformer, X)) for _ in range(3)
    )
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_fork_while_a_thread_holds_the_blas_limit_restores_it_in_the_child():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    before = _blas_threads()
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with blas_single_thread():
            inside.set()
            leave.wait(TIMEOUT)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(TIMEOUT)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.map_async(_worker_blas_threads, [0]).get(timeout=TIMEOUT)[0]
    finally:
        leave.set()
        holder.join(TIMEOUT)
    assert child == before  # the child runs no favorkern call: it gets the saved limits
    assert _blas_threads() == before


def test_blas_limit_restored_when_callers_leave_out_of_order():
    # A enters, B enters, A leaves, B leaves: BLAS stays at one thread until B has
    # left, then is restored exactly (a per-call threadpoolctl context leaves it at 1).
    before = _blas_threads()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def caller_a():
        with blas_single_thread():
            a_in.set()
            b_in.wait(TIMEOUT)
        a_out.set()

    def caller_b():
        a_in.wait(TIMEOUT)
        with blas_single_thread():
            b_in.set()
            a_out.wait(TIMEOUT)
            seen["while_b_inside"] = _blas_threads()

    threads = [threading.Thread(target=caller_a), threading.Thread(target=caller_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert all(n == 1 for _, n in seen["while_b_inside"]), seen
    assert _blas_threads() == before


def test_concurrent_transforms_restore_blas_limits_and_agree():
    transformer, X = _pool_inputs()
    X = np.tile(X, (8, 1))  # several blocks per worker
    expected = transformer.transform(X)
    before = _blas_threads()
    results, errors = [], []

    def work():
        try:
            for _ in range(4):
                results.append(PositiveRandomFeatures(POOL_WIDTH, random_state=0).fit_transform(X))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors
    assert len(results) == 16
    for result in results:
        np.testing.assert_array_equal(result, expected)
    assert _blas_threads() == before


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5", "1e3"])
def test_num_threads_env_rejects_non_positive_integers(monkeypatch, value):
    monkeypatch.setenv(ENV_THREADS, value)
    with pytest.raises(ValueError, match=f"{ENV_THREADS} must be an integer >= 1.*{value!r}"):
        n_threads()


def test_num_threads_env_error_reaches_transform(monkeypatch):
    transformer, X = _pool_inputs()
    monkeypatch.setenv(ENV_THREADS, "many")
    with pytest.raises(ValueError, match=ENV_THREADS):
        transformer.transform(X[:5])


def test_num_threads_env_capped_at_cpu_count_with_warning(monkeypatch):
    monkeypatch.setenv(ENV_THREADS, "100000")
    with pytest.warns(RuntimeWarning, match=f"{ENV_THREADS}=100000 exceeds"):
        assert n_threads() == max(1, os.cpu_count() or 1)
    threads_before = threading.active_count()
    transformer, X = _pool_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        transformer.transform(X)
    assert threading.active_count() - threads_before <= max(1, os.cpu_count() or 1)


@pytest.mark.parametrize(("value", "expected"), [(" 1 ", 1), ("", None)], ids=["padded", "empty"])
def test_num_threads_env_accepts_padded_integer_and_empty(monkeypatch, value, expected):
    monkeypatch.setenv(ENV_THREADS, value)
    assert n_threads() == (expected or max(1, os.cpu_count() or 1))


# == thin orthogonal blocks (favorkern.projections) ===================================


def test_thin_block_at_huge_dimension_stays_small():
    # m = 16 rows in d = 50000: O(d m) memory (a full d x d block would be 18.6 GiB).
    tracemalloc.start()
    try:
        W = draw_projection(16, 50_000, random_state=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20
    directions = W / np.linalg.norm(W, axis=1, keepdims=True)
    np.testing.assert_allclose(directions @ directions.T, np.eye(16), atol=1e-12)


def test_sparse_text_like_fit_at_d_50000():
    X = 0.1 * sp.random(300, 50_000, density=4e-4, format="csr", random_state=0, dtype=np.float32)
    transformer = PositiveRandomFeatures(256, random_state=0).fit(X)
    assert transformer.projection_.shape == (256, 50_000)
    features = transformer.transform(X)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    # The estimate of exp(x.y) for these small-norm rows is close to the exact kernel.
    exact = np.exp((X[:20] @ X[:20].T).toarray())
    approx = features[:20].astype(np.float64) @ features[:20].T.astype(np.float64)
    assert np.abs(approx / exact - 1).mean() < 0.1


@pytest.mark.parametrize(("m", "d"), [(2, 3), (37, 12), (100, 1000)])
def test_partial_block_rows_orthogonal(m, d):
    W = draw_projection(m, d, norms="fixed", random_state=4) / np.sqrt(d)
    for start in range(0, m, d):
        block = W[start : start + d]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-12)


def test_thin_simplex_block_at_large_dimension():
    d, m = 5000, 7
    W = draw_projection(m, d, projection="simplex", norms="fixed", random_state=1) / np.sqrt(d)
    gram = W @ W.T
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=1e-12)
    np.testing.assert_allclose(gram[~np.eye(m, dtype=bool)], -1.0 / (d - 1), atol=1e-12)


# == the command line (favorkern.cli) ==================================================


def _write_qkv(tmp_path, n_queries=64, n_keys=100, d=8, dv=4, dtype=np.float32):
    rng = np.random.default_rng(12)
    paths = {}
    for name, shape in (("q", (n_queries, d)), ("k", (n_keys, d)), ("v", (n_keys, dv))):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], (rng.standard_normal(shape) * 0.4).astype(dtype))
    return paths


def _attention_args(q, k, v, *extra):
    return ["attention", "-Q", str(q), "-K", str(k), "-V", str(v), "--repeats", "1",
            "--no-progress", *extra]  # fmt: skip


def _fails_cleanly(capsys, argv, status, *phrases):
    """Run the command; check its exit status, that stderr names ``phrases``, no traceback."""
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _no_staging_left(directory):
    return not [p for p in os.listdir(directory) if p.startswith(".favorkern-partial-")]


def test_cli_cross_attention_uses_all_keys(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    assert main(_attention_args(paths["q"], paths["k"], paths["v"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "keys: all 100 keys" in lines[0]
    row = lines[2].split()
    assert row[0] == "64"
    Q, K, V = (np.load(paths[n]) for n in "qkv")
    exact = favorkern.softmax_attention(Q, K, V)
    approx = favorkern.FavorAttention(n_components=256, random_state=0)(Q, K, V)
    expected = np.abs(approx.astype(np.float64) - exact).max()
    assert float(row[4]) == pytest.approx(expected, rel=1e-3)  # the printed max abs err
    cut = np.abs(
        favorkern.FavorAttention(n_components=256, random_state=0)(Q, K[:64], V[:64]).astype(float)
        - favorkern.softmax_attention(Q, K[:64], V[:64])
    ).max()
    assert float(row[4]) != pytest.approx(cut, rel=1e-3)  # not the problem cut to 64 keys


def test_cli_cross_attention_lengths_cut_queries_only(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    assert main(_attention_args(paths["q"], paths["k"], paths["v"], "--lengths", "16", "64")) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["16", "64"]


def test_cli_self_attention_lengths_take_prefixes(tmp_path, capsys):
    paths = _write_qkv(tmp_path, n_queries=40, n_keys=40)
    assert main(_attention_args(paths["q"], paths["k"], paths["v"], "--lengths", "10")) == 0
    out = capsys.readouterr().out
    assert "keys: the first L keys" in out and out.splitlines()[2].split()[0] == "10"


def test_cli_causal_needs_equal_lengths(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    _fails_cleanly(capsys, _attention_args(paths["q"], paths["k"], paths["v"], "--causal"), 2,
                   "--causal", "64", "100")  # fmt: skip


def test_cli_values_must_match_keys(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    np.save(paths["v"], np.ones((99, 4), dtype=np.float32))
    _fails_cleanly(
        capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2, "--values", "100"
    )


def test_cli_keys_must_match_query_dimension(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    np.save(paths["k"], np.ones((100, 5), dtype=np.float32))
    _fails_cleanly(
        capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2, "--keys", "d = 8"
    )


def test_cli_batch_dimensions_must_broadcast(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    np.save(paths["q"], np.ones((3, 64, 8), dtype=np.float32))
    np.save(paths["k"], np.ones((2, 100, 8), dtype=np.float32))
    np.save(paths["v"], np.ones((2, 100, 4), dtype=np.float32))
    _fails_cleanly(capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2, "broadcast")


def test_cli_rejects_complex_input(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    np.save(paths["q"], np.ones((64, 8)) * (1 + 2j))
    _fails_cleanly(
        capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2, "--queries", "complex"
    )


def test_cli_rejects_npz_archive(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    np.savez(tmp_path / "q.npz", q=np.ones((64, 8)))
    _fails_cleanly(capsys, _attention_args(tmp_path / "q.npz", paths["k"], paths["v"]), 2,
                   "--queries", ".npz")  # fmt: skip


def test_cli_rejects_archive_named_npy(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    with open(tmp_path / "archive.npy", "wb") as handle:
        np.savez(handle, q=np.ones((64, 8)))
    _fails_cleanly(capsys, _attention_args(tmp_path / "archive.npy", paths["k"], paths["v"]), 2,
                   "--queries", ".npz archive")  # fmt: skip


def test_cli_rejects_directory_and_missing_file(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    _fails_cleanly(
        capsys, _attention_args(tmp_path, paths["k"], paths["v"]), 2, "--queries", "directory"
    )
    _fails_cleanly(capsys, _attention_args(paths["q"], tmp_path / "absent.npy", paths["v"]), 2,
                   "--keys", "not found")  # fmt: skip


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cli_never_unpickles(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    marker = tmp_path / "executed"
    np.save(paths["q"], np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    _fails_cleanly(capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2,
                   "--queries", "Python objects")  # fmt: skip
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (np.array(["a", "b"]), "numeric"),
        (np.array([[np.nan, 1.0]] * 64), "NaN"),
        (np.ones(8), "(..., L, d)"),
        (b"not an array at all", "not a .npy array"),
    ],
    ids=["strings", "nan", "one-dimensional", "garbage"],
)
def test_cli_rejects_bad_array_files(tmp_path, capsys, content, phrase):
    paths = _write_qkv(tmp_path)
    if isinstance(content, bytes):
        paths["q"].write_bytes(content)
    else:
        np.save(paths["q"], content)
    _fails_cleanly(
        capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2, "--queries", phrase
    )


def test_cli_float64_file_beyond_float32_range(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    np.save(paths["k"], np.full((100, 8), 1e300))
    _fails_cleanly(capsys, _attention_args(paths["q"], paths["k"], paths["v"]), 2, "--keys",
                   "float32 range", "--dtype float64")  # fmt: skip


def test_cli_lengths_beyond_the_files(tmp_path, capsys):
    paths = _write_qkv(tmp_path)
    argv = _attention_args(paths["q"], paths["k"], paths["v"], "--lengths", "65")
    _fails_cleanly(capsys, argv, 2, "--lengths", "64")


@pytest.mark.parametrize(
    "argv",
    [
        ["attention", "--sigma", "-1"],
        ["attention", "--gamma", "0"],
        ["attention", "--d", "0"],
        ["regress", "--test-size", "1.5"],
        ["regress", "--gamma", "-1"],
        ["regress", "--alpha", "nan"],
        ["variance", "--n-components", "4,4"],
        ["regress", "--n-components", "8,16,8"],
        ["variance", "--feature-maps", "positive,positive"],
    ],
    ids=[
        "sigma",
        "scale",
        "d",
        "test-size",
        "gamma",
        "alpha",
        "dup-variance",
        "dup-regress",
        "dup-features",
    ],  # fmt: skip
)
def test_cli_bad_values_rejected_at_parse_time(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[1]}" in err


def _forbid(monkeypatch, target):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"{target} ran although the arguments were invalid")

    monkeypatch.setattr(target, forbidden)


@pytest.mark.parametrize("command", ["variance", "regress", "report"])
def test_cli_out_that_is_a_file_rejected_before_computing(tmp_path, capsys, monkeypatch, command):
    for target in (
        "favorkern.diagnostics.variance_study",
        "favorkern.regression.compare_regression",
        "favorkern.report.write_report",
    ):
        _forbid(monkeypatch, target)
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    _fails_cleanly(capsys, [command, "--out", str(existing), "--no-progress"], 2, "--out",
                   "not a directory")  # fmt: skip
    _fails_cleanly(capsys, [command, "--out", str(existing / "sub"), "--no-progress"], 2, "--out")
    _fails_cleanly(capsys, [command, "--out", os.devnull, "--no-progress"], 2, "--out")
    assert existing.read_text() == "keep me" and _no_staging_left(tmp_path)


def _tiny_variance(out, *extra):
    return ["variance", "--d", "4", "--n-components", "2,4", "--trials", "20",
            "--feature-maps", "positive", "--projection", "gaussian", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def test_cli_refuses_to_overwrite_results_unless_asked(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(_tiny_variance(out, "--no-plot")) == 0
    first = (out / "variance.csv").read_bytes()
    (out / "variance.md").write_text("edited by hand")
    _fails_cleanly(capsys, _tiny_variance(out, "--no-plot", "--seed", "3"), 2, "--overwrite",
                   "variance.md")  # fmt: skip
    assert (out / "variance.md").read_text() == "edited by hand"
    assert (out / "variance.csv").read_bytes() == first
    assert main(_tiny_variance(out, "--no-plot", "--seed", "3", "--overwrite")) == 0
    assert (out / "variance.md").read_text().startswith("# favorkern variance")
    assert (out / "variance.csv").read_bytes() != first
    assert sorted(os.listdir(out)) == ["variance.csv", "variance.md"]


def test_cli_failure_while_writing_leaves_no_partial_output(tmp_path, capsys, monkeypatch):
    import favorkern.plotting

    def broken_plot(*args, **kwargs):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(favorkern.plotting, "plot_mse_vs_width", broken_plot)
    out = tmp_path / "new" / "study"
    _fails_cleanly(capsys, _tiny_variance(out), 1, "the disk is on fire", "--debug")
    assert not (tmp_path / "new").exists() and _no_staging_left(tmp_path)
    # Into an existing directory with old results: they stay as they were.
    out.mkdir(parents=True)
    (out / "variance.csv").write_text("old")
    _fails_cleanly(capsys, _tiny_variance(out, "--overwrite"), 1, "disk is on fire")
    assert os.listdir(out) == ["variance.csv"] and (out / "variance.csv").read_text() == "old"


def test_cli_regress_blocked_result_path_rejected_before_computing(tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, "favorkern.regression.compare_regression")
    (tmp_path / "regress.csv").mkdir()
    _fails_cleanly(capsys, ["regress", "--out", str(tmp_path), "--overwrite", "--no-progress"], 2,
                   "regress.csv", "is a directory")  # fmt: skip
    assert not (tmp_path / "regress.md").exists() and _no_staging_left(tmp_path)


def test_cli_report_refuses_existing_index(tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, "favorkern.report.write_report")
    (tmp_path / "index.html").write_text("<p>old</p>")
    _fails_cleanly(capsys, ["report", "--out", str(tmp_path), "--no-progress"], 2, "index.html",
                   "--overwrite")  # fmt: skip
    assert (tmp_path / "index.html").read_text() == "<p>old</p>"


def test_cli_report_failure_leaves_nothing(tmp_path, capsys, monkeypatch):
    import favorkern.report

    def half_written(out_dir, **kwargs):
        with open(os.path.join(out_dir, "variance_study.csv"), "w") as handle:
            handle.write("a,b\n")
        raise MemoryError

    monkeypatch.setattr(favorkern.report, "write_report", half_written)
    out = tmp_path / "report"
    _fails_cleanly(capsys, ["report", "--out", str(out), "--no-progress"], 1, "out of memory")
    assert not out.exists() and _no_staging_left(tmp_path)


def test_cli_ctrl_c_exits_130_without_traceback(tmp_path, capsys, monkeypatch):
    import favorkern.diagnostics

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(favorkern.diagnostics, "variance_study", interrupted)
    _fails_cleanly(capsys, _tiny_variance(tmp_path / "study"), 130, "interrupted")
    assert not (tmp_path / "study").exists() and _no_staging_left(tmp_path)


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, where):
    import favorkern.diagnostics

    def failing(**kwargs):
        raise RuntimeError("library failure")

    monkeypatch.setattr(favorkern.diagnostics, "variance_study", failing)
    argv = _tiny_variance(tmp_path / "study")
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: library failure" in err


def test_cli_error_messages_are_shortened(tmp_path, capsys):
    huge = tmp_path / "wide.csv"
    huge.write_text("x" * 2_000_000 + ",y\n1,2\n" * 12)
    err = _fails_cleanly(capsys, ["regress", "--data", str(huge), "--target", "z",
                                  "--out", str(tmp_path / "o"), "--no-progress"], 2,
                         "target column 'z' not found", "more characters")  # fmt: skip
    assert len(err) < 2000


def test_cli_help_documents_overwrite_and_exit_status(capsys):
    for command in ("variance", "regress", "report"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--overwrite" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "130 interrupted" in capsys.readouterr().out.replace("\n", " ")


def test_cli_regress_speaks_plainly_and_writes_atomically(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["regress", "--out", str(out), "--n-components", "8,16", "--cv-samples", "60",
            "--n-samples", "200", "--max-exact", "100", "--no-plot", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out.lower()
    for word in ("target", "issue", "meets", "misses"):
        assert word not in stdout
    assert "comparisons:" in stdout
    assert sorted(os.listdir(out)) == ["regress.csv", "regress.md"]
    _fails_cleanly(capsys, argv, 2, "--overwrite")


def test_output_dir_creates_missing_parents_at_commit_only(tmp_path):
    from favorkern._commands._files import OutputDir

    target = tmp_path / "a" / "b" / "c"
    with OutputDir(target, ["r.txt"]) as out:
        assert not (tmp_path / "a").exists()  # nothing created before the results exist
        with open(out.file("r.txt"), "w") as handle:
            handle.write("result")
        assert out.commit() == [str(target / "r.txt")]
    assert (target / "r.txt").read_text() == "result"
    assert _no_staging_left(tmp_path) and os.listdir(target) == ["r.txt"]


def test_output_dir_keeps_results_when_a_file_appears_meanwhile(tmp_path):
    from favorkern._commands._files import OutputDir, UsageError

    with OutputDir(tmp_path, ["r.txt"]) as out:
        with open(out.file("r.txt"), "w") as handle:
            handle.write("new")
        (tmp_path / "r.txt").write_text("someone else's")
        with pytest.raises(UsageError, match="r.txt.*--overwrite.*kept in") as error:
            out.commit()
    kept = str(error.value).rsplit("kept in ", 1)[1]
    assert open(os.path.join(kept, "r.txt")).read() == "new"
    assert (tmp_path / "r.txt").read_text() == "someone else's"


# == transformers (favorkern.features, favorkern.feature_maps) ==========================

TRANSFORMERS = [
    PositiveRandomFeatures,
    HyperbolicRandomFeatures,
    TrigonometricRandomFeatures,
    OptimalPositiveRandomFeatures,
    GeneralizedRandomFeatures,
]


def _no_warnings():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    return context


def _make(cls, n_components):
    if cls == "RandomFeatures":
        return RandomFeatures("positive", n_components, random_state=0)
    return cls(n_components, random_state=0)


@pytest.mark.parametrize("cls", [*TRANSFORMERS, "RandomFeatures"], ids=str)
def test_set_params_gamma_after_fit_keeps_the_fitted_state(cls):
    # Documented: transform uses the state fitted by fit; set_params applies at the next fit.
    X = np.random.default_rng(0).normal(scale=0.3, size=(12, 4))
    est = _make(cls, 8).fit(X)
    before = est.transform(X)
    est.set_params(gamma=-1)
    np.testing.assert_array_equal(est.transform(X), before)  # not NaN, not changed
    with pytest.raises(ValueError, match="gamma"):
        est.fit(X)


@pytest.mark.parametrize("cls", [*TRANSFORMERS, "RandomFeatures"], ids=str)
def test_set_params_n_components_after_fit_applies_at_the_next_fit(cls):
    X = np.random.default_rng(1).normal(scale=0.3, size=(12, 4))
    est = _make(cls, 8).fit(X)
    before = est.transform(X)
    est.set_params(n_components=16)
    after = est.transform(X)  # no broadcast error, and not a silent mix of the two widths
    assert after.shape == (12, 8)
    np.testing.assert_array_equal(after, before)
    assert est.fit(X).transform(X).shape == (12, 16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [PositiveRandomFeatures, HyperbolicRandomFeatures],
                         ids=lambda c: c.__name__)  # fmt: skip
def test_underflowing_feature_rows_warn_once_with_their_count(cls, dtype):
    rng = np.random.default_rng(2)
    X = rng.normal(scale=0.2, size=(10, 4))
    est = cls(16, random_state=0).fit(X)
    X[[1, 4, 7]] *= 500.0  # exp(w.x - |x|^2 / 2) below the smallest float in every feature
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Z = est.transform(X.astype(dtype))
    relevant = [w for w in caught if issubclass(w.category, ApproximationWarning)]
    assert len(relevant) == 1 and issubclass(relevant[0].category, FeatureUnderflowWarning)
    assert "3 of 10 rows" in str(relevant[0].message)
    assert Z.dtype == dtype and np.isfinite(Z).all()
    assert np.flatnonzero(~Z.any(axis=1)).tolist() == [1, 4, 7]


def test_ordinary_input_does_not_warn_about_underflow():
    X = np.random.default_rng(3).normal(size=(200, 8)).astype(np.float32)
    context = _no_warnings()
    try:
        for cls in (PositiveRandomFeatures, HyperbolicRandomFeatures):
            cls(64, random_state=0).fit_transform(X)
        OptimalPositiveRandomFeatures(64, random_state=0).fit_transform(X)
    finally:
        context.__exit__(None, None, None)


def test_optimal_fit_at_huge_norms_has_finite_a_and_warned_zero_features():
    X = np.random.default_rng(4).normal(size=(20, 4)) * 1e160  # |x|^2 overflows float64
    est = OptimalPositiveRandomFeatures(16, random_state=0).fit(X)
    assert np.isfinite(est.A_) and est.A_ < 0
    with pytest.warns(FeatureUnderflowWarning, match="20 of 20 rows"):
        Z = est.transform(X)
    assert np.isfinite(Z).all() and not Z.any()  # exp(x.y) itself is beyond float64 here


@pytest.mark.parametrize("phi", [1e-12, 0.01, 1.0, 100.0, 1e6])
def test_optimal_a_star_matches_the_closed_form(phi):
    d = 16
    direct = (d - 2 * phi - np.sqrt((2 * phi + d) ** 2 + 8 * d * phi)) / (16 * d)
    # the direct form cancels for small phi: compare where it is accurate
    tolerance = 1e-9 if phi >= 0.01 else 1e-3
    assert float(optimal_gerf_a(phi, d)) == pytest.approx(direct, rel=tolerance)


@pytest.mark.parametrize("phi", [1e200, 1e308, np.inf])
def test_optimal_a_star_finite_and_asymptotic_at_huge_phi(phi):
    d = 16
    a = float(optimal_gerf_a(phi, d))
    assert np.isfinite(a)
    expected = -min(phi, np.finfo(np.float64).max) / (4 * d)  # A* -> -phi / (4 d)
    assert a == pytest.approx(expected, rel=1e-12)


# == attention (favorkern.attention) ===================================================


def _qkv(shape=(2, 32, 8), dv=3, scale=1.0, dtype=np.float64, seed=5):
    rng = np.random.default_rng(seed)
    Q = (rng.standard_normal(shape) * scale).astype(dtype)
    K = (rng.standard_normal(shape) * scale).astype(dtype)
    V = rng.standard_normal(shape[:-1] + (dv,)).astype(dtype)
    return Q, K, V


def _one_hot_reference(Q, K, V, causal=False, mask=None):
    """Softmax at infinite temperature: the value of each row's largest score (float64)."""
    Q, K = (X.astype(np.float64) / np.abs(X).max() for X in (Q, K))  # no overflow here
    scores = np.einsum("...qd,...kd->...qk", Q, K)
    if mask is not None:
        scores[..., mask] = -np.inf
    if causal:
        scores[..., np.triu(np.ones(scores.shape[-2:], dtype=bool), 1)] = -np.inf
    return np.take_along_axis(V.astype(np.float64), scores.argmax(-1)[..., None], axis=-2)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_float32_overflowing_logits_is_finite_and_exact(causal):
    Q, K, V = _qkv(scale=1e19, dtype=np.float32)  # q.k ~ 1e39 > float32 max
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning either
        out = softmax_attention(Q, K, V, causal=causal)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, _one_hot_reference(Q, K, V, causal).astype(np.float32))


def _huge_values(dtype, L=600, d=8):
    """Q, K and values within a factor L of the dtype's max (one column small, one of
    alternating sign), and the values over their scale."""
    rng = np.random.default_rng(11)
    Q, K = (rng.standard_normal((L, d)).astype(dtype) * 0.3 for _ in range(2))
    big = float(np.finfo(dtype).max) * 0.9
    unit = rng.uniform(0.5, 1.0, (L, 4))
    unit[:, 1] = rng.standard_normal(L) * 1e-3  # a column of small values stays exact
    unit[::2, 2] *= -1
    V = (unit * [big, 1.0, big, big]).astype(dtype)
    return Q, K, V, unit, np.array([big, 1.0, big, big])


def _attention_of_huge_values():
    from favorkern import hybrid_attention

    yield "favor", lambda Q, K, V: favor_attention(Q, K, V, method="favor", random_state=0)
    yield "favor-causal", lambda Q, K, V: favor_attention(Q, K, V, causal=True, method="favor",
                                                          random_state=0)  # fmt: skip
    yield "recurrent", lambda Q, K, V: favor_attention(Q, K, V, causal=True, method="recurrent",
                                                       random_state=0)  # fmt: skip
    yield "relu", lambda Q, K, V: favor_attention(10 * Q, 10 * K, V, feature_map="relu",
                                                  n_components=8, random_state=0)  # fmt: skip
    yield "relu-recurrent", lambda Q, K, V: favor_attention(
        10 * Q, 10 * K, V, feature_map="relu", causal=True, method="recurrent",
        n_components=8, random_state=0,
    )  # fmt: skip
    yield "exact", lambda Q, K, V: softmax_attention(Q, K, V)
    yield "exact-causal", lambda Q, K, V: softmax_attention(Q, K, V, causal=True)
    yield "hybrid", lambda Q, K, V: hybrid_attention(Q, K, V, causal=True, window=4,
                                                     n_components=64, random_state=0)  # fmt: skip
    yield "hybrid-bidir", lambda Q, K, V: hybrid_attention(Q, K, V, window=4, n_components=64,
                                                           random_state=0)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "attend"), list(_attention_of_huge_values()))
def test_values_near_the_dtype_max_give_finite_outputs(name, attend, dtype):
    """The sums of values within a factor L of the max overflowed (inf, NaN outputs),
    though every output is a weighted mean of values."""
    Q, K, V, unit, scale = _huge_values(dtype)
    out = attend(Q, K, V)
    assert out.dtype == dtype and np.isfinite(out).all()
    # the same call on values of order 1, scaled back (powers of two: exact)
    expected = attend(Q, K, unit.astype(dtype)).astype(np.float64) * scale
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    # error relative to each column's largest output
    error = np.abs(out - expected) / np.abs(expected).max(axis=0)
    assert error.max() < rtol


def test_values_whose_sums_a_state_cannot_hold_are_refused():
    from favorkern import FavorAttention

    Q, K, V, _, _ = _huge_values(np.float32)
    layer = FavorAttention(n_components=64, causal=True, random_state=0).fit(8)
    with pytest.raises(ValueError, match="key state's sums of .* terms .* would overflow float32"):
        layer.step(Q, K, V)
    _, state = layer.step(Q, K, V.astype(np.float64))  # float64 holds them
    assert np.isfinite(state.S).all()


def test_softmax_attention_overflow_respects_the_mask():
    Q, K, V = _qkv(shape=(16, 4), scale=1e19, dtype=np.float32)
    mask = np.zeros(16, dtype=bool)
    mask[_one_hot_reference(Q, K, np.arange(16.0)[:, None])[:, 0].astype(int)] = True
    out = softmax_attention(Q, K, V, key_padding_mask=mask)
    np.testing.assert_array_equal(out, _one_hot_reference(Q, K, V, mask=mask).astype(np.float32))


@pytest.mark.parametrize(("scale", "gamma"), [(1e200, None), (1.0, 1e300), (1e100, 1e200)])
def test_softmax_attention_float64_beyond_float64_logits(scale, gamma):
    Q, K, V = _qkv(shape=(12, 4), scale=scale)
    out = softmax_attention(Q, K, V, gamma=gamma)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, _one_hot_reference(Q, K, V))


def test_softmax_attention_moderate_logits_unchanged_by_the_rescaled_path():
    from favorkern.attention.exact import _exact_rows_rescaled

    Q, K, V = _qkv(shape=(20, 6), scale=2.0)
    direct = softmax_attention(Q, K, V)
    rescaled = _exact_rows_rescaled(Q, K, V, None, 0, 20, 1 / np.sqrt(6), False)
    np.testing.assert_allclose(rescaled, direct, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("feature_map", ["positive", "hyperbolic"])
def test_favor_attention_huge_gamma_no_nan_and_warned(feature_map, dtype, causal):
    Q, K, V = _qkv(shape=(2, 64, 8), dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = favor_attention(Q, K, V, gamma=1e20, feature_map=feature_map, causal=causal,
                              n_components=32, random_state=0)  # fmt: skip
    assert out.dtype == dtype and np.isfinite(out).all()
    zero = int(np.count_nonzero(~out.any(axis=-1)))
    underflow = [w for w in caught if issubclass(w.category, FeatureUnderflowWarning)]
    if zero:
        assert len(underflow) == 1 and f"{zero} of 128" in str(underflow[0].message)
    else:
        assert not underflow


def test_favor_attention_optimal_at_huge_gamma_is_finite():
    Q, K, V = _qkv(shape=(2, 32, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        out = favor_attention(Q, K, V, gamma=1e20, feature_map="optimal", n_components=32,
                              random_state=0)  # fmt: skip
    assert np.isfinite(out).all()


def test_favor_attention_sharp_logits_warn_with_the_zero_row_count():
    Q, K, V = _qkv(shape=(2, 64, 8), scale=10.0)
    with pytest.warns(FeatureUnderflowWarning, match="attention output rows are 0") as caught:
        out = favor_attention(Q, K, V, gamma=1e4, n_components=64, random_state=0)
    zero = int(np.count_nonzero(~out.any(axis=-1)))
    assert zero > 0 and f"{zero} of 128 attention output rows" in str(caught[0].message)
    assert len([w for w in caught if issubclass(w.category, FeatureUnderflowWarning)]) == 1


def test_favor_attention_object_warns_like_the_function():
    Q, K, V = _qkv(shape=(2, 64, 8), scale=10.0)
    with pytest.warns(FeatureUnderflowWarning, match="attention output rows are 0"):
        FavorAttention(n_components=64, random_state=0)(Q, K, V, gamma=1e4)


@pytest.mark.parametrize("feature_map", ["optimal", "saderf", "sderf"])
def test_float32_rows_lost_to_its_exponent_range_come_from_float64(feature_map):
    """Where float32 lost every feature product of some rows (zero rows, warned), float64
    keeps them: the call is made in float64 and cast back (GERF-family maps reached
    float32's range at input scale 20, d = 8)."""
    from favorkern import FavorAttention

    rng = np.random.default_rng(4)
    Q, K = rng.normal(scale=20.0, size=(2, 50, 8))
    V = rng.normal(size=(50, 4))
    W = draw_projection(32, 8, random_state=0)
    Q32, K32, V32 = (X.astype(np.float32) for X in (Q, K, V))
    Q, K, V = (X.astype(np.float64) for X in (Q32, K32, V32))  # the same values in float64
    expected = favor_attention(Q, K, V, feature_map=feature_map, projection_matrix=W)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureUnderflowWarning)
        got = favor_attention(Q32, K32, V32, feature_map=feature_map, projection_matrix=W)
        layer = FavorAttention(feature_map=feature_map, random_state=0)
        via_layer = layer(Q32, K32, V32)
    assert got.dtype == np.float32 and via_layer.dtype == np.float32
    atol = 1e-6 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(via_layer, layer(Q, K, V), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_rows_are_zero_without_a_warning(causal):
    Q, K, V = _qkv(shape=(2, 16, 4))
    mask = np.zeros((2, 16), dtype=bool)
    mask[0] = True  # head 0: every key ignored
    if causal:
        mask[1, :5] = True  # head 1: rows 0..4 see only ignored keys
    context = _no_warnings()
    try:
        out = favor_attention(Q, K, V, causal=causal, key_padding_mask=mask, n_components=16,
                              random_state=0)  # fmt: skip
    finally:
        context.__exit__(None, None, None)
    assert not out[0].any()
    if causal:
        assert not out[1, :5].any() and out[1, 5:].any(axis=-1).all()


def test_zero_values_give_zero_rows_without_a_warning():
    Q, K, _ = _qkv(shape=(16, 4))
    context = _no_warnings()
    try:
        out = favor_attention(Q, K, np.zeros((16, 3)), n_components=16, random_state=0)
    finally:
        context.__exit__(None, None, None)
    assert not out.any()


# == diagnostics (favorkern.diagnostics) ===============================================


@pytest.mark.parametrize("norm", [19.0, 25.0, 40.0])
@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
def test_trigonometric_mse_at_large_norms_is_zero_when_exact(norm, projection):
    # x = y: Var1 = e^{2|x|^2} (1 - e^0)^2 / 2 = 0; the product form gave inf * 0 = NaN.
    x = np.zeros(4)
    x[0] = norm
    direct = theoretical_mse(x, x, feature_map="trigonometric", n_components=16,
                             projection=projection)  # fmt: skip
    assert direct == 0.0
    log = theoretical_mse(x, x, feature_map="trigonometric", n_components=16,
                          projection=projection, log=True)  # fmt: skip
    assert log == -np.inf


def test_trigonometric_mse_direct_is_exp_of_log_beyond_overflow():
    x = np.array([[10.0, 0, 0, 0], [0.1, 0.2, 0, 0], [19.0, 0, 0, 0]])
    y = np.array([[0, 10.0, 0, 0], [0.2, 0.1, 0, 0], [0, 19.0, 0, 0]])
    log = theoretical_mse(x, y, feature_map="trigonometric", n_components=16, log=True)
    with np.errstate(over="ignore"):
        expected = np.exp(log)
    direct = theoretical_mse(x, y, feature_map="trigonometric", n_components=16)
    assert not np.isnan(direct).any()
    np.testing.assert_array_equal(direct, expected)  # inf where e^{|x|^2+|y|^2} overflows
    assert direct[2] == np.inf and np.isfinite(log[2])


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"feature_map": "nope", "n_components": 4}, ValueError, "feature_map"),
        ({"feature_map": "hyperbolic", "n_components": 5}, ValueError, "n_components"),
        ({"feature_map": "positive", "n_components": 0}, ValueError, "n_components"),
        ({"feature_map": "positive", "n_components": 4, "gamma": -1}, ValueError, "gamma"),
        ({"feature_map": "positive", "n_components": 4, "log": "yes"}, TypeError, "log"),
        ({"feature_map": "positive", "n_components": 4, "projection": "haar"}, ValueError,
         "projection"),
        ({"feature_map": "optimal", "n_components": 4, "A": 0.2}, ValueError, "A must"),
    ],
    ids=["feature_map", "odd-width", "zero-width", "gamma", "log", "projection", "A"],
)  # fmt: skip
def test_theoretical_mse_bad_parameters_named(kwargs, error, name):
    x = np.full(4, 0.1)
    with pytest.raises(error, match=name):
        theoretical_mse(x, x, **kwargs)


def test_theoretical_mse_nonfinite_pair_named():
    with pytest.raises(ValueError, match="x contains NaN"):
        theoretical_mse(np.array([np.nan, 1.0]), np.ones(2), feature_map="positive",
                        n_components=4)  # fmt: skip


# == dask (favorkern.dask) ===============================================================


@pytest.fixture
def dask_sync():
    dask = pytest.importorskip("dask")
    with dask.config.set(scheduler="synchronous"):
        yield pytest.importorskip("dask.array")


def _chunked(da, *arrays, rows=16):
    return [da.from_array(X, chunks=X.shape[:-2] + (rows, X.shape[-1])) for X in arrays]


@pytest.mark.parametrize("causal", [False, True])
def test_dask_key_padding_mask_matches_in_memory(dask_sync, causal):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = _qkv(shape=(2, 3, 40, 8), scale=0.5)
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

    Q, K, V = _qkv(shape=(40, 8), scale=0.5)
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

    Q, K, V = _qkv(shape=(2, 40, 8))
    with pytest.raises(error, match=phrase):
        dask_attention(Q, K, V, key_padding_mask=mask, n_components=8)


def test_dask_per_head_frozen_constants_match_in_memory(dask_sync):
    from favorkern.dask import favor_attention as dask_attention

    Q, K, V = _qkv(shape=(2, 3, 40, 8), scale=0.5)
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

    Q, K, V = _qkv(shape=(3, 16, 8))
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

    Q, K, V = _qkv(shape=(2, 512, 16), scale=10.0, dtype=np.float32)  # gamma |q||k| ~ 400
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

    Q, K, V = _qkv(shape=(2, 256, 16), scale=30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        expected = favor_attention(Q, K, V, causal=True, n_components=64, random_state=0)
    out = dask_attention(*_chunked(dask_sync, Q, K, V), causal=True, n_components=64,
                         random_state=0).compute()  # fmt: skip
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-9)


# -- constants, continued calls and broadcast decoding ----------------------------------


@pytest.mark.parametrize("constants", [{"A": 0.3}, {"A": 0.25}, {"A": "abc"}, "x"])
def test_bad_constants_are_refused_everywhere(constants):
    """A GERF parameter beyond 1/4 made every output NaN silently (hybrid and dask)."""
    import dask.array as da

    import favorkern.dask as fd
    from favorkern import hybrid_attention

    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((3, 40, 8))
    error = TypeError if isinstance(constants, str) else ValueError
    with pytest.raises(error, match="constant"):
        hybrid_attention(Q, K, V, feature_map="optimal", constants=constants, causal=True,
                         window=2, random_state=0)  # fmt: skip
    blocks = [da.from_array(X, chunks=(20, 8)) for X in (Q, K, V)]
    with pytest.raises(error, match="constant"):
        fd.favor_attention(*blocks, causal=True, feature_map="optimal", constants=constants,
                           random_state=0)  # fmt: skip


_D = 6


def _wrong_shape_constants():
    """(map, constants with one constant of the wrong shape, its name, projection)."""
    from favorkern.feature_maps import get_feature_map

    rng = np.random.default_rng(3)
    Q, K = rng.standard_normal((2, 30, _D)) * 0.3
    cases = []
    for name, key, bad in [
        ("optimal", "A", np.full(3, -0.1)),
        ("optimal", "A", [[-0.1]]),
        ("saderf", "psi", np.ones(_D - 2)),
        ("sderf", "A", np.zeros(_D + 1)),
        ("sderf", "rotation", np.eye(_D - 1)),
        ("aderf", "query_transform", np.eye(_D)[:, :3]),
        ("whitened", "key_transform", np.eye(_D + 2)),
        ("whitened", "A", np.zeros(2)),
    ]:
        constants = dict(get_feature_map(name).fit(Q, K, input_scale=0.5))
        constants[key] = bad
        projection = "gaussian" if name in ("sderf", "aderf") else "orthogonal"
        cases.append(pytest.param(name, constants, key, projection, id=f"{name}-{key}"))
    return cases


@pytest.mark.parametrize("name, constants, key, projection", _wrong_shape_constants())
def test_constants_of_the_wrong_shape_name_the_constant(name, constants, key, projection):
    """Constants of another shape reached numpy (broadcast, reshape and scalar errors)."""
    from favorkern.diagnostics import empirical_mse

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 3, _D)) * 0.3
    match = f"constant '{key}' of feature map '{name}' must"
    with pytest.raises(ValueError, match=match):
        theoretical_mse(x, y, feature_map=name, n_components=16, projection=projection,
                        constants=constants)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        empirical_mse(x, y, feature_map=name, n_components=16, n_trials=20,
                      projection=projection, constants=constants)  # fmt: skip


def test_constants_for_a_map_without_them_are_refused():
    from favorkern import hybrid_attention

    Q, K, V = np.random.default_rng(1).standard_normal((3, 20, 8))
    with pytest.raises(ValueError, match="has no fitted constants"):
        hybrid_attention(Q, K, V, constants={"foo": 1}, causal=True, window=2, random_state=0)


def test_continued_calls_return_and_warn_as_documented():
    """initial_state alone returns the output only; underflowed rows warn in every path."""
    from favorkern import FavorAttention, favor_attention
    from favorkern._warnings import FeatureUnderflowWarning

    Q, K, V = np.random.default_rng(2).standard_normal((3, 50, 8))
    W = FavorAttention(n_components=32, random_state=0).fit(8).projection_
    _, state = favor_attention(Q, K, V, causal=True, projection_matrix=W, return_state=True)
    out = favor_attention(Q, K, V, causal=True, projection_matrix=W, initial_state=state)
    assert isinstance(out, np.ndarray)
    with pytest.warns(FeatureUnderflowWarning):
        favor_attention(Q, K * 1e200, V, causal=True, random_state=0, return_state=True)
    layer = FavorAttention(n_components=64, causal=True, random_state=0).fit(8)
    with pytest.warns(FeatureUnderflowWarning):
        layer.step(Q, K * 1e200, V)
    with pytest.warns(FeatureUnderflowWarning):
        _, state = layer.step(Q[:5], K[:5] * 1e200, V[:5])
    with pytest.warns(FeatureUnderflowWarning):
        layer.step(Q[5:6], K[5:6] * 1e200, V[5:6], state)  # the one-token path


def test_step_broadcasts_one_token_like_a_block():
    """One token with broadcast leading dimensions gave a numba typing error."""
    from favorkern import FavorAttention

    layer = FavorAttention(n_components=32, causal=True, random_state=0).fit(8)
    rng = np.random.default_rng(3)
    Q, K, V = rng.standard_normal((3, 2, 10, 8))
    V = V[..., :4]
    for q, k, v in ((Q[:1, :1], K[:1, :1], V[:1, :1]), (Q[:, :1], K[:1, :1], V[:1, :1])):
        a, b = (
            layer.initial_state(batch_shape=(2,), dv=4),
            layer.initial_state(batch_shape=(2,), dv=4),
        )
        got, _ = layer.step(q, k, v, a)
        full = [np.ascontiguousarray(np.broadcast_to(X, (2, 1, X.shape[-1]))) for X in (q, k, v)]
        want, _ = layer.step(*full, b)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(a.keys.S, b.keys.S)
    with pytest.raises(TypeError, match="DecodingState"):
        layer.step(Q[:, :1], K[:, :1], V[:, :1], "x")


# -- targets, the fitted map, rbf at huge norms, data files, argument errors -------------


def test_targets_with_nan_or_wrong_length_are_refused_in_every_ridge_path(dask_sync):
    """NaN targets gave a model of NaN coefficients (dask, statistics) without an error."""
    import dask.array as da

    import favorkern.dask as fd
    from favorkern import RandomFeatureRidge
    from favorkern.linear_model import RidgeStatistics

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = X.sum(axis=1)
    features = PositiveRandomFeatures(16, random_state=0).fit(X)
    for bad in (np.nan, np.inf):
        y_bad = y.copy()
        y_bad[45] = bad
        with pytest.raises(ValueError, match="targets y contain NaN or infinity"):
            fd.fit(RandomFeatureRidge(alphas=[0.1, 1.0]), da.from_array(X, chunks=20),
                   da.from_array(y_bad, chunks=20)).coef_  # fmt: skip
        with pytest.raises(ValueError, match="targets y contain NaN or infinity"):
            RidgeStatistics.from_features(features, X, y_bad)
    with pytest.raises(ValueError, match="must have 50 rows like X"):
        RidgeStatistics.from_features(features, X, y[:-1])


def test_the_fitted_map_honours_the_callers_projection():
    """It drew 256 rows from its own seed whatever n_components, random_state and
    projection the transformer or layer was given."""
    from favorkern import FavorAttention, RandomFeatures
    from favorkern.diagnostics import empirical_mse
    from favorkern.feature_maps import feature_map_names

    X = np.random.default_rng(1).normal(size=(40, 3))
    one = RandomFeatures("fitted", n_components=16, random_state=1).fit(X)
    assert one.transform(X).shape == (40, 16)
    two = RandomFeatures("fitted", n_components=16, random_state=2, projection="gaussian")
    assert not np.array_equal(one.transform(X), two.fit(X).transform(X))
    # one input set: the identity maps, so the positive map with the transformer's rows
    positive = RandomFeatures("positive", n_components=16, random_state=1).fit(X)
    np.testing.assert_allclose(one.transform(X), positive.transform(X), rtol=1e-12)
    Q, K = np.random.default_rng(2).normal(size=(2, 30, 4))
    layer = FavorAttention(feature_map="fitted", n_components=8, random_state=3).fit(Q, K)
    np.testing.assert_array_equal(layer.constants_["projection"], layer.projection_)
    assert "fitted" not in feature_map_names(random=True)
    with pytest.raises(ValueError, match="fits its projection to data"):
        empirical_mse(X[:2], X[2:4], feature_map="fitted", n_components=16, n_trials=10)


def test_rbf_kernel_at_huge_norms_is_finite_and_exact():
    from scipy.spatial.distance import cdist

    from favorkern import exact_kernel

    for scale, dtype in [(1e200, np.float64), (1e150, np.float64), (1e30, np.float32)]:
        X = np.array([[scale, 0.0], [scale, 1.0], [0.0, 0.0], [-scale, 2.0]], dtype=dtype)
        K = exact_kernel(X, kernel="rbf", gamma=0.5)
        assert K.dtype == dtype and np.isfinite(K).all()
        with np.errstate(over="ignore"):
            expected = np.exp(-0.5 * cdist(X, X, "sqeuclidean"))
        np.testing.assert_allclose(K, expected, rtol=1e-6)
        assert K[0, 1] == pytest.approx(np.exp(-0.5), rel=1e-6)


def test_data_files_that_cannot_be_read_give_clear_errors(tmp_path):
    from favorkern.datasets import load_dataset

    parquet = tmp_path / "table.parquet"
    parquet.write_text("a,y\n1,2\n")  # a CSV under a Parquet name: not read as CSV
    with pytest.raises(ValueError, match="Parquet"):
        load_dataset(str(parquet), target="y")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_dataset(str(empty), target="y")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(ValueError, match="not a readable CSV text file"):
        load_dataset(str(binary), target="y")


def test_regression_arguments_name_what_is_wrong():
    from favorkern.regression import compare_regression, select_gamma_alpha

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(60, 3)), rng.normal(size=60)
    result = compare_regression(X, y, n_components=[8], methods="RBFSampler", cv_samples=40)
    assert set(result["method"]) == {"RBFSampler"}
    with pytest.raises(ValueError, match="gammas must hold at least one value"):
        select_gamma_alpha(X, y, gammas=[])
    with pytest.raises(ValueError, match="alphas must hold at least one value"):
        select_gamma_alpha(X, y, alphas=[])


@pytest.mark.parametrize("value", ["-1", str(2**32), "1.5"])
def test_cli_seed_out_of_range_names_the_option(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", "--seed", value])
    assert exit_info.value.code == 2
    assert "argument --seed" in capsys.readouterr().err


def test_cli_sigma_beyond_the_dtype_is_a_usage_error(capsys):
    """It printed overflow RuntimeWarnings, then 'Q contains NaN or infinity'."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = main(["attention", "--sigma", "1e300", "--lengths", "16"])
    assert status == 2
    assert "--sigma 1e+300 makes inputs beyond the float32 range" in capsys.readouterr().err


def test_python_dash_m_favorkern_runs_the_command_line():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "favorkern", "--version"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.startswith("favorkern")


def test_ridge_targets_beyond_float64_squares_and_failed_first_partial_fit():
    from sklearn.exceptions import NotFittedError

    from favorkern import RandomFeatureRidge, RandomFeatureRidgeClassifier
    from favorkern.diagnostics import empirical_mse

    X = np.random.default_rng(5).normal(size=(50, 3))
    with pytest.raises(ValueError, match="sums of their squares would overflow"):
        RandomFeatureRidge(alphas=[0.1, 1.0, 10.0]).fit(X, X.sum(axis=1) * 1e160)
    model = RandomFeatureRidgeClassifier()
    with pytest.raises(ValueError, match="labels not in classes"):
        model.partial_fit(X[:3], ["a", "b", "c"], classes=[0, 1, 2])
    assert not hasattr(model, "classes_")
    with pytest.raises(NotFittedError):
        model.predict(X)
    with pytest.raises(ValueError, match="n_trials must be"):
        empirical_mse(X[:2], X[2:4], feature_map="positive", n_components=8, n_trials=1)


def test_generator_seeds_are_refused_by_name():
    """numpy's message did not name random_state."""
    from favorkern import FavorAttention

    gen = np.random.default_rng(0)
    Q = np.ones((4, 4))
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy"):
        draw_projection(8, 4, random_state=gen)
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy"):
        favor_attention(Q, Q, Q, random_state=gen)
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy"):
        FavorAttention(random_state=gen).fit(4)


def test_variance_study_leaves_exact_pairs_undefined():
    """A closed-form MSE of exactly 0 gave ratio inf and z ~ 5 from rounding noise."""
    from favorkern.diagnostics import variance_study

    x = np.array([[0.3, 0.1, 0.2], [0.2, -0.1, 0.4]])
    y = np.array([-x[0], x[1] * 0.5])  # the first pair: y = -x, exact for positive features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        study = variance_study(x, y, feature_maps="positive", n_components=[8],
                               projection="gaussian", n_trials=200, random_state=0)  # fmt: skip
    exact = study["theoretical_mse"] == 0
    assert exact.sum() == 1 and study.loc[exact, ["ratio", "z"]].isna().all(axis=None)
    assert np.isfinite(study.loc[~exact, ["ratio", "z"]].to_numpy()).all()


def test_convergence_at_huge_norms_has_no_nan():
    """The exact kernel overflowed float64, so every relative error was inf / inf."""
    from favorkern.diagnostics import convergence

    X = np.random.default_rng(7).normal(size=(5, 3)) * 30.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureUnderflowWarning)
        table = convergence(X, n_components=[16], n_repeats=2, random_state=0)
    columns = ["max_rel_error", "mean_rel_error", "theoretical_rel_rmse"]
    assert not table[columns].isna().any(axis=None)
    assert (table["max_rel_error"] >= 0).all()


def test_bool_feature_columns_read_alike_in_memory_and_streamed(tmp_path):
    from favorkern.datasets import iter_chunks, load_dataset

    path = tmp_path / "bools.csv"
    rows = "\n".join(f"{i % 2 == 0},{i * 0.1},{i * 0.5}" for i in range(30))
    path.write_text("flag,a,y\n" + rows + "\n")
    X, y, _ = load_dataset(str(path), target="y")
    chunks = list(iter_chunks(str(path), target="y", chunksize=7))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)


@pytest.mark.parametrize("gap", [85.0, 90.0])
def test_window_keys_far_below_an_earlier_chunk_keep_their_precision(gap):
    """Keys inside the [0, 16] window after a chunk whose keys set the constant 85-90
    logs higher: their float32 weights were subnormal, so queries attending to them got
    1e-2 errors or zero rows (and the result depended on the keys' order)."""
    from favorkern import _config

    r = 20.0
    W = r * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    n = 64
    a = r - np.sqrt(r * r - 2 * (15.5 + gap))  # r a - a^2 / 2 = 15.5 + gap
    K = np.zeros((2 * n, 2))
    K[:n, 0] = a
    K[n:, 1] = 15.5 / r
    V = np.random.default_rng(0).uniform(0.5, 1.5, size=(2 * n, 3))
    Q = np.array([[0.0, 8.0], [0.0, 7.0]])  # they see the second half only
    expected = favor_attention(Q, K, V, projection_matrix=W, gamma=1.0)
    for keys in (slice(None), slice(None, None, -1)):  # both orders of the keys
        with warnings.catch_warnings(), _config.override(ATTENTION_CHUNK_BYTES=16 * 4 * 4):
            warnings.simplefilter("error", FeatureUnderflowWarning)  # 16-row key chunks above
            got = favor_attention(*(X.astype(np.float32) for X in (Q, K[keys], V[keys])),
                                  projection_matrix=W, gamma=1.0)  # fmt: skip
        np.testing.assert_allclose(got, expected, rtol=2e-5)


def test_fitted_map_constants_follow_their_projection():
    """redraw() and a hand-set projection_ silently kept constants fitted around the old
    projection (the outputs did not change)."""
    from favorkern import FavorAttention

    Q, K = np.random.default_rng(2).normal(size=(2, 30, 4))
    layer = FavorAttention(feature_map="fitted", n_components=8, random_state=3).fit(Q, K)
    with pytest.raises(ValueError, match="fitted around the old projection"):
        layer.redraw()
    layer.projection_ = layer.projection_ * 2.0
    with pytest.raises(ValueError, match="fitted around the old projection"):
        layer(Q, K, K)
    FavorAttention(feature_map="optimal", n_components=8, random_state=3).fit(Q, K).redraw()


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
