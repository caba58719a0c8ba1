"""SmolLM2-135M linearized by ``favorkern.integrations.transformers.linearize``, long contexts.

Every layer's attention (30 layers, 9 query heads over 3 key/value heads) through
favorkern, no fine-tuning, calibrated on ``--calibration-tokens`` tokens of the
calibration topics of :mod:`real_attention`; evaluated on the evaluation topics of
the Python Language Reference (``pydoc_data.topics``, every topic not used for
calibration, concatenated) against the exact model (PyTorch SDPA) on the same tokens:

* ``top-1``: fraction of positions whose most likely next token is the exact model's;
* ``ppl``: perplexity of the text's own next tokens, beside the exact model's;
* ``attn s`` / ``total s``: CPU time in the attention function (favorkern, or SDPA
  for the exact model) and of the whole forward, one thread; ``attn share``: their
  ratio;
* per configuration: each template alone (``favor``: ``FavorAttention``; ``hybrid``:
  window 64 + 1 sink + top 16 of 128; ``w512``: window 512 + 4 sinks;
  ``w512+top32/256``: with top keys), and routed per head at each ``--targets``
  (``routed T``, the first template's features; costed at ``--sequence-length``;
  the heads per setting of the ladder and the estimated cost are listed);
* ``--texts`` windows of each length spread over the evaluation text: top-1 is their
  mean, perplexity their geometric mean, times their sum.

Generation (``--prompts``): greedy decoding of ``--new-tokens`` tokens after a prompt
of each length, the exact model with its dynamic KV cache against the linearized
model with ``handle.cache()`` (favorkern decoding states): prefill time, decoding
tokens per second (CPU time, one thread), the cache's bytes at the end, and how many
generated tokens equal the exact model's before the first difference.

Needs the optional packages of :mod:`real_attention`.  Usage (from the repository root)::

    python benchmarks/study_linearize.py --lengths 2048 4096 --prompts 2048 --new-tokens 32
    python benchmarks/study_linearize.py --lengths 8192 --texts 2 --templates favor w512 \
        --routed-only --targets 0.05 --sequence-length 8192 --calibration-tokens 4096 --prompts
    python benchmarks/study_linearize.py --lengths --templates favor --targets --prompts 8192 \
        --new-tokens 256 --skip-exact-generation --reference exact.json  # one model per process
    python benchmarks/study_linearize.py --lengths 512 --prompts 512 --new-tokens 8  # quick
"""

from __future__ import annotations

import os

for _name in (
    "FAVORKERN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
):  # fmt: skip
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_attention as ra  # noqa: E402


def _evaluation_ids(tokenizer, n_tokens):
    from pydoc_data.topics import topics

    names = sorted(set(topics) - set(ra.CALIBRATION_TOPICS))
    text = "\n\n".join(topics[name] for name in names)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n_tokens:
        raise ValueError(f"the evaluation text has {len(ids)} tokens, fewer than {n_tokens}")
    return ids


def _texts(evaluation, length, n):
    """``n`` windows of ``length`` tokens spread over the evaluation text (different topics)."""
    import torch

    last = len(evaluation) - length
    starts = [0] if n == 1 else [i * last // (n - 1) for i in range(n)]
    return [torch.tensor([evaluation[a : a + length]]) for a in starts]


def _calibration_ids(tokenizer, n_tokens):
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in ra.CALIBRATION_TOPICS)
    return ra.tokenize(tokenizer, text, n_tokens)


class AttentionClock:
    """CPU time spent in the registered attention function of a model (wraps it)."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start

        return timed


def _install_exact_clock(model, clock):
    """Run the model's exact SDPA through a timed registration; returns the restore function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    name = "study_timed_sdpa"
    AttentionInterface.register(name, clock.wrap(sdpa_attention_forward))
    AttentionMaskInterface.register(name, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)

    def restore():
        model.set_attn_implementation(previous)
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)

    return restore


def _install_linear_clock(handle, clock):
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface._global_mapping[handle._name] = clock.wrap(handle._attention)


def _forward(model, ids, chunk=512):
    """Argmax of each position's logits, the text's perplexity, CPU seconds of the forward."""
    import torch

    start = time.process_time()
    with torch.no_grad():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        top, nll = [], []
        targets = ids[0, 1:]
        for a in range(0, hidden.shape[1], chunk):
            logits = model.lm_head(hidden[:, a : a + chunk]).float()[0]
            top.append(logits.argmax(-1))
            logp = torch.log_softmax(logits, -1)
            rows = torch.arange(logits.shape[0])
            valid = a + rows < targets.shape[0]
            nll.append(-logp[rows[valid], targets[a + rows[valid]]])
        seconds = time.process_time() - start
    ppl = float(torch.exp(torch.cat(nll).double().mean()))
    return torch.cat(top).numpy(), ppl, seconds


