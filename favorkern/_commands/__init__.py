"""Subcommands of the ``favorkern`` console script (see :mod:`favorkern.cli`)."""

from ._files import UsageError

__all__ = ["UsageError"]
