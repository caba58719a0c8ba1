"""favorkern._parallel under hostile conditions: process pools after the parent
used its thread pool, fork while a thread holds the BLAS limit, concurrent callers,
the thread-count variable.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from favorkern import (
    PositiveRandomFeatures,
)
from favorkern._elementwise import ENV_EXP, chosen_kernels, reset_choices
from favorkern._parallel import ENV_THREADS, blas_single_thread, executor, n_threads

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


def _parent_payload(transformer, X):
    """What a worker needs to repeat the parent's transform bit for bit: the inputs and
    the exponential the parent's timing chose (a worker that timed the kernels anew
    may choose another, within the kernels' ulp bounds but not bit-identical)."""
    return transformer, X, chosen_kernels()[f"exp {X.dtype.name}"]


# Module level: picklable by reference for spawn, forkserver and loky workers.
def _transform_in_worker(payload):
    transformer, X, exp_name = payload
    if chosen_kernels().get(f"exp {X.dtype.name}") != exp_name:  # a fresh process
        os.environ[ENV_EXP] = exp_name
        reset_choices()
    # The pool of this process, directly (a copied pool without threads would hang).
    assert executor(2).submit(int, "5").result(timeout=TIMEOUT) == 5
    return transformer.transform(X)


def _worker_blas_threads(_):
    return _blas_threads()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_pool_after_parent_used_thread_pool(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method} not available here")
    transformer, X, expected = _use_pool_in_parent()
    context = multiprocessing.get_context(method)
    with context.Pool(2) as pool:
        payload = _parent_payload(transformer, X)
        results = pool.map_async(_transform_in_worker, [payload] * 2).get(timeout=TIMEOUT)
    for result in results:
        np.testing.assert_array_equal(result, expected)  # bit-identical to the parent


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_joblib_backends_after_parent_used_thread_pool(backend):
    joblib = pytest.importorskip("joblib")
    transformer, X, expected = _use_pool_in_parent()
    results = joblib.Parallel(n_jobs=2, backend=backend, timeout=TIMEOUT)(
        joblib.delayed(_transform_in_worker)(_parent_payload(transformer, X)) for _ in range(3)
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
