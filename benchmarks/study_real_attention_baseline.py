"""FAVOR attention on SmolLM2-135M's real heads: per-layer relative row errors.

Reads a capture written by ``capture_real_attention.py`` (numpy only; the model is
not needed) and compares ``favor_attention`` with exact ``softmax_attention`` on
every captured (text, layer, query head) of one split, key/value heads repeated
for the grouped query heads, at the model's logit scale:

* causal (what the decoder runs): features "positive" and "hyperbolic";
* bidirectional (reference: bidirectional exact attention on the same heads):
  "positive", "optimal" (FAVOR++, A* fitted per head on the call's tokens) and
  "saderf" (both bidirectional only).

Error of a query row ``i``: ``|approx_i - exact_i| / |exact_i|`` (L2 norms over the
value dimension).  Per head: the median over its rows (the causal first row is
exact for every map and is included).  Per layer: the median over its heads and
texts, shown with the range (min-max) over them.  Projections: orthogonal, drawn
from ``--seed``, the same for every head.

Usage (from the repository root)::

    python benchmarks/study_real_attention_baseline.py                     # committed capture
    python benchmarks/study_real_attention_baseline.py --capture /tmp/smollm2_qkv_full.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import real_attention as ra

from favorkern import softmax_attention

DEFAULT_CAPTURE = Path(__file__).resolve().parent / "data" / "smollm2_qkv.npz"
SIZES = (64, 128, 256, 512)
CONFIGS = (
    ("causal", "positive"),
    ("causal", "hyperbolic"),
    ("bidirectional", "positive"),
    ("bidirectional", "optimal"),
    ("bidirectional", "saderf"),
)


def head_errors(q, k, v, scaling, *, causal, m, features, seed):
    """Median relative row error per query head, shape (n_heads,)."""
    exact = softmax_attention(
        q.astype(np.float64),
        k.astype(np.float64),
        v.astype(np.float64),
        causal=causal,
        gamma=scaling,
    )
    approx = ra.favor(
        q, k, v, causal=causal, m=m, features=features, scale=scaling, random_state=seed
    )
    return np.median(ra.relative_row_errors(approx, exact), axis=-1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    parser.add_argument("--split", choices=("evaluation", "calibration"), default="evaluation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.capture.is_file():
        parser.error(f"--capture: no file {args.capture} (write it with capture_real_attention.py)")
    cap = ra.load_capture(args.capture)
    chosen = [i for i, split in enumerate(cap["splits"]) if split == args.split]
    if not chosen:
        parser.error(f"{args.capture} holds no {args.split} text")
    layers = [int(x) for x in cap["layers"]]
    n_heads = cap["q"].shape[2]
    L = cap["q"].shape[3]
    print(
        f"capture {args.capture.name}: {args.split} texts "
        f"{[str(cap['text_names'][i]) for i in chosen]}, L = {L}, {n_heads} query heads, "
        f"{cap['k'].shape[2]} kv heads, scaling {cap['scaling']:.4f}, layers {layers}"
    )

    # errors[config][m]: array (n_layers, n_texts * n_heads)
    errors = {config: {m: [] for m in SIZES} for config in CONFIGS}
    norms = []
    start = time.perf_counter()
    for j, layer in enumerate(layers):
        per = {config: {m: [] for m in SIZES} for config in CONFIGS}
        layer_norms = []
        for t in chosen:
            q = cap["q"][t, j].astype(np.float32)
            k = ra.repeat_kv(cap["k"][t, j].astype(np.float32), n_heads)
            v = ra.repeat_kv(cap["v"][t, j].astype(np.float32), n_heads)
            # |q'| |k'| with q' = scaling^(1/2) q: the logit scale the estimators face.
            layer_norms.append(
                np.median(np.linalg.norm(q, axis=-1))
                * np.median(np.linalg.norm(k, axis=-1))
                * cap["scaling"]
            )
            for mode, features in CONFIGS:
                for m in SIZES:
                    per[(mode, features)][m].append(
                        head_errors(
                            q,
                            k,
                            v,
                            cap["scaling"],
                            causal=mode == "causal",
                            m=m,
                            features=features,
                            seed=args.seed,
                        )
                    )
        norms.append(np.median(layer_norms))
        for config in CONFIGS:
            for m in SIZES:
                errors[config][m].append(np.concatenate(per[config][m]))
        print(f"  layer {layer:2d} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    for config in CONFIGS:
        mode, features = config
        print(
            f"\n{mode} {features}: median relative row error per layer "
            f"(median over heads x texts [min-max])"
        )
        print("| layer | med |q'||k'| | " + " | ".join(f"m = {m}" for m in SIZES) + " |")
        print("|---:|---:|" + "---:|" * len(SIZES))
        for j, layer in enumerate(layers):
            cells = []
            for m in SIZES:
                e = errors[config][m][j]
                cells.append(f"{np.median(e):.3f} [{e.min():.2f}-{e.max():.2f}]")
            print(f"| {layer} | {norms[j]:.1f} | " + " | ".join(cells) + " |")
        overall = [np.median(np.concatenate(errors[config][m])) for m in SIZES]
        print("| all | | " + " | ".join(f"{x:.3f}" for x in overall) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
