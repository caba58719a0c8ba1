"""Subcommands of the ``favorkern`` console script (see :mod:`favorkern.cli`)."""
