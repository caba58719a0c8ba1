"""favorkern._config: one home for the tuning constants, read at call time, overridable."""

import re
from pathlib import Path

import numpy as np
import pytest

from favorkern import _config, draw_projection, favor_attention
from favorkern.attention.causal import causal_chunk_rows
from favorkern.attention.common import exact_is_faster, feature_chunk_rows

ROOT = Path(__file__).resolve().parents[1]


def test_override_sets_and_restores_even_on_error():
    before = _config.ATTENTION_CHUNK_BYTES, _config.CAUSAL_CHUNK_ROWS
    with pytest.raises(RuntimeError, match="inside"):
        with _config.override(ATTENTION_CHUNK_BYTES=512, CAUSAL_CHUNK_ROWS=4):
            assert (_config.ATTENTION_CHUNK_BYTES, _config.CAUSAL_CHUNK_ROWS) == (512, 4)
            raise RuntimeError("inside")
    assert (_config.ATTENTION_CHUNK_BYTES, _config.CAUSAL_CHUNK_ROWS) == before


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ({"CHUNK_BYTES": 1}, TypeError, "unknown tuning constant 'CHUNK_BYTES'"),
        ({"CAUSAL_CHUNK_ROWS": 2.5}, TypeError, "CAUSAL_CHUNK_ROWS must be int"),
        ({"CAUSAL_CHUNK_ROWS": True}, TypeError, "CAUSAL_CHUNK_ROWS must be int"),
        ({"EXACT_ATTENTION_CROSSOVER": "1"}, TypeError, "must be float"),
        ({"ERROR_KEY_RANGE": -1}, ValueError, "ERROR_KEY_RANGE must be >= 0"),
    ],
)
def test_override_refuses_bad_names_and_values_and_changes_nothing(values, error, match):
    before = {name: getattr(_config, name) for name in _config.TUNING_NAMES}
    with pytest.raises(error, match=match):
        with _config.override(ERROR_BLOCK_SCORES=1, **values):
            pass
    assert {name: getattr(_config, name) for name in _config.TUNING_NAMES} == before


def test_a_float_constant_takes_an_int():
    with _config.override(EXACT_ATTENTION_CROSSOVER=2):
        assert exact_is_faster(1024, 1024, 256)  # 2^20 <= 2 * 256 * 2048
    assert not exact_is_faster(1024, 1024, 256)


def test_readers_see_an_override_at_call_time():
    assert feature_chunk_rows(32, np.float64) == (1 << 21) // (32 * 8)
    assert causal_chunk_rows(256) == 32 and causal_chunk_rows(1024) == 64
    with _config.override(ATTENTION_CHUNK_BYTES=16 * 32 * 8, CAUSAL_CHUNK_ROWS=16):
        assert feature_chunk_rows(32, np.float64) == 16
        assert causal_chunk_rows(256) == 16 and causal_chunk_rows(1024) == 32


@pytest.mark.parametrize("causal", [False, True])
def test_blocking_changes_the_schedule_not_the_estimate(causal):
    rng = np.random.default_rng(0)
    Q, K, V = (rng.normal(scale=0.5, size=(2, 75, 8)) for _ in range(3))
    W = draw_projection(32, 8, random_state=0)
    default = favor_attention(Q, K, V, causal=causal, projection_matrix=W)
    small = dict(
        ATTENTION_CHUNK_BYTES=16 * 32 * 8,
        CAUSAL_CHUNK_ROWS=16,
        CAUSAL_GROUP_ROWS=32,
        CAUSAL_PIPELINED_GROUP_ROWS=32,
        ATTENTION_PARALLEL_MIN_WORK=0,
    )
    with _config.override(**small):
        blocked = favor_attention(Q, K, V, causal=causal, projection_matrix=W)
    np.testing.assert_allclose(blocked, default, rtol=1e-12, atol=1e-12)


def _sources(folder):
    return {path: path.read_text(encoding="utf-8") for path in (ROOT / folder).rglob("*.py")}


def test_every_constant_is_read_at_call_time_somewhere():
    code = "\n".join(
        text for path, text in _sources("favorkern").items() if path.name != "_config.py"
    )
    unread = [name for name in _config.TUNING_NAMES if f"_config.{name}" not in code]
    assert unread == []
    # read inside functions (indented), never copied into a module global at import
    copied = re.findall(r"^\w+ = _config\.\w+", code, re.M)
    assert copied == []


def test_no_test_monkeypatches_a_module_constant():
    patched = [
        f"{path.name}: {match.group(0)}"
        for path, text in _sources("tests").items()
        for match in re.finditer(r"monkeypatch\.setattr\([^)]*\"_?[A-Z][A-Z0-9_]+\"", text)
    ]
    assert patched == []
