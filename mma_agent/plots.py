"""Small matplotlib helpers for plots written beside result tables (optional `plots` extra)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def line_plot(
    series: dict[str, tuple[list[float], list[float]]], path: Path, *, xlabel: str, ylabel: str, title: str = ""
) -> Path | None:
    """One line per named (x, y) series; returns the path, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed, so no plot at %s (pip install 'mma-agent[plots]')", path)
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_plot(groups: dict[str, dict[str, float]], path: Path, *, ylabel: str, title: str = "") -> Path | None:
    """Grouped bars: one group per outer key, one bar per inner key (the same inner keys in each)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed, so no plot at %s (pip install 'mma-agent[plots]')", path)
        return None
    import numpy as np

    names = list(dict.fromkeys(k for bars in groups.values() for k in bars))
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, name in enumerate(names):
        ax.bar(x + i * width, [bars.get(name, np.nan) for bars in groups.values()], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, list(groups), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
