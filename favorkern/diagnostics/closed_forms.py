"""Closed-form mean squared error of the random-feature estimators.

Each registered map holds its own formula (:meth:`FeatureMap.log_mse
<favorkern.feature_maps.FeatureMap.log_mse>`, :ref:`theory`); this module
validates, computes the pair geometry and dispatches.  Conventions: the target is
``SM(x, y) = exp(gamma x.y)``, ``gamma`` enters as ``x -> sqrt(gamma) x``, and
``n_components`` is the output width (``m`` projections for one output each,
``n_components / 2`` for paired maps).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_option
from ..feature_maps import check_constants, feature_map_names, same_block_pairs
from ..projections import PROJECTION_KINDS
from ._common import NORMS, PROJECTIONS, check_a, check_gamma, check_pairs, check_width, output

__all__ = ["theoretical_mse"]


def theoretical_mse(
    x,
    y,
    *,
    feature_map,
    n_components,
    projection="orthogonal",
    norms="chi",
    gamma=1.0,
    A=None,
    constants=None,
    log=False,
):
    """Closed-form mean squared error of ``phi(x).phi(y)`` as an estimate of ``exp(gamma x.y)``.

    Parameters
    ----------
    x, y : array-like of shape (d,) or (n_pairs, d)
        The pairs (broadcast against each other).
    feature_map : str or FeatureMap
        A registered map with a closed form (``"positive"``, ``"hyperbolic"``,
        ``"trigonometric"`` with the softmax kernel, ``"optimal"``: GERF with parameter
        ``A``; ``"saderf"``, ``"whitened"``, ``"sderf"`` and ``"aderf"`` at fitted
        ``constants``; see
        :func:`favorkern.feature_maps.feature_map_names` with ``closed_form=True``).
        The map's own ``pair_geometry`` and ``log_mse`` give the formula.
    n_components : int
        Output width of the map, as in the transformers: ``m = n_components``
        projections for one output per projection, ``n_components / 2`` for the
        paired maps (then ``n_components`` must be even).
    projection : {"gaussian", "orthogonal", "simplex"}, default="orthogonal"
        iid rows, orthogonal blocks of ``d`` rows (the last block partial when
        ``d`` does not divide ``m``), or simplex blocks, as
        :func:`favorkern.draw_projection` draws them.  ``"simplex"`` has closed forms
        for the exp-type maps (positive, hyperbolic, optimal) with chi norms.
    norms : {"chi", "fixed"}, default="chi"
        ``"chi"``: unbiased estimators, the MSE is the variance.  ``"fixed"``: rows
        of length ``sqrt(d)``, an estimator of the regularized kernel SMREG; the
        MSE against ``exp(gamma x.y)`` is bias squared plus variance (positive,
        hyperbolic and trigonometric maps, iid or orthogonal).
    gamma : float, default=1.0
        Kernel scale, > 0.
    A : float or None, default=None
        GERF parameter of ``features="optimal"`` (< 1/8, where the variance is
        finite); ``None`` takes each pair's own optimum
        ``A* = (d - 2|z|^2 - sqrt((2|z|^2 + d)^2 + 8 d |z|^2)) / (16 d)``.
        Ignored by the other maps; give either ``A`` or ``constants``, not both.
    constants : dict or None, default=None
        The map's fitted data constants, as its ``fit`` returns them (for
        ``gamma``: ``fmap.fit(X, Y, input_scale=sqrt(gamma))``), the same for every
        pair.  Required by the maps that transform or rotate their inputs
        (``"saderf"``, ``"whitened"``, ``"sderf"``, ``"aderf"``); for ``"optimal"``
        it may hold ``A``.
    log : bool, default=False
        Return ``log(MSE)``, computed in log space: finite where the MSE itself
        overflows float64 (``-inf`` where the MSE is exactly zero).

    Returns
    -------
    mse : float or ndarray of shape (n_pairs,)
        A float when both ``x`` and ``y`` are 1-D.

    Notes
    -----
    With ``x' = sqrt(gamma) x``, ``z = x' + y'``, ``delta = x' - y'``,
    ``SM = exp(x'.y')`` and ``m = k d + r`` projections, every estimator is an
    average of ``m`` per-projection terms, so (:ref:`theory-performer-estimators`,
    :ref:`theory-orthogonal-exact`)

    ``MSE = Var1 / m + (P / m^2) Cov``,  ``P = k d (d - 1) + r (r - 1)``

    (``P = 0`` for iid rows), with (Performer, Lemma 2, and the exact block formula)

    * positive: ``Var1 = SM^2 (e^{|z|^2} - 1)``;
    * hyperbolic: ``Var1 = SM^2 (e^{|z|^2} - 1)(1 - e^{-|z|^2}) / 2``;
    * positive and hyperbolic: ``Cov = Lambda^2 [1F1(d; d/2; |z|^2/2) - e^{|z|^2}]``
      ``= -SM^2 E[1 - r_N]``, ``N ~ Poisson(|z|^2)``,
      ``r_n = (d)_n / ((d/2)_n 2^n)`` (a positive series, summed without
      cancellation over a window around its peak);
    * trigonometric: ``Var1 = e^{|x'|^2 + |y'|^2} (1 - e^{-|delta|^2})^2 / 2`` and
      ``Cov = e^{|x'|^2+|y'|^2} [1F1(d; d/2; -|delta|^2/2) - e^{-|delta|^2}]``, the
      ``1F1`` through Kummer's transformation as ``E[t_N]``, ``N ~ Poisson(|delta|^2/2)``,
      ``t_n = (-d/2)_n / (d/2)_n``, ``|t_n| <= 1``.

    GERF (``"optimal"``, :ref:`theory-favor-plus-plus`): ``Var1 = SM^2 (e^t - 1)`` with
    ``t = d log(1-4A) - (d/2) log(1-8A) + 2(1-4A)|z|^2/(1-8A) - |z|^2``, and the
    same-block covariance of the positive map, whatever ``A``.  Simplex blocks
    (:ref:`theory-simplex`): ``Cov = Lambda^2 [S - e^{|z|^2}]`` with
    ``S = E 0F1(; d/2; N^2 |z|^2 / 4)``, ``N^2 = rho_i^2 + rho_j^2 + 2 c rho_i rho_j``,
    ``c = -1/(d-1)`` over independent chi_d norms (2-D Gauss-Laguerre quadrature);
    the hyperbolic map averages ``c`` and ``-c``.

    SADERF (:ref:`theory-favor-sharp`) is GERF on the rescaled pair ``(psi x, y / psi)``, which
    keeps ``x.y``: the GERF closed forms at the fitted ``A``, with ``|z|^2`` that of
    the rescaled pair, for every projection above; the same holds for the whitened
    map on its pair ``(T_q x, T_k y)``.

    SDERF and ADERF (full-matrix dense-exponential features, :ref:`theory-favor-sharp`; iid
    rows only): after the fitted transform (ADERF: ``T_q`` on ``x``, ``T_k`` on
    ``y``) and the rotation ``R``, the features are a GERF per direction ``l`` with
    parameter ``A_l``, and with ``z = R (x~' + y~')`` the second moment factorizes:
    ``Var1 = SM^2 (e^t - 1)``,
    ``t = sum_l [log(1 + 16 A_l^2 / (1 - 8 A_l)) / 2 + z_l^2 / (1 - 8 A_l)]``, a sum of
    non-negative terms.  With orthogonal blocks the per-row variance is the same
    and a same-block covariance is added, which has no closed form for unequal
    ``A_l`` (measure it with :func:`empirical_mse`).

    The deterministic ``"taylor"`` map (``1 + s + s^2/2`` for ``s = x'.y'``) has no
    variance: its MSE is the squared truncation error ``(e^s - 1 - s - s^2/2)^2``
    (its bias squared), for any ``projection`` and ``norms``.

    For ``norms="fixed"`` (:ref:`theory-smreg`) the moments are ``0F1(; d/2; .)`` values:
    ``E exp(w.z) = 0F1(; d/2; d |z|^2/4)`` and so on, and the bias ``SMREG - SM`` is
    added squared.  Performer Theorem 2 (orthogonal never worse for positive
    features) holds for these closed forms.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import theoretical_mse
    >>> x = np.array([0.5, 0.0, 0.0, 0.0])
    >>> y = np.array([0.0, 0.5, 0.0, 0.0])
    >>> iid = theoretical_mse(x, y, feature_map="positive", n_components=4, projection="gaussian")
    >>> bool(np.isclose(iid, np.expm1(0.5) / 4))   # SM = 1 here
    True
    >>> ort = theoretical_mse(x, y, feature_map="positive", n_components=4)
    >>> bool(ort < iid)
    True
    >>> big = 20 * np.ones(4)
    >>> theoretical_mse(big, big, feature_map="positive", n_components=4)
    inf
    >>> round(theoretical_mse(big, big, feature_map="positive", n_components=4, log=True), 1)
    9598.6

    The fitted maps take their constants (SDERF: iid rows):

    >>> from favorkern.feature_maps import get_feature_map
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(2, 200, 4)) * [[2.0, 1.0, 0.5, 0.1]]
    >>> c = get_feature_map("sderf").fit(Q, K, input_scale=0.5)
    >>> sderf = theoretical_mse(Q[:3], K[:3], feature_map="sderf", n_components=64,
    ...                         projection="gaussian", gamma=0.25, constants=c)
    >>> positive = theoretical_mse(Q[:3], K[:3], feature_map="positive", n_components=64,
    ...                            projection="gaussian", gamma=0.25)
    >>> bool(sderf.mean() < positive.mean())
    True
    """
    x, y, scalar = check_pairs(x, y)
    fmap, m = check_width(feature_map, n_components)
    if not fmap.has_closed_form:
        raise ValueError(
            f"feature_map={fmap.name!r} has no closed-form MSE; maps with one: "
            f"{list(feature_map_names(closed_form=True))}"
        )
    deterministic = getattr(fmap, "deterministic", False)
    if projection in ("sobol", "halton", "structured") and not deterministic:
        raise ValueError(
            f"projection={projection!r} has no closed-form MSE (its rows are dependent in a "
            "way no formula covers); measure it with favorkern.diagnostics.empirical_mse"
        )
    check_option(projection, "projection", PROJECTION_KINDS if deterministic else PROJECTIONS)
    check_option(norms, "norms", NORMS)
    gamma = check_gamma(gamma)
    if not isinstance(log, (bool, np.bool_)):
        raise TypeError(f"log must be a bool, got {type(log).__name__}: {log!r}")
    A = check_a(A)
    if constants is not None:
        if A is not None:
            raise ValueError("give the GERF parameter as A or in constants, not both")
        if not hasattr(constants, "keys"):
            raise TypeError(
                f"constants must be a dict of fitted constants (the map's fit()), got "
                f"{type(constants).__name__}"
            )
        constants = dict(constants)
        unknown = sorted(set(constants) - set(fmap.data_constants))
        if unknown:
            raise ValueError(
                f"constants has keys {unknown} that feature map {fmap.name!r} does not use "
                f"(its data constants: {list(fmap.data_constants)})"
            )
        constants = check_constants(fmap, constants, x.shape[1])
    elif A is not None or fmap.data_constants == ("A",):
        constants = {"A": A}
    else:
        constants = {}
    if deterministic:
        projection = "gaussian"  # its error does not depend on the (unused) projection
    elif projection not in fmap.closed_form_projections(norms):
        raise ValueError(
            f"feature_map={fmap.name!r} with norms={norms!r} has closed forms for projection "
            f"in {list(fmap.closed_form_projections(norms))}, got {projection!r}"
        )
    d = x.shape[1]
    P = same_block_pairs(m, d, projection)
    value = constants.get("A")
    if value is not None and np.ndim(value) == 0:  # GERF's one A (SDERF's is per direction)
        constants["A"] = check_a(value[()] if isinstance(value, np.ndarray) else value)
    geometry = fmap.pair_geometry(x, y, gamma, constants)
    values = fmap.log_mse(geometry, m=m, P=P, d=d, projection=projection, norms=norms,
                          constants=constants)  # fmt: skip
    if not log:
        # exp of the log form: 0 where the MSE underflows, inf where it overflows,
        # never inf * 0 = NaN from a direct product of huge and tiny factors.
        with np.errstate(over="ignore", under="ignore"):
            values = np.exp(values)
    return output(values, scalar)
