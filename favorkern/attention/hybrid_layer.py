"""``HybridAttention``: hybrid attention holding one projection, and its decoding state.

Causal hybrid attention is a recurrence too: after tokens ``0..t-1`` the output of
query ``t`` needs the last ``window`` keys and values, the first ``n_global``, the
random-feature state ``(S, B)`` of the keys that left the window (``S = sum_j
phi(k_j) (v_j, 1) e^{-B}``, ``B`` the running maximum of their feature logs) and,
with top keys, the ``n_candidates`` far keys of best score with their features: a
state of ``O(window + n_global + n_candidates + m dv)`` numbers per head, whatever
the prefix length.  :class:`HybridState` holds it; :meth:`HybridAttention.step`
continues it by ``T >= 1`` tokens.
"""

from __future__ import annotations

import hashlib
import math
import threading

import numpy as np

from .._validation import check_attention_arrays, check_float_array, check_logit_scale, check_seed
from ..feature_maps import check_constants, fit_constants, get_feature_map
from .hybrid import hybrid_attention, per_head
from .hybrid_engine import stable_features
from .plan import DEFAULT_N_COMPONENTS, AttentionProjection, plan_attention, resolve_projection

__all__ = ["HybridAttention", "HybridState"]

# name: (shape from the config, dtype kind) -- "f": the state's float dtype
_FIELDS = {
    "win_k": (("N", "window", "d"), "f"),
    "win_v": (("N", "window", "dv"), "f"),
    "win_hidden": (("N", "window"), "b"),
    "glob_k": (("N", "n_global", "d"), "f"),
    "glob_v": (("N", "n_global", "dv"), "f"),
    "glob_hidden": (("N", "n_global"), "b"),
    "S": (("N", "m", "dv1"), "f"),
    "B": (("N",), "f64"),
    "pool_k": (("Nq", "n_candidates", "d"), "f"),
    "pool_v": (("Nq", "n_candidates", "dv"), "f"),
    "pool_psi": (("Nq", "n_candidates", "m"), "f"),
    "pool_r": (("Nq", "n_candidates"), "f64"),
    "pool_score": (("Nq", "n_candidates"), "f64"),
    "pool_pos": (("Nq", "n_candidates"), "i64"),
}
_CONFIG = ("batch_shape", "group", "window", "n_global", "n_candidates", "m", "d", "dv")


