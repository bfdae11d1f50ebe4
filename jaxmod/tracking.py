"""Experiment tracking: every `jaxmod train` and `jaxmod ultra` run writes TensorBoard event files (tensorboardX)
beside its metrics.jsonl, and with `--wandb PROJECT` logs the same scalars to Weights & Biases (optional extra).

Both commands share the tag names: `charts/episode_return`, `charts/episode_length`, `charts/env_steps`,
`losses/<name>` (actor_loss, value_loss, entropy, approx_kl, clip_frac, loss), `charts/lr`; ULTRA adds
`eval/<method>/return` per refinement chunk and `advice/<method>/<name>` (critical_frac, restarts, advice_valid,
advice_trust, ...). Scalars are means over seeds; the step is the env steps per seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

EVENTS_DIR = "tb"  # event files live in <run>/tb/
CHARTS = ("episode_return", "episode_length", "env_steps", "lr", "episodes", "truncations", "rollout_reward")


class TrackingError(ValueError):
    """A tracking option that cannot work (wandb asked for but not installed); the message says what to do."""


def tag_of(name: str) -> str:
    """The shared tag of a PPO metric: `charts/<name>` for progress, `losses/<name>` for the optimisation."""
    return f"charts/{name}" if name in CHARTS else f"losses/{name}"


def check_wandb(project: str | None) -> None:
    """Raise `TrackingError` when a W&B `project` is asked for but the optional wandb package is missing."""
    if project:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise TrackingError("--wandb needs the wandb package: pip install wandb (then `wandb login`)")


class Tracker:
    """Writes scalars to `<run>/tb/` (TensorBoard) and, when `wandb_project` is set, to a W&B run. Nothing is
    created before the first scalar (a run refused by a later check leaves no folder); with `fresh`, event files of
    an earlier run in the folder are replaced (a resumed run appends). `close()` flushes (also a context manager)."""

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any] | None = None,
                 wandb_project: str | None = None, fresh: bool = True, purge_step: int | None = None) -> None:
        check_wandb(wandb_project)
        self.run_dir, self.dir, self.fresh = Path(run_dir), Path(run_dir) / EVENTS_DIR, fresh
        self.config, self.wandb_project = dict(config or {}), wandb_project
        self.purge_step = purge_step  # a resumed run: events at or after this step (a killed run's) are hidden
        self.writer: Any = None
        self.wandb: Any = None

    def _open(self) -> None:
        from tensorboardX import SummaryWriter

        if self.fresh and self.dir.exists():
            import shutil

            shutil.rmtree(self.dir)
        self.writer = SummaryWriter(logdir=str(self.dir), flush_secs=30, purge_step=self.purge_step)
        if self.wandb_project:
            import wandb

            self.wandb = wandb.init(project=self.wandb_project, dir=str(self.run_dir), config=self.config,
                                    name=self.run_dir.name)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log `{tag: value}` at `step` (env steps per seed); non-finite values are logged as they are."""
        if self.writer is None:
            self._open()
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), int(step))
        if self.wandb is not None:
            self.wandb.log(dict(values), step=int(step))

    def ppo_metrics(self, metrics: Mapping[str, np.ndarray], env_steps: np.ndarray, prefix: str = "") -> None:
        """One chunk of PPO metrics shaped (seeds, updates), each update at its env steps per seed (updates,)."""
        arrays = {k: np.asarray(v, np.float64) for k, v in metrics.items() if np.ndim(v) == 2}
        for i, step in enumerate(np.asarray(env_steps).reshape(-1)):
            self.scalars({prefix + tag_of(k): v[:, i].mean() for k, v in arrays.items()}, int(step))
        self.flush()

    def flush(self) -> None:
        """Write what is buffered (after each chunk: a killed run's event files end where its metrics do)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_events(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run's event files, `{tag: [(step, value), ...]}` (what TensorBoard shows, a resumed run's
    purge applied: values at or after a restart's purge step written before it are dropped; for tests and scripts).
    Reads with tensorboardX's own protobufs: no TensorFlow needed."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((Path(run_dir) / EVENTS_DIR).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            record = data[pos + 12:pos + 12 + length]
            pos += 12 + length + 4  # length, its crc, the record, its crc
            event = event_pb2.Event()
            event.ParseFromString(record)
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                out = {tag: [(s, v) for s, v in vals if s < event.step] for tag, vals in out.items()}
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
