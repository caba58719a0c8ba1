"""Doctests of the integrations run only where their optional libraries are installed."""

from importlib.util import find_spec

collect_ignore = []
if find_spec("torch") is None or find_spec("transformers") is None:
    collect_ignore.append("transformers.py")
