"""favorkern.datasets under hostile conditions: files that cannot be read, bool
columns in memory and streamed.
"""

from __future__ import annotations

import numpy as np
import pytest


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


def test_bool_feature_columns_read_alike_in_memory_and_streamed(tmp_path):
    from favorkern.datasets import iter_chunks, load_dataset

    path = tmp_path / "bools.csv"
    rows = "\n".join(f"{i % 2 == 0},{i * 0.1},{i * 0.5}" for i in range(30))
    path.write_text("flag,a,y\n" + rows + "\n")
    X, y, _ = load_dataset(str(path), target="y")
    chunks = list(iter_chunks(str(path), target="y", chunksize=7))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)
