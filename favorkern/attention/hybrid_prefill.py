"""The decoding state of causal hybrid attention after a whole prompt, built at once.

After tokens ``0..T-1`` the state of :class:`~.hybrid_layer.HybridState` holds the
first ``n_global`` keys, the last ``window`` keys in their ring slots, the
random-feature state of the keys that left the window (``S = sum_j phi(k_j) (v_j,
1) e^{-B}``, ``B`` the largest feature log ``r_j`` among them) and, per query head,
the ``n_candidates`` of those keys of best score ``u . k_j`` (ties: the earlier
key), in score order.  Token by token these are a running maximum, a rescaled sum
and an insertion into a sorted list; over a whole prompt they are a maximum, one
matrix product per head and one sort per query head, with the same result.
"""

from __future__ import annotations

import numpy as np

from .hybrid_engine import stable_features

__all__ = ["fill_state"]

# rows of far keys whose features are computed at once (bounds the scratch memory)
_CHUNK = 4096


def _check_arrays(state):
    """A ``ValueError`` unless every array of ``state`` has the shape and dtype its
    configuration implies (the state is written in place)."""
    from .hybrid_layer import _FIELDS, _sizes

    sizes = _sizes(state.config)
    for name, (shape, kind) in _FIELDS.items():
        value = state.arrays.get(name)
        expected = tuple(sizes[s] for s in shape)
        dtype = {"b": np.bool_, "i64": np.int64, "f64": np.float64, "f": state.dtype}[kind]
        if not isinstance(value, np.ndarray) or value.shape != expected or value.dtype != dtype:
            raise ValueError(
                f"{name} of the hybrid decoding state must be {np.dtype(dtype).name} of shape "
                f"{expected} for its configuration: rebuild it with HybridState.from_dict"
            )


def _far_features(dec, keys, dtype):
    """``(psi, r)`` of the rows ``keys`` (L, d): ``phi(k) = e^r psi``, in chunks."""
    psi = np.empty((keys.shape[0], dec.feat.n_out), dtype=dtype)
    r = np.empty(keys.shape[0])
    for start in range(0, keys.shape[0], _CHUNK):
        part = slice(start, start + _CHUNK)
        prepared = np.ascontiguousarray(dec.fmap.prepare(keys[part], "key", dec.constants))
        _, r[part] = stable_features(dec.feat, prepared.astype(dtype, copy=False), psi[part])
    return psi, r


def _pool(A, h, keys, values, psi, r, score, positions, visible):
    """Query head ``h``'s candidates: the best ``n_candidates`` visible far keys by
    score, ties to the earlier, in score order."""
    n_pool = A["pool_pos"].shape[1]
    rows = np.flatnonzero(visible)
    # lexsort: the last key is the primary one (score descending), then the position
    order = rows[np.lexsort((positions[rows], -score[rows]))][:n_pool]
    n = order.shape[0]
    A["pool_k"][h, :n] = keys[order]
    A["pool_v"][h, :n] = values[order]
    A["pool_psi"][h, :n] = psi[order]
    A["pool_r"][h, :n] = r[order]
    A["pool_score"][h, :n] = score[order]
    A["pool_pos"][h, :n] = positions[order]


def fill_state(dec, state, qs, ks, vs, hidden):
    """Write into the empty ``state`` what ``T`` tokens leave in it, per head:
    ``ks`` (N, T, d), ``vs`` (N, T, dv), ``hidden`` (N, T) (``qs`` only for the
    shapes: queries leave nothing).  ``dec`` is the decoder of the attention."""
    _check_arrays(state)
    A, dtype = state.arrays, state.dtype
    N, T = hidden.shape
    group = qs.shape[1]
    w, g = dec.window, dec.n_global
    n_glob = min(g, T)
    A["glob_k"][:, :n_glob] = ks[:, :n_glob]
    A["glob_v"][:, :n_glob] = vs[:, :n_glob]
    A["glob_hidden"][:, :n_glob] = hidden[:, :n_glob]
    far_end = T
    if w:
        start = max(g, T - w)
        slots = (np.arange(start, T) - g) % w
        A["win_k"][:, slots] = ks[:, start:]
        A["win_v"][:, slots] = vs[:, start:]
        A["win_hidden"][:, slots] = hidden[:, start:]
        far_end = T - w
    if far_end > g:
        positions = np.arange(g, far_end)
        u = dec.directions(state.batch_shape, N * group, ks.shape[-1])
        for n in range(N):
            visible = ~hidden[n, g:far_end]
            if not visible.any():
                continue
            keys, values = ks[n, g:far_end], vs[n, g:far_end]
            psi, r = _far_features(dec, keys, dtype)
            top = float(r[visible].max())
            weights = np.where(visible, np.exp(np.where(visible, r - top, 0.0)), 0.0)
            # S = sum_j psi_j (v_j, 1) e^{r_j - B}, summed in float64 as one product
            weighted = np.empty((keys.shape[0], values.shape[1] + 1))
            weighted[:, :-1] = values
            weighted[:, -1] = 1.0
            weighted *= weights[:, np.newaxis]
            A["S"][n] = psi.T.astype(np.float64) @ weighted
            A["B"][n] = top
            if A["pool_pos"].shape[1]:
                scores = keys.astype(np.float64) @ u[n * group : (n + 1) * group].T
                for j in range(group):
                    _pool(A, n * group + j, keys, values, psi, r, scores[:, j], positions, visible)
    state.n_tokens = T
