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
  is below the target on the calibration text, among the settings estimated to be
  faster than exact attention at ``sequence_length`` (:func:`setting_cost`);
  :meth:`Linearized.report` tabulates the choice.
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
import warnings

import numpy as np

try:
    import torch
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "favorkern.integrations.transformers needs torch and transformers: "
        'pip install "favorkern[transformers]" (on CPU-only machines install torch from '
        "the CPU wheel index first)"
    ) from exc

from ..attention.error import estimate_attention_error
from ..attention.layer import FavorAttention
from ._hf_layers import (
    LinearizedCache,
    _exact_torch,
    _KeyPadding,
    _Layer,
    _padding_mask,
    _Part,
    _repeat_heads,
    _to_numpy,
)
from ._hf_report import LADDER, RoutingReport, _HeadRecord, setting_cost

__all__ = ["linearize", "Linearized", "LinearizedCache", "RoutingReport", "LADDER", "setting_cost"]

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
        if isinstance(template, FavorAttention):  # its own parameters (a given projection too)
            return _clone(template, causal=causal, random_state=seed)
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

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from favorkern import FavorAttention
    >>> from favorkern.integrations.transformers import linearize
    >>> config = BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
    ...                     num_hidden_layers=2, num_attention_heads=4)
    >>> model = BertModel(config).eval()
    >>> own = model.config._attn_implementation
    >>> handle = linearize(model, FavorAttention(n_components=64, random_state=0), layers=[1])
    >>> handle
    <Linearized BertModel: 1 of 2 layers through FavorAttention, active>
    >>> handle.restore()
    >>> model.config._attn_implementation == own
    True
    """

    def __init__(self, model, template, layers, calibration, target_error, sequence_length=None):
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
        if sequence_length is not None:
            integral = isinstance(sequence_length, numbers.Integral)
            if isinstance(sequence_length, bool) or not integral:
                raise TypeError(f"sequence_length must be an int or None, got {sequence_length!r}")
            if sequence_length < 1:
                raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
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
        self.sequence_length = None if sequence_length is None else int(sequence_length)
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
        if self.target_error is not None and self.sequence_length is None:
            length = ids.shape[-1]
            causal = any(self._by_index[i].causal for i in self.layers)
            if len(_routing_ladder(length, causal)) == sum(p is None for _, p in LADDER):
                warnings.warn(
                    f"no approximate setting is faster than exact attention at the "
                    f"calibration length ({length} tokens), so every head stays exact: "
                    f"pass sequence_length, the length the model will run at",
                    UserWarning,
                    stacklevel=4,
                )

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
        routed = self.sequence_length or length
        if self.target_error is None:
            part = layer.parts[0]
            part.attention.fit(q_fit, k_fit, gamma=scaling)
            out = part.attention(q, kr, vr, gamma=scaling, key_padding_mask=mask)
            errors = estimate(out, range(n_heads), err_seed)
            params = _template_params(part.attention)
            share = _exact_keys(params, routed, causal)
            cost = setting_cost(params, routed, causal)
            return [
                _HeadRecord(layer.index, h, "template", *errors[h], share, cost)
                for h in range(n_heads)
            ]

        remaining = list(range(n_heads))
        parts, records = [], {}
        for rung, name, params in _routing_ladder(routed, causal):
            if not remaining:
                break
            share = _exact_keys(params, routed, causal)
            cost = setting_cost(params, routed, causal)
            if params is None:
                heads = np.array(remaining)
                parts.append(_Part(name, heads, None))
                for h in remaining:
                    records[h] = _HeadRecord(layer.index, h, name, 0.0, 0.0, 0.0, share, cost)
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
                    records[h] = _HeadRecord(layer.index, int(h), name, *e, share, cost)
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


def _routing_ladder(length, causal):
    """``(index, name, params)`` of the :data:`LADDER` settings cheaper than exact
    attention at ``length``, cheapest first, then exact."""
    ladder = [(r, name, params) for r, (name, params) in enumerate(LADDER) if params is not None]
    if _hybrid_class() is None:  # pragma: no cover - only before HybridAttention exists
        ladder = [rung for rung in ladder if not rung[2]]
    ladder = [rung for rung in ladder if setting_cost(rung[2], length, causal) < 1.0]
    ladder.sort(key=lambda rung: setting_cost(rung[2], length, causal))
    exact = [(r, name, params) for r, (name, params) in enumerate(LADDER) if params is None]
    return ladder + exact


def _template_params(attention):
    """Ladder-style parameters of an attention object (for the share of exact keys)."""
    if isinstance(attention, FavorAttention):
        return {}
    return {
        name: getattr(attention, name, 0) or 0
        for name in ("window", "n_global", "n_top", "n_candidates")
        if isinstance(getattr(attention, name, 0), numbers.Integral)
    }


def linearize(model, attention, *, layers=None, calibration=None, target_error=None,
              sequence_length=None):  # fmt: skip
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
    sequence_length : int or None, default=None
        The length the model will run at (None: the calibration text's).  Routing
        skips every setting whose estimated time (:func:`setting_cost`) is not below
        exact attention's at this length: a head no cheaper setting approximates
        well enough stays exact.  The report's ``exact_share`` and ``cost`` are at
        this length.  The errors are measured on the calibration text: calibrate on
        text about as long, since a window's error grows with the keys beyond it.

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
    return Linearized(model, attention, layers, calibration, target_error, sequence_length)
