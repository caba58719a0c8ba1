"""Feature maps evaluated with the stabilizers of attention, and their buffers."""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import cached_property

import numpy as np

from .._elementwise import exp_kernel, sq_norms
from ..feature_maps import apply_block

__all__ = ["AttentionFeatures", "Buffers", "masked_row_log"]

# Exp maps evaluate their features with the exponential chosen for the dtype on
# this machine (favorkern._elementwise, shared with the transforms' evaluator),
# and take their logits in its unit: projection rows scaled by log2(e) for the
# base-2 kernels.  The kernel is chosen at the first product, whose size tells the
# choice whether loading numba can pay (favorkern._config.NUMBA_MIN_WORK).
_CHOICE_LOCK = threading.Lock()

# Keys whose row maxima of the bare product lie in [0, _KEY_WINDOW] (natural logs)
# skip the shift pass of :meth:`AttentionFeatures.key_parts` (see there).
_KEY_WINDOW = 16.0


class AttentionFeatures:
    """One feature map (a :class:`~favorkern.feature_maps.FeatureMapSpec`) with the
    stabilizers of attention.

    ``queries`` writes features up to a positive per-row factor (it cancels);
    ``key_logits`` + ``key_finish`` write ``phi(k_j) exp(-c_j)`` where ``c_j`` is the
    caller's key constant and ``key_logits`` returns ``log`` of each key's largest
    feature magnitude (exp maps) or of its row factor (trigonometric), from which the
    caller chooses ``c_j``.  ``key_parts`` writes key features up to a per-key factor
    that the caller applies to the value rows (bidirectional states).

    Exp maps without a structured projection work in the unit of the exp kernel
    (:func:`favorkern._elementwise.exp_kernel`): the pre-features that ``key_logits``
    writes and ``key_finish`` turns into features are ``unit`` times the natural
    logits (``log2(e)`` for a base-2 kernel), while every returned log (``row_log``,
    the shift, the constants) stays natural.
    """

    def __init__(self, spec, dtype):
        self.kind = "exp" if spec.func == "exp" else ("cos" if spec.func == "cos" else "relu")
        self.spec = spec
        self.n_out = spec.weights.shape[0]
        self.dtype = np.dtype(dtype)
        # Exp maps: log s_j = log_const + column_log[j]; GERF's A |w_j|^2 makes it vary.
        log_scale = np.asarray(spec.log_scale, dtype=np.float64)
        self.log_const = float(log_scale.max()) if log_scale.ndim else float(log_scale)
        self.column_log = None
        # Structured (SORF) projections: X W^T by fast Walsh-Hadamard transforms.
        self.projector = spec.projector
        self._log_scale = log_scale
        self._kernel = None

    def choose_kernel(self, work=0):
        """Fix the exponential (and with it ``unit``) at the first evaluation of
        ``work`` features (see :func:`favorkern._elementwise.exp_kernel`; before any
        product, as for a small call)."""
        if self._kernel is not None:
            return self._kernel
        with _CHOICE_LOCK:
            if self._kernel is None:
                kernel = exp_kernel(self.dtype, work)
                if not (self.kind == "exp" and self.projector is None):
                    kernel = kernel.natural()
                unit = kernel.unit
                # The rows of the feature-major product; the other layouts are made
                # on first use (a call builds its features anew, and each copy costs
                # ~10 us).
                self._proj_rows = np.ascontiguousarray(
                    self.spec.weights if unit == 1.0 else self.spec.weights * unit,
                    dtype=self.dtype,
                )
                if self.kind == "exp" and self._log_scale.ndim:
                    column_log = (self._log_scale - self.log_const) * unit
                    self.column_log = column_log.astype(self.dtype)
                self._kernel = kernel
        return self._kernel

    @property
    def kernel(self):
        """The :class:`~favorkern._elementwise.ExpKernel` of the features."""
        return self.choose_kernel()

    @property
    def unit(self):
        """Product units per natural log unit (``log2(e)`` for a base-2 kernel)."""
        return self.choose_kernel().unit

    @property
    def _proj(self):
        self.choose_kernel()
        return self._proj_rows

    @cached_property
    def weights(self):
        """The projection rows ``w_j`` (n_out, d) in the features' dtype."""
        return np.ascontiguousarray(self.spec.weights, dtype=self.dtype)

    @cached_property
    def weights_t(self):
        """``weights.T``, C-contiguous."""
        return np.ascontiguousarray(self.weights.T)

    @cached_property
    def _proj_t(self):
        return np.ascontiguousarray(self._proj.T)

    @cached_property
    def plain(self):
        """For cos and relu maps the per-row factor and the constant scale cancel or are
        applied by key_finish; the plain spec evaluates only ``f(w.x' + b)``."""
        return replace(self.spec, row_log_coef=0.0, log_scale=0.0)

    def empty(self, size, rows=False):
        """A (size, n_out) feature buffer.

        Exp maps use a transposed (feature-major) buffer unless ``rows``: the
        reductions over features per token then run along contiguous rows, which numpy
        vectorizes (measured 3.5x faster than a row-wise max); BLAS takes either layout.
        """
        if self.kind == "exp" and not rows and self.projector is None:
            return np.empty((self.n_out, size), dtype=self.dtype).T
        return np.empty((size, self.n_out), dtype=self.dtype)

    def _product(self, X, out):
        """``out = unit * (X @ W.T (+ column log-scales))`` for a row- or feature-major
        ``out``."""
        self.choose_kernel(out.size)
        if self.projector is not None:
            self.projector(X, out)
        elif out.flags.c_contiguous:
            np.matmul(X, self._proj_t, out=out)
        else:
            np.matmul(self._proj, X.T, out=out.T)
        if self.column_log is not None:
            out += self.column_log

    def query_window(self, S, z):
        """``(low, high)``: where every row maximum of a chunk's query product lies in
        this range (in product units, ``unit`` per natural log), :meth:`queries` may
        skip the shift by the row maximum.

        Query features need a per-row constant only to stay representable (it cancels
        in ``phi(q) S / phi(q) z``).  With row maxima in ``[low, high]`` the largest
        feature of a row is at least ``tiny^(1/4)`` (features lost to underflow are
        below ``tiny^(3/4)`` relative to it, far below the precision) and the products
        with ``S`` and ``z`` stay below ``max / e^8``.
        """
        info = np.finfo(self.dtype)
        log_max, log_tiny = float(np.log(info.max)), float(np.log(info.tiny))
        magnitude = max(float(np.abs(S).max(initial=0.0)), float(np.abs(z).max(initial=0.0)), 1.0)
        high = min(0.25 * log_max, log_max - float(np.log(self.n_out * magnitude)) - 8.0)
        return 0.25 * log_tiny * self.unit, high * self.unit

    @cached_property
    def _logit_radius(self):
        """``max_j |w_j|`` (product units) and the largest ``|column_log|``."""
        sq = np.einsum("ij,ij->i", self._proj, self._proj)
        column = 0.0 if self.column_log is None else float(np.abs(self.column_log).max())
        return float(np.sqrt(sq.max(initial=0.0))), column

    def logits_inside(self, X, window) -> bool:
        """True when every product logit of the rows ``X`` lies in ``window``, by the
        bound ``|w_j . x| <= |w_j| |x|``: :meth:`queries` then needs no row maximum.

        One pass over ``X`` (``d`` per row) instead of one over the features (``m``).
        """
        if window is None or self.kind != "exp" or X.shape[0] == 0:
            return False
        norm, column = self._logit_radius
        sq = float(sq_norms(X).max())
        radius = (norm * np.sqrt(sq) + column) * 1.001  # rounding of the products
        return window[0] <= -radius and radius <= window[1]

    def queries(self, X, out, window=None, inside=False):
        """Query features (up to a positive per-row factor) of the rows ``X`` into ``out``.

        ``window``: :meth:`query_window` of the state the features will meet; exp maps
        then skip the shift pass where the chunk's row maxima lie inside it.
        ``inside``: :meth:`logits_inside` holds for ``X`` (no row maxima needed).
        """
        if self.kind == "exp":
            # exp(w.x' - a|x'|^2 + log s - max): the last three terms are one per-row
            # constant, so the row maximum of the bare product is the same stabilizer.
            self._product(X, out)
            if not inside:
                row_max = out.max(axis=1)
                if window is None or not (
                    window[0] <= row_max.min() and row_max.max() <= window[1]
                ):
                    self.kernel.exp_shifted(out, row_max)
                    return
            self.kernel.exp(out)
        else:
            apply_block(X, out, self.plain, self.weights_t)

    def key_logits(self, X, out):
        """Write the key pre-features into ``out``; return ``(row_log, shift)``.

        Exp maps: ``out = unit * X W^T`` and ``shift = a |x|^2 - log s`` (the logits
        of :func:`favorkern.feature_maps._evaluate.projection_logits` are ``out / unit -
        shift``), so ``row_log`` is each key's largest logit.  Others: ``out = f(w.x' + b)``,
        ``row_log`` the log of the row factor, ``shift`` None.
        """
        if self.kind == "exp":
            self._product(X, out)
            shift = sq_norms(X)
            shift *= self.spec.sq_coef
            shift -= self.log_const
            row_log = out.max(axis=1).astype(np.float64)
            if self.unit != 1.0:
                row_log /= self.unit
            row_log -= shift
            return row_log, shift
        apply_block(X, out, self.plain, self.weights_t)
        if self.kind == "cos":
            sq = sq_norms(X)
            return sq * self.spec.row_log_coef + self.log_const, None
        return np.zeros(X.shape[0]), None

    def key_parts(self, X, out):
        """Key features of the rows ``X`` up to a per-key factor: ``(row_log, scale_log)``.

        ``phi(k_j) = out_j exp(scale_log_j)``, ``row_log`` as :meth:`key_logits`
        returns it.  A state built from these (``S += out^T (w v)``, ``z += out^T w``
        with ``w_j = exp(scale_log_j - c)``) takes the stabilizer per key as a weight
        of its value row, ``dv`` products instead of a pass over ``m`` features.
        ``w_j <= 1`` for ``c >= row_log_j``: with ``scale_log = row_log`` (``out`` is
        divided by its row maximum, every feature ``<= 1``), or where every row
        maximum ``u_j`` of the bare product lies in ``[0, 16]``: ``out`` is then
        ``exp(u)`` (at most ``e^16``) and ``scale_log_j = row_log_j - u_j``, without
        the shift pass.  Such a key's weight is smaller by ``e^{u_j}``; where it comes
        near the smallest normal float, the caller divides the row by its maximum
        instead (:func:`~.bidirectional.accumulate_keys`), so no key loses precision
        to the shortcut.
        """
        if self.kind != "exp":
            row_log, _ = self.key_logits(X, out)
            return row_log, row_log
        self._product(X, out)
        shift = sq_norms(X)
        shift *= self.spec.sq_coef
        shift -= self.log_const
        row_max = out.max(axis=1)
        lead = row_max.astype(np.float64)
        if self.unit != 1.0:
            lead /= self.unit
        row_log = lead - shift
        if 0.0 <= row_max.min() and row_max.max() <= _KEY_WINDOW * self.unit:
            shift *= -1.0
            self.kernel.exp(out)
            return row_log, shift
        self.kernel.exp_shifted(out, row_max)
        return row_log, row_log

    def key_finish(self, out, row_log, shift, const, bounded=False):
        """Turn ``key_logits`` output into ``phi(k_j) exp(-c_j)``; ``const`` finite.

        ``bounded``: the caller guarantees ``const >= row_log`` for every key, so ``exp``
        cannot overflow (saves the ``errstate`` context, about 20 us per call).
        """
        if self.kind == "exp":
            offset = shift + const
            if self.unit != 1.0:
                offset *= self.unit
            offset = offset.astype(self.dtype)
            clip = _rounding_may_exceed_zero(offset, self.dtype)
            if bounded:
                self.kernel.exp_shifted(out, offset, clip)
                return
            with np.errstate(over="ignore"):
                self.kernel.exp_shifted(out, offset, clip)
        elif self.kind == "cos":
            with np.errstate(over="ignore"):
                out *= np.exp(np.minimum(row_log - const, 0.0)).astype(self.dtype)[:, np.newaxis]


