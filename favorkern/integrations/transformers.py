"""Linearize a pretrained ``transformers`` model: its attention through favorkern.

:func:`linearize` routes the self-attention of every (or the given) layer of a
Hugging Face model through a :class:`~favorkern.FavorAttention` or
:class:`~favorkern.HybridAttention` cloned per layer, by registering an attention
function in ``transformers``' ``AttentionInterface`` and switching the model to it;
the model's own implementation comes back on exit.  Encoders (BERT family,
bidirectional) and decoders (LLaMA family, causal, grouped-query heads) work
through the same path; a padding mask becomes ``key_padding_mask``.

* ``calibration`` runs token ids once through the exact model and fits each layer's
  attention on that layer's queries and keys (frozen constants, candidate
  directions), which also makes adaptive maps usable in causal mode.
* ``target_error`` routes each head to the cheapest setting of :data:`LADDER`
  whose sampled error estimate (:func:`~favorkern.attention.estimate_attention_error`)
  is below the target on the calibration text; :meth:`Linearized.report` tabulates
  the choice.
* :meth:`Linearized.cache` gives ``model.generate`` a cache holding favorkern
  decoding states instead of keys and values: memory per layer independent of the
  prefix (heads routed to exact attention keep their keys and values).

Inference only: the model must be in eval mode, and no gradient flows through the
linearized attention (its inputs are detached and computed in numpy).

This module imports torch and transformers; favorkern's core never does.

References
----------
K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.
"""

from __future__ import annotations

import inspect
import itertools
import numbers
import pickle
from dataclasses import dataclass

import numpy as np

try:
    import torch
    import transformers  # noqa: F401
    from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
    from transformers.masking_utils import (
        AttentionMaskInterface,
        bidirectional_mask_function,
        causal_mask_function,
    )
    from transformers.modeling_utils import AttentionInterface
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "favorkern.integrations.transformers needs torch and transformers: "
        'pip install "favorkern[transformers]" (on CPU-only machines install torch from '
        "the CPU wheel index first)"
    ) from exc

from ..attention.error import estimate_attention_error
from ..attention.layer import FavorAttention

__all__ = ["linearize", "Linearized", "LinearizedCache", "RoutingReport", "LADDER"]

#: The settings a head can be routed to, cheapest first: ``(name, parameters)``.
#: ``"favor"`` is plain random-feature attention; the ``"window ..."`` settings are
#: :class:`~favorkern.HybridAttention` with those parameters (exact keys: the window,
#: the first key as a global "sink", and with ``n_top`` the ``n_top`` keys of
#: largest logit among ``n_candidates`` candidates); ``"exact"`` is softmax attention.
#: Every random-feature setting uses the template's ``n_components``,
#: ``feature_map`` and ``projection``.
LADDER = (
    ("favor", {}),
    ("window 16", {"window": 16, "n_global": 1}),
    ("window 64", {"window": 64, "n_global": 1}),
    ("window 64 + top 16/128", {"window": 64, "n_global": 1, "n_top": 16, "n_candidates": 128}),
    ("window 256 + top 32/256", {"window": 256, "n_global": 1, "n_top": 32, "n_candidates": 256}),
    ("exact", None),
)

# Query rows sampled per head for the error estimates of routing and the report.
_N_ERROR_ROWS = 64
_NAME_COUNTER = itertools.count()


def _hybrid_class():
    """``favorkern.HybridAttention`` where this favorkern has it, else None."""
    try:
        from ..attention import HybridAttention
    except ImportError:
        return None
    return HybridAttention


def _attention_classes():
    hybrid = _hybrid_class()
    return (FavorAttention,) if hybrid is None else (FavorAttention, hybrid)


# --------------------------------------------------------------------------- masks


class _KeyPadding:
    """What the mask function hands the attention function: padded keys and causality.

    ``ignore``: bool tensor (batch, kv_length), True marks a padded key, or None.
    """

    __slots__ = ("ignore", "causal")

    def __init__(self, ignore, causal):
        self.ignore = ignore
        self.causal = causal


