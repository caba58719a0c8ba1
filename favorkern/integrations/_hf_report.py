"""The routing ladder and the per-head report of :mod:`favorkern.integrations.transformers`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The settings a head can be routed to, cheapest first: ``(name, parameters)``.
#: ``"favor"`` is plain random-feature attention; the ``"window ..."`` settings are
#: :class:`~favorkern.HybridAttention` with those parameters (exact keys: the window,
#: the first keys as global "sinks", and with ``n_top`` the ``n_top`` keys of
#: largest logit among ``n_candidates`` candidates); ``"exact"`` is softmax attention.
#: Every random-feature setting uses the template's ``n_components``,
#: ``feature_map`` and ``projection``.  Routing skips the settings whose estimated
#: time (:func:`setting_cost`) is not below exact attention's at the sequence length.
LADDER = (
    ("favor", {}),
    ("window 16", {"window": 16, "n_global": 1}),
    ("window 64", {"window": 64, "n_global": 1}),
    ("window 256", {"window": 256, "n_global": 4}),
    ("window 512", {"window": 512, "n_global": 4}),
    ("window 1024", {"window": 1024, "n_global": 4}),
    ("window 64 + top 16/128", {"window": 64, "n_global": 1, "n_top": 16, "n_candidates": 128}),
    ("window 256 + top 32/256", {"window": 256, "n_global": 1, "n_top": 32, "n_candidates": 256}),
    ("exact", None),
)

# Time per query of each part of a setting, in units of one query-key pair of exact
# attention (PyTorch's fused CPU kernel), measured on one x86-64 (AVX2) core at
# L = 2048 and 8192, d = 64, m = 256: random features, the hybrid's fixed work
# (features, windows' bookkeeping, merging), each window or global key, each
# scored candidate.  Rough (within ~20% there); they only rank settings.
_COST_FAVOR = 1100.0
_COST_HYBRID = 1560.0
_COST_EXACT_KEY = 1.4
_COST_CANDIDATE = 14.0


def setting_cost(params, length, causal=True):
    """Estimated time of a :data:`LADDER` setting relative to exact attention.

    Parameters
    ----------
    params : dict or None
        The setting's parameters (``{}``: plain random features, None: exact).
    length : int
        Sequence length.
    causal : bool, default=True
        Causal attention (exact attention visits about ``L / 2`` keys per query) or
        bidirectional (``L``).

    Returns
    -------
    float
        1.0 for exact attention; random features and windows cost a constant per
        query, exact attention ``O(L)`` per query, so every other setting gets
        cheaper relative to exact as ``length`` grows.

    Examples
    --------
    >>> from favorkern.integrations.transformers import setting_cost
    >>> round(setting_cost({}, 8192), 2)                  # plain random features
    0.27
    >>> setting_cost({}, 1024) > 1                        # short: exact is cheaper
    True
    """
    if params is None:
        return 1.0
    exact_keys = (length + 1) / 2 if causal else float(length)
    if not params:
        return _COST_FAVOR / exact_keys
    window = min(int(params.get("window", 0)), length)
    n_global = int(params.get("n_global", 0))
    n_candidates = int(params.get("n_candidates") or (256 if params.get("n_top") else 0))
    per_query = (_COST_HYBRID + _COST_EXACT_KEY * (window + n_global)
                 + _COST_CANDIDATE * min(n_candidates, length))  # fmt: skip
    return per_query / exact_keys


@dataclass
class _HeadRecord:
    layer: int
    head: int
    setting: str
    error: float
    low: float
    high: float
    exact_share: float
    cost: float = float("nan")


# ------------------------------------------------------------------------ report


class RoutingReport:
    """Per (layer, head): the setting, its estimated error and the share of exact keys.

    Attributes
    ----------
    rows : list of dict
        One per head: ``layer``, ``head``, ``setting``, ``error`` (estimated mean
        relative row error on the calibration text, NaN without calibration),
        ``error_low``, ``error_high`` (its 95% interval) and ``exact_share`` (the
        share of each query's visible keys computed exactly) and ``cost`` (the
        setting's estimated time relative to exact attention, see
        :func:`setting_cost`), both at the sequence length routed for.
    target_error : float or None

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from favorkern import FavorAttention
    >>> from favorkern.integrations.transformers import linearize
    >>> config = BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
    ...                     num_hidden_layers=2, num_attention_heads=4)
    >>> model = BertModel(config).eval()
    >>> ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(0))
    >>> template = FavorAttention(n_components=64, random_state=0)
    >>> with linearize(model, template, calibration=ids, target_error=0.5) as handle:
    ...     report = handle.report()
    >>> len(report), sum(report.settings().values())      # 2 layers x 4 heads
    (8, 8)
    >>> sorted(report.rows[0])
    ['cost', 'error', 'error_high', 'error_low', 'exact_share', 'head', 'layer', 'setting']
    """

    columns = ("layer", "head", "setting", "error", "error_low", "error_high", "exact_share",
               "cost")  # fmt: skip

    def __init__(self, records, target_error):
        self.rows = [
            {
                "layer": r.layer,
                "head": r.head,
                "setting": r.setting,
                "error": r.error,
                "error_low": r.low,
                "error_high": r.high,
                "exact_share": r.exact_share,
                "cost": r.cost,
            }  # fmt: skip
            for r in records
        ]
        self.target_error = target_error

    def __len__(self):
        return len(self.rows)

    def to_frame(self):
        """The rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.columns))

    def settings(self):
        """Number of heads per setting, in ladder order."""
        counts = {}
        for row in self.rows:
            counts[row["setting"]] = counts.get(row["setting"], 0) + 1
        order = {name: i for i, (name, _) in enumerate(LADDER)}
        return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], -1)))

    def relative_cost(self):
        """Estimated attention time of the routed heads relative to exact attention.

        The mean of the heads' ``cost`` (NaN without calibration): below 1 when the
        routed attention should be faster than the model's own at the routed length.
        """
        costs = [r["cost"] for r in self.rows]
        return float(np.mean(costs)) if costs else float("nan")

    def __str__(self):
        lines = [
            f"{'layer':>5} {'head':>4}  {'setting':<24} {'error':>7}  {'95% interval':<15} "
            f"{'exact keys':>10} {'cost':>6}"
        ]
        for r in self.rows:
            interval = f"{r['error_low']:.3f}-{r['error_high']:.3f}"
            lines.append(
                f"{r['layer']:>5} {r['head']:>4}  {r['setting']:<24} {r['error']:>7.3f}  "
                f"{interval:<15} {r['exact_share']:>10.1%} {r['cost']:>6.2f}"
            )
        return "\n".join(lines)

    def plot(self, ax=None):
        """Heads (columns) by layers (rows), coloured by estimated error, labelled by setting.

        Returns
        -------
        ax : matplotlib Axes
        """
        import matplotlib.pyplot as plt

        layers = sorted({r["layer"] for r in self.rows})
        n_heads = max(r["head"] for r in self.rows) + 1
        grid = np.full((len(layers), n_heads), np.nan)
        names = [name for name, _ in LADDER]
        labels = {}
        for r in self.rows:
            row = layers.index(r["layer"])
            grid[row, r["head"]] = r["error"]
            labels[row, r["head"]] = names.index(r["setting"]) if r["setting"] in names else -1
        if ax is None:
            _, ax = plt.subplots(figsize=(1 + 0.45 * n_heads, 1 + 0.3 * len(layers)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        for (row, head), rung in labels.items():
            ax.text(head, row, str(rung), ha="center", va="center", color="w", fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
        legend = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        ax.set_title(f"estimated error per head; setting {legend}", fontsize=7, wrap=True)
        ax.figure.colorbar(image, ax=ax, label="mean relative row error")
        return ax
