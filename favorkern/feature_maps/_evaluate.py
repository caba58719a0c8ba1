"""The one feature-map evaluator: a BLAS product plus in-place elementwise maps.

Every random-feature map in favorkern has the form

    phi(x)_j = r(x) * s_j * f(w_j . x + b_j - a |x|^2)

with ``f`` in {exp, cos, user function}.  :class:`FeatureMapSpec` holds the
effective projection (already scaled by gamma, stacked with the pair partners)
and the constants; :func:`apply_feature_map` evaluates it over row blocks, in
parallel threads with BLAS pinned to one thread (measured faster than letting
BLAS thread a single large product and then running numpy's exp on one core).
The exponential is the one :func:`favorkern._elementwise.exp_kernel` chose for the
dtype on this machine (numpy's ``exp`` or ``exp2``, or a vectorized polynomial);
the dense path of exp maps folds its ``unit`` (``log2(e)`` for the base-2 kernels)
into the augmented weights, so the product writes the logits the kernel takes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import _config
from .._elementwise import exp_kernel, sin_cos_pairs_kernel, sincos_kernel, sq_norms
from .._parallel import run_row_blocks


@dataclass(frozen=True)
class FeatureMapSpec:
    """Constants of one feature map ``r(x) s_j f(w_j . x + b_j - a |x|^2)``.

    Attributes
    ----------
    weights : ndarray (n_out, d)
        Effective projection rows ``w_j`` (gamma scaling and pair partners folded in).
    func : "exp", "cos" or a callable
        The elementwise map ``f``.
    sq_coef : float
        ``a``: for ``func="exp"`` the term ``-a |x|^2`` inside the exponent.
    row_log_coef : float
        For ``func="cos"``: ``r(x) = exp(row_log_coef * |x|^2)`` (trigonometric softmax).
    log_scale : float or ndarray (n_out,)
        For ``exp``: added inside the exponent (``log s_j``).  Otherwise ``s_j = exp(log_scale)``.
    offset : ndarray (n_out,) or None
        Phases ``b_j`` (cos) or None.
    logit_bound : float
        An upper bound of the exponent over all x (``inf`` if unbounded); used to skip
        the overflow check when overflow is impossible.
    projector : callable or None
        ``projector(Xb, out_b)`` writes ``Xb @ weights.T`` faster than BLAS (structured
        projections at large d); used for dense blocks, ``weights`` otherwise.
    pairs : int
        The first ``2 * pairs`` outputs come in pairs of one projection: rows ``j`` and
        ``pairs + j`` of ``weights`` are ``w`` and ``-w`` (exp maps, with one
        ``log_scale`` for all of them) or ``w`` and ``w`` with phases 0 and ``-pi/2``
        (cos maps: cos and sin).  The evaluator then computes one product per pair.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import FeatureMapSpec, apply_feature_map
    >>> W = np.random.default_rng(0).normal(size=(2048, 2))
    >>> spec = FeatureMapSpec(W, "exp", sq_coef=0.5, log_scale=-0.5 * np.log(2048))
    >>> x = np.array([[0.3, -0.2]])
    >>> phi = apply_feature_map(x, spec)          # positive features of x
    >>> bool(abs((phi @ phi.T)[0, 0] - np.exp(x @ x.T)[0, 0]) < 0.05)
    True
    """

    weights: np.ndarray
    func: object
    sq_coef: float = 0.0
    row_log_coef: float = 0.0
    log_scale: object = 0.0
    offset: np.ndarray | None = None
    logit_bound: float = np.inf
    projector: object = None
    pairs: int = 0


def _row_sq_norms(X) -> np.ndarray:
    if sp.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=1)).ravel().astype(X.dtype, copy=False)
    return np.einsum("ij,ij->i", X, X)


class FeatureOverflowWarning(RuntimeWarning):
    """Warned when a feature map's values exceed the largest float of the dtype.

    The affected features are ``inf``: the kernel values of those inputs are not
    representable by that map in that dtype.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from favorkern import TrigonometricRandomFeatures
    >>> from favorkern.feature_maps import FeatureOverflowWarning
    >>> X = np.full((2, 4), 20.0, dtype=np.float32)     # exp(|x|^2 / 2) overflows float32
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = TrigonometricRandomFeatures(8, random_state=0).fit_transform(X)
    >>> any(issubclass(w.category, FeatureOverflowWarning) for w in caught)
    True
    """


def _warn_overflow(message):
    import warnings

    warnings.warn(message, FeatureOverflowWarning, stacklevel=4)


def _overflow_message(dtype, what):
    limit = float(np.log(np.finfo(dtype).max))
    return (
        f"the random features overflow {np.dtype(dtype).name}: {what} exceeds log(max) = "
        f"{limit:.1f}. The kernel values of these inputs are not representable by this "
        "feature map, so some features are inf; scale X down, lower gamma, use "
        "kernel='rbf', positive features, or float64 input."
    )


def _project(Xb, out_b, spec: FeatureMapSpec, weights_t) -> None:
    if sp.issparse(Xb):
        out_b[...] = Xb @ weights_t
    elif spec.projector is not None:
        spec.projector(Xb, out_b)
    else:
        np.matmul(Xb, weights_t, out=out_b)


def projection_logits(Xb, out_b, spec: FeatureMapSpec, weights_t) -> None:
    """``out_b = Xb @ W.T - a |x|^2 + log s`` in place: the exponent of an exp-type map."""
    dtype = out_b.dtype
    _project(Xb, out_b, spec, weights_t)
    shift = _row_sq_norms(Xb)
    shift *= dtype.type(spec.sq_coef)
    log_scale = spec.log_scale
    if np.ndim(log_scale) == 0:
        shift -= dtype.type(log_scale)
        out_b -= shift[:, np.newaxis]
    else:
        out_b -= shift[:, np.newaxis]
        out_b += log_scale


def _cos(out_b) -> None:
    """``cos`` in place; float64 by the vectorized kernel where it was measured faster
    (numpy's float64 cos is scalar on some builds)."""
    if (
        out_b.dtype == np.float64
        and out_b.flags.c_contiguous
        and out_b.ndim == 2
        and sincos_kernel(np.float64) == "numba"
    ):
        from .._numba.vmath import cos_inplace

        cos_inplace(out_b)
    else:
        np.cos(out_b, out=out_b)


def _sin_cos_pairs(out_b, pairs, row_scale=None) -> None:
    """``out_b[:, :p], out_b[:, p:2p] = r cos(u), r sin(u)`` for ``u = out_b[:, :p]`` and
    the per-row factors ``r = row_scale`` (1 if None); the columns from ``2p`` on
    (phase-shifted projections of unpaired outputs) get ``cos`` only.  Vectorized
    kernels (numba) for both dtypes: numpy's float64 ``cos`` is scalar, and its float32
    ``sin``/``cos`` on the strided halves measured 1.4x slower than the fused kernel."""
    dtype = out_b.dtype
    if row_scale is None:
        row_scale = np.ones(out_b.shape[0], dtype=dtype)
    kernel = (
        sin_cos_pairs_kernel(sincos_kernel(dtype), dtype)
        if out_b.flags.c_contiguous and dtype in (np.float32, np.float64)
        else None
    )
    if kernel is not None:
        kernel(out_b, pairs, np.ascontiguousarray(row_scale, dtype=dtype))
    else:
        np.sin(out_b[:, :pairs], out=out_b[:, pairs : 2 * pairs])
        np.cos(out_b[:, :pairs], out=out_b[:, :pairs])
        with np.errstate(invalid="ignore"):
            out_b[:, : 2 * pairs] *= row_scale[:, np.newaxis]
    if out_b.shape[1] > 2 * pairs:
        np.cos(out_b[:, 2 * pairs :], out=out_b[:, 2 * pairs :])


def _cos_row_scale(Xb, spec: FeatureMapSpec, dtype) -> np.ndarray:
    """``exp(row_log_coef |x|^2 + max log_scale)`` per row, warning where it overflows.

    Scale in the exponent, so that the factor is inf only when the feature itself
    overflows.
    """
    log_max = float(np.log(np.finfo(dtype).max))
    log_row = _row_sq_norms(Xb).astype(np.float64) * spec.row_log_coef
    peak = float(log_row.max()) + float(np.max(spec.log_scale)) if log_row.size else -np.inf
    if peak >= log_max:
        _warn_overflow(_overflow_message(dtype, f"gamma * |x|^2 / 2 + log scale ({peak:.3g})"))
    with np.errstate(over="ignore"):
        return np.exp(log_row + float(np.max(spec.log_scale))).astype(dtype)


def _finish_cos(Xb, out_b, spec: FeatureMapSpec, cos_done=False) -> None:
    """cos of the phase-shifted projection, times the row factor and the output scales."""
    dtype = out_b.dtype
    if not cos_done:
        _cos(out_b)
    log_scale = spec.log_scale
    if spec.row_log_coef != 0.0:
        row_scale = _cos_row_scale(Xb, spec, dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            # cos(.) * inf can give nan when cos is 0, kept as inf * sign.
            out_b *= row_scale[:, np.newaxis]
        if np.ndim(log_scale) != 0:
            out_b *= np.exp(log_scale - float(np.max(log_scale))).astype(dtype)
        return
    out_b *= np.exp(log_scale).astype(dtype)


def _may_overflow(spec: FeatureMapSpec, dtype) -> bool:
    """True unless the exponent's bound proves that ``exp`` cannot overflow ``dtype``."""
    log_max = float(np.log(np.finfo(dtype).max))
    return spec.logit_bound + float(np.max(spec.log_scale)) >= log_max


def _exp_checked(out_b, spec: FeatureMapSpec, may_overflow=None, kernel=None, pairs=None):
    """``exp`` of the exponents in place; checks for overflow only where it is possible.

    ``may_overflow``: :func:`_may_overflow`, computed once per call by callers that
    evaluate many blocks (it costs more than a small block's ``exp`` check).
    ``kernel``: an :class:`~favorkern._elementwise.ExpKernel` whose logits
    ``out_b`` holds (default: the dtype's kernel for natural logits).
    ``pairs``: ``(p, total)``: the columns ``p:2p`` are ``total - out_b[:, :p]``, not
    yet written (:meth:`~favorkern._elementwise.ExpKernel.exp_pairs`).
    """
    if kernel is None:
        kernel = exp_kernel(out_b.dtype, out_b.size).natural()
    if may_overflow is None:
        may_overflow = _may_overflow(spec, out_b.dtype)
    if may_overflow:
        if pairs is not None:
            p, total = pairs
            np.subtract(total[:, np.newaxis], out_b[:, :p], out=out_b[:, p : 2 * p])
            pairs = None
        log_max = float(np.log(np.finfo(out_b.dtype).max))
        peak = float(out_b.max()) if out_b.size else -np.inf
        peak /= kernel.unit
        if peak >= log_max:
            _warn_overflow(_overflow_message(out_b.dtype, f"an exponent ({peak:.3g})"))
            with np.errstate(over="ignore"):
                kernel.exp(out_b)
            return
    # no exponent reaches log(max): no overflow to silence (the errstate context
    # costs about 20 us per block)
    if pairs is not None:
        kernel.exp_pairs(out_b, *pairs)
    else:
        kernel.exp(out_b)


def apply_block(Xb, out_b, spec: FeatureMapSpec, weights_t) -> None:
    """Evaluate the feature map on the rows ``Xb`` into ``out_b`` (in place)."""
    dtype = out_b.dtype
    func = spec.func
    if func == "exp":
        projection_logits(Xb, out_b, spec, weights_t)
        _exp_checked(out_b, spec)
        return
    _project(Xb, out_b, spec, weights_t)
    if func == "cos":
        if spec.offset is not None:
            out_b += spec.offset
        _finish_cos(Xb, out_b, spec)
        return
    values = np.asarray(func(out_b))
    if values.shape != out_b.shape:
        raise ValueError(
            f"function must be elementwise and keep the shape {out_b.shape}, "
            f"got output of shape {values.shape}"
        )
    out_b[...] = values
    if not np.isfinite(out_b).all():
        _warn_overflow(
            "function returned NaN or infinity on these inputs; scale X down or lower gamma"
        )
    out_b *= np.exp(spec.log_scale).astype(dtype)


def _augmented_weights(spec: FeatureMapSpec, dtype, unit=1.0):
    """``(d + 2, n_out)``: ``W^T``, a row of ones, the per-output constants.

    Multiplied by ``[x, -a |x|^2, 1]`` it gives the whole exponent (exp maps, in
    ``unit`` per natural logit: that of the exp kernel) or the phase-shifted
    projection (cos maps) in the one BLAS call, saving an elementwise pass over the
    output.
    """
    n_out, d = spec.weights.shape
    aug = np.empty((d + 2, n_out), dtype=np.float64)
    aug[:d] = spec.weights.T
    aug[d] = 1.0
    if spec.func == "exp":
        aug[d + 1] = spec.log_scale
        aug *= unit
    else:
        aug[d + 1] = 0.0 if spec.offset is None else spec.offset
    return np.ascontiguousarray(aug, dtype=dtype)


def _paired_weights(spec: FeatureMapSpec, dtype, unit=1.0):
    """The augmented weights of the first output of each pair and of the unpaired ones."""
    aug = _augmented_weights(spec, dtype, unit)
    p = spec.pairs
    return np.ascontiguousarray(aug[:, :p]), np.ascontiguousarray(aug[:, 2 * p :])


def _augmented_input(rows, d, func, dtype, scratch=None):
    """A ``(rows, d + 2)`` buffer for ``[x, -a |x|^2, 1]`` with the constant column(s) set.

    ``scratch`` (a ``threading.local``) keeps one buffer per thread across blocks: a
    fresh one of a few hundred KiB is page-faulted on every block (measured 2-3x
    the cost of filling it).
    """
    buf = None if scratch is None else getattr(scratch, "x_aug", None)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != d + 2 or buf.dtype != dtype:
        buf = np.empty((rows, d + 2), dtype=dtype)
        if func != "exp":
            buf[:, d] = 0.0
        buf[:, d + 1] = 1.0
        if scratch is not None:
            scratch.x_aug = buf
    return buf[:rows]


def _apply_block_augmented(
    Xb, out_b, spec: FeatureMapSpec, weights_aug, scratch=None, may_overflow=None, kernel=None
) -> None:
    """:func:`apply_block` for dense blocks of exp and cos maps without a projector.

    ``weights_aug`` is :func:`_augmented_weights`, or :func:`_paired_weights` for a
    spec with pairs: one product per pair, the partner derived elementwise.
    ``scratch``: see :func:`_augmented_input`; ``may_overflow``: see :func:`_exp_checked`;
    ``kernel``: the :class:`~favorkern._elementwise.ExpKernel` whose unit the weights
    are in (exp maps).
    """
    dtype = out_b.dtype
    rows, d = Xb.shape
    x_aug = _augmented_input(rows, d, spec.func, dtype, scratch)
    x_aug[:, :d] = Xb
    if spec.func == "exp":
        sq = sq_norms(Xb)  # float64
        sq *= -spec.sq_coef
        x_aug[:, d] = sq
    p = spec.pairs
    if p:
        first, rest = weights_aug
        np.matmul(x_aug, first, out=out_b[:, :p])
        if rest.shape[1]:
            np.matmul(x_aug, rest, out=out_b[:, 2 * p :])
        if spec.func == "exp":
            # partner: -w.x - a|x|^2 + log s = 2 (log s - a|x|^2) - (w.x - a|x|^2 + log s)
            log_pair = float(np.ravel(spec.log_scale)[0])
            twice = x_aug[:, d] + dtype.type(log_pair)
            twice *= dtype.type(2.0 * kernel.unit)
            _exp_checked(out_b, spec, may_overflow, kernel, pairs=(p, twice))
            return
        if np.ndim(spec.log_scale) == 0:
            # the row factor and the constant output scale ride along in the kernel
            if spec.row_log_coef != 0.0:
                row_scale = _cos_row_scale(Xb, spec, dtype)
            else:
                row_scale = np.full(rows, np.exp(spec.log_scale), dtype=dtype)
            _sin_cos_pairs(out_b, p, row_scale)
            return
        _sin_cos_pairs(out_b, p)
        _finish_cos(Xb, out_b, spec, cos_done=True)
        return
    np.matmul(x_aug, weights_aug, out=out_b)
    if spec.func == "exp":
        _exp_checked(out_b, spec, may_overflow, kernel)
        return
    # cos: the phases are in; apply_block's remaining steps (row factor, scale).
    _finish_cos(Xb, out_b, spec)


def _underflow_candidates(out_b, start=0) -> np.ndarray:
    """Rows (offset by ``start``) whose first feature is not positive: the only ones
    that can have underflowed whole (or hold NaN), for :func:`_check_underflow`."""
    return np.flatnonzero(~(out_b[:, 0] > 0)) + start


def _check_underflow(out, candidates=None) -> None:
    """Warn once if whole rows of exp-map features underflowed to 0.

    Cheap: only rows whose first feature is not positive are inspected
    (``candidates``: those rows, found block by block while each block was still in
    cache; else by one strided pass over the first column).  NaN there comes from
    ``inf - inf`` in an exponent whose ``-a |x|^2`` term overflowed; the exponent is
    then below any float, so the feature is 0.
    """
    if not out.size:
        return
    if candidates is None:
        candidates = _underflow_candidates(out)
    if not candidates.size:
        return
    rows = out[candidates]
    nan = np.isnan(rows)
    if nan.any():
        rows[nan] = 0.0
        out[candidates] = rows
    zero = int(np.count_nonzero(~rows.any(axis=1)))
    if zero:
        import warnings

        from .._warnings import FeatureUnderflowWarning

        tiny = float(np.log(np.finfo(out.dtype).tiny))
        warnings.warn(
            f"{zero} of {out.shape[0]} rows have every feature 0: all their exponents are "
            f"below log(tiny) = {tiny:.1f} in {out.dtype.name}, so their kernel estimates "
            "are 0. Scale X down, lower gamma, or use float64 input.",
            FeatureUnderflowWarning,
            stacklevel=4,
        )


def apply_feature_map(X, spec: FeatureMapSpec) -> np.ndarray:
    """Evaluate ``spec`` on all rows of ``X`` (dense C array or CSR), same float dtype.

    Row blocks run on favorkern's thread pool with BLAS pinned to one thread when the
    output is large enough to pay.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import PositiveRandomFeatures
    >>> from favorkern.feature_maps import apply_feature_map
    >>> X = np.random.default_rng(0).normal(size=(3, 4))
    >>> est = PositiveRandomFeatures(8, random_state=0).fit(X)
    >>> bool(np.array_equal(apply_feature_map(X, est._spec()), est.transform(X)))
    True
    """
    dtype = X.dtype
    n_out = spec.weights.shape[0]
    out = np.empty((X.shape[0], n_out), dtype=dtype)
    if spec.projector is None and spec.func in ("exp", "cos") and not sp.issparse(X):
        kernel = exp_kernel(dtype, out.size) if spec.func == "exp" else None
        unit = 1.0 if kernel is None else kernel.unit
        weights_aug = (_paired_weights if spec.pairs else _augmented_weights)(spec, dtype, unit)
        scratch = threading.local()
        may_overflow = spec.func == "exp" and _may_overflow(spec, dtype)
        found = []  # underflow candidates per block (list.append is thread-safe)

        def block(start, stop):
            out_b = out[start:stop]
            _apply_block_augmented(
                X[start:stop], out_b, spec, weights_aug, scratch, may_overflow, kernel
            )
            if spec.func == "exp":
                found.append(_underflow_candidates(out_b, start))

        run_row_blocks(X.shape[0], n_out, dtype.itemsize, block)
        if spec.func == "exp":
            _check_underflow(out, np.concatenate(found) if found else np.empty(0, np.intp))
        return out

    weights_t = np.ascontiguousarray(spec.weights.astype(dtype, copy=False).T)
    if sp.issparse(X):
        # Sparse products do not gain from the row-block pool; one pass is simplest.
        apply_block(X, out, spec, weights_t)
        if spec.func == "exp":
            _check_underflow(out)
        return out

    def block(start, stop):
        apply_block(X[start:stop], out[start:stop], spec, weights_t)

    run_row_blocks(X.shape[0], n_out, dtype.itemsize, block)
    if spec.func == "exp":
        _check_underflow(out)
    return out


# -- shared by the map modules ---------------------------------------------------


def max_sq_norm(projection):
    return float(np.max(np.einsum("ij,ij->i", projection, projection))) if projection.size else 0.0


class SorfProjector:
    """``X @ (input_scale * W).T`` for a structured ``W`` via the fast Walsh-Hadamard transform."""

    def __init__(self, signs, row_factors, input_scale):
        size = signs.shape[2]
        self.signs = signs
        self.row_scales = row_factors * (input_scale * size**-1.5)
        self._by_dtype = {}

    def __call__(self, Xb, out_b):
        from .._numba.hadamard import sorf_project

        dtype = out_b.dtype
        if dtype not in self._by_dtype:
            self._by_dtype[dtype] = (
                np.ascontiguousarray(self.signs, dtype=dtype),
                np.ascontiguousarray(self.row_scales, dtype=dtype),
            )
        signs, row_scales = self._by_dtype[dtype]
        sorf_project(np.ascontiguousarray(Xb), signs, row_scales, out_b)


def sorf_projector(sorf, input_scale):
    """A :class:`SorfProjector` when ``sorf = (signs, row_factors)`` is large enough to pay."""
    if sorf is None or sorf[0].shape[2] < _config.SORF_MIN_PADDED_DIMS:
        return None
    return SorfProjector(sorf[0], sorf[1], input_scale)