def _templates(names, m):
    from favorkern import FavorAttention

    out = {}
    for name in names:
        if name == "favor":
            out[name] = FavorAttention(n_components=m, random_state=0)
        elif name == "hybrid":
            try:
                from favorkern import HybridAttention
            except ImportError:
                print("# HybridAttention is not in this favorkern: template 'hybrid' skipped")
                continue
            out[name] = HybridAttention(
                window=64, n_global=1, n_top=16, n_candidates=128, n_components=m, random_state=0
            )
        elif name.startswith("w"):  # "w512": window 512 + 4 sinks; "w512+top32/256"
            from favorkern import HybridAttention

            window, _, top = name[1:].partition("+top")
            n_top, _, n_candidates = top.partition("/")
            out[name] = HybridAttention(
                window=int(window), n_global=4, n_top=int(n_top or 0),
                n_candidates=int(n_candidates) if n_candidates else None, n_components=m,
                random_state=0,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown template {name!r}")
    return out


def _reset_peak_rss():
    """Current resident set size in bytes, after resetting the peak (Linux ``clear_refs``).

    The process's all-time peak is the model's loading (its weights converted from
    GGUF); resetting it measures the peak of what follows.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_bytes("VmRSS")


def _peak_rss():
    """Peak resident set size since the last :func:`_reset_peak_rss`, in bytes."""
    return _status_bytes("VmHWM")


def _status_bytes(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("nan")


def _greedy(model, prompt, n_new, cache):
    """Greedy decoding, one token at a time.

    Returns the prefill's CPU seconds, the CPU seconds of each decoding step after
    the first (which may load compiled kernels), the tokens and the cache.  The
    prefill keeps only the last position's logits (the whole prompt's would take
    ``L x vocabulary`` floats, more than any cache).
    """
    import torch

    cache_kw = {"cache": cache} if cache is not None else {"use_cache": True}
    steps = []
    with torch.no_grad():
        start = time.process_time()
        out = model(input_ids=prompt, logits_to_keep=1, **cache_kw)
        prefill = time.process_time() - start
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(token)]
        for _ in range(n_new - 1):
            start = time.process_time()
            out = model(input_ids=token, cache=cache)
            steps.append(time.process_time() - start)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
    return prefill, steps[1:] or steps, tokens, cache


def _generation_row(prefill, steps, tokens, cache, reference, rss_before):
    same = len(tokens)
    if reference is not None:
        same = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b),
                    min(len(tokens), len(reference)))  # fmt: skip
    return {
        "prefill_s": prefill, "tokens_per_s": 1.0 / float(np.median(steps)),
        "step_s_median": float(np.median(steps)), "step_s_p90": float(np.percentile(steps, 90)),
        "steps": len(steps) + 1, "cache_bytes": _kv_bytes(cache), "same_tokens": same,
        "rss_before": rss_before, "rss_peak": _peak_rss(), "tokens": tokens,
    }  # fmt: skip


def _kv_bytes(cache):
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    total = 0
    for layer in cache.layers:
        if layer.keys is not None:
            total += layer.keys.numel() * layer.keys.element_size() * 2
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--templates", nargs="*", default=["favor", "hybrid"])
    parser.add_argument("--m", type=int, default=256, help="n_components of the template")
    parser.add_argument("--targets", type=float, nargs="*", default=[0.3])
    parser.add_argument("--routed-only", action="store_true",
                        help="leave out each template's unrouted configuration")
    parser.add_argument("--texts", type=int, default=1,
                        help="evaluation windows per length, spread over the text")
    parser.add_argument("--sequence-length", type=int, default=None,
                        help="length routing is costed at (default: the calibration length)")
    parser.add_argument("--calibration-tokens", type=int, default=1024)
    parser.add_argument("--prompts", type=int, nargs="*", default=[2048])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip-exact-generation", action="store_true",
                        help="generate with the linearized model only (peak memory per process)")
    parser.add_argument("--reference", default=None,
                        help="JSON of an earlier run whose exact tokens the generation is compared to")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from favorkern.integrations.transformers import linearize

    torch.set_num_threads(1)
    model, tokenizer = ra.load_model()
    model.set_attn_implementation("sdpa")
    longest = max(args.lengths + args.prompts)
    evaluation = _evaluation_ids(tokenizer, longest)
    calibration = torch.tensor([_calibration_ids(tokenizer, args.calibration_tokens)])
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"load {os.getloadavg()}")  # fmt: skip

    results = {"lengths": {}, "generation": {}, "routing": {}}
    configs = []
    templates = _templates(args.templates, args.m)
    for name, template in templates.items():
        if not args.routed_only:
            configs.append((name, template, None))
    if templates:  # routing takes n_components, the map and the projection of the first
        name, template = next(iter(templates.items()))
        configs += [(f"routed {t:g}", template, t) for t in args.targets]

    exact = {}
    for length in args.lengths:
        texts = _texts(evaluation, length, args.texts)
        clock = AttentionClock()
        restore = _install_exact_clock(model, clock)
        try:
            runs = [_forward(model, ids) for ids in texts]
        finally:
            restore()
        exact[length] = [top for top, _, _ in runs]
        ppl = float(np.exp(np.mean([np.log(p) for _, p, _ in runs])))
        seconds = sum(s for _, _, s in runs)
        results["lengths"][length] = {"exact": {
            "ppl": ppl, "ppl_texts": [p for _, p, _ in runs], "total_s": seconds,
            "attn_s": clock.seconds, "top1": 1.0,
        }}  # fmt: skip
        print(f"L={length} exact ({len(texts)} texts): ppl {ppl:.3f}, attention "
              f"{clock.seconds:.2f} s of {seconds:.2f} s (load {os.getloadavg()[0]:.1f})",
              flush=True)  # fmt: skip

    handles = {}
    for label, template, target in configs:
        start = time.process_time()
        handle = linearize(model, template, calibration=calibration, target_error=target,
                           sequence_length=args.sequence_length)  # fmt: skip
        fit_s = time.process_time() - start
        handle.restore()
        handles[label] = handle
        report = handle.report()
        settings = report.settings()
        results["routing"][label] = {
            "settings": settings, "calibration_s": fit_s, "relative_cost": report.relative_cost(),
        }  # fmt: skip
        print(f"{label}: calibrated in {fit_s:.1f} s; estimated cost {report.relative_cost():.2f} "
              f"of exact; heads per setting {settings}", flush=True)  # fmt: skip
        for length in args.lengths:
            clock = AttentionClock()
            with handle:
                _install_linear_clock(handle, clock)
                runs = [_forward(model, ids) for ids in _texts(evaluation, length, args.texts)]
            agree = [float(np.mean(top == ref)) for (top, _, _), ref in
                     zip(runs, exact[length], strict=True)]  # fmt: skip
            ppl = float(np.exp(np.mean([np.log(p) for _, p, _ in runs])))
            seconds = sum(s for _, _, s in runs)
            results["lengths"][length][label] = {
                "ppl": ppl, "ppl_texts": [p for _, p, _ in runs], "total_s": seconds,
                "attn_s": clock.seconds, "top1": float(np.mean(agree)), "top1_texts": agree,
            }  # fmt: skip
            ex = results["lengths"][length]["exact"]
            print(f"L={length} {label}: top-1 {np.mean(agree):.3f} "
                  f"({' '.join(f'{a:.3f}' for a in agree)}), ppl {ppl:.3f} (exact {ex['ppl']:.3f}), "
                  f"attention {clock.seconds:.2f} s (exact {ex['attn_s']:.2f} s, ratio "
                  f"{clock.seconds / ex['attn_s']:.2f}), total {seconds:.2f} s (exact "
                  f"{ex['total_s']:.2f} s), load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
            if args.out:
                with open(args.out, "w") as fh:
                    json.dump(results, fh, indent=1, default=str)

    reference = {}
    if args.reference:
        with open(args.reference) as fh:
            reference = {int(k): v["exact"]["tokens"]
                         for k, v in json.load(fh)["generation"].items()}  # fmt: skip
    for prompt_length in args.prompts:
        prompt = torch.tensor([evaluation[:prompt_length]])
        rows = {}
        if not args.skip_exact_generation:
            rss = _reset_peak_rss()
            prefill, steps, tokens, cache = _greedy(model, prompt, args.new_tokens, None)
            rows["exact"] = _generation_row(prefill, steps, tokens, cache, None, rss)
            reference[prompt_length] = tokens
            del cache
        for label, handle in handles.items():
            rss = _reset_peak_rss()
            with handle:
                prefill, steps, tokens, cache = _greedy(
                    model, prompt, args.new_tokens, handle.cache()
                )
            rows[label] = _generation_row(
                prefill, steps, tokens, cache, reference.get(prompt_length), rss
            )
            del cache
        results["generation"][prompt_length] = rows
        for label, row in rows.items():
            print(f"prompt {prompt_length} {label}: prefill {row['prefill_s']:.2f} s, "
                  f"{row['tokens_per_s']:.2f} tokens/s (median step {row['step_s_median']:.3f} s, "
                  f"p90 {row['step_s_p90']:.3f} s), cache {row['cache_bytes'] / 2**20:.2f} MiB, "
                  f"peak RSS {row['rss_peak'] / 2**20:.0f} MiB (at the start {row['rss_before'] / 2**20:.0f}), "
                  f"{row['same_tokens']}/{len(row['tokens'])} tokens as exact, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
