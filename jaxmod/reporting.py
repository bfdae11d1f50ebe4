"""Run outputs: per-update metrics as JSONL (one line per update, one value per seed) and curve PNGs; the check
that stops a run at its first non-finite loss, parameter or return (`NonFiniteError`), and per-seed summaries that
never average a non-finite seed away (`seed_summary`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def write_atomically(path: str | Path, text: str) -> None:
    """Replace the file `path` with `text` (UTF-8) so that a kill at any moment leaves either the old or the new
    file, never a part: written to `<path>.tmp`, flushed and fsynced, then renamed over `path` (`os.replace`). Used
    for every rewrite of a run's files (config.json and metrics.jsonl on resume, a checkpoint's digest)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_metrics(path: str | Path, metrics: Mapping[str, np.ndarray], first_update: int) -> None:
    """Append a chunk of metrics shaped (seeds, updates) as one JSON line per update."""
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    num_updates = next(iter(arrays.values())).shape[1]
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(num_updates):
            row = {"update": first_update + i + 1}
            for k, v in arrays.items():
                row[k] = [_plain(x) for x in v[:, i]]
            fh.write(json.dumps(json_safe(row), allow_nan=False) + "\n")


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
        except (ValueError, RecursionError):  # RecursionError: nested too deeply for the parser
            if i == len(lines) - 1:
                return rows, True
            raise ValueError(f"{path}, line {i + 1}: not a JSON metrics row (the file is damaged)") from None
    return rows, False


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON null): `json.dumps` would write NaN / Infinity,
    which is not JSON and which other readers reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------- non-finite values
PARAMS_FINITE = "params_finite"  # the per-seed [S] bool a chunk program adds to its metrics: all parameters finite
# the names a stop message gives a metric, in the order they are reported (the first non-finite one of a seed)
NAMES = {PARAMS_FINITE: "parameters", "actor_loss": "policy loss", "value_loss": "value loss",
         "advice_kl": "advice KL loss", "entropy": "policy entropy", "loss": "loss", "approx_kl": "approximate KL",
         "episode_return": "training return", "rollout_reward": "rollout reward", "eval_return": "evaluation return"}


class NonFiniteError(RuntimeError):
    """A loss, parameter or return of a run became non-finite (NaN or inf): the run stops. The message is one line
    that names the method, the seed and the chunk, which value, and what to try."""


@dataclass(frozen=True)
class NonFinite:
    """The first non-finite value of a chunk: seed index, metric name, update index within the chunk (None for a
    per-seed value such as the parameters or the evaluation return) and the value; `others`: other bad seeds."""

    seed: int
    metric: str
    update: int | None
    value: float
    others: tuple[int, ...] = ()

    def describe(self, span: str = "of the chunk") -> str:
        what = NAMES.get(self.metric, self.metric)
        if self.metric == PARAMS_FINITE:
            text = "non-finite parameters"
        else:
            text = f"non-finite {what} ({self.value})"
        if self.update is not None:
            text += f" at update {self.update + 1}" + (f" {span}" if span else "")
        if self.others:
            text += f" (also seed{'s' if len(self.others) > 1 else ''} {', '.join(map(str, self.others))})"
        return text


def first_non_finite(values: Mapping[str, Any]) -> NonFinite | None:
    """The first non-finite value among `values` (name -> array with a leading seed axis S: [S] per seed, or
    [S, updates] per update; `PARAMS_FINITE` is a [S] bool of finite parameters), or None. Seeds are searched in
    order; within the first bad seed the earliest update of a per-update metric (ties: the `NAMES` order, then by
    name), else the parameters, else a per-seed value. Integer and boolean metrics (counts) are never non-finite."""
    arrays = {k: np.asarray(v) for k, v in values.items()}
    rank = {k: i for i, k in enumerate(NAMES)}
    order = sorted(arrays, key=lambda k: (rank.get(k, len(rank)), k))
    found: list[NonFinite] = []
    n = max((a.shape[0] for a in arrays.values() if a.ndim), default=0)
    for seed in range(n):
        candidates: list[tuple[tuple[int, int], NonFinite]] = []
        for j, name in enumerate(order):
            a = arrays[name]
            if a.ndim == 0:
                continue
            row = a[seed]
            if name == PARAMS_FINITE:
                if not bool(np.all(row)):
                    candidates.append(((1, j), NonFinite(seed, name, None, math.nan)))
                continue
            if not np.issubdtype(row.dtype, np.floating):
                continue
            bad = ~np.isfinite(row.reshape(-1))
            if bad.any():
                i = int(np.argmax(bad))
                value = float(row.reshape(-1)[i])
                if row.ndim:
                    candidates.append(((0, i * len(order) + j), NonFinite(seed, name, i, value)))
                else:
                    candidates.append(((2, j), NonFinite(seed, name, None, value)))
        if candidates:
            found.append(min(candidates, key=lambda c: c[0])[1])
    if not found:
        return None
    first = found[0]
    return NonFinite(first.seed, first.metric, first.update, first.value, tuple(f.seed for f in found[1:]))


