"""Charts for the HTML report, drawn by matplotlib and returned as inline SVG text (text drawn as
paths: no font file, no URL). Only `matplotlib.figure.Figure` is used, never pyplot, so no global
backend state is touched. Imported only when an HTML report is made."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence

COLORS = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e",
          "#9498a0")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]                               # no XML declaration, no DOCTYPE (a URL)
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96)
    fig.patch.set_alpha(0.0)
    return fig


def bars(title: str, metric: str, models: Sequence[str], values: Sequence[float | None],
         stderrs: Sequence[float | None]) -> str:
    """One bar per model, with ±1 standard error bars (none where the stderr is unknown)."""
    fig = _figure(max(3.2, 0.9 * len(models) + 1.6), 2.8)
    ax = fig.add_subplot()
    xs = list(range(len(models)))
    ys = [100 * v if v is not None else 0.0 for v in values]
    err = [100 * e if e is not None else 0.0 for e in stderrs]
    ax.bar(xs, ys, yerr=err, capsize=4, color=[COLORS[i % len(COLORS)] for i in xs], edgecolor="none")
    for x, v in zip(xs, values, strict=True):
        if v is None:
            ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [m if len(m) <= 18 else m[:17] + "…" for m in models], rotation=20 if len(models) > 3 else 0,
                  ha="right" if len(models) > 3 else "center", fontsize=8)
    ax.set_ylim(0, max(100.0, max((y + e for y, e in zip(ys, err, strict=True)), default=0)))
    ax.set_ylabel(f"{metric} (%)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def heatmap(title: str, metric: str, rows: Sequence[str], models: Sequence[str],
            values: Mapping[tuple[str, str], float]) -> str:
    """Subtasks (rows) x models (columns), the value written in each cell."""
    import numpy as np

    grid = np.full((len(rows), len(models)), np.nan)
    for i, r in enumerate(rows):
        for j, m in enumerate(models):
            v = values.get((r, m))
            if v is not None:
                grid[i, j] = 100 * v
    fig = _figure(max(3.5, 1.0 * len(models) + 2.8), max(2.0, 0.28 * len(rows) + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(models)), models, fontsize=8, rotation=20 if len(models) > 3 else 0)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    if len(rows) * len(models) <= 400:
        for i in range(len(rows)):
            for j in range(len(models)):
                v = grid[i, j]
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(v) or v < 60 else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label(f"{metric} (%)", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def lines(title: str, xlabel: str, metric: str, xs: Sequence[str],
          series: Mapping[str, Sequence[float | None]]) -> str:
    """One line per series over the categories `xs` (few-shot counts, model sizes)."""
    fig = _figure(4.8, 2.8)
    ax = fig.add_subplot()
    for i, (name, ys) in enumerate(series.items()):
        pts = [(k, 100 * y) for k, y in enumerate(ys) if y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS[i % len(COLORS)], label=name)
    ax.set_xticks(range(len(xs)), xs, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(f"{metric} (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)
