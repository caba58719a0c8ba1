"""Bridges from favorkern to other libraries (optional dependencies).

* :mod:`favorkern.integrations.transformers` - run the attention of a pretrained
  Hugging Face ``transformers`` model through favorkern (``pip install
  "favorkern[transformers]"``: torch and transformers).

Importing this package imports nothing optional; each submodule imports its library.
"""
