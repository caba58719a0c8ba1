"""The key state of linear attention: ``(S, z, c)`` with its four operations.

For keys ``k_j`` and values ``v_j`` the state is

    S = sum_j phi(k_j) v_j^T exp(-c),   z = sum_j phi(k_j) exp(-c),

where ``c`` is the key stabilizer, a log-scale shared by every key of one
(batch, head) (``-inf`` while the state holds no key).  A shared constant cancels
in the normalized output ``phi(q) S / phi(q) z``; a per-key one would not.

Every attention algorithm of favorkern is built from these operations, in one
place: :meth:`KeyState.rescale` (move to a larger stabilizer), :meth:`KeyState.add`
(absorb stabilized key features), :func:`merge` (sum states after rescaling them
to their largest stabilizer) and :func:`exclusive_scan` (the states of all earlier
chunks, for causal attention split over chunks, threads or dask tasks).  The
arrays may carry leading (batch, head) dimensions: ``S`` (..., m, dv), ``z``
(..., m), ``c`` (...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KeyState", "merge", "exclusive_scan"]


@dataclass
class KeyState:
    """Running key state ``(S, z, c)`` of linear attention (see the module docstring).

    Attributes
    ----------
    S : ndarray of shape (..., m, dv)
        ``sum_j phi(k_j) v_j^T exp(-c)``.
    z : ndarray of shape (..., m)
        ``sum_j phi(k_j) exp(-c)``.
    c : float or ndarray of shape (...)
        The key stabilizer (log scale), ``-inf`` for a state without keys.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.attention.state import KeyState, merge
    >>> a = KeyState(np.ones((2, 1)), np.ones(2), 0.0)
    >>> b = KeyState(np.ones((2, 1)), np.ones(2), np.log(2.0))
    >>> total = merge([a, b])
    >>> bool(total.c == np.log(2.0)), total.z.tolist()
    (True, [1.5, 1.5])
    """

    S: np.ndarray
    z: np.ndarray
    c: object

    @classmethod
    def empty(cls, n_out, dv, dtype, batch_shape=()):
        """A state without keys: zeros and ``c = -inf``."""
        batch_shape = tuple(batch_shape)
        const = -np.inf if not batch_shape else np.full(batch_shape, -np.inf)
        return cls(
            np.zeros(batch_shape + (n_out, dv), dtype=dtype),
            np.zeros(batch_shape + (n_out,), dtype=dtype),
            const,
        )

    @property
    def is_empty(self) -> bool:
        """True while no key has entered (every stabilizer is ``-inf``)."""
        return bool(np.all(np.asarray(self.c) == -np.inf))

    def rescale(self, const) -> None:
        """Rescale in place to the stabilizer ``const >= c`` (a scalar state only).

        ``S`` and ``z`` are multiplied by ``exp(c - const)``; an empty state just
        takes the new constant.
        """
        const = float(const)
        if self.c > -np.inf and const != self.c:
            factor = np.exp(self.c - const)
            self.S *= self.S.dtype.type(factor)
            self.z *= self.z.dtype.type(factor)
        self.c = const

    def add(self, features, values, ones=None) -> None:
        """Absorb keys whose ``features`` are already divided by ``exp(c)``.

        ``S += features^T values`` and ``z += features^T 1`` (``ones``: a ones vector
        of the features' length, passed to reuse a buffer).
        """
        if ones is None:
            ones = np.ones(features.shape[0], dtype=features.dtype)
        self.S += features.T @ values
        self.z += features.T @ ones

    def copy(self) -> KeyState:
        """An independent copy."""
        c = self.c.copy() if isinstance(self.c, np.ndarray) else self.c
        return KeyState(self.S.copy(), self.z.copy(), c)

    def astype(self, dtype) -> KeyState:
        """The state with ``S`` and ``z`` in ``dtype`` (``c`` stays float64)."""
        return KeyState(self.S.astype(dtype, copy=False), self.z.astype(dtype, copy=False), self.c)


def merge(states, dtype=np.float64) -> KeyState:
    """Sum of states after rescaling each to the largest stabilizer, per (batch, head).

    ``c = max_i c_i``, ``S = sum_i S_i exp(c_i - c)`` and ``z`` alike, accumulated in
    float64 and returned in ``dtype``; a state without keys contributes nothing.
    Works for scalar states and for states with leading (batch, head) dimensions.
    """
    states = list(states)
    const = np.asarray(states[0].c, dtype=np.float64)
    for state in states[1:]:
        const = np.maximum(const, state.c)
    S = np.zeros(states[0].S.shape, dtype=np.float64)
    z = np.zeros(states[0].z.shape, dtype=np.float64)
    for state in states:
        c = np.asarray(state.c, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            factor = np.where(c > -np.inf, np.exp(c - const), 0.0)
        S += state.S * factor[..., np.newaxis, np.newaxis]
        z += state.z * factor[..., np.newaxis]
    if const.ndim == 0 and not any(isinstance(state.c, np.ndarray) for state in states):
        const = float(const)
    return KeyState(S.astype(dtype, copy=False), z.astype(dtype, copy=False), const)


def exclusive_scan(states, dtype=np.float64, offset=None) -> list:
    """Merged states before each of ``states``: ``len(states) + 1`` entries.

    Entry ``i`` is ``merge([offset] + states[:i])``: the first is ``offset``
    (``None`` when there is none), the last the total.  The stabilizer of entry ``i``
    is the maximum over the keys before state ``i`` only, so a causal output computed
    from it never depends on a later key.
    """
    prefixes = [offset]
    running = offset
    for state in states:
        running = state if running is None else merge([running, state], dtype)
        prefixes.append(running)
    return prefixes