def _padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                  mask_function=causal_mask_function, attention_mask=None, **kwargs):  # fmt: skip
    """Mask function registered beside the attention function: keeps only the padding."""
    if mask_function is causal_mask_function:
        causal = True
    elif mask_function is bidirectional_mask_function:
        causal = False
    else:
        raise ValueError(
            "linearize supports full causal or full bidirectional attention masks; this "
            f"model builds another pattern ({getattr(mask_function, '__qualname__', mask_function)}"
            ", e.g. a sliding window, chunks or packed sequences)"
        )
    ignore = None
    if attention_mask is not None:
        keep = attention_mask[:, kv_offset : kv_offset + kv_length].to(torch.bool)
        if keep.shape[-1] != kv_length:
            raise ValueError(
                f"the attention mask covers {attention_mask.shape[-1]} positions, fewer than the "
                f"{kv_length + kv_offset} keys"
            )
        if not bool(keep.all()):
            ignore = ~keep
    return _KeyPadding(ignore, causal)


# ------------------------------------------------------------------------ helpers


def _to_numpy(x):
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.cpu().numpy()


def _repeat_heads(x, n_heads):
    """(..., n_kv, L, d) -> (..., n_heads, L, d): each key/value head for its query group."""
    n_kv = x.shape[-3]
    if n_kv == n_heads:
        return x
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key/value heads")
    return np.repeat(x, n_heads // n_kv, axis=-3)


def _exact_torch(q, k, v, ignore, causal, scaling):
    """Softmax attention in torch: (B, H, Lq, d) x (B, Hkv, Lk, d); causal aligned to the end."""
    n_heads, n_kv = q.shape[1], k.shape[1]
    if n_heads != n_kv:
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
    lq, lk = q.shape[-2], k.shape[-2]
    if ignore is None and (not causal or lq == lk):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal and lq > 1, scale=scaling
        )
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(diagonal=lk - lq)
    allowed = allowed[None, None]
    if ignore is not None:
        allowed = allowed & ~ignore[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, scale=scaling
    )
    # rows that see no key (padding queries) are 0, not NaN
    return torch.nan_to_num(out, nan=0.0)


def _seed(random_state, *path):
    """A reproducible integer seed for one (layer, setting), or None."""
    if random_state is None:
        return None
    return int(np.random.SeedSequence([random_state, *path]).generate_state(1)[0] >> 1)


def _base_seed(random_state):
    if random_state is None or isinstance(random_state, numbers.Integral):
        return None if random_state is None else int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31))
    raise TypeError(
        f"random_state of the template must be None, an int or a RNG, got {random_state!r}"
    )


def _clone(template, **overrides):
    """A new unfitted instance with the template's constructor parameters (keyword-only)."""
    cls = type(template)
    params = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[name] = getattr(template, name)
    params.update(overrides)
    return cls(**params)


def _rung_attention(template, params, causal, seed):
    """The attention object of one ladder setting (``params`` from :data:`LADDER`)."""
    base = {
        "n_components": template.n_components,
        "feature_map": template.feature_map,
        "projection": template.projection,
        "causal": causal,
        "random_state": seed,
    }
    if not params:
        return FavorAttention(**base)
    hybrid = _hybrid_class()
    if hybrid is None:  # pragma: no cover - only before HybridAttention exists
        raise RuntimeError("routing over windows needs favorkern.HybridAttention")
    return hybrid(**params, **base)


def _exact_keys(params, length, causal):
    """Share of the visible keys that a setting computes exactly, over ``length`` queries."""
    if params is None:
        return 1.0
    if not params:
        return 0.0
    i = np.arange(length)
    visible = i + 1 if causal else np.full(length, length)
    w = params.get("window", 0)
    if causal:
        near = np.minimum(i + 1, w)
    else:
        near = np.minimum(i, w - 1) + np.minimum(length - 1 - i, w - 1) + (w > 0)
    far = visible - near
    extra = np.minimum(far, params.get("n_global", 0) + params.get("n_top", 0))
    return float((near + extra).sum() / visible.sum())


