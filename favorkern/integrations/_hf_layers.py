"""The attention modules of :mod:`favorkern.integrations.transformers` (torch side).

Masks handed from transformers' mask interface to the attention function, exact
attention in torch, one linearized layer's parts (whole sequence and decoding), and
the cache of decoding states.  Imported only by that module.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

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
    lq, lk = q.shape[-2], k.shape[-2]
    causal = causal and lq > 1  # one query, the last position, sees every key
    gqa = q.shape[1] != k.shape[1]
    if ignore is None and (not causal or lq == lk):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scaling, enable_gqa=gqa
        )
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(diagonal=lk - lq)
    allowed = allowed[None, None]
    if ignore is not None:
        allowed = allowed & ~ignore[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, scale=scaling, enable_gqa=gqa
    )
    # rows that see no key (padding queries) are 0, not NaN
    return torch.nan_to_num(out, nan=0.0)


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
            if part.attention is None:  # exact heads: keys and values of their groups only
                kv_of = part.heads // (n_heads // n_kv)
                groups, inverse = np.unique(kv_of, return_inverse=True)
                kt, vt = k[:, groups], v[:, groups]
                if i in slot.kv:
                    kt = torch.cat([slot.kv[i][0], kt], dim=-2)
                    vt = torch.cat([slot.kv[i][1], vt], dim=-2)
                slot.kv[i] = (kt, vt)
                counts = np.bincount(inverse)
                if not np.array_equal(inverse, np.repeat(np.arange(len(groups)), counts[0])):
                    # query heads not in whole groups, in order: one key head per query head
                    index = torch.from_numpy(inverse)
                    kt, vt = kt[:, index], vt[:, index]
                exact = _exact_torch(q[:, part.heads], kt, vt, ignore, True, scaling)
                out[:, part.heads] = _to_numpy(exact)
                continue
            if part.heads is None:
                sel, kp, vp = slice(None), kn, vn
            else:
                sel = part.heads
                kp, vp = _repeat_heads(kn, n_heads)[:, sel], _repeat_heads(vn, n_heads)[:, sel]
            # None starts a sequence (a state for this gamma, the inputs' shape and dtype)
            state = slot.states.get(i)
            out[:, sel], state = part.attention.step(
                qn[:, sel], kp, vp, state, gamma=scaling, key_padding_mask=mask
            )
            slot.states[i] = state
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
    >>> handle = linearize(model, FavorAttention(n_components=32, random_state=0))
    >>> sizes = []
    >>> for length in (10, 100):
    ...     cache = handle.cache()
    ...     with torch.no_grad():
    ...         _ = model(torch.ones(1, length, dtype=torch.long), past_key_values=cache)
    ...     sizes.append(cache.nbytes())
    >>> cache.get_seq_length(), sizes[0] == sizes[1]
    (100, True)
    >>> handle.restore()
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