class HybridState:
    """The decoding state of causal hybrid attention, per (batch, key/value head).

    Made by :meth:`HybridAttention.initial_state`, advanced in place by
    :meth:`HybridAttention.step` (take a :meth:`copy` to branch a sequence).  It
    pickles, and :meth:`to_dict` / :meth:`from_dict` (or :meth:`save` / :meth:`load`)
    store it with :func:`numpy.savez`; a state built from a dict or a file is checked
    against its recorded configuration (shapes, dtypes, finiteness) before use.
    ``fingerprint`` identifies the attention that made it (projection, map,
    constants, logit scale, window, global and candidate settings, scoring
    directions): only that attention continues it.

    Attributes
    ----------
    n_tokens : int
        Tokens seen.
    batch_shape : tuple
        Leading dimensions of the keys and values (the last: key/value heads).
    dtype : numpy.dtype

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> from favorkern import HybridAttention
    >>> from favorkern.attention import HybridState
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 4, 30, 8))
    >>> layer = HybridAttention(window=4, n_components=16, causal=True, random_state=0)
    >>> layer = layer.fit(Q, K)
    >>> out, state = layer.step(Q[:, :20], K[:, :20], V[:, :20])
    >>> state
    HybridState(batch_shape=(4,), window=4, n_global=0, n_candidates=0, dtype=float64, n_tokens=20)
    >>> saved = io.BytesIO()
    >>> state.save(saved)
    >>> _ = saved.seek(0)
    >>> rest, _ = layer.step(Q[:, 20:], K[:, 20:], V[:, 20:], HybridState.load(saved))
    >>> bool(np.allclose(np.concatenate([out, rest], axis=1), layer(Q, K, V)))
    True
    """

    def __init__(self, arrays, config, n_tokens=0, fingerprint=""):
        self.arrays = arrays
        self.config = dict(config)
        self.n_tokens = int(n_tokens)
        self.fingerprint = fingerprint

    @classmethod
    def empty(cls, config, dtype, fingerprint=""):
        sizes = _sizes(config)
        arrays = {}
        for name, (shape, kind) in _FIELDS.items():
            shape = tuple(sizes[s] for s in shape)
            if kind == "b":
                arrays[name] = np.ones(shape, dtype=bool)  # empty slots are hidden
            elif kind == "i64":
                arrays[name] = np.full(shape, -1, dtype=np.int64)
            elif kind == "f64":
                arrays[name] = np.full(shape, -np.inf)
            else:
                arrays[name] = np.zeros(shape, dtype=dtype)
        return cls(arrays, config, 0, fingerprint)

    @property
    def batch_shape(self) -> tuple:
        return tuple(self.config["batch_shape"])

    @property
    def dtype(self) -> np.dtype:
        return self.arrays["S"].dtype

    def copy(self) -> HybridState:
        """An independent copy (to branch a sequence)."""
        arrays = {name: value.copy() for name, value in self.arrays.items()}
        return HybridState(arrays, self.config, self.n_tokens, self.fingerprint)

    def to_dict(self) -> dict:
        """Arrays for :func:`numpy.savez`: the state's arrays, its configuration,
        ``n_tokens`` and ``fingerprint``."""
        out = dict(self.arrays)
        for key in _CONFIG:
            out["config_" + key] = np.asarray(self.config[key], dtype=np.int64)
        out["n_tokens"] = np.int64(self.n_tokens)
        out["fingerprint"] = np.str_(self.fingerprint)
        return out

    @classmethod
    def from_dict(cls, data) -> HybridState:
        """The state stored by :meth:`to_dict` (a dict or a loaded ``.npz`` file),
        checked: every array must have the shape and dtype its configuration implies,
        and finite values (``-inf`` only where a maximum or score is still empty)."""
        needed = list(_FIELDS) + ["config_" + key for key in _CONFIG] + ["n_tokens", "fingerprint"]
        missing = [key for key in needed if key not in data]
        if missing:
            raise ValueError(
                f"a hybrid decoding state needs the entries {needed}; missing {missing}"
            )
        config = {}
        for key in _CONFIG:
            value = np.asarray(data["config_" + key])
            if value.dtype.kind not in "iu" or (key != "batch_shape" and value.ndim != 0):
                raise ValueError(f"config_{key} of a hybrid decoding state must be integer")
            config[key] = tuple(int(x) for x in value) if key == "batch_shape" else int(value)
            if key != "batch_shape" and config[key] < 0:
                raise ValueError(f"config_{key} of a hybrid decoding state must be >= 0")
        if min(config["group"], config["m"], config["d"], config["dv"]) < 1:
            raise ValueError("a hybrid decoding state needs group, m, d and dv >= 1")
        S = np.asarray(data["S"])
        if S.dtype not in (np.float32, np.float64):
            raise ValueError(
                f"S of a hybrid decoding state must be float32 or float64, got {S.dtype}"
            )
        sizes = _sizes(config)
        arrays = {}
        for name, (shape, kind) in _FIELDS.items():
            value = np.ascontiguousarray(data[name])  # row-major copies for the kernels
            expected_shape = tuple(sizes[s] for s in shape)
            expected = {"b": np.bool_, "i64": np.int64, "f64": np.float64, "f": S.dtype}[kind]
            if value.shape != expected_shape or value.dtype != expected:
                raise ValueError(
                    f"{name} of a hybrid decoding state must be {np.dtype(expected).name} of "
                    f"shape {expected_shape} for its configuration, got {value.dtype} {value.shape}"
                )
            if kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"{name} of a hybrid decoding state must be finite")
            if kind == "f64" and (np.isnan(value).any() or (value == np.inf).any()):
                raise ValueError(f"{name} of a hybrid decoding state must be finite or -inf")
            arrays[name] = value
        n_tokens = int(np.asarray(data["n_tokens"]))
        if n_tokens < 0:
            raise ValueError(f"n_tokens of a hybrid decoding state must be >= 0, got {n_tokens}")
        return cls(arrays, config, n_tokens, str(np.asarray(data["fingerprint"])))

    def save(self, file) -> None:
        """Write the state with :func:`numpy.savez` (a path or a binary file object)."""
        np.savez(file, **self.to_dict())

    @classmethod
    def load(cls, file) -> HybridState:
        """Read a state written by :meth:`save`; any malformed file is one ``ValueError``."""
        try:
            with np.load(file, allow_pickle=False) as data:
                return cls.from_dict(data)
        except ValueError as error:
            if "hybrid decoding state" in str(error):
                raise
            raise ValueError(f"not a hybrid decoding state file: {error}") from None
        except (OSError, EOFError, KeyError) as error:
            raise ValueError(f"not a hybrid decoding state file: {error}") from None

    def __repr__(self):
        return (
            f"HybridState(batch_shape={self.batch_shape}, window={self.config['window']}, "
            f"n_global={self.config['n_global']}, n_candidates={self.config['n_candidates']}, "
            f"dtype={self.dtype}, n_tokens={self.n_tokens})"
        )


