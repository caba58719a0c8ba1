"""Decoding: causal FAVOR attention continued token by token from a saved key state.

Causal linear attention is a recurrence: after the keys ``k_0..k_{t-1}`` and values
``v_0..v_{t-1}`` of a sequence, the output of query ``q_t`` needs only the key
state ``(S, z, c)`` (:class:`~.state.KeyState`: ``S = sum_j phi(k_j) v_j^T e^-c``,
``z = sum_j phi(k_j) e^-c``, ``c`` the running key stabilizer), ``O(m dv)`` numbers
per (batch, head), whatever the prefix length.  :class:`DecodingState` holds those
states for every (batch, key/value head) with the number of tokens seen;
:func:`decode` continues them by ``T >= 1`` tokens and returns the outputs, equal
to causal attention over the whole sequence so far.

Key stabilizer: key ``j`` is divided by ``exp(c_j)``, ``c_j`` the running maximum
of the keys' largest logits over ``0..j``, exactly as in :mod:`.causal`; the state
carries ``c`` of its last key, so the continuation stabilizes every later key the
same way as one causal call over the whole sequence would.

Grouped-query attention: the state has one entry per key/value head; ``g``
consecutive query heads share one (query head ``i`` reads key/value head
``i // g``).  Keys and values are never copied per query head; for one token a
key's features are computed once per key/value head, for a block of tokens once per
query head of its group (the chunked causal products run per query head).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from math import prod

import numpy as np

from . import causal as causal_module
from .common import run_parallel
from .state import KeyState
from .values import _limit as value_limit
from .values import check_state_values

__all__ = [
    "DecodingState",
    "HeadFeatures",
    "check_state_arrays",
    "decode",
    "fingerprint_width",
    "resolve_decode_shapes",
]

_KEYS = ("S", "z", "c", "n_tokens", "fingerprint")
# map identity | m=width | projection=hash | hash (favor._fingerprint)
_FINGERPRINT = re.compile(r"[^|]+\|m=([0-9]+)\|projection=[0-9a-f]{16}\|[0-9a-f]{16}")


class DecodingState:
    """The running key state of causal FAVOR attention, per (batch, key/value head).

    Created by :meth:`favorkern.FavorAttention.initial_state` (or by a first call
    with ``return_state=True``), advanced by :meth:`favorkern.FavorAttention.step`
    and ``favor_attention(..., initial_state=state, return_state=True)``.  Memory
    ``O(m dv)`` per (batch, head), independent of the number of tokens seen.

    The state is updated in place by a step (and returned): take a :meth:`copy` to
    branch a sequence (beam search, speculative decoding).  It pickles, and
    :meth:`to_dict` / :meth:`from_dict` (or :meth:`save` / :meth:`load`) store it
    with :func:`numpy.savez`.  A state only continues the attention that made it:
    ``fingerprint`` (``identity|m=...|projection=...|...``) records the feature map
    object (not only its name: a map replaced under its name is another map), the
    width ``m``, the projection and its draws, the constants and the logit scale, and
    a mismatch is a ``ValueError``.  A state built from a dict or a file is checked
    against it (shapes, dtypes, finiteness, the width) and refused if it cannot be
    trusted.

    Parameters
    ----------
    keys : KeyState
        Batched key state: ``S`` (..., m, dv), ``z`` (..., m), ``c`` (...) float64
        (``-inf`` where no key has entered).
    n_tokens : int, default=0
        Tokens seen so far (the position of the next token).
    fingerprint : str, default=""
        Identifies the attention the state belongs to.

    Attributes
    ----------
    batch_shape : tuple
        Leading (batch, key/value head) dimensions.
    n_components : int
        Width ``m`` of the feature map.
    dv : int
        Value dimension.
    dtype : numpy.dtype
        dtype of ``S`` and ``z`` (the dtype of the inputs it accepts).

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> from favorkern import FavorAttention
    >>> attention = FavorAttention(n_components=32, random_state=0).fit(8)
    >>> state = attention.initial_state(batch_shape=(2,), dv=4)
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 1, 8))[:, :, :, :8]
    >>> out, state = attention.step(q, k, v[..., :4], state)
    >>> out.shape, state.n_tokens, state.S.shape
    ((2, 1, 4), 1, (2, 32, 4))
    >>> buffer = io.BytesIO()
    >>> state.save(buffer)
    >>> _ = buffer.seek(0)
    >>> restored = type(state).load(buffer)
    >>> bool(np.array_equal(restored.S, state.S)), restored.n_tokens
    (True, 1)
    """

    def __init__(self, keys: KeyState, n_tokens: int = 0, fingerprint: str = ""):
        self.keys = keys
        self.n_tokens = int(n_tokens)
        self.fingerprint = str(fingerprint)

    @classmethod
    def empty(cls, batch_shape, n_components, dv, dtype, fingerprint=""):
        """A state without keys."""
        batch_shape = tuple(int(b) for b in batch_shape)
        keys = KeyState(
            np.zeros(batch_shape + (n_components, dv), dtype=dtype),
            np.zeros(batch_shape + (n_components,), dtype=dtype),
            np.full(batch_shape, -np.inf),
        )
        return cls(keys, 0, fingerprint)

    @property
    def S(self) -> np.ndarray:
        return self.keys.S

    @property
    def z(self) -> np.ndarray:
        return self.keys.z

    @property
    def c(self) -> np.ndarray:
        return self.keys.c

    @property
    def batch_shape(self) -> tuple:
        return self.keys.S.shape[:-2]

    @property
    def n_components(self) -> int:
        return self.keys.S.shape[-2]

    @property
    def dv(self) -> int:
        return self.keys.S.shape[-1]

    @property
    def dtype(self) -> np.dtype:
        return self.keys.S.dtype

    def head(self, index) -> KeyState:
        """The :class:`~.state.KeyState` of one (batch, head) ``index`` (views)."""
        return KeyState(self.keys.S[index], self.keys.z[index], float(self.keys.c[index]))

    def copy(self) -> DecodingState:
        """An independent copy (to branch a sequence)."""
        keys = KeyState(self.keys.S.copy(), self.keys.z.copy(), self.keys.c.copy())
        return DecodingState(keys, self.n_tokens, self.fingerprint)

    def to_dict(self) -> dict:
        """Arrays for :func:`numpy.savez`: ``S``, ``z``, ``c``, ``n_tokens``, ``fingerprint``."""
        return {
            "S": self.keys.S,
            "z": self.keys.z,
            "c": self.keys.c,
            "n_tokens": np.int64(self.n_tokens),
            "fingerprint": np.str_(self.fingerprint),
        }

    @classmethod
    def from_dict(cls, data) -> DecodingState:
        """The state stored by :meth:`to_dict` (a dict or a loaded ``.npz`` file).

        A state that cannot be trusted is refused with a ``ValueError``, never run:
        ``S`` (..., m, dv) and ``z`` (..., m) float32 or float64 of one dtype, ``c``
        (...) float64, each finite (``c`` may be ``-inf`` where no key entered, and
        ``S`` and ``z`` are zero there), ``m`` the width the ``fingerprint`` records,
        ``n_tokens`` an integer ``>= 0``.  The arrays are copied (C-ordered).
        """
        if not isinstance(data, Mapping) and not hasattr(data, "files"):
            raise TypeError(
                f"a decoding state is built from a dict of arrays, got {type(data).__name__}"
            )
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise ValueError(f"a decoding state needs the entries {list(_KEYS)}; missing {missing}")
        fingerprint = _scalar(data["fingerprint"], "fingerprint", str)
        n_tokens = _scalar(data["n_tokens"], "n_tokens", int)
        arrays = {}
        for key in ("S", "z", "c"):
            value = np.asarray(data[key])
            if value.dtype.kind != "f" or value.dtype not in (np.float32, np.float64):
                raise ValueError(
                    f"{key} of a decoding state must be a float32 or float64 array, got dtype "
                    f"{value.dtype}"
                )
            arrays[key] = np.array(value, order="C")  # a copy: the state is updated in place
        S, z, c = arrays["S"], arrays["z"], arrays["c"].astype(np.float64, copy=False)
        return cls(KeyState(S, z, c), n_tokens, fingerprint)._checked()

    def _checked(self) -> DecodingState:
        """``self`` after the checks of :meth:`from_dict` (a ``ValueError`` otherwise)."""
        S, z, c = self.keys.S, self.keys.z, np.asarray(self.keys.c)
        if S.dtype != z.dtype:
            raise ValueError(
                f"S and z of a decoding state must have one dtype, got {S.dtype} and {z.dtype}"
            )
        if S.ndim < 2 or z.shape != S.shape[:-1] or c.shape != S.shape[:-2]:
            raise ValueError(
                "a decoding state needs S (..., m, dv), z (..., m) and c (...); got shapes "
                f"{S.shape}, {z.shape} and {c.shape}"
            )
        width = fingerprint_width(self.fingerprint)
        if width is not None and S.shape[-2] != width:
            raise ValueError(
                f"the state's fingerprint records m = {width} features, but S has shape "
                f"{S.shape} and z {z.shape}: the arrays do not belong to that attention"
            )
        if not (np.isfinite(S).all() and np.isfinite(z).all()):
            raise ValueError("S and z of a decoding state must be finite")
        if np.isnan(c).any() or (c == np.inf).any():
            raise ValueError("c of a decoding state must be finite, or -inf where no key entered")
        empty = c == -np.inf
        if empty.any() and (S[empty].any() or z[empty].any()):
            raise ValueError(
                "a decoding state with c = -inf (no key entered) must hold S = 0 and z = 0"
            )
        if self.n_tokens < 0:
            raise ValueError(f"n_tokens of a decoding state must be >= 0, got {self.n_tokens}")
        return self

    def save(self, file) -> None:
        """Write the state with :func:`numpy.savez` (a path or a binary file object)."""
        np.savez(file, **self.to_dict())

    @classmethod
    def load(cls, file) -> DecodingState:
        """Read a state written by :meth:`save` (a path or a binary file object).

        Anything else (another file, a damaged one, arrays that do not form a state)
        is a ``ValueError`` saying so; nothing in the file is unpickled.
        """
        import zipfile

        try:
            data = np.load(file, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(
                f"{_describe(file)} is not a decoding state written by DecodingState.save "
                f"(not a readable .npz archive: {_reason(error)})"
            ) from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{_describe(file)} is not a decoding state written by DecodingState.save "
                "(a single array, not an .npz archive of S, z, c, n_tokens and fingerprint)"
            )
        with data:
            try:
                entries = {key: data[key] for key in _KEYS if key in data.files}
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
                raise ValueError(
                    f"{_describe(file)} is not a decoding state written by "
                    f"DecodingState.save (an entry cannot be read: {_reason(error)})"
                ) from None
        try:
            return cls.from_dict(entries)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{_describe(file)} does not hold a valid decoding state: {error}"
            ) from None

    def __repr__(self):
        return (
            f"DecodingState(batch_shape={self.batch_shape}, n_components={self.n_components}, "
            f"dv={self.dv}, dtype={self.dtype}, n_tokens={self.n_tokens})"
        )


def _scalar(value, key, kind):
    """The one ``int`` or ``str`` stored under ``key`` (a 0-d array), or a ``ValueError``."""
    value = np.asarray(value)
    ok = value.ndim == 0 and (value.dtype.kind in "iu" if kind is int else value.dtype.kind == "U")
    if not ok:
        what = "an integer" if kind is int else "a string"
        raise ValueError(
            f"{key} of a decoding state must be {what}, got an array of dtype {value.dtype} "
            f"and shape {value.shape}"
        )
    return kind(value.item())


def fingerprint_width(fingerprint):
    """The width ``m`` a fingerprint records (None for the empty fingerprint)."""
    if not fingerprint:
        return None
    found = _FINGERPRINT.fullmatch(fingerprint)
    if found is None:
        raise ValueError(
            f"fingerprint {fingerprint!r} is not one of a favorkern attention (made by "
            "FavorAttention.initial_state or a call with return_state=True)"
        )
    return int(found.group(1))


def _describe(file) -> str:
    return repr(str(file)) if isinstance(file, (str, os.PathLike)) else "the file"


def _reason(error) -> str:
    text = str(error).split(". ")[0]
    # numpy's message for a non-archive suggests unpickling: never offer that
    if "pickle" in text.lower() or not text:
        text = "not an .npz archive"
    return text


def check_state_arrays(state, n_out, values=True) -> None:
    """A ``ValueError`` unless the arrays of ``state`` are what the compiled step reads.

    ``S`` (..., n_out, dv) and ``z`` (..., n_out) of one float dtype, ``c`` (...)
    float64, all C-contiguous and writeable: a state changed by hand after it was
    made must not send the kernel out of its arrays' bounds.  ``values``: also
    ``c`` not NaN or ``+inf`` (the one-call token step checks it itself).
    """
    keys = state.keys
    S, z, c = keys.S, keys.z, keys.c
    if not (isinstance(S, np.ndarray) and isinstance(z, np.ndarray) and isinstance(c, np.ndarray)):
        raise ValueError("S, z and c of a decoding state must be numpy arrays")
    if (
        S.ndim < 2
        or S.shape[-2] != n_out
        or z.shape != S.shape[:-1]
        or c.shape != S.shape[:-2]
        or S.dtype not in (np.float32, np.float64)
        or z.dtype != S.dtype
        or c.dtype != np.float64
    ):
        raise ValueError(
            f"the decoding state's arrays do not fit this attention: S {S.shape} {S.dtype}, "
            f"z {z.shape} {z.dtype}, c {c.shape} {c.dtype}; need S (..., {n_out}, dv) and "
            f"z (..., {n_out}) of one float dtype and c (...) float64"
        )
    for name, array in (("S", S), ("z", z), ("c", c)):
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise ValueError(
                f"{name} of a decoding state must be a C-contiguous, writeable array (the "
                "state is updated in place); rebuild it with DecodingState.from_dict"
            )
    if values and c.size and not c.max() < np.inf:  # +inf or NaN: every later output NaN
        raise ValueError("c of a decoding state must be finite, or -inf where no key entered")


class HeadFeatures:
    """The feature map of every key/value head, with reusable buffers for one token.

    ``make(constants)`` builds an :class:`~.features.AttentionFeatures`; with
    ``n_heads`` None one map serves all heads (data-free maps, or constants shared
    by all heads), else head ``h`` takes ``head_constants[h]``.
    """

    def __init__(self, fmap, make, constants, head_constants, fingerprint):
        self.fmap = fmap
        self.fingerprint = fingerprint
        self.shared = None
        self.constants = constants
        self.head_constants = head_constants
        if head_constants is None:
            self.shared = make(constants)
        else:
            self.per_head = [make(c) for c in head_constants]
        self.n_out = (self.shared or self.per_head[0]).n_out
        self._shapes = {}
        self._fused = False  # not built yet
        # values beyond value_peak / n are refused where sums of n terms could overflow
        self.value_peak = value_limit((self.shared or self.per_head[0]).dtype, 1)
        self._local = threading.local()  # buffers per thread: steps may run concurrently

    @property
    def n_heads(self):
        return None if self.head_constants is None else len(self.head_constants)

    def features(self, head):
        return self.shared if self.shared is not None else self.per_head[head]

    def prepare(self, X, side, head):
        constants = self.constants if self.head_constants is None else self.head_constants[head]
        return self.fmap.prepare(X, side, constants)

    def token_buffers(self, n_query, n_kv, group, dv, dtype):
        """Scratch of one token: query and key features, numerators, and a row of
        ``False`` (no key hidden), reused while the shapes stay."""
        key = (n_query, n_kv, group, dv, dtype)
        cached = getattr(self._local, "buffers", None)
        if cached is None or cached[0] != key:
            cached = (
                key,
                (
                    np.empty((n_query, self.n_out), dtype=dtype),
                    np.empty((n_kv, self.n_out), dtype=dtype),
                    np.empty((group, dv), dtype=dtype),
                    np.zeros(n_kv, dtype=bool),
                ),
            )
            self._local.buffers = cached  # one decoding shape at a time
        return cached[1]

    def fused(self):
        """The arrays of the one-call token step, or None where the map has none.

        Exp maps evaluated from a dense projection (every map whose features are
        ``exp(w_j . x - a |x|^2 + log s_j)``: positive, hyperbolic, the generalized
        and optimal families, SADERF), with one set of constants or one per head
        when the map's ``prepare`` is the identity.
        """
        if self._fused is False:
            maps = [self.shared] if self.shared is not None else self.per_head
            fused = _FusedMap.build(maps, self.fmap, self.shared is not None)
            self._fused = fused
        return self._fused

    def shapes(self, Q, K, V, mask, state):
        """:func:`resolve_decode_shapes`, cached per input shapes."""
        key = (Q.shape, K.shape, V.shape, None if mask is None else mask.shape, state.S.shape)
        found = self._shapes.get(key)
        if found is None:
            found = resolve_decode_shapes(Q.shape, K.shape, V.shape, key[3], state)
            if self.n_heads is not None:
                heads = state.batch_shape[-1] if state.batch_shape else 1
                if heads != self.n_heads:
                    raise ValueError(
                        f"the constants were fitted for {self.n_heads} key/value heads, but the "
                        f"state has {heads} (batch shape {state.batch_shape})"
                    )
            if len(self._shapes) > 16:
                self._shapes.clear()
            self._shapes[key] = found
        return found


class _FusedMap:
    """The feature maps of :meth:`HeadFeatures.fused`, stacked over heads (one row
    when shared), in natural logs: ``W^T`` (heads, d, m), the column logs
    ``log s_j - max log s`` (heads, m), ``a`` and ``max log s`` per head."""

    def __init__(self, weights_t, column_log, sq_coef, log_const, prepare):
        self.weights_t, self.column_log = weights_t, column_log
        self.sq_coef, self.log_const = sq_coef, log_const
        self.heads = weights_t.shape[0]
        self.prepare = prepare

    @classmethod
    def build(cls, maps, fmap, shared):
        from ..feature_maps import FeatureMap

        identity = type(fmap).prepare is FeatureMap.prepare
        if not (shared or identity):
            return None
        for features in maps:
            spec = features.spec
            if spec.func != "exp" or spec.projector is not None or spec.offset is not None:
                return None
        dtype = maps[0].dtype
        weights_t = np.stack([np.asarray(f.spec.weights, dtype=dtype).T for f in maps])
        column_log = np.zeros(weights_t.shape[::2], dtype=dtype)
        for row, features in zip(column_log, maps, strict=True):
            log_scale = np.asarray(features.spec.log_scale, dtype=np.float64)
            row[...] = log_scale - float(log_scale.max())
        sq_coef = np.array([float(f.spec.sq_coef) for f in maps])
        log_const = np.array([float(np.max(f.spec.log_scale)) for f in maps])
        return cls(np.ascontiguousarray(weights_t), column_log, sq_coef, log_const, not identity)


def resolve_decode_shapes(q_shape, k_shape, v_shape, mask_shape, state):
    """``(out_batch, group)`` for inputs continuing ``state``, or a ``ValueError``.

    Keys, values and the mask broadcast to the state's batch shape; the queries'
    last leading axis holds ``group`` query heads per key/value head (1 query head
    broadcasts to all), the other leading axes broadcast to the state's.
    """
    if len(q_shape) < 2 or len(k_shape) < 2 or len(v_shape) < 2:
        raise ValueError(
            f"q, k and v must have shape (..., T, d) and (..., T, dv), got {q_shape}, "
            f"{k_shape} and {v_shape}"
        )
    T = q_shape[-2]
    if k_shape[-2] != T or v_shape[-2] != T or T == 0:
        raise ValueError(
            f"q, k and v must hold the same number T >= 1 of new tokens, got shapes {q_shape}, "
            f"{k_shape} and {v_shape}"
        )
    if k_shape[-1] != q_shape[-1]:
        raise ValueError(f"k must have the feature dimension d = {q_shape[-1]} of q, got {k_shape}")
    if v_shape[-1] != state.dv:
        raise ValueError(f"v must have dv = {state.dv} columns (the state's), got shape {v_shape}")
    leads = [k_shape[:-2], v_shape[:-2]]
    if mask_shape is not None:
        if len(mask_shape) < 1 or mask_shape[-1] != T:
            raise ValueError(
                f"key_padding_mask must have shape (..., T) with T = {T}, got {mask_shape}"
            )
        leads.append(tuple(mask_shape[:-1]))
    batch = state.batch_shape
    try:
        if np.broadcast_shapes(*leads, batch) != batch:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"the leading dimensions of k {k_shape}, v {v_shape} and key_padding_mask must "
            f"broadcast to the state's batch shape {batch}"
        ) from None
    q_lead = q_shape[:-2]
    if not batch:
        if q_lead:
            raise ValueError(f"the state has one head: q must have shape (T, d), got {q_shape}")
        return (), 1
    if len(q_lead) > len(batch):
        raise ValueError(f"q has more leading dimensions than the state's batch shape {batch}")
    q_lead = (1,) * (len(batch) - len(q_lead)) + tuple(q_lead)
    n_kv, n_query = batch[-1], q_lead[-1]
    if n_query % n_kv == 0:
        group, heads = n_query // n_kv, n_query
    elif n_query == 1:
        group, heads = 1, n_kv
    else:
        raise ValueError(
            f"q has {n_query} heads (axis -3), which is not a multiple of the {n_kv} key/value "
            f"heads of the state"
        )
    try:
        if np.broadcast_shapes(q_lead[:-1], batch[:-1]) != batch[:-1]:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"the leading dimensions of q {q_shape} do not match the state's batch shape {batch}"
        ) from None
    return batch[:-1] + (heads,), group


def _rows(X, shape, n):
    """``X`` broadcast to ``shape`` as ``n`` rows (a view when no broadcasting is needed)."""
    if X.shape != shape:
        # a copy, C-ordered: reshaping a broadcast view can give any layout
        return np.ascontiguousarray(np.broadcast_to(X, shape).reshape(n, shape[-1]))
    return X.reshape(n, shape[-1])


def _token(hf, Q, K, V, mask, state, out_batch, group, out):
    """One new token for every head: features batched over heads, one fused kernel."""
    from .._numba.decoding import decode_step

    keys = state.keys
    S, z = keys.S, keys.z
    dtype = S.dtype
    batch = S.shape[:-2]
    m, dv = S.shape[-2:]
    n_kv = prod(batch)
    n_query = n_kv * group
    d = Q.shape[-1]
    qf, kf, scratch, _ = hf.token_buffers(n_query, n_kv, group, dv, dtype)
    q_rows = _rows(Q, out_batch + (1, d), n_query)
    k_rows = _rows(K, batch + (1, d), n_kv)
    v_rows = _rows(V, batch + (1, dv), n_kv)
    if not (v_rows.flags.c_contiguous and v_rows.flags.writeable):
        v_rows = np.array(v_rows, order="C")  # the kernel takes C-contiguous, mutable arrays
    if hf.shared is not None:
        fmap = hf.shared
        fmap.queries(hf.prepare(q_rows, "query", None), qf)
        row_log, shift = fmap.key_logits(hf.prepare(k_rows, "key", None), kf)
    else:
        heads = batch[-1]
        row_log = np.empty(n_kv)
        shift = np.empty(n_kv)
        for j in range(n_kv):
            h = j % heads
            fmap = hf.features(h)
            rows = slice(j * group, (j + 1) * group)
            fmap.queries(hf.prepare(q_rows[rows], "query", h), qf[rows])
            log, sh = fmap.key_logits(hf.prepare(k_rows[j : j + 1], "key", h), kf[j : j + 1])
            row_log[j] = log[0]
            shift[j] = np.nan if sh is None else sh[0]
    masked = None
    if mask is not None:
        masked = _rows(mask[..., np.newaxis], batch + (1, 1), n_kv)[:, 0]
        if masked.any():
            row_log = np.where(masked, -np.inf, row_log)
        else:
            masked = None
    c_old = keys.c.reshape(n_kv)
    c_new = np.maximum(c_old, row_log)
    finite = np.where(c_new > -np.inf, c_new, 0.0)
    if hf.shared is not None:
        hf.shared.key_finish(kf, row_log, shift, finite)
    else:
        for j in range(n_kv):
            sh = None if np.isnan(shift[j]) else shift[j : j + 1]
            one = slice(j, j + 1)
            hf.features(j % batch[-1]).key_finish(kf[one], row_log[one], sh, finite[one])
    if masked is not None:
        kf[masked] = 0.0
    # c_old = -inf (no key yet) gives 0, and the state is zero then anyway
    decay = np.exp(c_old - finite)
    ok = decode_step(
        qf, kf, v_rows, decay, S.reshape(n_kv, m, dv), z.reshape(n_kv, m),
        out.reshape(n_query, dv), scratch,
    )  # fmt: skip
    if not ok:
        raise ValueError("q, k and v must be finite (got NaN or infinity, or features overflowed)")
    c_old[...] = c_new


def _block(hf, Q, K, V, mask, state, out_batch, group, out, workers):
    """``T > 1`` new tokens: chunked causal attention per head from the state."""
    batch = state.batch_shape
    T, d = Q.shape[-2], Q.shape[-1]
    Qb = np.broadcast_to(Q, out_batch + (T, d))
    Kb = np.broadcast_to(K, batch + (T, d))
    Vb = np.broadcast_to(V, batch + (T, state.dv))
    Mb = None if mask is None else np.broadcast_to(mask, batch + (T,))
    for X, name in ((Qb, "q"), (Kb, "k"), (Vb, "v")):
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinity")

    def task(idx):
        h = idx[-1] if idx else 0
        fmap = hf.features(h)
        k = hf.prepare(Kb[idx], "key", h)
        v = Vb[idx]
        m = None if Mb is None else Mb[idx]
        initial = state.head(idx)
        final = None
        for j in range(group):
            q_idx = idx[:-1] + (h * group + j,) if idx else ()
            q = hf.prepare(Qb[q_idx], "query", h)
            chunk = causal_module.causal_chunk_rows(fmap.n_out)
            final = causal_module.causal_chunked(
                fmap, q, k, v, m, out[q_idx], chunk, initial=initial
            )
        return idx, final

    indices = list(np.ndindex(*batch))
    results = run_parallel([lambda i=i: task(i) for i in indices], workers)
    for idx, final in results:
        state.keys.S[idx][...] = final.S
        state.keys.z[idx][...] = final.z
        state.keys.c[idx] = final.c


_favor_token = None


def _fused_token(hf, fused, Q, K, V, mask, state, out_batch, group):
    """One new token for every head in one compiled call (exp maps): features,
    state update and outputs (:func:`~favorkern._numba.decoding.favor_token`).

    Returns ``(out, n_zero)``, ``n_zero`` the outputs with a zero normalizer.
    """
    global _favor_token
    if _favor_token is None:  # numba loads on the first step, not at import
        from .._numba.decoding import favor_token as _favor_token

    keys = state.keys
    S = keys.S
    batch = S.shape[:-2]
    m, dv = S.shape[-2:]
    n_kv = S.size // (m * dv)
    n_query = n_kv * group
    d = Q.shape[-1]
    qf, kf, scratch, visible = hf.token_buffers(n_query, n_kv, group, dv, S.dtype)
    q_rows = _rows(Q, out_batch + (1, d), n_query)
    k_rows = _rows(K, batch + (1, d), n_kv)
    v_rows = _rows(V, batch + (1, dv), n_kv)
    if fused.prepare:
        q_rows = hf.prepare(q_rows, "query", None)
        k_rows = hf.prepare(k_rows, "key", None)
    hidden = visible
    if mask is not None:
        hidden = _rows(mask[..., np.newaxis], batch + (1, 1), n_kv).reshape(n_kv)
    q_rows, k_rows = _c_rows(q_rows), _c_rows(k_rows)
    if fused.heads == 1:
        np.matmul(q_rows, fused.weights_t[0], out=qf)
        np.matmul(k_rows, fused.weights_t[0], out=kf)
    else:  # one map per key/value head: products batched over the heads
        heads = fused.heads
        np.matmul(q_rows.reshape(-1, heads, group, d), fused.weights_t,
                  out=qf.reshape(-1, heads, group, m))  # fmt: skip
        np.matmul(k_rows.reshape(-1, heads, 1, d), fused.weights_t,
                  out=kf.reshape(-1, heads, 1, m))  # fmt: skip
    out = np.empty(out_batch + (1, dv), dtype=S.dtype)
    n_terms = (state.n_tokens + 1) * m
    status = _favor_token(
        q_rows, k_rows, _c_rows(v_rows), _c_rows(hidden), fused.column_log, fused.sq_coef,
        fused.log_const, fused.heads,
        hf.value_peak / n_terms, S.reshape(n_kv, m, dv), keys.z.reshape(n_kv, m),
        keys.c.reshape(n_kv), out.reshape(n_query, dv), qf, kf, scratch,
    )  # fmt: skip
    if status < 0:
        if status == -2:
            check_state_values(V, n_terms)  # raises, naming the remedy
        if keys.c.size and not keys.c.max() < np.inf:
            raise ValueError("c of a decoding state must be finite, or -inf where no key entered")
        raise ValueError("q, k and v must be finite (got NaN or infinity, or features overflowed)")
    state.n_tokens += 1
    return out, status


def _c_rows(X):
    """``X``, or a C-ordered writeable copy (what the compiled step takes)."""
    return X if X.flags.c_contiguous and X.flags.writeable else np.array(X, order="C")


def decode(hf, Q, K, V, mask, state, workers=1, zero_rows=False):
    """Continue ``state`` by the ``T`` tokens of ``Q, K, V``; returns the outputs.

    ``Q`` (..., T, d), ``K`` (..., T, d), ``V`` (..., T, dv) and ``mask`` (..., T)
    already in the state's dtype.  The state is updated in place.  ``zero_rows``:
    return ``(out, n_zero)``, ``n_zero`` None where the outputs with a zero normalizer
    were not counted.
    """
    T = Q.shape[-2]
    fused = hf.fused() if T == 1 else None
    check_state_arrays(state, hf.n_out, values=fused is None)
    out_batch, group = hf.shapes(Q, K, V, mask, state)
    if fused is not None:
        out, n_zero = _fused_token(hf, fused, Q, K, V, mask, state, out_batch, group)
        return (out, n_zero) if zero_rows else out
    check_state_values(V, (state.n_tokens + T) * hf.n_out)
    out = np.empty(out_batch + (T, state.dv), dtype=state.dtype)
    if T == 1:
        _token(hf, Q, K, V, mask, state, out_batch, group, out)
    else:
        _block(hf, Q, K, V, mask, state, out_batch, group, out, workers)
    state.n_tokens += T
    return (out, None) if zero_rows else out
