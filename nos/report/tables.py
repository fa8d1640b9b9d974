"""Plain-text tables and PNG plots for the command line."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left/right aligned text table (numbers right, text left)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=False)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def one_line(text: str) -> str:
    """A rule's text on one line, for a table's cell: its statements joined by '; ', the
    params' values last (``state m = beta * m + g; update = m (beta = 0.9)``)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    params = [line for line in lines if line.startswith("param ")]
    body = "; ".join(line for line in lines if not line.startswith("param "))
    if not params:
        return body
    values = ", ".join(line[len("param "):].split(" in ")[0] for line in params)
    return f"{body} ({values})"


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) or v is None


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_curves(curves: dict[str, list[list[float]]], path: str | Path, title: str,
                ylabel: str = "validation accuracy", xlabel: str = "epoch") -> Path:
    """One line per name: the mean over its runs, shaded by min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        length = min(len(r) for r in runs)
        xs = list(range(1, length + 1))
        columns = list(zip(*(r[:length] for r in runs), strict=False))
        ax.plot(xs, [statistics.fmean(c) for c in columns], label=name)
        if len(runs) > 1:
            ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