def check_finite(values: Mapping[str, Any], method: str, stage: str, hint: str, span: str = "of the chunk") -> None:
    """Raise `NonFiniteError` if any of `values` (see `first_non_finite`) is non-finite, with one line naming
    `method`, the seed, `stage`, the value and `hint`, e.g. "ULTRA-RA, seed 2, refinement chunk 7/8: non-finite
    policy loss (nan) at update 3 of the chunk; <hint>". `span` follows an update index."""
    bad = first_non_finite(values)
    if bad is None:
        return
    raise NonFiniteError(f"{method}, seed {bad.seed}{f', {stage}' if stage else ''}: {bad.describe(span)}; {hint}")


# ----------------------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class SeedSummary:
    """Over seeds, one final value: its IQM with a 95% percentile-bootstrap interval (`jaxmod.stats.iqm_ci`; the
    statistic jaxmod reports), mean and std; or none of them where a seed is non-finite: `non_finite` lists those
    seeds (indices), and `mean` / `std` / `iqm` are None then (a plain mean would be NaN, and a mean of the finite
    seeds would hide the failure)."""

    mean: float | None
    std: float | None
    seeds: int
    non_finite: tuple[int, ...]
    iqm: Any = None  # jaxmod.stats.Interval, or None

    def failed(self) -> str:
        return f"NON-FINITE (seed{'s' if len(self.non_finite) > 1 else ''} " \
               f"{', '.join(map(str, self.non_finite))} of {self.seeds})"

    def cell(self, fmt: str = ".1f") -> tuple[str, str]:
        """(mean, std) as table cells; a non-finite summary shows which seeds instead."""
        if self.mean is None:
            return self.failed(), "-"
        return format(self.mean, fmt), format(self.std, fmt)

    def iqm_cell(self, fmt: str = ".1f") -> str:
        """'IQM [low, high]' as a table cell; a non-finite summary shows which seeds instead."""
        if self.iqm is None:
            return self.failed() if self.non_finite else "-"
        i = self.iqm
        return f"{i.point:{fmt}} [{i.low:{fmt}}, {i.high:{fmt}}]"

    def as_dict(self) -> dict[str, Any]:
        """mean, std, seeds, non_finite_seeds, and iqm with its 95% interval ci95 = [low, high] (None when a seed
        is non-finite)."""
        i = self.iqm
        return {"mean": self.mean, "std": self.std, "seeds": self.seeds, "non_finite_seeds": list(self.non_finite),
                "iqm": None if i is None else i.point, "ci95": None if i is None else [i.low, i.high]}


def seed_summary(values: Sequence[float] | np.ndarray) -> SeedSummary:
    """Summary of per-seed values ([S]): IQM with its 95% bootstrap interval, mean and std if all are finite, else
    which seeds are not."""
    from jaxmod.stats import iqm_ci

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = tuple(int(i) for i in np.nonzero(~np.isfinite(x))[0])
    if bad or not len(x):
        return SeedSummary(None, None, len(x), bad)
    return SeedSummary(float(x.mean()), float(x.std()), len(x), (), iqm_ci(x))


# envs whose evaluation return is +1 for a won game and -1 for a lost one (jaxmod's one-point Pong): their tables
# and plots report the win rate, (return + 1) / 2, instead (jaxmod's choice, as the paper reports Pong)
WIN_RATE_ENVS = ("jaxmod/Pong-OnePoint",)


def win_rate(returns: Any) -> np.ndarray:
    """Win rate of one-point games from their returns (+1 won, -1 lost), same shape: (return + 1) / 2."""
    return (np.asarray(returns, dtype=np.float64) + 1.0) / 2.0


def gain_summary(values: Sequence[float], baseline: Sequence[float]) -> dict[str, Any] | None:
    """A method's gain over `baseline` on the same seeds (seed i of both refined the same agent): IQM difference
    with its paired 95% bootstrap interval and verdict ('better' / 'worse' / 'same', `jaxmod.stats.verdict`), as
    {"iqm", "ci95", "verdict"}; None if either has a non-finite seed or they differ in seeds."""
    from jaxmod.stats import iqm_difference_ci, verdict

    a, b = np.asarray(values, np.float64).reshape(-1), np.asarray(baseline, np.float64).reshape(-1)
    if not a.size or a.size != b.size or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    d = iqm_difference_ci(a, b)
    return {"iqm": d.point, "ci95": [d.low, d.high], "verdict": verdict(d)}


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
    """Plot, for each (label, x [T], y [T, S] over S seeds), the IQM over seeds with its 95% percentile-bootstrap
    band (`jaxmod.stats.iqm_ci_curve`); the legend sits outside the axes, right of them, so it never hides a curve.
    Seeds with a non-finite value are left out of the curve and named in its label ("seed 1 NON-FINITE, left
    out")."""
    from matplotlib.figure import Figure  # no pyplot: never touches the user's backend (notebooks)

    from jaxmod.stats import iqm_ci_curve

    fig = Figure(figsize=(9, 4.2), dpi=120)
    ax = fig.subplots()
    for label, x, y in series:
        y = np.atleast_2d(np.asarray(y, dtype=np.float64).T).T
        bad = [int(i) for i in np.nonzero(~np.all(np.isfinite(y), axis=0))[0]]
        if bad:
            label = f"{label}, seed{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} NON-FINITE, left out"
            y = np.delete(y, bad, axis=1)
            if not y.shape[1]:
                ax.plot([], [], label=label)
                continue
        n = y.shape[1]
        mid, low, high = iqm_ci_curve(y)
        line, = ax.plot(x, mid, label=f"{label} (IQM of {n} seed{'s' if n > 1 else ''}"
                                      f"{', 95% CI' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(x, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    return path
