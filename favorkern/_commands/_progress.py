"""Progress bar for the commands: tqdm when installed, else a quiet iterator."""

from __future__ import annotations

import sys


def progress(iterable, *, total=None, desc=None, disable=False):
    """Wrap ``iterable`` in a progress bar on stderr (tqdm if available)."""
    if disable:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