def _rounding_may_exceed_zero(offset, dtype) -> bool:
    """True when key exponents must be clipped at 0: rounding of ``offset`` could push
    them above it.

    ``const >= row_log`` makes every exponent ``<= 0`` in exact arithmetic; at huge
    logits (``gamma |k|^2`` beyond ``1 / eps``) the rounding of ``shift + const`` alone
    can reach hundreds and ``exp`` would give ``inf`` (and ``inf * 0 = NaN`` later).
    """
    return bool(offset.size) and float(np.max(np.abs(offset))) * np.finfo(dtype).eps > 1.0


def masked_row_log(fmap, k, mask, start, stop, buf):
    """Key logits of rows ``start:stop`` into ``buf``; masked keys get ``-inf``."""
    row_log, shift = fmap.key_logits(k[start:stop], buf)
    masked = None
    if mask is not None:
        masked = mask[start:stop]
        if masked.any():
            row_log[masked] = -np.inf
        else:
            masked = None
    return row_log, shift, masked


class Buffers:
    """Feature buffers per chunk size (only the last chunk differs) and ones vectors."""

    def __init__(self, fmap):
        self._fmap = fmap
        self._cache = {}

    def __call__(self, size, slot=0):
        key = (size, slot)
        if key not in self._cache:
            self._cache[key] = self._fmap.empty(size)
        return self._cache[key]

    def values(self, size, width):
        """A (size, width) buffer for weighted value rows."""
        return self.array((size, width), "values")

    def array(self, shape, name):
        """A buffer of ``shape`` in the features' dtype, one per ``name``."""
        key = (shape, name)
        if key not in self._cache:
            self._cache[key] = np.empty(shape, dtype=self._fmap.dtype)
        return self._cache[key]

    def ones(self, size):
        key = (size, "ones")
        if key not in self._cache:
            self._cache[key] = np.ones(size, dtype=self._fmap.dtype)
        return self._cache[key]