def _sizes(config):
    N = int(np.prod(config["batch_shape"], dtype=np.int64))
    return {
        "N": N,
        "Nq": N * config["group"],
        "window": config["window"],
        "n_global": config["n_global"],
        "n_candidates": config["n_candidates"],
        "m": config["m"],
        "d": config["d"],
        "dv": config["dv"],
        "dv1": config["dv"] + 1,
    }


class HybridAttention:
    """Hybrid attention holding one random projection, fitted constants and scoring
    directions across calls, with token-by-token decoding.

    Exact softmax on each query's ``window`` most recent keys, the first ``n_global``
    keys and its ``n_top`` keys of largest logit among ``n_candidates`` scored by a
    fixed direction per head; random features (:func:`favor_attention`'s estimate)
    for every other key (see :func:`hybrid_attention`).  :meth:`fit` on calibration
    queries and keys draws the projection and freezes the map's constants and the
    candidate scoring direction of each head (its mean query), which makes every
    setting causal-safe.  :meth:`initial_state` and :meth:`step` continue causal
    attention ``T >= 1`` tokens at a time from a :class:`HybridState` of
    ``O(window + n_global + n_candidates (d + dv + m) + m dv)`` numbers per head,
    whatever the prefix length; step by step equals the whole causal call.

    Parameters
    ----------
    window : int or array-like of int, default=64
        Exact keys ``0 <= i - j < window`` (causal) or ``|i - j| < window``; one per
        head (axis -3) for calls (decoding takes one value).
    n_global : int, default=0
        The first ``n_global`` keys are exact for every query.
    n_top : int or array-like of int, default=0
        Exact keys of largest logit per query among its candidates (one per head for
        calls; decoding takes one value).
    n_candidates : int or None, default=None
        Candidates per query (256 if None, with ``n_top > 0``).
    n_components : int, default=256
        Output width of the feature map.
    feature_map : str or FeatureMap, default="positive"
        A registered map (see :func:`favor_attention`).
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        Kind of projection.
    causal : bool, default=False
        Whether calls are causal (decoding always is).
    random_state : int, RandomState instance or None, default=None
        Seed of the projection.

    Attributes
    ----------
    projection_ : ndarray of shape (n_projections, d)
        After :meth:`fit` (or the first call).
    constants_ : dict
        The map's frozen constants (``{}`` for data-free maps), after :meth:`fit`.
    candidate_query_ : ndarray of shape (heads, d) or (d,)
        Each head's mean calibration query (the candidates' scoring direction).
    gamma_ : float
        Logit scale of :meth:`fit` (``1 / sqrt(d)`` if not given).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import HybridAttention, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 2, 200, 16))
    >>> layer = HybridAttention(window=16, n_global=1, n_top=4, n_candidates=32,
    ...                         n_components=64, causal=True, random_state=0).fit(Q, K)
    >>> out = layer(Q, K, V)
    >>> out.shape
    (2, 200, 16)

    Token by token, the same outputs:

    >>> state = layer.initial_state(batch_shape=(2,), dv=16)
    >>> steps = [layer.step(Q[:, t:t + 1], K[:, t:t + 1], V[:, t:t + 1], state)[0]
    ...          for t in range(200)]
    >>> bool(np.allclose(np.concatenate(steps, axis=1), out))
    True
    """

    def __init__(self, window=64, n_global=0, n_top=0, n_candidates=None, *,
                 n_components=DEFAULT_N_COMPONENTS, feature_map="positive",
                 projection="orthogonal", causal=False, random_state=None):  # fmt: skip
        self.window = window
        self.n_global = n_global
        self.n_top = n_top
        self.n_candidates = n_candidates
        self.n_components = n_components
        self.feature_map = feature_map
        self.projection = projection
        self.causal = causal
        self.random_state = random_state

    # -- setup -----------------------------------------------------------------------

    def fit(self, Q, K, *, gamma=None):
        """Draw the projection; fit and freeze the map's constants and each head's
        candidate direction (its mean query) on calibration ``Q`` and ``K``.

        Parameters
        ----------
        Q, K : array-like of shape (..., L, d)
            Calibration queries and keys (heads on axis -3, if any).
        gamma : float or None, default=None
            Logit scale (``1 / sqrt(d)`` if None), kept as ``gamma_``.

        Returns
        -------
        self : HybridAttention
        """
        Q = check_float_array(Q, "Q", min_ndim=2, dtype=np.float64)
        K = check_float_array(K, "K", min_ndim=2, dtype=np.float64)
        if Q.shape[-1] != K.shape[-1]:
            raise ValueError(f"Q and K must share d, got {Q.shape[-1]} and {K.shape[-1]}")
        d = Q.shape[-1]
        self._draw(d)
        self.gamma_ = check_logit_scale(gamma, d)
        fmap = get_feature_map(self.feature_map)
        self.constants_ = {}
        if fmap.data_constants:
            self.constants_ = check_constants(fmap, fit_constants(
                fmap, Q.reshape(-1, d), K.reshape(-1, d), input_scale=math.sqrt(self.gamma_),
                projection=self.projection_,
            ), d)  # fmt: skip
        if Q.ndim >= 3:
            axes = tuple(i for i in range(Q.ndim) if i not in (Q.ndim - 3, Q.ndim - 1))
            self.candidate_query_ = Q.mean(axis=axes)
        else:
            self.candidate_query_ = Q.mean(axis=0)
        return self

    def _draw(self, d):
        fmap = get_feature_map(self.feature_map)
        rng = check_seed(self.random_state)
        proj = resolve_projection(fmap, None, self.n_components, d, self.projection, rng)
        self.projection_ = proj.matrix
        # the map's other draws are made again from this seed wherever the projection is used
        self._draw_seed = int(rng.randint(2**31))

    def _projection(self, d) -> AttentionProjection:
        if not hasattr(self, "projection_"):
            self._draw(d)
        if self.projection_.shape[1] != d:
            raise ValueError(
                f"the projection was drawn for d = {self.projection_.shape[1]}, got d = {d}"
            )
        fmap = get_feature_map(self.feature_map)
        return resolve_projection(fmap, self.projection_, self.n_components, d, self.projection,
                                  self._draw_seed)  # fmt: skip

    def _gamma(self, gamma, d):
        if gamma is None and hasattr(self, "gamma_"):
            return self.gamma_
        return check_logit_scale(gamma, d)

    # -- whole sequences -------------------------------------------------------------

    def __call__(self, Q, K, V, *, gamma=None, key_padding_mask=None):
        """Hybrid attention of whole sequences with the held projection.

        Grouped-query heads: K and V may have ``1/g`` of Q's heads (axis -3); each
        key/value head then serves ``g`` consecutive query heads.

        Returns
        -------
        out : ndarray of shape (..., L, dv)
        """
        Q, K, V, mask = check_attention_arrays(Q, K, V, key_padding_mask)
        return self._attend(Q, K, V, gamma, mask, self.causal)

    def _attend(self, Q, K, V, gamma, mask, causal):
        """:meth:`__call__` of checked arrays, ``causal`` or not."""
        d = Q.shape[-1]
        proj = self._projection(d)
        K, V = _expand_groups(Q, K, V)
        fmap = get_feature_map(self.feature_map)
        top = bool(np.any(np.asarray(self.n_top)))
        candidate_query = getattr(self, "candidate_query_", None) if top else None
        if top and causal and candidate_query is None:
            raise ValueError("n_top > 0 with causal=True needs fit(Q, K) first (the scoring "
                             "directions come from calibration queries)")  # fmt: skip
        return hybrid_attention(
            Q, K, V, window=self.window, n_global=self.n_global, n_top=self.n_top,
            n_candidates=self.n_candidates if top else None, candidate_query=candidate_query,
            causal=causal, n_components=proj.n_components, feature_map=fmap,
            gamma=self._gamma(gamma, d), projection_matrix=proj.matrix,
            constants=getattr(self, "constants_", None) or None, key_padding_mask=mask,
            random_state=self._draw_seed,
        )  # fmt: skip

    # -- decoding --------------------------------------------------------------------

    def _decoder(self, d, dtype, gamma):
        """The features, settings and fingerprint of decoding (cached per dtype, gamma)."""
        if not hasattr(self, "projection_"):
            raise ValueError("decoding needs a projection: call fit(Q, K) first")
        key = (np.dtype(dtype), float(gamma), id(self.projection_))
        cache = self.__dict__.setdefault("_decoders", {})
        if key in cache:
            return cache[key]
        for name in ("window", "n_top"):
            if np.ndim(getattr(self, name)) != 0:
                raise ValueError(f"decoding takes one {name} for every head, got an array")
        window = per_head(self.window, "window", 1)[0]
        n_global = per_head(self.n_global, "n_global", 1)[0]
        n_top = per_head(self.n_top, "n_top", 1)[0]
        n_candidates = 0
        if n_top:
            n_candidates = 256 if self.n_candidates is None else int(self.n_candidates)
            if n_candidates < n_top:
                raise ValueError(f"n_candidates must be at least n_top={n_top}, got {n_candidates}")
            if not hasattr(self, "candidate_query_"):
                raise ValueError("n_top > 0 needs fit(Q, K) first (the scoring directions)")
        fmap = get_feature_map(self.feature_map)
        if fmap.data_constants and not hasattr(self, "constants_"):
            raise ValueError(f"feature_map={fmap.name!r} needs fit(Q, K) first (its constants)")
        constants = getattr(self, "constants_", {})
        plan = plan_attention(fmap, d, gamma=gamma, causal=True, constants=constants or None,
                              drawn=self._projection(d))  # fmt: skip
        feat = plan.features(dtype, constants)
        digest = hashlib.blake2b(digest_size=12)
        digest.update(f"{plan.fingerprint}|{id(fmap)}|{window}|{n_global}|{n_top}|"
                      f"{n_candidates}".encode())  # fmt: skip
        if n_top:
            digest.update(np.ascontiguousarray(self.candidate_query_, dtype=np.float64).tobytes())
        decoder = _Decoder(fmap, feat, constants, gamma, int(window), int(n_global), int(n_top),
                           n_candidates, self.candidate_query_ if n_top else None,
                           digest.hexdigest())  # fmt: skip
        cache[key] = decoder
        return decoder

    def initial_state(self, batch_shape=(), dv=None, *, dtype=np.float64, n_query_heads=None):
        """An empty :class:`HybridState` for keys and values of leading dimensions
        ``batch_shape`` (the last: key/value heads).

        Parameters
        ----------
        batch_shape : tuple of int, default=()
        dv : int or None, default=None
            Value width (``d`` if None).
        dtype : {numpy.float64, numpy.float32}, default=numpy.float64
        n_query_heads : int or None, default=None
            Query heads (a multiple of the key/value heads ``batch_shape[-1]``, for
            grouped-query attention); None: as many as key/value heads.
        """
        if not hasattr(self, "projection_"):
            raise ValueError("decoding needs a projection: call fit(Q, K) first")
        d = self.projection_.shape[1]
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        batch_shape = (
            tuple(int(x) for x in np.atleast_1d(np.asarray(batch_shape, dtype=np.int64)))
            if np.ndim(batch_shape)
            else ((int(batch_shape),) if batch_shape != () else ())
        )
        dv = d if dv is None else int(dv)
        heads = batch_shape[-1] if batch_shape else 1
        group = 1 if n_query_heads is None else int(n_query_heads) // heads
        if n_query_heads is not None and (group < 1 or group * heads != int(n_query_heads)):
            raise ValueError(f"n_query_heads={n_query_heads} must be a multiple of the "
                             f"key/value heads {heads}")  # fmt: skip
        dec = self._decoder(d, dtype, self._gamma(None, d))
        return dec.empty(batch_shape, group, d, dv, dtype)

    def step(self, q, k, v, state=None, *, gamma=None, key_padding_mask=None):
        """Continue causal hybrid attention by ``T >= 1`` tokens.

        Parameters
        ----------
        q : array-like of shape (..., Hq, T, d)
            The new queries; ``Hq`` a multiple of the key/value heads.
        k, v : array-like of shape (..., H, T, d) and (..., H, T, dv)
            The new keys and values.
        state : HybridState or None
            The state after the earlier tokens (updated in place); None: a new one.
        gamma : float or None, default=None
            Logit scale; must be the state's (``gamma_`` if None).
        key_padding_mask : array-like of bool, shape (..., T), default=None
            True marks a new key to ignore.

        Returns
        -------
        out : ndarray of shape (..., Hq, T, dv)
        state : HybridState

        Notes
        -----
        A prompt (``T > 1`` from an empty state) runs the block engine of
        :func:`hybrid_attention` once and builds the state from the whole block (the
        far keys' state by one matrix product per head, the candidate pools by one
        sort per query head), at about the cost of the call.  A token takes one
        compiled call for every head (for exp maps with a dense projection the
        features are finished in it too).  Other blocks go token by token.
        """
        if (
            type(state) is HybridState and type(q) is np.ndarray and type(k) is np.ndarray
            and type(v) is np.ndarray and q.dtype == state.dtype and k.dtype == q.dtype
            and v.dtype == q.dtype and q.ndim > 1 and q.shape[-2] == 1
            and (key_padding_mask is None or (type(key_padding_mask) is np.ndarray
                                              and key_padding_mask.dtype == np.bool_))
        ):  # fmt: skip
            # one token: the compiled step checks finiteness before it changes anything
            d = q.shape[-1]
            dec = self._decoder(d, q.dtype, self._gamma(gamma, d))
            return dec.one_token(q, k, v, key_padding_mask, state)
        q, k, v, mask = check_attention_arrays(q, k, v, key_padding_mask)
        d = q.shape[-1]
        gamma = self._gamma(gamma, d)
        dec = self._decoder(d, q.dtype, gamma)
        if q.shape[-2] > 1 and (state is None or getattr(state, "n_tokens", None) == 0):
            # a prompt: the block engine's outputs, the state built from the whole block
            from .hybrid_prefill import fill_state

            state, rows = dec.inputs(q, k, v, mask, state)
            hidden = rows[-1]
            batch = state.batch_shape
            whole_mask = None
            if hidden.any():
                whole_mask = hidden.reshape(batch + hidden.shape[-1:])
                if batch and state.config["group"] > 1:
                    whole_mask = np.repeat(whole_mask, state.config["group"], axis=-2)
            out = self._attend(q, k, v, gamma, whole_mask, True)
            fill_state(dec, state, *rows)
            return out, state
        return dec.step(q, k, v, mask, state)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_decoders", None)  # a cache (with thread-local buffers): rebuilt on demand
        return state

    def __repr__(self):
        return (f"HybridAttention(window={self.window!r}, n_global={self.n_global!r}, "
                f"n_top={self.n_top!r}, n_candidates={self.n_candidates!r}, "
                f"n_components={self.n_components!r}, causal={self.causal!r})")  # fmt: skip


