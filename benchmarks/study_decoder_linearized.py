"""SmolLM2-135M with every layer's attention replaced by causal FAVOR attention.

No fine-tuning: the pretrained model, with the softmax attention of all 30 layers
(9 query heads, key/value heads repeated from 3) computed by ``favor_attention``
through transformers' attention-function registry (``real_attention.linearize``).
On the first ``--tokens`` tokens of each evaluation text (pydoc topics that ship
with Python), against the exact model on the same tokens:

* ``top-1``: fraction of positions whose most likely next token is the exact
  model's (all positions; position 0 attends to itself only, so it always agrees);
* ``ppl``: perplexity of the text's own next tokens (positions 0..L-2), next to the
  exact model's;
* ``KL``: mean KL divergence (nats) from the exact next-token distribution.

A second table replaces one layer at a time (positive features, ``--single-m``,
first text only; the other layers exact) to show where the damage comes from.

Rows "softmax (registry)" run exact ``favorkern.softmax_attention`` through the same
path, a check of the plumbing (it must agree with the exact model).  Projections:
orthogonal, ``random_state=--seed``, the same in every layer and head.

Needs the optional packages of :mod:`real_attention`.  Usage (from the repository root)::

    python benchmarks/study_decoder_linearized.py                 # 512 tokens, 3 texts
    python benchmarks/study_decoder_linearized.py --tokens 256 --texts 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import real_attention as ra

from favorkern import softmax_attention

# (label, features, m); m = None: exact attention.
CONFIGS = (
    ("softmax (registry)", None, None),
    ("positive", "positive", 64),
    ("positive", "positive", 256),
    ("positive", "positive", 512),
    ("hyperbolic", "hyperbolic", 64),
    ("hyperbolic", "hyperbolic", 256),
)


def attention_function(features, m, seed):
    if features is None:
        return lambda q, k, v, scaling, causal: softmax_attention(
            q, k, v, causal=causal, gamma=scaling
        )

    def favor_fn(q, k, v, scaling, causal):
        return ra.favor(
            q, k, v, causal=causal, m=m, features=features, scale=scaling, random_state=seed
        )

    return favor_fn


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="tokens per text (L)")
    parser.add_argument("--texts", type=int, default=3, help="evaluation texts (1-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--single-layers",
        type=int,
        nargs="*",
        default=[0, 6, 12, 18, 24, 29],
        help="layers replaced one at a time in the second table (none: skip it)",
    )
    parser.add_argument("--single-m", type=int, default=256)
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error(f"--tokens must be at least 2, got {args.tokens}")
    docs = [d for d in ra.texts() if d.split == "evaluation"]
    if not 1 <= args.texts <= len(docs):
        parser.error(f"--texts must be between 1 and {len(docs)}, got {args.texts}")
    try:
        model, tokenizer = ra.load_model()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for doc in docs[: args.texts]:
        try:
            ra.tokenize(tokenizer, doc.text, args.tokens)
        except ValueError as exc:
            print(f"error: --tokens: {doc.name!r} {exc}", file=sys.stderr)
            return 2
    import torch

    results = {i: [] for i in range(len(CONFIGS))}
    exact_ppl = []
    start = time.perf_counter()
    for doc in docs[: args.texts]:
        ids = ra.tokenize(tokenizer, doc.text, args.tokens)
        inputs = torch.tensor([ids])
        targets = np.asarray(ids[1:])
        with torch.no_grad():
            exact = model(inputs, use_cache=False).logits[0].double().numpy()
        exact_lp = log_softmax(exact)
        exact_top = exact.argmax(axis=-1)
        exact_ppl.append(np.exp(-np.mean(exact_lp[np.arange(len(targets)), targets])))
        for i, (_, features, m) in enumerate(CONFIGS):
            with ra.linearize(model, attention_function(features, m, args.seed)):
                with torch.no_grad():
                    logits = model(inputs, use_cache=False).logits[0].double().numpy()
            lp = log_softmax(logits)
            results[i].append(
                (
                    np.mean(logits.argmax(axis=-1) == exact_top),
                    np.exp(-np.mean(lp[np.arange(len(targets)), targets])),
                    np.mean(np.sum(np.exp(exact_lp) * (exact_lp - lp), axis=-1)),
                )
            )
        print(f"  {doc.name} done", file=sys.stderr)

    names = [d.name for d in docs[: args.texts]]
    print(f"SmolLM2-135M-Instruct, L = {args.tokens} tokens, evaluation texts {names}")
    print(f"exact model: perplexity {' / '.join(f'{p:.2f}' for p in exact_ppl)} (per text)")
    print(f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print("\n| attention | m | top-1 agreement | perplexity | KL (nats) |")
    print("|---|---:|---|---|---:|")
    for i, (label, _, m) in enumerate(CONFIGS):
        top1, ppl, kl = np.array(results[i]).T
        print(
            f"| {label} | {m or '-'} | {np.mean(top1):.3f} "
            f"({' / '.join(f'{x:.3f}' for x in top1)}) | {np.mean(ppl):.1f} "
            f"({' / '.join(f'{x:.1f}' for x in ppl)}) | {np.mean(kl):.3f} |"
        )
    print(f"\n(exact perplexity, mean over texts: {np.mean(exact_ppl):.2f})")

    if args.single_layers:
        doc = docs[0]
        ids = ra.tokenize(tokenizer, doc.text, args.tokens)
        inputs = torch.tensor([ids])
        targets = np.asarray(ids[1:])
        with torch.no_grad():
            exact = model(inputs, use_cache=False).logits[0].double().numpy()
        exact_lp, exact_top = log_softmax(exact), exact.argmax(axis=-1)
        print(f"\none layer replaced (positive, m = {args.single_m}), text {doc.name!r}")
        print("| layer | top-1 agreement | perplexity | KL (nats) |")
        print("|---:|---:|---:|---:|")
        fn = attention_function("positive", args.single_m, args.seed)
        for layer in args.single_layers:
            with ra.linearize(model, fn, layers={layer}):
                with torch.no_grad():
                    logits = model(inputs, use_cache=False).logits[0].double().numpy()
            lp = log_softmax(logits)
            print(
                f"| {layer} | {np.mean(logits.argmax(axis=-1) == exact_top):.3f} "
                f"| {np.exp(-np.mean(lp[np.arange(len(targets)), targets])):.1f} "
                f"| {np.mean(np.sum(np.exp(exact_lp) * (exact_lp - lp), axis=-1)):.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
