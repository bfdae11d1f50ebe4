"""Run outputs: per-update metrics as JSONL (one line per update, one value per seed) and curve PNGs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.jsonl"


def append_metrics(path: str | Path, metrics: Mapping[str, np.ndarray], first_update: int) -> None:
    """Append a chunk of metrics shaped (seeds, updates) as one JSON line per update."""
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    num_updates = next(iter(arrays.values())).shape[1]
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(num_updates):
            row = {"update": first_update + i + 1}
            for k, v in arrays.items():
                row[k] = [_plain(x) for x in v[:, i]]
            fh.write(json.dumps(row) + "\n")


def _plain(x: np.generic) -> float | int:
    return int(x) if np.issubdtype(np.asarray(x).dtype, np.integer) else float(x)


def metrics_rows(path: str | Path) -> tuple[list[dict], bool]:
    """The rows of a metrics file, and whether its last line was cut mid-write (a run killed while appending: that
    line is left out). Raises `ValueError` naming the file and line if any other line is damaged."""
    lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                return rows, True
            raise ValueError(f"{path}, line {i + 1}: not a JSON metrics row (the file is damaged)") from None
    return rows, False


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """Load a metrics file back into arrays shaped (updates, seeds) (plus `update`: (updates,)); a last line cut
    mid-write is left out (`metrics_rows`)."""
    rows, _ = metrics_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no metrics")
    out: dict[str, np.ndarray] = {"update": np.array([r["update"] for r in rows])}
    for key in rows[0]:
        if key != "update":
            out[key] = np.array([r[key] for r in rows], dtype=np.float64)
    return out


def plot_curves(series: Iterable[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str,
                xlabel: str = "env steps per seed", ylabel: str = "episode return") -> Path:
    """Plot mean and min..max / +-std band over seeds for each (label, x (updates,), y (updates, seeds))."""
    from matplotlib.figure import Figure  # no pyplot: never touches the user's backend (notebooks)

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    for label, x, y in series:
        y = np.atleast_2d(np.asarray(y, dtype=np.float64).T).T
        mean, std = y.mean(axis=1), y.std(axis=1)
        n = y.shape[1]
        ax.plot(x, mean, label=f"{label} (mean of {n} seed{'s' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(x, mean - std, mean + std, alpha=0.25, label=f"{label} +-1 std")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
