"""Data for the regression experiments: built-in data sets and CSV/Parquet files.

* :func:`load_dataset` loads a small data set whole: ``"diabetes"``, ``"friedman1"``
  or a CSV file with a named target column, validated (numeric, no missing values).
* :func:`iter_chunks` streams a data set of any length in row chunks of bounded
  memory: ``"friedman1"`` generated chunk by chunk, or a CSV or Parquet file;
  :func:`n_chunks` says how many chunks it yields when that is known in advance.

pandas (and pyarrow, for Parquet) are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from ._validation import check_int

__all__ = [
    "DATASETS",
    "DEFAULT_CHUNKSIZE",
    "FRIEDMAN1_ROWS",
    "load_dataset",
    "iter_chunks",
    "n_chunks",
]

#: Built-in data sets (no download): name -> one-line description.
DATASETS = {
    "diabetes": "sklearn.datasets.load_diabetes (442 x 10)",
    "friedman1": "sklearn.datasets.make_friedman1 (10 features, noise 1; 100000 rows by default)",
}

#: Rows of ``"friedman1"`` unless ``n_samples`` says otherwise: large enough that
#: random features beat exact kernel ridge regression in time, small enough for seconds.
FRIEDMAN1_ROWS = 100_000
#: Rows per chunk of :func:`iter_chunks`: 100000 x 10 float64 is 8 MB, far below any
#: machine's memory while amortizing the per-chunk cost of pandas.
DEFAULT_CHUNKSIZE = 100_000
# make_friedman1's setting: 5 informative features plus 5 of pure noise, unit noise.
_FRIEDMAN1_DIMS = 10
_FRIEDMAN1_NOISE = 1.0
# Fewest rows of a regression data set: a train/test split and 3-fold CV need a few each.
_MIN_ROWS = 10
_PARQUET_SUFFIXES = (".parquet", ".pq")


# -- small data, loaded whole -------------------------------------------------
def load_dataset(data="diabetes", *, target=None, n_samples=None, random_state=0):
    """Load a regression data set by name, or from a CSV file with a named target.

    Parameters
    ----------
    data : str or path-like, default="diabetes"
        ``"diabetes"`` (:func:`sklearn.datasets.load_diabetes`), ``"friedman1"``
        (:func:`sklearn.datasets.make_friedman1`, 10 features, noise 1.0, 100000
        rows unless ``n_samples`` says otherwise) or the path of a CSV file with a
        header row.
    target : str, default=None
        Name of the target column; required for a CSV file, not allowed otherwise.
        Every other column is a feature and must be numeric.
    n_samples : int, default=None
        For ``"friedman1"`` the number of rows generated; for other data, keep a
        random subset of at most this many rows.  ``None``: all rows.
    random_state : int, RandomState instance or None, default=0
        Seed of ``friedman1`` and of the row subset.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray of shape (n_samples,), float64
    name : str
        A short description for table headers.

    Raises
    ------
    FileNotFoundError
        If ``data`` looks like a path and the file does not exist.
    ValueError
        For an unknown name, a missing or absent target column, non-numeric feature
        columns, missing values, or fewer than 10 rows.

    Examples
    --------
    >>> from favorkern.datasets import load_dataset
    >>> X, y, name = load_dataset("friedman1", n_samples=500)
    >>> X.shape, y.shape, name
    ((500, 10), (500,), 'friedman1 (n=500, d=10)')
    """
    rng = check_random_state(random_state)
    if n_samples is not None:
        n_samples = check_int(n_samples, "n_samples", min_value=_MIN_ROWS)
    key = os.fspath(data)
    if key in DATASETS:
        if target is not None:
            raise ValueError(
                f"--target/target applies to CSV files only; {key!r} has its own target"
            )
        if key == "diabetes":
            from sklearn.datasets import load_diabetes

            X, y = load_diabetes(return_X_y=True)
        else:
            from sklearn.datasets import make_friedman1

            X, y = make_friedman1(
                n_samples=n_samples or FRIEDMAN1_ROWS,
                n_features=_FRIEDMAN1_DIMS,
                noise=_FRIEDMAN1_NOISE,
                random_state=rng,
            )
        label = key
    else:
        X, y = _read_csv(key, target)
        label = os.path.basename(key)
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if n_samples is not None and n_samples < len(y):
        keep = np.sort(rng.choice(len(y), size=n_samples, replace=False))
        X, y = X[keep], y[keep]
    if len(y) < _MIN_ROWS:
        raise ValueError(f"{label} has {len(y)} rows; regression needs at least {_MIN_ROWS}")
    return X, y, f"{label} (n={X.shape[0]}, d={X.shape[1]})"


def check_csv_header(path) -> list:
    """The column names of a CSV file's header row, or a ``ValueError``.

    Read with the :mod:`csv` module before pandas sees the file: pandas renames
    duplicate names one by one (``a``, ``a.1``, ...), which takes minutes for a header
    of 10^5 equal names before any check could run.  Duplicate names are refused:
    they make the target column and the features ambiguous.
    """
    import csv
    from collections import Counter

    try:
        with open(path, encoding="utf-8", newline="") as handle:
            for row in csv.reader(handle):
                if row:  # pandas skips blank lines before the header too
                    break
            else:
                return []
    except (UnicodeDecodeError, csv.Error):
        return []  # pandas reports what it cannot read
    counts = Counter(row)
    repeated = [(name, n) for name, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(f"{name!r} ({n} times)" for name, n in repeated[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise ValueError(f"duplicate column names in the header of {path}: {shown}{more}")
    return row


def _read_frame(path, parquet):
    """The table in ``path`` (Parquet by its suffix, else CSV), or a ``ValueError``."""
    import pandas as pd

    if parquet:
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise ValueError("reading Parquet needs pyarrow; install it or convert to CSV") from exc
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None
    check_csv_header(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty: a CSV file needs a header row and data") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV text file: {exc}") from None


def _read_csv(path, target):
    import pandas as pd

    parquet = path.lower().endswith(_PARQUET_SUFFIXES)
    if not (path.lower().endswith(".csv") or parquet) and not os.path.exists(path):
        raise ValueError(
            f"unknown data set {path!r}: use one of {sorted(DATASETS)} or the path of a .csv "
            "or .parquet file"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    frame = _read_frame(path, parquet)
    columns = ", ".join(repr(str(c)) for c in frame.columns)
    if len(frame) == 0:
        raise ValueError(f"{path} has a header ({columns}) but no data rows")
    if target is None:
        raise ValueError(
            f"a data file needs --target COLUMN (target=...); its columns are {columns}"
        )
    if target not in frame.columns:
        raise ValueError(f"target column {target!r} not found in {path}; its columns are {columns}")
    y = frame.pop(target)
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        raise ValueError(f"target column {target!r} is not numeric (dtype {y.dtype})")
    if frame.shape[1] == 0:
        raise ValueError(f"{path} has no feature columns besides the target {target!r}")
    non_numeric = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise ValueError(
            f"non-numeric feature columns in {path}: {', '.join(map(repr, non_numeric))}; "
            "encode them as numbers or drop them"
        )
    missing = [str(c) for c in frame.columns if frame[c].isna().any()]
    if y.isna().any():
        missing.append(str(target))
    if missing:
        raise ValueError(f"missing values in {path}, columns: {', '.join(map(repr, missing))}")
    if not np.isfinite(frame.to_numpy(dtype=np.float64)).all() or not np.isfinite(y).all():
        raise ValueError(f"{path} contains infinite values")
    return frame.to_numpy(dtype=np.float64), y.to_numpy(dtype=np.float64)


# -- data of any length, in chunks ----------------------------------------------
def iter_chunks(data, *, target=None, n_samples=None, chunksize=DEFAULT_CHUNKSIZE, random_state=0):
    """Row chunks ``(X, y)`` of a data set, never more than ``chunksize`` rows in memory.

    Parameters
    ----------
    data : str or path-like
        ``"friedman1"`` (generated chunk by chunk: 10 features, noise 1.0, each chunk
        seeded from ``random_state`` and its index, so the stream is reproducible
        and can be read twice), or the path of a CSV file with a header row (read
        with ``pandas.read_csv(chunksize=...)``) or of a Parquet file
        (``.parquet``/``.pq``, needs pyarrow).
    target : str, default=None
        Target column; required for a file, not allowed for ``friedman1``.
    n_samples : int, default=None
        ``friedman1``: rows to generate (default 100000); files: stop after this
        many rows.
    chunksize : int, default=100000
        Rows per chunk.
    random_state : int, default=0
        Seed of ``friedman1``.

    Yields
    ------
    X : ndarray of shape (n_rows, n_features), float64
    y : ndarray of shape (n_rows,), float64

    Raises
    ------
    FileNotFoundError
        If the file does not exist (raised before the first chunk).
    ValueError
        For a missing or absent target, non-numeric or missing values (naming the
        column and the chunk's first row), or Parquet without pyarrow.

    Examples
    --------
    >>> from favorkern.datasets import iter_chunks
    >>> [X.shape for X, y in iter_chunks("friedman1", n_samples=250, chunksize=100)]
    [(100, 10), (100, 10), (50, 10)]
    """
    chunksize = check_int(chunksize, "chunksize")
    if n_samples is not None:
        n_samples = check_int(n_samples, "n_samples")
    if not isinstance(random_state, Integral):
        raise TypeError(f"random_state must be an int, got {random_state!r}")
    key = os.fspath(data)
    if key == "friedman1":
        if target is not None:
            raise ValueError("target applies to files only; friedman1 has its own target")
        return _friedman1_chunks(n_samples or FRIEDMAN1_ROWS, chunksize, random_state)
    if key in DATASETS:
        raise ValueError(
            f"{key!r} is small: load it with load_dataset; streams: friedman1 or a file"
        )
    if not key.lower().endswith((".csv", *_PARQUET_SUFFIXES)) and not os.path.exists(key):
        raise ValueError(
            f"unknown data {key!r}: use 'friedman1' or the path of a .csv or .parquet file"
        )
    if not os.path.isfile(key):
        raise FileNotFoundError(f"data file not found: {key}")
    if target is None:
        raise ValueError("a data file needs target=COLUMN (--target)")
    if key.lower().endswith(_PARQUET_SUFFIXES):
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise ValueError("reading Parquet needs pyarrow; install it or convert to CSV") from exc
    return _file_chunks(key, target, n_samples, chunksize)


def _friedman1_chunks(n_samples, chunksize, random_state):
    from sklearn.datasets import make_friedman1

    for index, start in enumerate(range(0, n_samples, chunksize)):
        rows = min(chunksize, n_samples - start)
        seed = np.random.SeedSequence([random_state, index]).generate_state(1)[0]
        X, y = make_friedman1(
            n_samples=rows,
            n_features=_FRIEDMAN1_DIMS,
            noise=_FRIEDMAN1_NOISE,
            random_state=int(seed),
        )
        yield X, y


def _file_chunks(path, target, n_samples, chunksize):
    import pandas as pd

    if path.lower().endswith(_PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        frames = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(chunksize))
    else:
        check_csv_header(path)
        frames = pd.read_csv(path, chunksize=chunksize)
    seen = 0
    for frame in frames:
        if len(frame) == 0:  # a header without rows: its columns have no dtype
            continue
        if target not in frame.columns:
            columns = ", ".join(repr(str(c)) for c in frame.columns)
            raise ValueError(
                f"target column {target!r} not found in {path}; its columns are {columns}"
            )
        if frame.shape[1] < 2:
            raise ValueError(f"{path} has no feature columns besides the target {target!r}")
        # as the in-memory reader: bool features are numbers, a bool target is not
        bad = [
            str(c)
            for c in frame.columns
            if not pd.api.types.is_numeric_dtype(frame[c])
            or (c == target and pd.api.types.is_bool_dtype(frame[c]))
        ]
        missing = [str(c) for c in frame.columns if frame[c].isna().any()]
        if bad or missing:
            which = "non-numeric" if bad else "missing values in"
            raise ValueError(
                f"{which} columns {', '.join(map(repr, bad or missing))} of {path} "
                f"(rows from {seen + 1})"
            )
        if n_samples is not None:
            frame = frame.iloc[: n_samples - seen]
        y = frame.pop(target).to_numpy(dtype=np.float64)
        X = frame.to_numpy(dtype=np.float64)
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError(f"{path} contains infinite values (rows from {seen + 1})")
        seen += len(y)
        yield X, y
        if n_samples is not None and seen >= n_samples:
            return
    if seen == 0:
        raise ValueError(f"{path} has no data rows (a header only, or nothing)")


def n_chunks(data, *, n_samples=None, chunksize=DEFAULT_CHUNKSIZE):
    """How many chunks :func:`iter_chunks` yields, or ``None`` when only reading can tell.

    Parameters
    ----------
    data : str or path-like
        As in :func:`iter_chunks`.
    n_samples : int, default=None
        As in :func:`iter_chunks`.
    chunksize : int, default=100000
        Rows per chunk.

    Returns
    -------
    count : int or None
        The number of chunks of ``"friedman1"``; ``None`` for a file.

    Examples
    --------
    >>> from favorkern.datasets import n_chunks
    >>> n_chunks("friedman1", n_samples=250, chunksize=100), n_chunks("data.csv")
    (3, None)
    """
    chunksize = check_int(chunksize, "chunksize")
    if os.fspath(data) != "friedman1":
        return None
    rows = FRIEDMAN1_ROWS if n_samples is None else check_int(n_samples, "n_samples")
    return -(-rows // chunksize)
