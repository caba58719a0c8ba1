"""Variance and convergence diagnostics of the random-feature estimators.

* :mod:`.closed_forms`: :func:`theoretical_mse`, the closed-form MSE of every
  registered map that has one (Performer, Lemma 2; the exact orthogonal-block
  formula and the regularized kernel, :ref:`theory-orthogonal-exact` and
  :ref:`theory-smreg`);
* :mod:`.monte_carlo`: :func:`empirical_mse`, Monte Carlo with confidence
  intervals that runs the library's own feature maps;
* :mod:`.studies`: :func:`variance_study`, :func:`study_summary`,
  :func:`convergence` (pandas tables);
* :mod:`.attention_error`: :func:`attention_error` against exact attention, and
  :func:`estimate_attention_error` (the estimate from a sample of exact rows, the
  function of :mod:`favorkern.attention`, imported on first use).

Conventions: ``n_components`` is the output width of a map, as in the
transformers (paired maps use ``n_components / 2`` projections); the target is the
softmax kernel ``exp(gamma x.y)``, with ``gamma`` entering as ``x -> sqrt(gamma) x``.
Only numpy and scipy are imported by the closed forms and the Monte Carlo; pandas
inside the functions that return data frames.
"""

from __future__ import annotations

from .attention_error import attention_error, row_errors
from .closed_forms import theoretical_mse
from .monte_carlo import MonteCarloMSE, empirical_mse
from .studies import convergence, default_pairs, study_summary, variance_study

__all__ = [
    "MonteCarloMSE",
    "theoretical_mse",
    "empirical_mse",
    "default_pairs",
    "variance_study",
    "study_summary",
    "convergence",
    "attention_error",
    "row_errors",
    "estimate_attention_error",
]


def __getattr__(name):
    # The attention package imports scikit-learn: load it only when asked for.
    if name == "estimate_attention_error":
        from ..attention.error import estimate_attention_error

        return estimate_attention_error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
