"""Fixtures of the hostile tests."""

import pytest


@pytest.fixture
def dask_sync():
    dask = pytest.importorskip("dask")
    with dask.config.set(scheduler="synchronous"):
        yield pytest.importorskip("dask.array")