def _calibration_inputs(calibration):
    """``(input_ids, attention_mask or None)`` from token ids or a tokenizer's dict."""
    mask = None
    if isinstance(calibration, dict) or hasattr(calibration, "keys"):
        if "input_ids" not in calibration:
            raise ValueError(
                "calibration as a dict needs 'input_ids' (and may give 'attention_mask')"
            )
        ids, mask = calibration["input_ids"], calibration.get("attention_mask")
    else:
        ids = calibration
    ids = torch.as_tensor(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise ValueError(
            f"calibration token ids must be integers of shape (batch, L), got {tuple(ids.shape)} "
            f"{ids.dtype}"
        )
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.ndim == 1:
            mask = mask[None]
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(
                f"calibration attention_mask must have the shape {tuple(ids.shape)} of input_ids, "
                f"got {tuple(mask.shape)}"
            )
    return ids, mask


def _real_tokens(x, ignore):
    """(B, H, L, d) -> (H, N, d): the tokens of every sequence that are not padding."""
    if ignore is None:
        return np.concatenate(list(x), axis=-2) if x.shape[0] > 1 else x[0]
    parts = [x[b][:, ~ignore[b]] for b in range(x.shape[0])]
    return np.concatenate(parts, axis=-2)


# ------------------------------------------------------------------------ engine


@dataclass
class _Part:
    """Some query heads of one layer and the attention computing them.

    ``heads`` None: all heads, keys and values in their grouped form.  ``attention``
    None: exact softmax attention.
    """

    setting: str
    heads: np.ndarray | None
    attention: object | None


@dataclass
class _HeadRecord:
    layer: int
    head: int
    setting: str
    error: float
    low: float
    high: float
    exact_share: float


class _Layer:
    """One linearized attention module: its parts, in the order of their heads."""

    def __init__(self, index, module, causal, parts):
        self.index = index
        self.module = module
        self.causal = causal
        self.parts = parts

    # whole sequence (no decoding state) -------------------------------------------
    def forward(self, q, k, v, ignore, scaling, out_dtype):
        """q (B, H, Lq, d), k, v (B, Hkv, Lk, .) torch -> (B, H, Lq, dv) torch."""
        n_heads, lq, lk = q.shape[1], q.shape[-2], k.shape[-2]
        qn, kn, vn = _to_numpy(q), _to_numpy(k), _to_numpy(v)
        if self.causal and lq < lk:  # continuing a plain KV cache: earlier queries are 0
            pad = np.zeros(qn.shape[:2] + (lk - lq, qn.shape[-1]), dtype=qn.dtype)
            qn = np.concatenate([pad, qn], axis=-2)
        elif self.causal and lq > lk:
            raise ValueError(f"causal attention with more queries ({lq}) than keys ({lk})")
        mask = None if ignore is None else ignore.cpu().numpy()[:, None, :]
        out = np.zeros(qn.shape[:-1] + (vn.shape[-1],), dtype=qn.dtype)
        kr, vr = _repeat_heads(kn, n_heads), _repeat_heads(vn, n_heads)
        for part in self.parts:
            sel = slice(None) if part.heads is None else part.heads
            if part.attention is None:
                exact = _exact_torch(
                    q[:, sel], torch.from_numpy(kr[:, sel]).to(q.dtype),
                    torch.from_numpy(vr[:, sel]).to(q.dtype), ignore, self.causal, scaling,
                )  # fmt: skip
                out[:, sel, -lq:] = _to_numpy(exact)
            else:
                out[:, sel] = part.attention(
                    qn[:, sel], kr[:, sel], vr[:, sel], gamma=scaling, key_padding_mask=mask
                )
        out = out[..., -lq:, :]
        return torch.from_numpy(np.ascontiguousarray(out)).to(out_dtype)

    # decoding ------------------------------------------------------------------------
    def step(self, q, k, v, ignore, scaling, out_dtype, slot):
        """Continue from the states in ``slot`` (a :class:`_StateLayer`) by ``T`` tokens."""
        n_heads, n_kv, t = q.shape[1], k.shape[1], q.shape[-2]
        qn, kn, vn = _to_numpy(q), _to_numpy(k), _to_numpy(v)
        new_ignore = None if ignore is None else ignore[:, -t:]
        mask = None if new_ignore is None else new_ignore.cpu().numpy()[:, None, :]
        out = np.zeros(qn.shape[:-1] + (vn.shape[-1],), dtype=qn.dtype)
        for i, part in enumerate(self.parts):
            if part.heads is None:
                sel, kp, vp = slice(None), kn, vn
            else:
                sel = part.heads
                kp, vp = _repeat_heads(kn, n_heads)[:, sel], _repeat_heads(vn, n_heads)[:, sel]
            if part.attention is None:
                kt, vt = torch.from_numpy(kp).to(q.dtype), torch.from_numpy(vp).to(q.dtype)
                if i in slot.kv:
                    kt = torch.cat([slot.kv[i][0], kt], dim=-2)
                    vt = torch.cat([slot.kv[i][1], vt], dim=-2)
                slot.kv[i] = (kt, vt)
                exact = _exact_torch(q[:, sel], kt, vt, ignore, True, scaling)
                out[:, sel] = _to_numpy(exact)
                continue
            # None starts a sequence (a state for this gamma, the inputs' shape and dtype)
            state = slot.states.get(i)
            out[:, sel], state = part.attention.step(
                qn[:, sel], kp, vp, state, gamma=scaling, key_padding_mask=mask
            )
            slot.states[i] = state
        del n_kv
        return torch.from_numpy(out).to(out_dtype)


# ------------------------------------------------------------------------- cache


class _StateLayer(CacheLayerMixin):
    """A cache layer holding favorkern decoding states instead of keys and values."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, handle, index):
        super().__init__()
        self._handle = handle
        self._index = index
        self.states = {}
        self.kv = {}
        self.seen = 0

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        self._handle._pending[self._index] = self
        return key_states, value_states

    def get_mask_sizes(self, query_length):
        return self.seen + query_length, 0

    def get_seq_length(self):
        return self.seen

    def get_max_length(self):
        return -1

    def reset(self):
        self.states, self.kv, self.seen = {}, {}, 0

    def offload(self):
        raise NotImplementedError("a favorkern cache holds numpy states: no offloading")

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("a favorkern cache does not support beam search")

    def batch_repeat_interleave(self, repeats):
        raise NotImplementedError("a favorkern cache does not support expanding the batch")

    def batch_select_indices(self, indices):
        raise NotImplementedError("a favorkern cache does not support selecting batch rows")

    def crop(self, tokens_to_remove):
        raise NotImplementedError("a favorkern cache cannot forget tokens (no assisted decoding)")

    def nbytes(self):
        """Bytes held: the decoding states, and the keys and values of exact heads."""
        # the states pickle (the layer classes' contract): their size counts every array
        total = sum(len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
                    for state in self.states.values())  # fmt: skip
        for k, v in self.kv.values():
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
        return total


class LinearizedCache(Cache):
    """A ``transformers`` cache of favorkern decoding states, from :meth:`Linearized.cache`.

    Linearized layers hold one decoding state per part (``O(m dv)`` per head for
    random features; the hybrid's window, global keys and candidate pool besides),
    independent of the prefix length; heads routed to exact attention and layers
    left exact hold their keys and values as a dynamic cache does.  One sequence
    per batch row, greedy or sampled decoding; no beam search, no cropping.
    """

    def __init__(self, handle, n_layers):
        layers = [
            _StateLayer(handle, i) if i in handle._by_index else DynamicLayer()
            for i in range(n_layers)
        ]
        super().__init__(layers=layers)

    def nbytes(self):
        """Bytes held by all layers (states, and keys and values where exact)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, _StateLayer):
                total += layer.nbytes()
            elif layer.is_initialized and layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total


# ------------------------------------------------------------------------ report


class RoutingReport:
    """Per (layer, head): the setting, its estimated error and the share of exact keys.

    Attributes
    ----------
    rows : list of dict
        One per head: ``layer``, ``head``, ``setting``, ``error`` (estimated mean
        relative row error on the calibration text, NaN without calibration),
        ``error_low``, ``error_high`` (its 95% interval) and ``exact_share`` (the
        share of each query's visible keys computed exactly, at the calibration
        length).
    target_error : float or None
    """

    columns = ("layer", "head", "setting", "error", "error_low", "error_high", "exact_share")

    def __init__(self, records, target_error):
        self.rows = [
            {
                "layer": r.layer,
                "head": r.head,
                "setting": r.setting,
                "error": r.error,
                "error_low": r.low,
                "error_high": r.high,
                "exact_share": r.exact_share,
            }  # fmt: skip
            for r in records
        ]
        self.target_error = target_error

    def __len__(self):
        return len(self.rows)

    def to_frame(self):
        """The rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.columns))

    def settings(self):
        """Number of heads per setting, in ladder order."""
        counts = {}
        for row in self.rows:
            counts[row["setting"]] = counts.get(row["setting"], 0) + 1
        order = {name: i for i, (name, _) in enumerate(LADDER)}
        return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], -1)))

    def __str__(self):
        lines = [
            f"{'layer':>5} {'head':>4}  {'setting':<24} {'error':>7}  {'95% interval':<15} "
            f"{'exact keys':>10}"
        ]
        for r in self.rows:
            interval = f"{r['error_low']:.3f}-{r['error_high']:.3f}"
            lines.append(
                f"{r['layer']:>5} {r['head']:>4}  {r['setting']:<24} {r['error']:>7.3f}  "
                f"{interval:<15} {r['exact_share']:>10.1%}"
            )
        return "\n".join(lines)

    def plot(self, ax=None):
        """Heads (columns) by layers (rows), coloured by estimated error, labelled by setting.

        Returns
        -------
        ax : matplotlib Axes
        """
        import matplotlib.pyplot as plt

        layers = sorted({r["layer"] for r in self.rows})
        n_heads = max(r["head"] for r in self.rows) + 1
        grid = np.full((len(layers), n_heads), np.nan)
        names = [name for name, _ in LADDER]
        labels = {}
        for r in self.rows:
            row = layers.index(r["layer"])
            grid[row, r["head"]] = r["error"]
            labels[row, r["head"]] = names.index(r["setting"]) if r["setting"] in names else -1
        if ax is None:
            _, ax = plt.subplots(figsize=(1 + 0.45 * n_heads, 1 + 0.3 * len(layers)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        for (row, head), rung in labels.items():
            ax.text(head, row, str(rung), ha="center", va="center", color="w", fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
        legend = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        ax.set_title(f"estimated error per head; setting {legend}", fontsize=7, wrap=True)
        ax.figure.colorbar(image, ax=ax, label="mean relative row error")
        return ax


# ------------------------------------------------------------------------ handle


class Linearized:
    """A model whose attention runs through favorkern; see :func:`linearize`.

    Active from creation until :meth:`restore` (or the end of a ``with`` block);
    :meth:`apply` activates it again.

    Attributes
    ----------
    model : transformers.PreTrainedModel
    layers : list of int
        The linearized layer indices.
    attentions : dict
        Layer index -> list of ``(setting, heads, attention)``: the fitted favorkern
        attention objects (None for exact heads; ``heads`` None for all heads).
    """

    def __init__(self, model, template, layers, calibration, target_error):
        if not isinstance(template, _attention_classes()):
            names = " or ".join(c.__name__ for c in _attention_classes())
            raise TypeError(
                f"attention must be a {names} (a template), got {type(template).__name__}"
            )
        if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
            raise TypeError(
                f"model must be a transformers PreTrainedModel, got {type(model).__name__}"
            )
        if model.training:
            raise ValueError(
                "linearize runs models in eval mode only (dropout would be ignored): call "
                "model.eval() first"
            )
        if target_error is not None:
            if isinstance(target_error, bool) or not isinstance(target_error, numbers.Real):
                raise TypeError(f"target_error must be a number or None, got {target_error!r}")
            if not 0 < target_error < np.inf:
                raise ValueError(f"target_error must be > 0, got {target_error}")
            if calibration is None:
                raise ValueError("target_error routes heads on calibration text: pass calibration")
        modules = self._attention_modules(model)
        if layers is None:
            chosen = sorted(modules)
        else:
            try:
                chosen = sorted({int(i) for i in layers})
            except TypeError:
                raise TypeError(
                    f"layers must be a collection of ints or None, got {layers!r}"
                ) from None
            bad = [i for i in chosen if i not in modules]
            if bad:
                raise ValueError(
                    f"layers {bad} are not attention layers of the model (0..{len(modules) - 1})"
                )
        self.model = model
        self.template = template
        self.target_error = None if target_error is None else float(target_error)
        self.layers = chosen
        self._seed = _base_seed(getattr(template, "random_state", None))
        self._n_layers = len(modules)
        self._by_index = {}
        self._by_module = {}
        for i in chosen:
            module = modules[i]
            causal = bool(getattr(module, "is_causal", False))
            attention = _clone(template, causal=causal, random_state=_seed(self._seed, i))
            layer = _Layer(i, module, causal, [_Part("template", None, attention)])
            self._by_index[i] = layer
            self._by_module[id(module)] = layer
        self._records = None
        self._pending = {}
        self._recording = None
        self._previous = model.config._attn_implementation
        self._name = f"favorkern_{next(_NAME_COUNTER)}"
        self._active = False
        self.apply()
        if calibration is not None:
            try:
                self._calibrate(calibration)
            except BaseException:
                self.restore()
                raise

    @staticmethod
    def _attention_modules(model):
        """Self-attention modules by layer index (cross-attention stays exact)."""
        found = {}
        for module in model.modules():
            idx = getattr(module, "layer_idx", None)
            if idx is None or not hasattr(module, "is_causal") or "Cross" in type(module).__name__:
                continue
            if getattr(module, "is_cross_attention", False):
                continue
            found.setdefault(int(idx), module)
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no attention module with a layer_idx that goes "
                "through transformers' AttentionInterface"
            )
        return found

    # activation ------------------------------------------------------------------------
    def apply(self):
        """Route the model's attention through favorkern (done at creation); returns self."""
        if self._active:
            return self
        AttentionInterface.register(self._name, self._attention)
        AttentionMaskInterface.register(self._name, _padding_mask)
        self.model.set_attn_implementation(self._name)
        if self.model.config._attn_implementation != self._name:
            self._unregister()
            raise ValueError(
                f"{type(self.model).__name__} does not dispatch attention through "
                "transformers' AttentionInterface"
            )
        self._active = True
        return self

    def restore(self):
        """Give the model its own attention implementation back (idempotent)."""
        if self._active:
            self.model.set_attn_implementation(self._previous)
            self._unregister()
            self._active = False
        self._pending.clear()

    def _unregister(self):
        AttentionInterface._global_mapping.pop(self._name, None)
        AttentionMaskInterface._global_mapping.pop(self._name, None)

    def __enter__(self):
        return self.apply()

    def __exit__(self, *exc):
        self.restore()
        return False

    @property
    def attentions(self):
        return {
            i: [(p.setting, p.heads, p.attention) for p in layer.parts]
            for i, layer in self._by_index.items()
        }

    # the attention function ----------------------------------------------------------
    def _attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   **kwargs):  # fmt: skip
        if module.training or dropout:
            raise RuntimeError(
                "a linearized model runs in eval mode only (dropout > 0): call model.eval()"
            )
        if attention_mask is None:
            padding = _KeyPadding(None, bool(getattr(module, "is_causal", False)))
        elif isinstance(attention_mask, _KeyPadding):
            padding = attention_mask
        else:
            raise ValueError(
                "a linearized model takes 2-D attention masks (batch, length) of 1 for tokens "
                f"and 0 for padding; got a {type(attention_mask).__name__} of shape "
                f"{tuple(getattr(attention_mask, 'shape', ()))}"
            )
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        scaling = float(scaling)
        layer = self._by_module.get(id(module))
        slot = self._pending.pop(getattr(module, "layer_idx", None), None) if layer else None
        if self._recording is not None and layer is not None:
            self._recording[layer.index] = (query, key, value, padding.ignore, scaling)
        if layer is None or self._recording is not None:
            out = _exact_torch(query, key, value, padding.ignore, padding.causal, scaling)
        else:
            if padding.causal != layer.causal:
                kinds = {True: "causal", False: "bidirectional"}
                raise ValueError(
                    f"layer {layer.index} was linearized as {kinds[layer.causal]} but receives "
                    f"a {kinds[padding.causal]} mask"
                )
            if slot is not None:
                out = layer.step(query, key, value, padding.ignore, scaling, query.dtype, slot)
            else:
                out = layer.forward(query, key, value, padding.ignore, scaling, query.dtype)
        return out.transpose(1, 2).contiguous(), None

    # calibration -----------------------------------------------------------------------
    def _calibrate(self, calibration):
        ids, mask = _calibration_inputs(calibration)
        self._recording = {}
        records = []
        try:
            with torch.no_grad():
                kwargs = {"attention_mask": mask} if mask is not None else {}
                self.model(input_ids=ids, use_cache=False, **kwargs)
            captured = self._recording
        finally:
            self._recording = None
        missing = [i for i in self.layers if i not in captured]
        if missing:
            raise RuntimeError(f"the calibration run did not reach layers {missing}")
        for i in self.layers:
            records += self._calibrate_layer(self._by_index[i], *captured.pop(i))
        self._records = records

    def _calibrate_layer(self, layer, query, key, value, ignore, scaling):
        q, k, v = _to_numpy(query), _to_numpy(key), _to_numpy(value)
        n_heads, length = q.shape[1], q.shape[-2]
        ign = None if ignore is None else ignore.cpu().numpy()
        mask = None if ign is None else ign[:, None, :]
        q_fit, k_fit = _real_tokens(q, ign), _real_tokens(k, ign)
        kr, vr = _repeat_heads(k, n_heads), _repeat_heads(v, n_heads)
        kr_fit = _repeat_heads(k_fit, n_heads)
        causal = layer.causal

        def estimate(out, heads, seed):
            result = []
            for j, h in enumerate(heads):
                e = estimate_attention_error(
                    q[:, h : h + 1], kr[:, h : h + 1], vr[:, h : h + 1], out[:, j : j + 1],
                    causal=causal, gamma=scaling, key_padding_mask=mask, n_rows=_N_ERROR_ROWS,
                    warn_error=None, random_state=_seed(seed, h),
                )  # fmt: skip
                result.append((e.mean, *e.mean_interval))
            return result

        err_seed = _seed(self._seed, layer.index, 10**6)
        if self.target_error is None:
            part = layer.parts[0]
            part.attention.fit(q_fit, k_fit, gamma=scaling)
            out = part.attention(q, kr, vr, gamma=scaling, key_padding_mask=mask)
            errors = estimate(out, range(n_heads), err_seed)
            share = _exact_keys(_template_params(part.attention), length, causal)
            return [
                _HeadRecord(layer.index, h, "template", *errors[h], share) for h in range(n_heads)
            ]

        remaining = list(range(n_heads))
        parts, records = [], {}
        ladder = [(r, name, params) for r, (name, params) in enumerate(LADDER)]
        if _hybrid_class() is None:  # pragma: no cover - only before HybridAttention exists
            ladder = [rung for rung in ladder if not rung[2]]
        for rung, name, params in ladder:
            if not remaining:
                break
            share = _exact_keys(params, length, causal)
            if params is None:
                heads = np.array(remaining)
                parts.append(_Part(name, heads, None))
                for h in remaining:
                    records[h] = _HeadRecord(layer.index, h, name, 0.0, 0.0, 0.0, share)
                remaining = []
                break
            seed = _seed(self._seed, layer.index, rung)
            heads = np.array(remaining)
            attention = _rung_attention(self.template, params, causal, seed)
            attention.fit(q_fit[heads], kr_fit[heads], gamma=scaling)
            out = attention(q[:, heads], kr[:, heads], vr[:, heads], gamma=scaling,
                            key_padding_mask=mask)  # fmt: skip
            errors = estimate(out, heads, err_seed)
            accepted = [h for h, e in zip(heads, errors, strict=True) if e[2] <= self.target_error]
            for h, e in zip(heads, errors, strict=True):
                if h in accepted:
                    records[h] = _HeadRecord(layer.index, int(h), name, *e, share)
            if accepted:
                chosen = np.array(accepted)
                if len(accepted) < len(heads):  # the same seed: the same projection, refit
                    attention = _rung_attention(self.template, params, causal, seed)
                    attention.fit(q_fit[chosen], kr_fit[chosen], gamma=scaling)
                parts.append(_Part(name, chosen, attention))
                remaining = [h for h in remaining if h not in accepted]
        layer.parts = parts
        return [records[h] for h in range(n_heads)]

    # outputs ---------------------------------------------------------------------------
    def report(self):
        """The per-head table: setting, estimated error (95% interval), share of exact keys.

        Errors are NaN without calibration.

        Returns
        -------
        RoutingReport
        """
        if self._records is not None:
            return RoutingReport(self._records, self.target_error)
        records = []
        for i, layer in self._by_index.items():
            n_heads = getattr(layer.module, "config", None)
            n_heads = getattr(n_heads, "num_attention_heads", None)
            for h in range(n_heads or 0):
                nan = float("nan")
                records.append(_HeadRecord(i, h, "template", nan, nan, nan, nan))
        return RoutingReport(records, self.target_error)

    def plot(self, ax=None):
        """Plot :meth:`report` (see :meth:`RoutingReport.plot`); returns the Axes."""
        return self.report().plot(ax=ax)

    def cache(self):
        """A fresh :class:`LinearizedCache` for ``model.generate(..., past_key_values=...)``.

        It holds favorkern decoding states for the linearized layers (memory
        independent of the prefix) and keys and values for exact ones.
        """
        causal = [layer.causal for layer in self._by_index.values()]
        if not all(causal):
            raise ValueError(
                "cache() is for causal (decoder) models; this model's attention is bidirectional"
            )
        return LinearizedCache(self, self._n_layers)

    def __repr__(self):
        state = "active" if self._active else "restored"
        return (
            f"<Linearized {type(self.model).__name__}: {len(self.layers)} of {self._n_layers} "
            f"layers through {type(self.template).__name__}, {state}>"
        )


