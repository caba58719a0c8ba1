"""favorkern.cli under hostile conditions: bad array files and paths, lengths and
shapes that do not fit, outputs that exist or fail half-way, Ctrl-C, messages.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import favorkern
from favorkern.cli import main


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
