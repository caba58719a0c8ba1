"""favorkern.dask against the in-memory functions, on the sync scheduler and a real cluster."""

import doctest
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import favorkern  # noqa: E402
import favorkern.dask._attention as favorkern_dask  # noqa: E402
from favorkern import (  # noqa: E402
    GeneralizedRandomFeatures,
    HyperbolicRandomFeatures,
    OptimalPositiveRandomFeatures,
    PositiveRandomFeatures,
    TrigonometricRandomFeatures,
    _config,
    draw_projection,
)
from favorkern.dask import (  # noqa: E402
    WORKER_ENV,
    DaskTransformer,
    favor_attention,
    transform,
)

TOL = {np.float64: 1e-6, np.float32: 1e-4}
FEATURES = ("positive", "hyperbolic", "trigonometric", "relu")
TRANSFORMERS = [
    PositiveRandomFeatures(12, random_state=0),
    PositiveRandomFeatures(12, kernel="rbf", gamma=0.5, random_state=0),
    HyperbolicRandomFeatures(13, random_state=0),
    TrigonometricRandomFeatures(13, kernel="rbf", random_state=0),
    TrigonometricRandomFeatures(12, random_state=0),
    GeneralizedRandomFeatures(12, random_state=0),
    OptimalPositiveRandomFeatures(12, random_state=0),
]
# Rows per chunk along the sequence of length 37: one row (37 chunks, two levels of
# the prefix scan), 6 (a last chunk of one row), explicit uneven chunk sizes.
CHUNKINGS = [1, 6, (3, 10, 1, 23)]


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-threaded worker processes, closed after the module.

    Workers import favorkern.dask at start, so that tests time the work, not imports.
    """
    cluster = distributed.LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        env=WORKER_ENV,
        dashboard_address=None,
        memory_limit="2GiB",
    )
    with distributed.Client(cluster) as client:
        client.run(lambda: __import__("favorkern.dask"))
        yield client
    cluster.close()


def _relative_error(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(float(np.abs(ref).max()), 1e-300)
    return float(np.abs(np.asarray(got, dtype=np.float64) - ref).max()) / scale


def _compute_blocks(array, scheduler="sync"):
    """Every block of ``array`` computed, with the declared chunks checked against them."""
    blocks = array.to_delayed()
    computed = dask.compute(*blocks.ravel(), scheduler=scheduler)
    for index, block in zip(np.ndindex(*blocks.shape), computed, strict=True):
        declared = tuple(array.chunks[axis][i] for axis, i in enumerate(index))
        assert block.shape == declared, (index, block.shape, declared)
        assert block.dtype == array.dtype
    return array.compute(scheduler=scheduler)


def _inputs(rng, shape, dtype, d=8, dv=3, sigma=0.6):
    Q = rng.normal(scale=sigma, size=shape + (d,)).astype(dtype)
    K = rng.normal(scale=sigma, size=shape + (d,)).astype(dtype)
    V = rng.normal(size=shape + (dv,)).astype(dtype)
    return Q, K, V


def _chunked(X, rows, lead=None):
    lead = X.shape[:-2] if lead is None else lead
    return da.from_array(X, chunks=lead + (rows, X.shape[-1]))


# -- transform --------------------------------------------------------------------


@pytest.mark.parametrize("estimator", TRANSFORMERS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 7, (2, 9, 1, 11)])
def test_transform_matches_in_memory(estimator, dtype, rows):
    X = np.random.default_rng(1).normal(scale=0.5, size=(23, 5)).astype(dtype)
    fitted = estimator.fit(X)
    out = transform(fitted, da.from_array(X, chunks=(rows, 5)))
    assert out.chunks == (da.from_array(X, chunks=(rows, 5)).chunks[0], (estimator.n_components,))
    assert out.dtype == dtype
    got = _compute_blocks(out)
    ref = fitted.transform(X)
    assert got.dtype == ref.dtype
    assert _relative_error(got, ref) <= TOL[dtype]


def test_transform_converts_integers_and_numpy():
    X = np.arange(24).reshape(8, 3) % 5
    features = PositiveRandomFeatures(4, gamma=0.1, random_state=0).fit(X)
    out = transform(features, da.from_array(X, chunks=(3, 3)))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.compute(scheduler="sync"), features.transform(X), rtol=1e-12)
    out = transform(features, X)  # a NumPy array is wrapped
    np.testing.assert_allclose(out.compute(scheduler="sync"), features.transform(X), rtol=1e-12)


def test_transform_errors():
    X = np.random.default_rng(0).normal(size=(10, 4))
    features = PositiveRandomFeatures(6, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"X must not be chunked along its last axis"):
        transform(features, da.from_array(X, chunks=(5, 2)))
    with pytest.raises(ValueError, match="X has 3 features"):
        transform(features, da.from_array(X[:, :3], chunks=(5, 3)))
    with pytest.raises(ValueError, match="2-D"):
        transform(features, da.ones((2, 3, 4), chunks=(1, 3, 4)))
    with pytest.raises(TypeError, match="favorkern random-feature transformer"):
        transform(object(), da.from_array(X))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        transform(PositiveRandomFeatures(6), da.from_array(X))
    bad = X.copy()
    bad[7, 1] = np.nan
    out = transform(features, da.from_array(bad, chunks=(5, 4)))  # lazy: no error yet
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        out.compute(scheduler="sync")


def test_dask_transformer():
    X = np.random.default_rng(0).normal(scale=0.5, size=(30, 4))
    model = DaskTransformer(HyperbolicRandomFeatures(9, random_state=3)).fit(X[:10])
    assert model.n_features_in_ == 4
    Xd = da.from_array(X, chunks=(11, 4))
    out = model.transform(Xd)
    assert isinstance(out, da.Array) and out.chunks == ((11, 11, 8), (9,))
    np.testing.assert_allclose(out.compute(scheduler="sync"), model.transform(X), rtol=1e-12)
    assert isinstance(model.transform(X), np.ndarray)
    assert list(model.get_feature_names_out())[:2] == [
        "hyperbolicrandomfeatures0",
        "hyperbolicrandomfeatures1",
    ]
    prefit = DaskTransformer(model.estimator_)  # used as it is, without fit
    np.testing.assert_array_equal(
        prefit.transform(Xd).compute(scheduler="sync"), out.compute(scheduler="sync")
    )
    with pytest.raises(TypeError, match="must be in memory"):
        DaskTransformer(PositiveRandomFeatures(4)).fit(Xd)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        DaskTransformer(PositiveRandomFeatures(4)).transform(Xd)


# -- attention --------------------------------------------------------------------


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("rows", CHUNKINGS, ids=str)
def test_attention_matches_in_memory(features, dtype, causal, rows):
    rng = np.random.default_rng(2)
    Q, K, V = _inputs(rng, (2, 37), dtype)
    W = draw_projection(16, 8, random_state=0)
    ref = favorkern.favor_attention(
        Q, K, V, causal=causal, feature_map=features, projection_matrix=W
    )
    out = favor_attention(
        *(_chunked(X, rows) for X in (Q, K, V)),
        causal=causal,
        feature_map=features,
        projection_matrix=W,
    )
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.chunks[-2] == _chunked(Q, rows).chunks[-2]
    got = _compute_blocks(out)
    assert _relative_error(got, ref) <= TOL[dtype]


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_attention_large_norms_and_many_chunks(causal):
    """Chunk key maxima far apart (norms up to ~6): the max-rescaling must be exact."""
    rng = np.random.default_rng(3)
    L, d = 200, 16
    growth = np.linspace(0.2, 2.5, L)[:, np.newaxis]
    Q = rng.normal(size=(L, d)) * growth
    K = rng.normal(size=(L, d)) * growth[::-1] ** 1.5
    V = rng.normal(size=(L, 4))
    W = draw_projection(64, d, random_state=1)
    ref = favorkern.favor_attention(Q, K, V, causal=causal, projection_matrix=W)
    for rows in (1, 7, 64, 200):  # 200: one chunk
        out = favor_attention(
            *(da.from_array(X, chunks=(rows, X.shape[1])) for X in (Q, K, V)),
            causal=causal,
            projection_matrix=W,
        )
        assert _relative_error(out.compute(scheduler="sync"), ref) <= 1e-6


def test_attention_seed_leading_dims_and_broadcast():
    """Chunked batch/head dimensions, broadcast keys, and the seeded projection."""
    rng = np.random.default_rng(4)
    Q = rng.normal(scale=0.5, size=(2, 3, 29, 8))
    K = rng.normal(scale=0.5, size=(1, 3, 29, 8))
    V = rng.normal(size=(29, 5))
    for causal in (False, True):
        ref = favorkern.favor_attention(Q, K, V, causal=causal, n_components=24, random_state=7)
        out = favor_attention(
            da.from_array(Q, chunks=(1, 2, 10, 8)),
            da.from_array(K, chunks=(1, 3, 6, 8)),
            da.from_array(V, chunks=(13, 5)),
            causal=causal,
            n_components=24,
            random_state=7,
        )
        assert out.chunks == ((1, 1), (2, 1), (10, 10, 9), (5,))
        assert _relative_error(_compute_blocks(out), ref) <= 1e-6


def test_bidirectional_different_query_and_key_lengths():
    rng = np.random.default_rng(5)
    Q = rng.normal(scale=0.5, size=(11, 6)).astype(np.float32)
    K = rng.normal(scale=0.5, size=(40, 6)).astype(np.float32)
    V = rng.normal(size=(40, 2)).astype(np.float32)
    ref = favorkern.favor_attention(Q, K, V, n_components=16, random_state=0)
    out = favor_attention(
        da.from_array(Q, chunks=(4, 6)),
        da.from_array(K, chunks=(9, 6)),
        da.from_array(V, chunks=(17, 2)),  # rechunked to K's chunks
        n_components=16,
        random_state=0,
    )
    assert out.chunks == ((4, 4, 3), (2,))
    assert _relative_error(_compute_blocks(out), ref) <= 1e-4


def _assert_no_lookahead(Q, K, V, later, rows):
    """Rows before the chunk holding ``later`` are bit-identical when dominant keys
    and huge values replace the tokens from ``later`` on."""
    W = draw_projection(16, 8, random_state=0)
    K2, V2 = K.copy(), V.copy()
    K2[later:] *= 30.0
    V2[later:] = 1e6
    outs = [
        favor_attention(
            *(da.from_array(X, chunks=(rows, X.shape[1])) for X in (Q, k, v)),
            causal=True,
            projection_matrix=W,
        ).compute(scheduler="sync")
        for k, v in ((K, V), (K2, V2))
    ]
    before = later // rows * rows
    np.testing.assert_array_equal(outs[0][:before], outs[1][:before])


def test_causal_ignores_later_chunks():
    """Outputs of earlier chunks are bit-identical whatever the later keys are."""
    rng = np.random.default_rng(6)
    Q, K, V = _inputs(rng, (40,), np.float64, d=8)
    _assert_no_lookahead(Q, K, V, later=25, rows=8)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    limit=st.integers(1, 64),
    heads=st.integers(1, 3),
    state_bytes=st.integers(0, 5),
)
def test_row_groups_are_consecutive_and_full(rows, limit, heads, state_bytes):
    """Groups cover the chunks in order, hold at most the row limit (times the heads) and
    the state bytes (or one chunk), and each takes as many chunks as fit."""
    with _config.override(DASK_GROUP_ROWS=limit, DASK_GROUP_STATE_BYTES=12):
        groups = favorkern_dask._row_groups(rows, heads, state_bytes)
    max_chunks = 12 // state_bytes if state_bytes else len(rows)
    assert groups[0][0] == 0 and groups[-1][1] == len(rows)
    assert all(a < b for a, b in groups)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(groups[:-1], groups[1:], strict=True))
    for a, b in groups:
        fits = sum(rows[a:b]) * heads <= limit and b - a <= max_chunks
        assert b - a == 1 or fits
        if b < len(rows):  # the next chunk did not fit
            assert sum(rows[a : b + 1]) * heads > limit or b + 1 - a > max_chunks


def _layer_tasks(out):
    """Tasks of the attention layer by kind (key states, merges or scans, outputs)."""
    layer = out.__dask_graph__().layers[out.name]
    kinds = {"key-state": 0, "merge": 0, "attention": 0}
    for key in layer:
        for kind in kinds:
            if key[0].startswith(f"favorkern-{kind}-"):
                kinds[kind] += 1
    return kinds


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize(
    ("shape", "rows", "m", "states", "merges"),
    [
        # one group: no merge (causal: no scan either, the group's prefixes suffice)
        ((1 << 12, 8), 1 << 6, 8, (1, 1), (0, 0)),
        # four groups of 2^14 rows: one merge of four (causal: one scan; the last
        # chunk's own state is never computed, its group task still is)
        ((1 << 16, 8), 1 << 8, 8, (4, 4), (1, 1)),
        # chunks of the group size keep a task each: the in-memory shape of the graph
        ((1 << 16, 8), 1 << 14, 8, (4, 3), (1, 1)),
        # 40 groups: a tree of depth 2 (bidirectional), a two-level scan (causal:
        # 2 group totals, 1 scan of them, 3 scans from their offsets)
        ((40 << 14, 8), 1 << 13, 8, (40, 40), (4, 6)),
        # m = 256, dv = 64: 64 chunk states (8 MiB) per group, not 2^14 rows of them
        ((1 << 15, 64), 1 << 7, 256, (4, 4), (1, 1)),
        # four heads per block: 2^14 rows of heads per group
        ((4, 1 << 14, 8), 1 << 8, 8, (4, 4), (1, 1)),
    ],
)
def test_attention_graph_has_one_task_per_output_chunk(causal, shape, rows, m, states, merges):
    X = da.zeros(shape, chunks=shape[:-2] + (rows, shape[-1]))
    out = favor_attention(X, X, X, causal=causal, n_components=m, random_state=0)
    # the graph as scheduled: tasks no output depends on are culled
    out = dask.optimize(out)[0]
    kinds = _layer_tasks(out)
    assert kinds["attention"] == shape[-2] // rows
    assert kinds["key-state"] == states[causal]
    assert kinds["merge"] == merges[causal]


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("group_rows", "rows"),
    [(1, 1), (2, 1), (5, 3), (12, (3, 10, 1, 23)), (20, 6), (10**6, 4)],
    ids=str,
)
def test_grouped_key_states_match_in_memory(causal, dtype, group_rows, rows):
    """Key states of several chunks per task (also more than 16 groups, uneven chunks,
    a masked batch entry, heads): the in-memory result."""
    rng = np.random.default_rng(9)
    Q, K, V = _inputs(rng, (2, 2, 37), dtype)
    mask = rng.random((2, 1, 37)) < 0.3
    mask[1] = True  # a batch entry whose keys are all ignored
    W = draw_projection(16, 8, random_state=0)
    ref = favorkern.favor_attention(
        Q, K, V, causal=causal, projection_matrix=W, key_padding_mask=mask
    )
    with _config.override(DASK_GROUP_ROWS=group_rows):  # the graph is built here
        out = favor_attention(
            *(_chunked(X, rows, lead=(1, 2)) for X in (Q, K, V)),
            causal=causal,
            projection_matrix=W,
            key_padding_mask=mask,
        )
    got = _compute_blocks(out)
    assert _relative_error(got, ref) <= TOL[dtype]
    assert not got[1].any()


def test_grouped_causal_ignores_later_chunks():
    """Prefixes within a group come from earlier chunks only: bit-identical outputs."""
    rng = np.random.default_rng(6)
    Q, K, V = _inputs(rng, (64,), np.float32, d=8)
    with _config.override(DASK_GROUP_ROWS=24):
        _assert_no_lookahead(Q, K, V, later=41, rows=4)  # inside the second group of chunks


def test_attention_errors():
    Q = da.ones((10, 4), chunks=(5, 4))
    V = da.ones((10, 3), chunks=(5, 3))
    with pytest.raises(ValueError, match=r"K must not be chunked along its last axis"):
        favor_attention(Q, da.ones((10, 4), chunks=(5, 2)), V)
    with pytest.raises(ValueError, match="causal=True needs as many queries as keys"):
        favor_attention(Q[:6], Q, V, causal=True)
    with pytest.raises(ValueError, match="V must have as many rows as K"):
        favor_attention(Q, Q, V[:7])
    with pytest.raises(ValueError, match="K must have the feature dimension"):
        favor_attention(Q, da.ones((10, 5), chunks=(5, 5)), V)
    with pytest.raises(ValueError, match="Q must have at least 2 dimensions"):
        favor_attention(da.ones(4), Q, V)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        favor_attention(Q, Q, V, feature_map="softmax")
    with pytest.raises(ValueError, match="fit .*A.* beforehand"):
        favor_attention(Q, Q, V, feature_map="optimal")  # data-dependent: not chunkwise
    with pytest.raises(ValueError, match="do not broadcast"):
        favor_attention(da.ones((2, 10, 4)), da.ones((3, 10, 4)), V)
    with pytest.raises(TypeError, match="causal must be a bool"):
        favor_attention(Q, Q, V, causal="yes")
    with pytest.raises(ValueError, match="projection_matrix must have shape"):
        favor_attention(Q, Q, V, projection_matrix=np.ones((8, 3)))
    bad = np.ones((10, 3))
    bad[9, 0] = np.inf
    out = favor_attention(Q, Q, da.from_array(bad, chunks=(5, 3)), causal=True)
    with pytest.raises(ValueError, match="V contains NaN or infinity"):
        out.compute(scheduler="sync")


@pytest.mark.parametrize("module", ["_attention", "_cluster", "_ridge", "_transform"])
def test_docstring_examples(module):
    import importlib

    dask_module = importlib.import_module(f"favorkern.dask.{module}")
    with dask.config.set(scheduler="sync"):
        failures, _ = doctest.testmod(dask_module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_import_favorkern_does_not_import_dask():
    code = "import sys, favorkern; favorkern.PositiveRandomFeatures; print('dask' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# -- a real cluster ---------------------------------------------------------------


def test_cluster_workers_single_threaded(client):
    def threads():
        import os

        import numba

        from favorkern._parallel import n_threads

        return (os.environ["NUMBA_NUM_THREADS"], numba.config.NUMBA_NUM_THREADS, n_threads())

    reports = client.run(threads)
    assert len(reports) == 2
    assert all(report == ("1", 1, 1) for report in reports.values())


def _assert_cluster_matches(client, causal, seed, length, chunks):
    """float32 attention on the cluster against the in-memory function."""
    rng = np.random.default_rng(seed)
    Q, K, V = _inputs(rng, (2, length), np.float32, d=16, dv=8)
    ref = favorkern.favor_attention(Q, K, V, causal=causal, n_components=64, random_state=0)
    out = favor_attention(
        *(da.from_array(X, chunks=(1, chunks, X.shape[-1])) for X in (Q, K, V)),
        causal=causal,
        n_components=64,
        random_state=0,
    )
    got = client.compute(out).result()
    assert got.dtype == np.float32
    assert _relative_error(got, ref) <= 1e-4


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_cluster_attention(client, causal):
    _assert_cluster_matches(client, causal, seed=7, length=300, chunks=(40, 100, 1, 59, 100))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_cluster_attention_grouped_chunks(client, causal):
    """Several chunks per key-state task, group results fetched across workers."""
    with _config.override(DASK_GROUP_ROWS=64):  # read where the graph is built
        _assert_cluster_matches(client, causal, seed=10, length=500, chunks=20)


def test_cluster_transform(client):
    X = np.random.default_rng(8).normal(scale=0.4, size=(500, 10))
    model = DaskTransformer(PositiveRandomFeatures(64, random_state=0)).fit(X[:50])
    out = model.transform(da.from_array(X, chunks=(77, 10)))
    assert out.chunks == ((77,) * 6 + (38,), (64,))
    got = client.compute(out).result()
    assert _relative_error(got, model.transform(X)) <= 1e-6


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_attention_with_given_constants(causal):
    """Adaptive maps run chunkwise from given constants: GERF at A = 0 is FAVOR+."""
    rng = np.random.default_rng(7)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 40, 8))
    W = favorkern.draw_projection(16, 8, random_state=0)
    chunked = [da.from_array(X, chunks=(1, 16, 8)) for X in (Q, K, V)]
    got = favor_attention(
        *chunked, causal=causal, feature_map="optimal", constants={"A": 0.0}, projection_matrix=W
    ).compute(scheduler="sync")
    ref = favorkern.favor_attention(Q, K, V, causal=causal, projection_matrix=W)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    psi = np.ones(8)
    got = favor_attention(
        *chunked, causal=causal, feature_map="saderf", constants={"psi": psi, "A": 0.0},
        projection_matrix=W,
    ).compute(scheduler="sync")  # fmt: skip
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
