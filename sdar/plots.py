"""PNG charts for run reports and method comparisons (the only module that imports matplotlib)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Panel", "Series", "bar_chart", "histogram", "histograms", "line_chart", "panels_chart"]


@dataclass(frozen=True)
class Series:
    """One line of a chart, optionally with a shaded band (e.g. a confidence interval)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    lo: Sequence[float] | None = None
    """Lower edge of the band, one value per point (None: no band)."""
    hi: Sequence[float] | None = None
    """Upper edge of the band, one value per point (None: no band)."""


@dataclass(frozen=True)
class Panel:
    """One set of axes in a multi-panel figure."""

    title: str
    ylabel: str
    series: Sequence[Series]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax: Any, series: Sequence[Series]) -> None:
    for s in series:
        marker = "o" if len(s.x) <= 20 else None
        (line,) = ax.plot(list(s.x), list(s.y), label=s.label, marker=marker, markersize=3)
        if s.lo is not None and s.hi is not None:
            lo = [v if math.isfinite(v) else y for v, y in zip(s.lo, s.y)]
            hi = [v if math.isfinite(v) else y for v, y in zip(s.hi, s.y)]
            ax.fill_between(list(s.x), lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)
    if any(s.label for s in series):
        ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def line_chart(path: str | Path, series: Sequence[Series], *, title: str, xlabel: str, ylabel: str) -> Path:
    """Lines (with optional bands) on one set of axes, written to ``path`` as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    _draw(ax, series)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def panels_chart(path: str | Path, panels: Sequence[Panel], *, xlabel: str) -> Path:
    """Several line charts side by side sharing the x label, written to ``path`` as PNG."""
    if not panels:
        raise ValueError("panels_chart needs at least one panel")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw(ax, panel.series)
        ax.set_title(panel.title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
    return _save(fig, path)


def bar_chart(path: str | Path, labels: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]], *, title: str,
              xlabel: str, ylabel: str) -> Path:
    """Grouped bars: one bar per (group, label); ``groups`` holds ``(group name, one value per label)``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    width = 0.8 / max(len(groups), 1)
    for g, (name, values) in enumerate(groups):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, list(values), width=width, label=name)
    ax.set_xticks(list(range(len(labels))))
    ax.set_xticklabels(list(labels))
    ax.axhline(0.0, color="black", linewidth=0.8)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def histogram(path: str | Path, values: Sequence[float], *, title: str, xlabel: str, bins: int = 50) -> Path:
    """A histogram of ``values`` with a dashed line at their mean."""
    if not values:
        raise ValueError("histogram needs at least one value")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.hist(list(values), bins=bins, color="tab:blue", alpha=0.8)
    mean = sum(values) / len(values)
    ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean = {mean:.4f}")
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _save(fig, path)


def histograms(path: str | Path, named: Sequence[tuple[str, Sequence[float]]], *, title: str, xlabel: str,
               bins: int = 50) -> Path:
    """Overlaid step histograms (densities, shared bins), one per ``(name, values)``, each with its mean."""
    named = [(name, list(values)) for name, values in named if values]
    if not named:
        raise ValueError("histograms needs at least one non-empty series")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    lo = min(min(v) for _, v in named)
    hi = max(max(v) for _, v in named)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)] if hi > lo else bins
    for name, values in named:
        mean = sum(values) / len(values)
        ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.5,
                label=f"{name} (n={len(values)}, mean {mean:+.4f})")
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    return _save(fig, path)