_hybrid_token = None


def _arrays_fit(state):
    """True when every array of ``state`` has its configuration's shape and dtype and
    is C-ordered and writeable."""
    from .hybrid_prefill import _check_arrays

    try:
        _check_arrays(state)
    except ValueError:
        return False
    return all(a.flags.c_contiguous and a.flags.writeable for a in state.arrays.values())


def _prod(shape):
    n = 1
    for x in shape:
        n *= x
    return n


def _c_rows(X, n):
    """``X`` as ``n`` C-ordered rows (a view when it is C-ordered), writeable."""
    rows = X.reshape(n, X.shape[-1])
    return rows if rows.flags.c_contiguous and rows.flags.writeable else np.array(rows, order="C")


def _expand_groups(Q, K, V):
    """K and V repeated over their query-head groups (axis -3) when Q has more heads."""
    if Q.ndim < 3 or K.ndim < 3 or Q.shape[-3] == K.shape[-3] or K.shape[-3] == 1:
        return K, V
    hq, hk = Q.shape[-3], K.shape[-3]
    if hq % hk or V.ndim < 3 or V.shape[-3] != hk:
        raise ValueError(f"Q has {hq} heads: K and V must have a divisor of it, got {hk}")
    return np.repeat(K, hq // hk, axis=-3), np.repeat(V, hq // hk, axis=-3)


class _Decoder:
    """Decoding of one :class:`HybridAttention` for one dtype and logit scale."""

    def __init__(self, fmap, feat, constants, gamma, window, n_global, n_top, n_candidates,
                 candidate_query, fingerprint):  # fmt: skip
        self.fmap, self.feat, self.constants, self.gamma = fmap, feat, constants, gamma
        self.window, self.n_global = window, n_global
        self.n_top, self.n_candidates = n_top, n_candidates
        self.candidate_query = candidate_query
        self.fingerprint = fingerprint

    def empty(self, batch_shape, group, d, dv, dtype):
        config = {"batch_shape": tuple(batch_shape), "group": group, "window": self.window,
                  "n_global": self.n_global, "n_candidates": self.n_candidates,
                  "m": self.feat.n_out, "d": d, "dv": dv}  # fmt: skip
        return HybridState.empty(config, dtype, self.fingerprint)

    def step(self, q, k, v, mask, state):
        state, (qs, ks, vs, hidden) = self.inputs(q, k, v, mask, state)
        N, group, T, d = qs.shape
        out = np.empty((N, group, T, v.shape[-1]), dtype=q.dtype)
        if T == 1:
            self.token(state, qs.reshape(N * group, d), ks.reshape(N, d), vs.reshape(N, -1),
                       hidden.reshape(N), out.reshape(N * group, -1))  # fmt: skip
        else:
            row = np.empty((N * group, v.shape[-1]), dtype=q.dtype)
            for t in range(T):
                self.token(state, np.ascontiguousarray(qs[:, :, t].reshape(N * group, d)),
                           np.ascontiguousarray(ks[:, t]), np.ascontiguousarray(vs[:, t]),
                           np.ascontiguousarray(hidden[:, t]), row)  # fmt: skip
                out[:, :, t] = row.reshape(N, group, -1)
        return out.reshape(q.shape[:-1] + (v.shape[-1],)), state

    def one_token(self, q, k, v, mask, state):
        """:meth:`step` of one token, the shape checks cached per input shapes."""
        key = (q.shape, k.shape, v.shape, None if mask is None else mask.shape)
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(key)
        if plan is None:  # the whole validation, once per shapes
            return self.step(q, k, v, mask, state) if len(plans) > 16 else self._plan_token(
                q, k, v, mask, state, plans, key)  # fmt: skip
        batch, n_query, dv = plan
        self.check_state(state, batch, n_query // max(1, _prod(batch)), q.shape[-1], dv, q.dtype)
        N = _prod(batch)
        hidden = np.zeros(N, dtype=bool)
        if mask is not None:
            hidden[:] = np.broadcast_to(mask, batch + (1,)).reshape(N)
        out = np.empty(q.shape[:-1] + (dv,), dtype=q.dtype)
        self.token(state, _c_rows(q, n_query), _c_rows(k, N), _c_rows(v, N), hidden,
                   out.reshape(n_query, dv))  # fmt: skip
        return out, state

    def _plan_token(self, q, k, v, mask, state, plans, key):
        out, state = self.step(q, k, v, mask, state)
        plans[key] = (state.batch_shape, q.size // q.shape[-1], v.shape[-1])
        return out, state

    def inputs(self, q, k, v, mask, state):
        """``(state, (qs, ks, vs, hidden))``: the state (a new one for None) checked
        against the inputs, and the inputs as rows: ``qs`` (N, group, T, d), ``ks``
        (N, T, d), ``vs`` (N, T, dv), ``hidden`` (N, T) (the mask broadcast)."""
        d, T = q.shape[-1], q.shape[-2]
        if k.shape[-2] != T or v.shape[-2] != T or k.shape[-1] != d:
            raise ValueError(
                f"q, k and v must hold the same tokens: got shapes {q.shape}, {k.shape}, {v.shape}"
            )
        batch = k.shape[:-2] if k.ndim > 2 else ()
        if v.shape[:-2] != batch:
            raise ValueError(f"k and v must have one batch shape, got {k.shape} and {v.shape}")
        heads = batch[-1] if batch else 1
        if q.shape[:-3] != batch[:-1] or (q.ndim > 2) != bool(batch):
            raise ValueError(f"q's leading dimensions {q.shape[:-2]} do not match k's {batch}")
        hq = q.shape[-3] if q.ndim > 2 else 1
        if hq % heads:
            raise ValueError(f"q has {hq} heads: a multiple of k's {heads} heads is needed")
        group = hq // heads
        if state is None:
            state = self.empty(batch, group, d, v.shape[-1], q.dtype)
        self.check_state(state, batch, group, d, v.shape[-1], q.dtype)
        N = int(np.prod(batch, dtype=np.int64))
        qs = np.ascontiguousarray(q).reshape(N, group, T, d)
        ks = np.ascontiguousarray(k).reshape(N, T, d)
        vs = np.ascontiguousarray(v).reshape(N, T, v.shape[-1])
        hidden = np.zeros((N, T), dtype=bool)
        if mask is not None:
            try:
                hidden[:] = np.broadcast_to(mask, batch + (T,)).reshape(N, T)
            except ValueError:
                raise ValueError(
                    f"key_padding_mask of shape {mask.shape} does not broadcast to {batch + (T,)}"
                ) from None
        return state, (qs, ks, vs, hidden)

    def check_state(self, state, batch, group, d, dv, dtype):
        """A ``TypeError``/``ValueError`` unless ``state`` continues this attention for
        inputs of these shapes and ``dtype``."""
        if not isinstance(state, HybridState):
            raise TypeError(f"state must be a HybridState, got {type(state).__name__}")
        if state.fingerprint != self.fingerprint:
            raise ValueError(
                "the state was made by another attention (projection, feature map, constants, "
                "gamma, window, global or candidate settings differ): continue it with the "
                "attention that created it"
            )
        cfg = state.config
        if (cfg["batch_shape"], cfg["group"], cfg["d"], cfg["dv"]) != (tuple(batch), group, d, dv):
            raise ValueError(
                f"the state holds batch shape {cfg['batch_shape']}, {cfg['group']} query heads "
                f"per key head, d = {cfg['d']} and dv = {cfg['dv']}; the inputs give {batch}, "
                f"{group}, {d} and {dv}"
            )
        if state.dtype != dtype:
            raise ValueError(f"the state holds {state.dtype} but the inputs are {dtype}")

    def directions(self, batch, n_query, d):
        """Every query head's scoring direction, (Nq, d) float64 ((0, d) without top keys)."""
        return self._buffers(batch, n_query, d, self.feat.dtype)[-1]

    def _buffers(self, batch, n_query, d, dtype):
        """Scratch of one token (features and their logs) and every query head's
        scoring direction (Nq, d) float64, reused while the shapes stay."""
        key = (tuple(batch), n_query, d, np.dtype(dtype))
        local = self.__dict__.get("_local")
        if local is None:
            local = self.__dict__.setdefault("_local", threading.local())
        cached = getattr(local, "scratch", None)  # per thread: steps may run concurrently
        if cached is None or cached[0] != key:
            N, m = int(np.prod(batch, dtype=np.int64)), self.feat.n_out
            u = np.zeros((0, d))
            if self.n_top:
                hq = n_query // N * (batch[-1] if batch else 1)
                u = np.broadcast_to(self.candidate_query, tuple(batch[:-1]) + (hq, d))
                u = np.array(u.reshape(n_query, d), dtype=np.float64, order="C")
            buffers = (np.empty((n_query, m), dtype), np.empty(n_query), np.empty((N, m), dtype),
                       np.empty(N), u)  # fmt: skip
            cached = (key, buffers)
            local.scratch = cached
        return cached[1]

    def token(self, state, q, k, v, hidden, out):
        """One new token for every head: ``q`` (Nq, d), ``k`` (N, d), ``v`` (N, dv),
        ``hidden`` (N,) and ``out`` (Nq, dv), C-ordered, in the state's dtype.

        The features' products here (two matrix products), the rest in one compiled
        call (:func:`~favorkern._numba.hybrid_step.hybrid_token`).
        """
        global _hybrid_token
        if _hybrid_token is None:  # numba loads on the first step, not at import
            from .._numba.hybrid_step import hybrid_token as _hybrid_token

        A, pos, w, g = state.arrays, state.n_tokens, self.window, self.n_global
        q, k, v = (_c_rows(X, X.shape[0]) for X in (q, k, v))  # read-only inputs: copies
        psi_q, a, psi_far, r_far, u = self._buffers(state.batch_shape, q.shape[0], q.shape[1],
                                                     state.dtype)  # fmt: skip
        far = None  # the keys that leave for the random-feature state
        if pos >= g:
            far = k if not w else (A["win_k"][:, (pos - g) % w] if pos - w >= g else None)
        finish = self.finish
        try:
            if finish is not None:
                np.matmul(q, finish[0], out=psi_q)
                if far is not None:
                    np.matmul(far, finish[0], out=psi_far)
            else:
                prepared = self.fmap.prepare(q, "query", self.constants)
                a[:] = stable_features(self.feat, np.asarray(prepared, dtype=q.dtype), psi_q)[1]
                if far is not None:
                    prepared = self.fmap.prepare(np.ascontiguousarray(far), "key", self.constants)
                    r_far[:] = stable_features(self.feat, np.asarray(prepared, dtype=q.dtype),
                                               psi_far)[1]  # fmt: skip
            status = _hybrid_token(
                q, k, v, hidden, pos, w, g, self.n_top, float(self.gamma), psi_q, a, psi_far, r_far,
                finish is not None, *(finish[1:] if finish is not None else self._no_finish),
                A["S"], A["B"], A["glob_k"], A["glob_v"], A["glob_hidden"], A["win_k"],
                A["win_v"], A["win_hidden"], u, A["pool_k"], A["pool_v"], A["pool_psi"],
                A["pool_r"], A["pool_score"], A["pool_pos"], out,
            )  # fmt: skip
        except (TypeError, ValueError, IndexError):
            if _arrays_fit(state):
                raise  # not the state's arrays: an error of this code, shown as it is
            status = -2
        if status == -1:
            raise ValueError("q, k and v must be finite (got NaN or infinity)")
        if status:
            raise ValueError(
                "the hybrid decoding state's arrays do not fit its configuration (shapes, "
                "dtypes, C order or writeable): rebuild it with HybridState.from_dict"
            )
        state.n_tokens = pos + 1

    @property
    def finish(self):
        """``(W^T, column logs, a, max log s)`` when an exp map's features can be
        finished in the compiled step (dense projection, ``prepare`` the identity),
        else None."""
        if "_finish" not in self.__dict__:
            from ..feature_maps import FeatureMap

            spec, finish = self.feat.spec, None
            if (spec.func == "exp" and spec.projector is None and spec.offset is None
                    and type(self.fmap).prepare is FeatureMap.prepare):  # fmt: skip
                log_scale = np.asarray(spec.log_scale, dtype=np.float64)
                top = float(log_scale.max())
                column_log = np.broadcast_to(log_scale - top, (self.feat.n_out,))
                finish = (np.ascontiguousarray(np.asarray(spec.weights).T, dtype=self.feat.dtype),
                          np.array(column_log, dtype=self.feat.dtype, order="C"),  # writable
                          float(spec.sq_coef), top)  # fmt: skip
            self._finish = finish
            self._no_finish = (np.zeros(1, dtype=self.feat.dtype), 0.0, 0.0)
        return self._finish