def _template_params(attention):
    """Ladder-style parameters of an attention object (for the share of exact keys)."""
    if isinstance(attention, FavorAttention):
        return {}
    return {
        name: getattr(attention, name, 0) or 0
        for name in ("window", "n_global", "n_top")
        if isinstance(getattr(attention, name, 0), numbers.Integral)
    }


def linearize(model, attention, *, layers=None, calibration=None, target_error=None):
    """Run the self-attention of a ``transformers`` model through favorkern.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        In eval mode; a model whose attention goes through transformers'
        ``AttentionInterface`` (BERT, LLaMA and most current architectures) with full
        causal or bidirectional masks.
    attention : FavorAttention or HybridAttention
        Template, cloned per layer (its parameters, with ``causal`` set from the layer
        and a ``random_state`` derived from the template's for each layer).
    layers : collection of int or None, default=None
        Layer indices to linearize (all if None); the others stay exact.
    calibration : array-like of int, shape (batch, L), or dict, default=None
        Token ids (or a tokenizer's output with ``input_ids`` and ``attention_mask``)
        run once through the exact model; each layer's attention is fitted on that
        layer's queries and keys (padding left out), and the report holds each
        head's estimated error on that text.
    target_error : float or None, default=None
        Route each head to the cheapest setting of :data:`LADDER` whose estimated
        mean relative row error on the calibration text, upper end of its 95%
        interval, is at most ``target_error``; needs ``calibration``.  None: every
        head uses the template.

    Returns
    -------
    Linearized
        Already active; a context manager that restores the model's own attention on
        exit (or call :meth:`Linearized.restore`).  :meth:`Linearized.report` and
        :meth:`Linearized.cache` for generation with decoding states.

    Notes
    -----
    Queries, keys and values are detached and computed in numpy (float32 models in
    float32): no gradient flows through a linearized layer.  Layers left exact and
    heads routed to ``"exact"`` run ``torch.nn.functional.scaled_dot_product_attention``,
    equal to the model's own attention to rounding.  With a plain ``DynamicCache``
    (``model.generate`` without :meth:`Linearized.cache`) outputs stay right but each
    step recomputes the prefix.

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from favorkern import FavorAttention
    >>> from favorkern.integrations.transformers import linearize
    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                      num_hidden_layers=2, num_attention_heads=4,
    ...                      num_key_value_heads=2)
    >>> model = LlamaForCausalLM(config).eval()
    >>> ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(0))
    >>> template = FavorAttention(n_components=64, random_state=0)
    >>> with linearize(model, template, calibration=ids) as handle:
    ...     logits = model(ids).logits
    ...     generated = model.generate(ids[:, :8], max_new_tokens=4, do_sample=False,
    ...                                past_key_values=handle.cache())
    >>> logits.shape, generated.shape
    (torch.Size([1, 40, 64]), torch.Size([1, 12]))
    >>> len(handle.report())                  # 2 layers x 4 heads
    8
    """
    return Linearized(model, attention, layers, calibration, target_error)
