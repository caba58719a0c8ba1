"""Fidelity on real attention: every estimator on SmolLM2-135M's heads, held out from fitting.

Part 1 (numpy only) reads the capture written by ``capture_real_attention.py``
(calibration text and evaluation text, the same layers) and, per layer, query head
and width ``m``, runs causal attention on the evaluation text with every estimator;
data constants are fitted on the *calibration* text of the same (layer, head) and
frozen.  Error of a row: ``|approx_i - exact_i| / |exact_i|``; per head the median
over rows; per layer the median over heads.  Time per call: median over heads of one
causal call (L tokens, one head), constants already fitted.

Part 2 (``--downstream``, needs the model of :mod:`real_attention`) replaces the
attention of all 30 layers by one estimator at ``--downstream-m`` (no fine-tuning)
and compares next-token predictions with the exact model on the evaluation texts:
top-1 agreement and perplexity.  Data constants per (layer, head) are fitted on a
capture of the first calibration text.

Estimators: ``positive`` (FAVOR+), ``optimal`` (FAVOR++), ``saderf``, ``sderf``,
``aderf`` (FAVOR#), ``whitened`` (queries whitened, then GERF), ``fitted``
(distilled linear maps; a fitted kernel, not an unbiased estimator), and
``positive sobol`` / ``positive halton`` (randomized quasi-Monte Carlo
projections), ``hrf`` / ``hrf_gaussian`` (hybrid random features), ``tensorsketch``
(TensorSketch of exp's series to degree 3), ``taylor`` (second-order Taylor, width
2145 at d = 64 whatever m), and
``hybrid w/g [map]``: exact softmax on the last ``w`` keys and the first ``g`` keys,
random features of ``map`` elsewhere; ``top n/c``: also each query's ``n`` keys of
largest logit among ``c`` candidates, the far keys scored by the head's mean query
on the calibration text.  ``--only`` (part 1) and ``--downstream-only`` (part 2)
select rows by label.

Usage (from the repository root)::

    python benchmarks/study_real_attention.py                      # part 1
    python benchmarks/study_real_attention.py --skip-errors --downstream
    python benchmarks/study_real_attention.py --skip-errors --downstream --tokens 2048 \
        --downstream-only "hybrid 64/1" "hybrid 64/1 top 32/256"
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import real_attention as ra

from favorkern import hybrid_attention, softmax_attention
from favorkern.attention.plan import plan_attention, resolve_projection, run_plan
from favorkern.feature_maps import FittedFeatureMap, get_feature_map

DEFAULT_CAPTURE = Path(__file__).resolve().parent / "data" / "smollm2_qkv.npz"
SIZES = (64, 128, 256, 512)
MAPS = ("positive", "optimal", "saderf", "sderf", "aderf", "whitened", "fitted")
# Rows of other projections or maps of their own width: label -> (map, projection).
# "taylor" is deterministic with width 1 + d + d(d+1)/2 (2145 at d = 64) whatever m;
# "hrf" and "tensorsketch" need independent rows (unbiased with "gaussian" only).
VARIANTS = {
    "positive sobol": ("positive", "sobol"),
    "positive halton": ("positive", "halton"),
    "hrf": ("hrf", "gaussian"),
    "hrf_gaussian": ("hrf_gaussian", "gaussian"),
    "tensorsketch": ("tensorsketch", "gaussian"),
    "taylor": ("taylor", "orthogonal"),
}
# (label, window, n_global, map, n_top, n_candidates); n_top > 0: each query also
# takes its n_top keys of largest logit among n_candidates far keys scored by the
# head's mean calibration query.
HYBRIDS = (
    ("hybrid 16/1", 16, 1, "positive", 0, None),
    ("hybrid 32/1", 32, 1, "positive", 0, None),
    ("hybrid 64/1", 64, 1, "positive", 0, None),
    ("hybrid 16/1 aderf", 16, 1, "aderf", 0, None),
    ("hybrid 16/1 top 8/64", 16, 1, "positive", 8, 64),
    ("hybrid 16/1 top 16/128", 16, 1, "positive", 16, 128),
    ("hybrid 32/1 top 16/128", 32, 1, "positive", 16, 128),
    ("hybrid 64/1 top 16/128", 64, 1, "positive", 16, 128),
    ("hybrid 64/1 top 32/256", 64, 1, "positive", 32, 256),
)
# Wider windows, for the downstream measure only.
EXTRA_HYBRIDS = (
    ("hybrid 128/1", 128, 1, "positive", 0, None),
    ("hybrid 64/1 aderf", 64, 1, "aderf", 0, None),
    ("hybrid 128/1 top 32/256", 128, 1, "positive", 32, 256),
    ("hybrid 64/1 top 64/512", 64, 1, "positive", 64, 512),
    ("hybrid 128/1 top 64/512", 128, 1, "positive", 64, 512),
)
DOWNSTREAM = ("positive", "aderf", "fitted") + tuple(h[0] for h in HYBRIDS + EXTRA_HYBRIDS)


class Estimator:
    """One estimator at one width: ``fit(q, k)`` on calibration, ``__call__`` causal."""

    def __init__(self, label, m, gamma, *, seed=0, fitted_iter=50, fitted_rows=128):
        self.label, self.m, self.gamma = label, m, gamma
        self.hybrid = next((h for h in HYBRIDS + EXTRA_HYBRIDS if h[0] == label), None)
        name = self.hybrid[3] if self.hybrid else label
        projection = "orthogonal"
        if label in VARIANTS:
            name, projection = VARIANTS[label]
        if name == "taylor":
            m = max(m, 1 + 64 + 64 * 65 // 2)
        if name == "fitted":
            self.fmap = FittedFeatureMap(m, max_iter=fitted_iter, n_rows=fitted_rows,
                                         random_state=seed)  # fmt: skip
        else:
            self.fmap = get_feature_map(name)
        self.proj = resolve_projection(self.fmap, None, m, 64, projection, seed)
        self.seed = seed

    def fit(self, q, k):
        """Calibration state: the map's constants, and the mean query for top keys."""
        constants = None
        if self.fmap.data_constants:
            constants = self.fmap.fit(q.astype(np.float64), k.astype(np.float64),
                                      input_scale=math.sqrt(self.gamma))  # fmt: skip
        if self.hybrid and self.hybrid[4]:
            return constants, q.astype(np.float64).mean(axis=0)
        return constants, None

    def __call__(self, q, k, v, state):
        constants, direction = state
        if self.hybrid:
            _, window, n_global, _, n_top, n_candidates = self.hybrid
            top = {}
            if n_top:
                top = dict(n_top=n_top, n_candidates=n_candidates, candidate_query=direction)
            return hybrid_attention(
                q,
                k,
                v,
                window=window,
                n_global=n_global,
                causal=True,
                gamma=self.gamma,
                feature_map=self.fmap,
                projection_matrix=self.proj.matrix,
                constants=constants,
                **top,
            )
        plan = plan_attention(self.fmap, q.shape[-1], gamma=self.gamma, causal=True,
                              constants=constants, drawn=self.proj)  # fmt: skip
        return run_plan(plan, q, k, v, None, q.shape[:-2])


