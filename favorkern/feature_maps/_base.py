"""The :class:`FeatureMap` base class and the registry of feature maps by name."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Mapping

import numpy as np

__all__ = [
    "FeatureMap",
    "fit_constants",
    "register_feature_map",
    "unregister_feature_map",
    "get_feature_map",
    "feature_map_names",
    "map_identity",
    "map_spec",
]


class FeatureMap:
    """A random-feature map: everything favorkern needs to know about one estimator.

    A map turns a random projection ``W`` (``n_projections x d``, rows marginally
    ``N(0, I)``) and scaled inputs ``x' = c x`` into features ``phi(x)`` whose inner
    products estimate a kernel.  Subclass it, set the class attributes, implement
    :meth:`spec`, and register an instance with :func:`register_feature_map`: the
    map then works in :class:`favorkern.RandomFeatures`,
    :func:`favorkern.favor_attention`, :func:`favorkern.diagnostics.empirical_mse`
    and :mod:`favorkern.dask` by its name.

    Attributes
    ----------
    name : str
        The registry name (an identifier, e.g. ``"positive"``).
    outputs_per_projection : int
        Outputs per projection row: 1, or 2 for paired maps (``exp(+-u)``,
        ``cos/sin``).  ``n_components`` outputs use
        ``ceil(n_components / outputs_per_projection)`` projections.
    kernels : tuple of str
        The kernels the map estimates, among ``"softmax"`` (``exp(gamma x.y)``) and
        ``"rbf"`` (``exp(-gamma |x - y|^2)``); empty for a map that estimates a kernel
        of its own (the generalized maps).
    nonnegative : bool
        Features are never negative (the attention normalizer cannot vanish or
        change sign).
    data_constants : tuple of str
        Names of constants fitted on data by :meth:`fit` (empty for data-free maps).
        Attention fits them per (batch, head) on the current queries and keys, so a
        map with data constants is bidirectional only unless they are fitted once.
    constant_shapes : dict
        The shape of each data constant, as a tuple whose entries are ``"d"`` (the
        input dimension), ``"m"`` (any length) or an integer; ``()`` for a number.
        :func:`check_constants` refuses constants of another shape.
    fit_takes_projection : bool
        :meth:`fit` takes the caller's projection (``projection=``, the matrix the
        transformer or attention layer drew from its ``n_components``,
        ``projection`` and ``random_state``) and fits its constants around it; the
        callers pass it through :func:`fit_constants`.
    summary : str
        One line for listings (the command line, the docs).

    Notes
    -----
    Outputs are laid out as ``outputs_per_projection`` blocks of ``n_projections``
    columns (``[f_1(W x'), f_2(W x')]``), which lets the Monte-Carlo engine evaluate
    many trials in one stacked product.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import FeatureMap, FeatureMapSpec, apply_feature_map
    >>> class Linear(FeatureMap):
    ...     name = "linear"
    ...     kernels = ()
    ...     def spec(self, projection, *, n_components, input_scale, **kwargs):
    ...         scale = -0.5 * np.log(projection.shape[0])
    ...         return FeatureMapSpec(projection * input_scale, lambda u: u, log_scale=scale)
    >>> W = np.random.default_rng(0).normal(size=(4096, 3))
    >>> spec = Linear().spec(W, n_components=4096, input_scale=1.0)
    >>> x = np.array([[1.0, 2.0, 0.5]])
    >>> phi = apply_feature_map(x, spec)
    >>> bool(abs(phi @ phi.T - x @ x.T).max() < 0.5)
    True
    """

    name: str = ""
    outputs_per_projection: int = 1
    kernels: tuple = ("softmax", "rbf")
    nonnegative: bool = True
    data_constants: tuple = ()
    constant_shapes: Mapping = {}
    fit_takes_projection: bool = False
    summary: str = ""

    def n_projections(self, n_components: int) -> int:
        """Projections needed for ``n_components`` outputs."""
        return -(-int(n_components) // self.outputs_per_projection)

    def draw(self, n_components: int, random_state) -> dict:
        """Random draws besides the projection (made after it), e.g. random phases."""
        return {}

    def fit(self, X, Y=None, *, input_scale=1.0) -> dict:
        """Data constants from queries ``X`` and keys ``Y`` (``Y=None``: ``X`` both).

        Inputs are unscaled; ``input_scale`` is the factor ``c`` of ``x' = c x``.
        Returns a dict keyed by :attr:`data_constants` (empty for data-free maps).
        """
        return {}

    def prepare(self, X, side: str, constants: dict):
        """Inputs as the map sees them; ``side`` is ``"query"`` or ``"key"``.

        The identity except for asymmetric maps, which transform queries and keys
        differently while keeping ``q.k`` (SADERF).  Returns an array of ``X``'s dtype.
        """
        return X

    def spec(
        self,
        projection,
        *,
        n_components: int,
        input_scale: float,
        kernel: str = "softmax",
        constants=None,
        draws=None,
        sorf=None,
    ):
        """The :class:`~favorkern.feature_maps.FeatureMapSpec` evaluating the map.

        Parameters
        ----------
        projection : ndarray of shape (n_projections, d)
            The raw projection.
        n_components : int
            Output width.
        input_scale : float
            ``c`` in ``x' = c x``.
        kernel : {"softmax", "rbf"}
            The kernel estimated (one of :attr:`kernels`; ignored by maps with none).
        constants : dict or None
            Data constants from :meth:`fit` (or given by the user).
        draws : dict or None
            Draws from :meth:`draw`.
        sorf : tuple or None
            ``(signs, row_factors)`` of a structured projection, for the fast
            Walsh-Hadamard product.
        """
        raise NotImplementedError(f"feature map {self.name!r} does not define spec()")

    def pair_geometry(self, x, y, gamma, constants):
        """The geometry :meth:`log_mse` reads, of pairs ``(x, y)`` (float64 rows, unscaled).

        The default is the :class:`~favorkern.feature_maps.PairGeometry` of the pairs
        as the features see them: for a map with its own :meth:`prepare`, of
        ``prepare(x, "query")`` and ``prepare(y, "key")`` at the fitted ``constants``
        (which must then be complete, :func:`check_constants`), else of ``x`` and ``y``.
        A map whose closed form needs more than norms and inner products (a basis of
        its own, say) returns a subclass carrying it.
        """
        from ._variance import PairGeometry

        if type(self).prepare is not FeatureMap.prepare:
            constants = check_constants(self, constants, x.shape[1])
            px, py = self.prepare(x, "query", constants), self.prepare(y, "key", constants)
            # The closed forms compare with exp(x'.y'): prepare must keep every x.y.
            scale = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            gap = np.abs(np.einsum("ij,ij->i", px, py) - np.einsum("ij,ij->i", x, y))
            if np.any(gap > 1e-6 * scale):
                raise ValueError(
                    f"the constants of feature map {self.name!r} change the inner products "
                    "x.y of the pairs, so its features estimate another kernel; the closed "
                    "form needs constants that keep them (as fit() returns)"
                )
            x, y = px, py
        return PairGeometry.of(x, y, gamma)

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        """log of the closed-form MSE of ``phi(x).phi(y)`` against ``exp(x'.y')``.

        ``geometry`` is what :meth:`pair_geometry` built (a
        :class:`~favorkern.feature_maps.PairGeometry`); ``m`` projections with ``P``
        same-block pairs.  Maps without a closed form raise ``NotImplementedError``;
        see :attr:`has_closed_form`.
        """
        raise NotImplementedError(f"feature map {self.name!r} has no closed-form MSE")

    def closed_form_projections(self, norms: str) -> tuple:
        """The projection kinds for which :meth:`log_mse` holds at ``norms``."""
        return ()

    @property
    def has_closed_form(self) -> bool:
        """True when :meth:`log_mse` is implemented."""
        return type(self).log_mse is not FeatureMap.log_mse

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


def sq_factor(kernel: str) -> float:
    """Coefficient of ``|x'|^2`` in the exponent of exp-type maps: 1/2 softmax, 1 rbf.

    With ``x' = sqrt(gamma) x`` (softmax) or ``sqrt(2 gamma) x`` (rbf),
    ``exp(-gamma |x - y|^2) = E[f(x) f(y)]`` for ``f(x) = exp(w.x' - |x'|^2)``.

    Examples
    --------
    >>> from favorkern.feature_maps import sq_factor
    >>> sq_factor("softmax"), sq_factor("rbf")
    (0.5, 1.0)
    """
    return 1.0 if kernel == "rbf" else 0.5


def input_scale(kernel: str, gamma: float) -> float:
    """``c`` with ``x' = c x``: ``sqrt(gamma)`` for softmax, ``sqrt(2 gamma)`` for rbf.

    Examples
    --------
    >>> from favorkern.feature_maps import input_scale
    >>> input_scale("softmax", 4.0), input_scale("rbf", 2.0)
    (2.0, 2.0)
    """
    return float(np.sqrt((2.0 if kernel == "rbf" else 1.0) * gamma))


# The registry: name -> map, read and changed under one lock (callers may run in
# threads).  _VERSIONS counts the registrations of each name, so a map replaced under
# its name has another identity (map_identity) than the one it replaced.
_REGISTRY: dict = {}
_VERSIONS: dict = {}
_BUILTINS: set = set()
_LOCK = threading.RLock()
_SERIALS = weakref.WeakKeyDictionary()  # unregistered maps: one number per object
_NEXT_SERIAL = itertools.count(1)


def register_feature_map(feature_map: FeatureMap, *, replace: bool = False) -> FeatureMap:
    """Make ``feature_map`` available by its name everywhere in favorkern.

    Parameters
    ----------
    feature_map : FeatureMap
        An instance of a :class:`FeatureMap` subclass with a non-empty ``name``.
    replace : bool, default=False
        Replace a map registered under the same name (otherwise a ``ValueError``).
        Decoding states made with the replaced map do not continue with the new one.

    Returns
    -------
    feature_map : FeatureMap
        The registered map (so the call can wrap a class definition's instance).

    Notes
    -----
    The registry may be read and changed from several threads.  Every map's output
    width is checked when its features are built: a map whose
    :meth:`FeatureMap.spec` gives another number of outputs than ``n_components`` is
    refused there, with a ``ValueError`` naming it.

    Examples
    --------
    >>> from favorkern.feature_maps import (
    ...     PositiveFeatureMap, feature_map_names, register_feature_map)
    >>> class MyPositive(PositiveFeatureMap):
    ...     name = "my_positive"
    >>> _ = register_feature_map(MyPositive())
    >>> "my_positive" in feature_map_names()
    True
    >>> from favorkern.feature_maps import unregister_feature_map
    >>> unregister_feature_map("my_positive")
    """
    if not isinstance(feature_map, FeatureMap):
        raise TypeError(
            "feature_map must be an instance of favorkern.feature_maps.FeatureMap, got "
            f"{type(feature_map).__name__}"
        )
    name = feature_map.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a feature map's name must be an identifier string, got {name!r}")
    if feature_map.outputs_per_projection not in (1, 2):
        raise ValueError(
            "outputs_per_projection must be 1 or 2, got "
            f"{feature_map.outputs_per_projection!r} for feature map {name!r}"
        )
    with _LOCK:
        if name in _REGISTRY and not replace:
            raise ValueError(
                f"a feature map named {name!r} is registered already; pass replace=True to "
                "replace it"
            )
        _REGISTRY[name] = feature_map
        _VERSIONS[name] = _VERSIONS.get(name, 0) + 1
    return feature_map


def _register_builtin(feature_map: FeatureMap) -> None:
    """Register one of favorkern's own maps (which cannot be unregistered)."""
    register_feature_map(feature_map)
    _BUILTINS.add(feature_map.name)


def unregister_feature_map(name: str) -> None:
    """Remove the map registered as ``name`` (a ``ValueError`` if there is none).

    favorkern's own maps (``"positive"``, ...) cannot be removed: the named
    transformers and the defaults of every function use them.  They can be replaced
    with ``register_feature_map(..., replace=True)``.

    Examples
    --------
    >>> from favorkern.feature_maps import (
    ...     PositiveFeatureMap, feature_map_names, register_feature_map,
    ...     unregister_feature_map)
    >>> class Temporary(PositiveFeatureMap):
    ...     name = "temporary"
    >>> _ = register_feature_map(Temporary())
    >>> unregister_feature_map("temporary")
    >>> "temporary" in feature_map_names()
    False
    >>> try:
    ...     unregister_feature_map("positive")
    ... except ValueError as error:
    ...     print(str(error)[:46])
    feature map 'positive' is built into favorkern
    """
    with _LOCK:
        if name in _BUILTINS:
            raise ValueError(
                f"feature map {name!r} is built into favorkern and cannot be unregistered "
                "(replace it with register_feature_map(..., replace=True))"
            )
        if name not in _REGISTRY:
            raise ValueError(
                f"no feature map named {name!r} is registered; have {sorted(_REGISTRY)}"
            )
        del _REGISTRY[name]


def get_feature_map(feature_map, name: str = "feature_map") -> FeatureMap:
    """The registered map of that name (a :class:`FeatureMap` passes through).

    Raises a ``ValueError`` naming the parameter ``name`` and the registered names.

    Examples
    --------
    >>> from favorkern.feature_maps import get_feature_map
    >>> get_feature_map("hyperbolic").outputs_per_projection
    2
    """
    if isinstance(feature_map, FeatureMap):
        return feature_map
    if isinstance(feature_map, str):
        found = _REGISTRY.get(feature_map)  # one dict read: atomic
        if found is not None:
            return found
    with _LOCK:
        names = sorted(_REGISTRY)
    raise ValueError(f"{name} must be one of {names} or a FeatureMap, got {feature_map!r}")


def map_identity(feature_map: FeatureMap) -> str:
    """A string naming this very map object, for fingerprints of what its features made.

    The map registered under its name reads ``name#k:module.Class`` with ``k`` the
    registration of that name (1 for favorkern's own maps and for a map registered
    once, so it is the same in every process that registers the same maps); a map
    replaced under its name gets another ``k``.  Any other map object reads
    ``name@n:module.Class`` with ``n`` a number of that object in this process.  Two
    distinct objects never share an identity, whatever their names.

    Examples
    --------
    >>> from favorkern.feature_maps import PositiveFeatureMap, get_feature_map
    >>> from favorkern.feature_maps._base import map_identity
    >>> map_identity(get_feature_map("positive"))
    'positive#1:favorkern.feature_maps.positive.PositiveFeatureMap'
    >>> map_identity(PositiveFeatureMap()) == map_identity(get_feature_map("positive"))
    False
    """
    kind = f"{type(feature_map).__module__}.{type(feature_map).__qualname__}"
    name = feature_map.name
    with _LOCK:
        if _REGISTRY.get(name) is feature_map:
            return f"{name}#{_VERSIONS[name]}:{kind}"
        serial = _SERIALS.get(feature_map)
        if serial is None:
            serial = _SERIALS[feature_map] = next(_NEXT_SERIAL)
    return f"{name}@{serial}:{kind}"


def map_spec(feature_map: FeatureMap, projection, *, n_components: int, **kwargs):
    """``feature_map.spec(projection, n_components=..., **kwargs)``, its width checked.

    A :meth:`FeatureMap.spec` must return a
    :class:`~favorkern.feature_maps.FeatureMapSpec` with exactly ``n_components``
    outputs (rows of ``weights``, and as many scales and phases): the feature names,
    the attention states and the error estimates all read that width.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import get_feature_map
    >>> from favorkern.feature_maps._base import map_spec
    >>> W = np.random.default_rng(0).normal(size=(4, 3))
    >>> map_spec(get_feature_map("hyperbolic"), W, n_components=8,
    ...          input_scale=1.0).weights.shape
    (8, 3)
    """
    from ._evaluate import FeatureMapSpec

    spec = feature_map.spec(projection, n_components=n_components, **kwargs)
    name = getattr(feature_map, "name", type(feature_map).__name__)
    if not isinstance(spec, FeatureMapSpec):
        raise TypeError(
            f"feature map {name!r}: spec() must return a FeatureMapSpec, got {type(spec).__name__}"
        )
    weights = np.asarray(spec.weights) if not hasattr(spec.weights, "shape") else spec.weights
    width = weights.shape[0] if weights.ndim == 2 else None
    sizes = [width]
    for field in ("log_scale", "offset"):
        value = getattr(spec, field)
        if value is not None and np.ndim(value) > 0:
            sizes.append(np.shape(value)[0] if np.ndim(value) == 1 else None)
    if any(size != n_components for size in sizes):
        raise ValueError(
            f"feature map {name!r} declares n_components={n_components} outputs, but its "
            f"spec() gives weights of shape {np.shape(weights)}"
            + (
                ""
                if len(sizes) == 1
                else f" (and per-output scales or phases of lengths {sizes[1:]})"
            )
            + f": the spec must have {n_components} rows, one per output"
        )
    return spec


def feature_map_names(*, kernel=None, closed_form=None, data_free=None, random=None) -> tuple:
    """Names of the registered maps, in registration order, optionally filtered.

    Parameters
    ----------
    kernel : {"softmax", "rbf"} or None
        Only maps that estimate this kernel.
    closed_form : bool or None
        Only maps with (True) or without (False) a closed-form MSE.
    data_free : bool or None
        Only maps without (True) or with (False) data-fitted constants.
    random : bool or None
        Only maps whose projection is random (True: Monte-Carlo estimates over
        projections apply) or fitted around data (False,
        :attr:`FeatureMap.fit_takes_projection`).

    Examples
    --------
    >>> from favorkern.feature_maps import feature_map_names
    >>> feature_map_names(closed_form=True)[:3]
    ('positive', 'hyperbolic', 'trigonometric')
    """
    with _LOCK:
        registered = list(_REGISTRY.items())
    names = []
    for name, fmap in registered:
        if kernel is not None and kernel not in fmap.kernels:
            continue
        if closed_form is not None and fmap.has_closed_form != closed_form:
            continue
        if data_free is not None and (not fmap.data_constants) != data_free:
            continue
        if random is not None and fmap.fit_takes_projection == random:
            continue
        names.append(name)
    return tuple(names)


def linear_prepare(X, side: str, constants: dict):
    """``X T^T`` with ``T`` the constant ``query_transform`` or ``key_transform`` of ``side``.

    The :meth:`FeatureMap.prepare` of maps that map queries and keys linearly (the
    whitened and fitted maps); one (rows x d) by (d x d) product on one BLAS thread.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps._base import linear_prepare
    >>> c = {"query_transform": 2 * np.eye(2), "key_transform": np.eye(2) / 2}
    >>> linear_prepare(np.ones((1, 2)), "query", c).tolist()
    [[2.0, 2.0]]
    """
    from .._parallel import blas_single_thread

    T = np.asarray(constants["query_transform" if side == "query" else "key_transform"])
    with blas_single_thread():  # a small product: threads only cost
        return np.ascontiguousarray(X @ T.T.astype(X.dtype, copy=False))


def fit_constants(feature_map: FeatureMap, X, Y=None, *, input_scale, projection=None) -> dict:
    """``feature_map.fit(X, Y, input_scale=...)``, with the caller's ``projection`` for a
    map that fits its constants around it (:attr:`FeatureMap.fit_takes_projection`).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import draw_projection
    >>> from favorkern.feature_maps import fit_constants, get_feature_map
    >>> Q, K = np.random.default_rng(0).normal(size=(2, 40, 4))
    >>> W = draw_projection(8, 4, random_state=0)
    >>> c = fit_constants(get_feature_map("fitted"), Q, K, input_scale=0.5, projection=W)
    >>> bool(np.array_equal(c["projection"], W))
    True
    >>> sorted(fit_constants(get_feature_map("optimal"), Q, K, input_scale=0.5, projection=W))
    ['A']
    """
    if feature_map.fit_takes_projection and projection is not None:
        return feature_map.fit(X, Y, input_scale=input_scale, projection=projection)
    return feature_map.fit(X, Y, input_scale=input_scale)


def check_constants(feature_map: FeatureMap, constants, d=None) -> dict:
    """``constants`` as a dict holding every data constant of the map, or a ``ValueError``.

    Each constant must be numeric, finite and of the shape the map declares in
    :attr:`FeatureMap.constant_shapes`, with ``d`` (when given) the input dimension.

    Examples
    --------
    >>> from favorkern.feature_maps import check_constants, get_feature_map
    >>> check_constants(get_feature_map("optimal"), {"A": -0.1})
    {'A': -0.1}
    >>> check_constants(get_feature_map("optimal"), None)
    Traceback (most recent call last):
    ...
    ValueError: feature map 'optimal' needs its fitted constants ['A']; fit them on data first
    >>> check_constants(get_feature_map("optimal"), {"A": [-0.1, -0.2]})
    Traceback (most recent call last):
    ...
    ValueError: constant 'A' of feature map 'optimal' must be a number, got shape (2,)
    """
    if constants is None:
        constants = {}
    elif not isinstance(constants, Mapping):
        raise TypeError(
            f"constants must be a dict of the fitted constants of feature map "
            f"{feature_map.name!r}, got {type(constants).__name__}"
        )
    constants = dict(constants)
    if constants and not feature_map.data_constants:
        raise ValueError(
            f"feature map {feature_map.name!r} has no fitted constants, got constants with "
            f"keys {sorted(map(str, constants))}"
        )
    missing = [key for key in feature_map.data_constants if key not in constants]
    if missing:
        raise ValueError(
            f"feature map {feature_map.name!r} needs its fitted constants {missing}; fit "
            "them on data first"
        )
    for key, value in constants.items():
        try:
            values = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"constant {key!r} of feature map {feature_map.name!r} must be numeric, got "
                f"{value!r}"
            ) from None
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"constant {key!r} of feature map {feature_map.name!r} is not finite: {value!r}"
            )
        if key == "A" and "A" in feature_map.data_constants and np.any(values >= 0.25):
            # the GERF family: (1 - 4A)^(d/4) and sqrt(1 - 4A) need A < 1/4
            raise ValueError(
                f"constant 'A' of feature map {feature_map.name!r} must be below 1/4 (the "
                f"features are not defined beyond), got {value!r}"
            )
        expected = feature_map.constant_shapes.get(key)
        if expected is not None:
            _check_shape(feature_map.name, key, values.shape, tuple(expected), d)
    return constants


def _check_shape(name, key, shape, expected, d):
    """A ``ValueError`` unless ``shape`` matches the template ``expected``."""
    fits = len(shape) == len(expected) and all(
        e == "m" or (e == "d" and (d is None or s == d)) or s == e
        for s, e in zip(shape, expected, strict=True)
    )
    if fits:
        return
    if not expected:
        raise ValueError(
            f"constant {key!r} of feature map {name!r} must be a number, got shape {shape}"
        )
    words = ", ".join(str(d) if e == "d" and d is not None else str(e) for e in expected)
    words += "," if len(expected) == 1 else ""
    inputs = "" if d is None else f" for {d}-dimensional inputs"
    raise ValueError(
        f"constant {key!r} of feature map {name!r} must have shape ({words}){inputs}, got {shape}"
    )
