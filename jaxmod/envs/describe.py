"""Describers: an env's card and its states as text for prompts, and that text read back (numpy only, host side).

A `Describer` owns both directions of the text bridge. `rows` / `render_episode` write an episode as a table,
one line a step; `parse_rows` / `parse_action` read such text back into numbers at the printed precision, and
`observations` turns parsed feature values back into raw observations where the features determine them. A
reader of prompt text (the scripted advisor behind its HTTP server, a teacher served over HTTP) uses these and
nothing else, so the format lives in one place.

Nothing here imports jax: the text side of jaxmod (`jaxmod.llm`) uses describers without a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

OMITTED = "... ({} steps omitted) ..."


class DescriberError(ValueError):
    """Text that is not a table this describer wrote (wrong header, malformed row, unknown action name), or
    feature values that do not determine the raw observation."""


@dataclass(frozen=True)
class Feature:
    """A named quantity with a unit, computed from one raw observation.

    Either entry `column` of the flattened observation as `obs[column] * scale + offset` (read for a whole episode
    at once, and invertible), or any `fn(obs) -> float` of the observation (obs: float64 array of the env's
    observation shape).
    """

    name: str
    unit: str
    fn: Callable[[np.ndarray], float] | None = None
    column: int | None = None
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.column is None):
            raise ValueError(f"feature {self.name!r} needs exactly one of fn and column")
        if self.scale == 0.0:
            raise ValueError(f"feature {self.name!r}: scale must be non-zero")

    @property
    def header(self) -> str:
        return f"{self.name}[{self.unit}]" if self.unit else self.name

    @property
    def affine(self) -> bool:
        return (self.scale, self.offset) != (1.0, 0.0)

    def value(self, obs: np.ndarray) -> float:
        """The feature of one observation (float64 array of the observation shape)."""
        if self.column is None:
            return float(self.fn(obs))
        x = float(obs.reshape(-1)[self.column])
        return x * self.scale + self.offset if self.affine else x

    def values(self, obs: np.ndarray) -> list[float]:
        """The feature of each of `obs` ((T, *obs_shape) float64), as Python floats."""
        if self.column is None:
            return [float(self.fn(o)) for o in obs]
        x = obs.reshape(len(obs), -1)[:, self.column]
        return (x * self.scale + self.offset if self.affine else x).tolist()


@dataclass(frozen=True)
class EnvCard:
    """What an LLM needs to know about a task before reading an episode.

    Discrete envs name their actions by index (`action_names`); continuous ones name each action dimension
    (`action_dims`) with its bounds (`action_low`, `action_high`, in the env's action units).
    """

    env_id: str
    goal: str
    termination: str
    reward: str
    action_names: tuple[str, ...] = ()  # discrete actions, by index
    action_dims: tuple[str, ...] = ()  # continuous actions, per dimension
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    notes: str = ""

    @property
    def discrete(self) -> bool:
        return bool(self.action_names)

    def text(self) -> str:
        lines = [f"Environment: {self.env_id}", f"Goal: {self.goal}", f"Episode ends: {self.termination}",
                 f"Reward: {self.reward}"]
        if self.discrete:
            acts = ", ".join(f"{i} = {n}" for i, n in enumerate(self.action_names))
            lines.append(f"Actions (discrete): {acts}")
        else:
            dims = "; ".join(f"{i}: {n} in [{lo:g}, {hi:g}]"
                             for i, (n, lo, hi) in enumerate(zip(self.action_dims, self.action_low,
                                                                 self.action_high, strict=True)))
            lines.append(f"Actions (continuous vector of {len(self.action_dims)}): {dims}")
        if self.notes:
            lines.append(f"Notes: {self.notes}")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class EpisodeTable:
    """An episode table read back by `Describer.parse_rows`: the numbers as printed (rounded to the describer's
    `digits` for features, 2 decimals for continuous actions, 3 significant digits for rewards).

    names: the features, in column order. steps: (n,) int64 step index of each row (omitted steps are absent).
    values: (n, F) float64 feature values, in the features' units. actions: (n,) int64 action indices (discrete)
    or (n, A) float64 actions (continuous). rewards: (n,) float64.
    """

    names: tuple[str, ...]
    steps: np.ndarray
    values: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    def state(self, i: int) -> dict[str, float]:
        """Row `i`'s features by name (Python floats)."""
        return dict(zip(self.names, self.values[i].tolist(), strict=True))

    def index_of(self, step: int) -> int:
        """The row of `step`, or the last row if `step` is not in the table."""
        hits = np.nonzero(self.steps == step)[0]
        return int(hits[0]) if len(hits) else len(self.steps) - 1


@dataclass(frozen=True)
class Describer:
    """An env's card and named features: renders states, actions and episodes as text, and reads that text back.

    obs_shape: the raw observation's shape, where known (needed by `observations`). inverse: maps (n, F) float64
    feature values to (n, prod(obs_shape)) flat observations, for features that determine the observation without
    all being plain columns (angles shown instead of their cosine and sine); plain column features invert without
    it.
    """

    card: EnvCard
    features: tuple[Feature, ...]
    digits: int = 3
    obs_shape: tuple[int, ...] | None = None
    inverse: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ numbers -> text
    def feature_values(self, obs: np.ndarray) -> np.ndarray:
        """(F,) float64 features of one raw observation (any array of the observation shape)."""
        obs = np.asarray(obs, dtype=np.float64)
        return np.array([f.value(obs) for f in self.features])

    def state_text(self, obs: np.ndarray) -> str:
        """One state as `name=+v.vvv unit, ...`."""
        vals = self.feature_values(obs)
        return ", ".join(f"{f.name}={v:+.{self.digits}f}{(' ' + f.unit) if f.unit else ''}"
                         for f, v in zip(self.features, vals, strict=True))

    def action_text(self, action) -> str:
        """A discrete action's name (`invalid(i)` outside the action set), or a continuous action as `[+0.12 -0.50]`."""
        if self.card.discrete:
            i = int(np.asarray(action).reshape(-1)[0])
            return self.card.action_names[i] if 0 <= i < len(self.card.action_names) else f"invalid({i})"
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        return "[" + " ".join(f"{x:+.2f}" for x in a) + "]"

    def header(self) -> str:
        """The table's header line: `t | name[unit] ... | action | reward` (what `parse_rows` recognises)."""
        return "t | " + " ".join(f.header for f in self.features) + " | action | reward"

    def row(self, t: int, obs: np.ndarray, action, reward: float) -> str:
        """Step `t` as one table line: `t | features | action | reward`."""
        vals = " ".join(f"{v:+.{self.digits}f}" for v in self.feature_values(obs))
        return f"{t} | {vals} | {self.action_text(action)} | {reward:+.3g}"

    def rows(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, first_step: int = 0) -> list[str]:
        """`row` for every step of an episode, numbered from `first_step`: the same text, built column-wise
        (an advice round renders thousands of rows on the training machine's CPU).

        obs: (T, *obs_shape) raw observations; actions: (T,) ints or (T, A) floats; rewards: (T,)."""
        obs = np.asarray(obs, dtype=np.float64)
        columns = [f.values(obs) for f in self.features]
        fmt = " ".join([f"{{:+.{self.digits}f}}"] * len(self.features))
        names = self.card.action_names
        if self.card.discrete:
            acts = [names[i] if 0 <= i < len(names) else f"invalid({i})"
                    for i in np.asarray(actions).astype(int).reshape(-1).tolist()]
        else:
            acts = [self.action_text(a) for a in actions]
        per_step = list(zip(*columns, strict=True)) if columns else [()] * len(obs)
        return [f"{first_step + t} | {fmt.format(*vals)} | {act} | {r:+.3g}"
                for t, (vals, act, r) in enumerate(zip(per_step, acts, np.asarray(rewards).tolist(), strict=True))]

    def render_episode(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, *, episode_id: int = 0,
                       ended_by: str = "termination", budget_chars: int = 6000, head: int = 3,
                       title: str | None = None, rows: list[str] | None = None,
                       focus: Sequence[int] = ()) -> tuple[str, list[int]]:
        """Episode as a table (obs, actions, rewards as for `rows`); long episodes keep the first `head` steps and the
        latest steps that fit `budget_chars` (UTF-8 bytes of the rows), marking each gap with an omission line.
        With `focus` (step indices, e.g. candidate critical steps) the rows kept are instead windows growing
        around each focus step and around the last step, in turn, until the budget is spent. Returns the text and
        the step indices shown. `rows`: this episode's `rows`, if already rendered."""
        n = len(actions)
        rows = self.rows(obs, actions, rewards) if rows is None else rows
        total = float(np.sum(rewards))
        shown = list(range(n))
        width = max((len(r.encode("utf-8")) for r in rows), default=20) + 1
        gap_width = len(OMITTED.format(n).encode("utf-8")) + 1
        anchors = [t for t in dict.fromkeys(int(f) for f in focus) if 0 <= t < n]
        max_rows = max(head + 5, budget_chars // width) if not anchors else \
            max(1, (budget_chars - gap_width * (len(anchors) + 1)) // width)
        if n > max_rows and anchors:
            keep: set[int] = set()
            ends = [*anchors, n - 1]
            for r in range(n):
                for a in ends:
                    for t in ((a - r, a + r) if a != n - 1 else (a - r,)):
                        if 0 <= t < n and len(keep) < max_rows:
                            keep.add(t)
                if len(keep) >= max_rows:
                    break
            shown = sorted(keep)
        elif n > max_rows:
            tail = max_rows - head
            shown = list(range(head)) + list(range(n - tail, n))
        intro = title or (f"Episode {episode_id}: {n} steps, return {total:+.2f}, ended by {ended_by}. "
                          f"Showing {len(shown)} of {n} steps.")
        lines = [intro, self.header()]
        prev = -1
        for t in shown:
            if t != prev + 1:
                lines.append(OMITTED.format(t - prev - 1))
            lines.append(rows[t])
            prev = t
        return "\n".join(lines), shown

    # ------------------------------------------------------------------ text -> numbers
    def parse_action(self, text: str) -> int | np.ndarray:
        """What `action_text` wrote, read back: an int action index (discrete; `invalid(i)` reads as i), or an
        (A,) float64 continuous action at 2 decimals. Raises DescriberError for an unknown name or a wrong size."""
        text = text.strip()
        if self.card.discrete:
            if text in self.card.action_names:
                return self.card.action_names.index(text)
            if text.startswith("invalid(") and text.endswith(")") and _is_int(text[8:-1]):
                return int(text[8:-1])
            raise DescriberError(f"unknown action {text!r} for {self.card.env_id}; actions: "
                                 f"{', '.join(self.card.action_names)}")
        if not (text.startswith("[") and text.endswith("]")):
            raise DescriberError(f"a continuous action is written [x0 x1 ...], got {text!r}")
        try:
            action = np.array([float(x) for x in text[1:-1].split()], dtype=np.float64)
        except ValueError:
            raise DescriberError(f"unreadable continuous action {text!r}") from None
        if len(action) != len(self.card.action_dims):
            raise DescriberError(f"{self.card.env_id} has {len(self.card.action_dims)} action dimensions, "
                                 f"{text!r} has {len(action)}")
        return action

    def parse_rows(self, text: str) -> EpisodeTable:
        """The table `rows` / `render_episode` wrote, read back from `text` (which may hold other lines before the
        table, e.g. its title). Lines after the header are rows or omission markers, up to the first blank line.

        Raises DescriberError if there is no header line, the header is not this describer's (another env, or
        another observation type of the same env), a row does not parse, or the table has no rows."""
        lines = text.splitlines()
        header = self.header()
        at = next((i for i, ln in enumerate(lines) if ln.startswith("t | ")), None)
        if at is None:
            raise DescriberError("no episode table (a 't | ...' header line) in the text")
        if lines[at].strip() != header:
            raise DescriberError(f"the table was not written by {self.card.env_id}'s describer: its header is "
                                 f"{lines[at].strip()!r}, expected {header!r}")
        steps, values, actions, rewards = [], [], [], []
        n_feat = len(self.features)
        for ln in lines[at + 1:]:
            if not ln.strip():
                break
            if ln.startswith("... (") and ln.endswith(" steps omitted) ..."):
                continue
            parts = ln.split(" | ")
            try:
                if len(parts) != 4:
                    raise ValueError("expected 4 fields separated by ' | '")
                vals = [float(x) for x in parts[1].split()]
                if len(vals) != n_feat:
                    raise ValueError(f"{len(vals)} feature values, the header names {n_feat}")
                steps.append(int(parts[0]))
                values.append(vals)
                actions.append(self.parse_action(parts[2]))
                rewards.append(float(parts[3]))
            except ValueError as err:  # DescriberError included
                raise DescriberError(f"unreadable table row {ln!r}: {err}") from None
        if not steps:
            raise DescriberError("the episode table has no rows")
        acts = np.array(actions, dtype=np.int64 if self.card.discrete else np.float64)
        return EpisodeTable(tuple(f.name for f in self.features), np.array(steps, dtype=np.int64),
                            np.array(values, dtype=np.float64).reshape(len(steps), n_feat), acts,
                            np.array(rewards, dtype=np.float64))

    @property
    def invertible(self) -> bool:
        """Whether `observations` can rebuild raw observations from this describer's features."""
        if self.obs_shape is None:
            return False
        if self.inverse is not None:
            return True
        cols = sorted(f.column for f in self.features if f.column is not None)
        return len(cols) == len(self.features) and cols == list(range(math.prod(self.obs_shape)))

    def observations(self, values: np.ndarray) -> np.ndarray:
        """Raw observations from feature values (e.g. `parse_rows(...).values`): (n, F) or (F,) float64 in,
        (n, *obs_shape) or obs_shape float32 out, exact up to the values' precision. Raises DescriberError where
        the features do not determine the observation (object centroids of an image, derived quantities only)."""
        if not self.invertible:
            raise DescriberError(f"{self.card.env_id}'s describer cannot rebuild observations from its features "
                                 f"(they summarise the observation of shape {self.obs_shape}); use the exact "
                                 "observations instead")
        values = np.asarray(values, dtype=np.float64)
        batch = values.reshape(-1, len(self.features))
        if self.inverse is not None:
            flat = np.asarray(self.inverse(batch), dtype=np.float64)
        else:
            flat = np.empty((len(batch), math.prod(self.obs_shape)))
            for j, f in enumerate(self.features):
                flat[:, f.column] = (batch[:, j] - f.offset) / f.scale if f.affine else batch[:, j]
        obs = flat.reshape((len(batch), *self.obs_shape)).astype(np.float32)
        return obs[0] if values.ndim == 1 else obs


def _is_int(text: str) -> bool:
    digits = text.lstrip("-")
    return digits.isascii() and digits.isdigit()  # str.isdigit alone takes '²', which int() refuses


def raw_feature(name: str, unit: str, column: int, scale: float = 1.0, offset: float = 0.0) -> Feature:
    """Entry `column` of the flat observation, as is (or as `x * scale + offset`, to show it in natural units)."""
    return Feature(name, unit, column=column, scale=scale, offset=offset)


def generic_features(dim: int) -> tuple[Feature, ...]:
    """`x0 .. x{dim-1}`: the flat observation's entries, unnamed."""
    return tuple(raw_feature(f"x{i}", "", i) for i in range(dim))


def flat_dim(obs_shape: Sequence[int] | None) -> int:
    return int(np.prod(obs_shape)) if obs_shape else 1