def labels(only=None):
    every = list(MAPS) + list(VARIANTS) + [h[0] for h in HYBRIDS]
    return [label for label in every if only is None or label in only]


def part_errors(args):
    cap = ra.load_capture(args.capture)
    splits = list(cap["splits"])
    cal, ev = splits.index("calibration"), splits.index("evaluation")
    gamma = cap["scaling"]
    layers = list(cap["layers"])
    n_heads, n_kv = cap["q"].shape[2], cap["k"].shape[2]
    group = n_heads // n_kv
    L = cap["q"].shape[3]
    errors = {}  # (label, m) -> list per layer of median over heads
    times = {}  # (label, m) -> list of call times
    fit_times = {}
    in_sample = {}  # (label, m, layer index) -> per head, on the calibration text
    start = time.perf_counter()
    for li, layer in enumerate(layers):
        for m in args.sizes:
            for label in labels(args.only):
                est = Estimator(label, m, gamma, seed=args.seed, fitted_iter=args.fitted_iter,
                                fitted_rows=args.fitted_rows)  # fmt: skip
                per_head = []
                for h in range(n_heads):
                    kv = h // group
                    qc, kc = cap["q"][cal, li, h], cap["k"][cal, li, kv]
                    q, k, v = (
                        np.ascontiguousarray(X, dtype=np.float32)
                        for X in (cap["q"][ev, li, h], cap["k"][ev, li, kv], cap["v"][ev, li, kv])
                    )
                    t0 = time.perf_counter()
                    constants = est.fit(qc, kc)
                    fit_times.setdefault((label, m), []).append(time.perf_counter() - t0)
                    exact = softmax_attention(*(X.astype(np.float64) for X in (q, k, v)),
                                              causal=True, gamma=gamma)  # fmt: skip
                    t0 = time.perf_counter()
                    approx = est(q, k, v, constants)
                    times.setdefault((label, m), []).append(time.perf_counter() - t0)
                    per_head.append(np.median(ra.relative_row_errors(approx, exact)))
                    if args.in_sample:
                        # the same constants on the text they were fitted on
                        vc = cap["v"][cal, li, kv]
                        cal_qkv = [np.ascontiguousarray(X, dtype=np.float32) for X in (qc, kc, vc)]
                        exact_cal = softmax_attention(
                            *(X.astype(np.float64) for X in cal_qkv), causal=True, gamma=gamma
                        )
                        approx_cal = est(*cal_qkv, constants)
                        in_sample.setdefault((label, m, li), []).append(
                            np.median(ra.relative_row_errors(approx_cal, exact_cal))
                        )
                errors.setdefault((label, m), []).append(float(np.median(per_head)))
        print(f"  layer {layer} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
              flush=True)  # fmt: skip
    t_exact = []
    for h in range(n_heads):
        q, k, v = (
            np.ascontiguousarray(X, dtype=np.float32)
            for X in (cap["q"][ev, 0, h], cap["k"][ev, 0, h // group], cap["v"][ev, 0, h // group])
        )
        t0 = time.perf_counter()
        softmax_attention(q, k, v, causal=True, gamma=gamma)
        t_exact.append(time.perf_counter() - t0)

    names = list(cap["text_names"])
    print(
        f"SmolLM2-135M-Instruct capture {Path(args.capture).name}: L = {L}, layers {layers}, "
        f"{n_heads} query heads; fitted on {names[cal]!r}, measured on {names[ev]!r}"
    )
    print(
        f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f} "
        f"(2 cores); fitted: max_iter={args.fitted_iter}, n_rows={args.fitted_rows}"
    )
    for m in args.sizes:
        print(f"\nmedian relative row error, causal, m = {m} (per layer: median over heads)")
        print("| estimator | " + " | ".join(f"layer {x}" for x in layers) + " | median |")
        print("|---|" + "---:|" * (len(layers) + 1))
        for label in labels(args.only):
            row = errors[(label, m)]
            print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in row)
                  + f" | **{np.median(row):.3f}** |")  # fmt: skip
    if args.in_sample:
        for m in args.sizes:
            print(
                f"\nin sample against held out, m = {m}: median relative row error on the "
                "calibration text (the constants' own) and on the evaluation text"
            )
            print("| estimator | calibration | evaluation |")
            print("|---|---:|---:|")
            for label in labels(args.only):
                per_layer = [
                    float(np.median(in_sample[(label, m, li)])) for li in range(len(layers))
                ]
                print(
                    f"| {label} | {np.median(per_layer):.3f} | {np.median(errors[(label, m)]):.3f} |"
                )
    print(
        f"\ntime per call (ms, one head, L = {L}, median over heads and layers; exact "
        f"softmax_attention: {1e3 * np.median(t_exact):.2f} ms); fit time in brackets"
    )
    print("| estimator | " + " | ".join(f"m = {m}" for m in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for label in labels(args.only):
        cells = []
        for m in args.sizes:
            cell = f"{1e3 * np.median(times[(label, m)]):.2f}"
            fit = np.median(fit_times[(label, m)])
            if fit > 1e-3:
                cell += f" ({1e3 * fit:.0f})"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def part_downstream(args):
    try:
        model, tokenizer = ra.load_model()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    docs = ra.texts()

    def long_enough(doc):
        return len(tokenizer(doc.text, add_special_tokens=False)["input_ids"]) >= args.tokens

    # The first texts of each split with at least --tokens tokens.
    cal_doc = next((d for d in docs if d.split == "calibration" and long_enough(d)), None)
    eval_docs = [d for d in docs if d.split == "evaluation" and long_enough(d)][: args.texts]
    if cal_doc is None or len(eval_docs) < args.texts:
        print(f"error: --tokens {args.tokens}: too few texts that long", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cal = ra.capture(model, tokenizer, cal_doc.text, args.tokens)
    gamma = cal.scaling
    n_layers, n_heads = cal.q.shape[0], cal.q.shape[1]
    group = n_heads // cal.k.shape[1]
    m = args.downstream_m
    configs = []
    for label in DOWNSTREAM:
        if args.downstream_only and label not in args.downstream_only:
            continue
        est = Estimator(label, m, gamma, seed=args.seed)
        constants = [[est.fit(cal.q[layer, h], cal.k[layer, h // group])
                      for h in range(n_heads)] for layer in range(n_layers)]  # fmt: skip
        configs.append((label, est, constants))
    print(f"  constants fitted ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    def attention_fn(est, constants):
        calls = {"n": 0}

        def fn(q, k, v, scaling, causal):
            layer = calls["n"] % n_layers  # layers run in order, once per forward pass
            calls["n"] += 1
            out = np.empty(q.shape[:-1] + (v.shape[-1],), dtype=np.float32)
            for b in range(q.shape[0]):
                for h in range(q.shape[1]):
                    out[b, h] = est(q[b, h], k[b, h], v[b, h], constants[layer][h])
            return out

        return fn

    results = {label: [] for label, _, _ in configs}
    exact_ppl = []
    for doc in eval_docs:
        ids = ra.tokenize(tokenizer, doc.text, args.tokens)
        inputs = torch.tensor([ids])
        targets = np.asarray(ids[1:])
        with torch.no_grad():
            exact = model(inputs, use_cache=False).logits[0].double().numpy()
        exact_lp = log_softmax(exact)
        exact_top = exact.argmax(axis=-1)
        exact_ppl.append(np.exp(-np.mean(exact_lp[np.arange(len(targets)), targets])))
        for label, est, constants in configs:
            t0 = time.perf_counter()
            with ra.linearize(model, attention_fn(est, constants)):
                with torch.no_grad():
                    logits = model(inputs, use_cache=False).logits[0].double().numpy()
            seconds = time.perf_counter() - t0
            lp = log_softmax(logits)
            results[label].append((
                np.mean(logits.argmax(axis=-1) == exact_top),
                np.exp(-np.mean(lp[np.arange(len(targets)), targets])),
                seconds,
            ))  # fmt: skip
        print(f"  {doc.name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    names = [d.name for d in eval_docs]
    print(
        f"\nevery layer replaced, m = {m}, L = {args.tokens} tokens, evaluation texts "
        f"{names}; constants fitted on {cal_doc.name!r}"
    )
    print(f"exact model perplexity: {' / '.join(f'{p:.2f}' for p in exact_ppl)}")
    print(f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print("| attention | top-1 agreement | perplexity | s per forward pass |")
    print("|---|---|---|---:|")
    for label, _, _ in configs:
        top1, ppl, seconds = np.array(results[label]).T
        print(
            f"| {label} | {np.mean(top1):.3f} ({' / '.join(f'{x:.3f}' for x in top1)}) | "
            f"{np.mean(ppl):.1f} ({' / '.join(f'{x:.1f}' for x in ppl)}) | "
            f"{np.median(seconds):.1f} |"
        )
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", default=str(DEFAULT_CAPTURE))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fitted-iter", type=int, default=50)
    parser.add_argument("--fitted-rows", type=int, default=128)
    parser.add_argument(
        "--only", nargs="*", default=None, help="part 1: only these estimators (labels)"
    )
    parser.add_argument(
        "--in-sample",
        action="store_true",
        help="part 1: also the errors on the calibration text the constants were fitted on",
    )
    parser.add_argument("--skip-errors", action="store_true", help="skip part 1")
    parser.add_argument("--downstream", action="store_true", help="run part 2 (needs the model)")
    parser.add_argument("--downstream-m", type=int, default=256)
    parser.add_argument(
        "--downstream-only",
        nargs="*",
        default=None,
        help="part 2: only these estimators (labels as in the table)",
    )
    parser.add_argument("--tokens", type=int, default=512, help="part 2: tokens per text")
    parser.add_argument("--texts", type=int, default=2, help="part 2: evaluation texts")
    args = parser.parse_args(argv)
    if any(m < 1 for m in args.sizes):
        parser.error(f"--sizes must be positive, got {args.sizes}")
    known = set(labels()) | set(DOWNSTREAM)
    for option in ("only", "downstream_only"):
        unknown = sorted(set(getattr(args, option) or ()) - known)
        if unknown:
            parser.error(f"--{option.replace('_', '-')}: unknown labels {unknown}")
    if not args.skip_errors:
        if not os.path.isfile(args.capture):
            parser.error(f"--capture: no such file {args.capture!r}")
        part_errors(args)
    if args.downstream:
        return part_downstream(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
