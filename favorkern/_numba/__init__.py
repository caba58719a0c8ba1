"""Numba JIT kernels: pure functions of C-contiguous float32/float64 arrays.

No validation and no scikit-learn here; public modules validate first.  This
package imports numba, so only import it lazily (never from ``favorkern/__init__``).
All kernels take their options from here: :data:`JIT_OPTIONS`, or
:data:`REDUCTION_JIT_OPTIONS` for the range-reduced sin/cos; one place for the flags.
"""

from __future__ import annotations

# fastmath without nnan/ninf: NaN and inf must propagate, never be assumed away.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT_OPTIONS = {"nogil": True, "cache": True, "fastmath": FASTMATH}  # treat as read-only
# The vectorized sin/cos (vmath): no reassoc/afn, which would let LLVM fold the split
# constants of the range reduction back into one (losing the extra bits); contract
# keeps the FMAs.
REDUCTION_JIT_OPTIONS = {**JIT_OPTIONS, "fastmath": {"nsz", "contract"}}  # read-only
