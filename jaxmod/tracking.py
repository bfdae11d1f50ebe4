"""Experiment tracking: every `jaxmod train` and `jaxmod ultra` run writes TensorBoard event files (tensorboardX)
beside its metrics.jsonl, and with `--wandb PROJECT` logs the same scalars to Weights & Biases (optional extra).

Both commands share the tag names of PPO's training curves: `charts/<name>` (episode_return, episode_length,
env_steps, episodes, truncations, rollout_reward, lr) and `losses/<name>` (actor_loss, value_loss, entropy,
approx_kl, clip_frac, loss; advice_kl for methods with ULTRA's KL pull), one point per update. `jaxmod train`
writes them to `<run>/tb/`. `jaxmod ultra` writes one TensorBoard sub-run per stage, so that TensorBoard draws the
methods as lines of the same chart: `<run>/tb/pretrain/` (the pre-training's curves; none when the agents are
loaded from `agents_dir`) and `<run>/tb/<method>/` for
each method (PPO, A, R, RA, the baselines: its refinement's curves, plus `eval/return`, the evaluation return, at
step 0, the pre-trained agents, and after every chunk, as ultra.png plots it, and `advice/<name>` per chunk:
critical_frac, restarts, advice_valid, advice_trust, shaping, ... as in ultra.json's `chunks`). Scalars are means
over seeds; the step is env steps per seed (counted from the start of pre-training, resp. of refinement). In W&B
the sub-runs' tags are prefixed with the sub-run (`RA/charts/episode_return`), each against its own step
(`RA/env_steps`), in one W&B run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

EVENTS_DIR = "tb"  # event files live in <run>/tb/
CHARTS = ("episode_return", "episode_length", "env_steps", "lr", "episodes", "truncations", "rollout_reward")
LOSSES = ("actor_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "loss", "advice_kl")
WANDB_INSTALL = "pip install -c constraints.txt -e '.[tracking]' in your jaxmod clone (the tracking extra)"


class TrackingError(ValueError):
    """A tracking option that cannot work (wandb asked for but not installed); the message says what to do."""


def tag_of(name: str) -> str | None:
    """The shared tag of a PPO metric: `charts/<name>` for progress (`CHARTS`), `losses/<name>` for the
    optimisation (`LOSSES`); None for other metrics (a method's modulation numbers: ULTRA logs them per chunk as
    `advice/<name>`)."""
    if name in CHARTS:
        return f"charts/{name}"
    return f"losses/{name}" if name in LOSSES else None


def check_wandb(project: str | None) -> None:
    """Raise `TrackingError` when a W&B `project` is asked for but the optional wandb package is missing."""
    if project:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise TrackingError(f"--wandb needs the wandb package: {WANDB_INSTALL} (then `wandb login`)")


class Tracker:
    """Writes scalars to `<run>/tb/` (TensorBoard) and, when `wandb_project` is set, to a W&B run. Nothing is
    created before the first scalar (a run refused by a later check leaves no folder); with `fresh`, event files of
    an earlier run in the folder are replaced (a resumed run appends). `sub(name)`: a sub-run writing to
    `<run>/tb/<name>/` (TensorBoard draws sub-runs as lines of the same chart). `close()` flushes (also a context
    manager). `quiet` (the commands' --quiet): W&B prints nothing of its own on the console (its run links,
    sync hints, history and summary at the end), through the run's own `wandb.Settings(silent=True)`, so no
    environment variable is set for the rest of the process; its files under `<run>/wandb` are written as before."""

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any] | None = None,
                 wandb_project: str | None = None, fresh: bool = True, purge_step: int | None = None,
                 quiet: bool = False) -> None:
        check_wandb(wandb_project)
        self.run_dir, self.dir, self.fresh = Path(run_dir), Path(run_dir) / EVENTS_DIR, fresh
        self.config, self.wandb_project, self.quiet = dict(config or {}), wandb_project, quiet
        self.purge_step = purge_step  # a resumed run: events at or after this step (a killed run's) are hidden
        self.writer: Any = None
        self.wandb: Any = None
        self.root: Tracker = self  # the run's tracker: it clears the folder and holds the W&B run
        self.name = ""  # a sub-run's name ("" for the run itself)
        self.subs: dict[str, Tracker] = {}
        self._started = False

    def sub(self, name: str) -> Tracker:
        """The sub-run `name` of this run (created once; its events go to `<run>/tb/<name>/`, its W&B tags are
        prefixed `<name>/` and stepped by `<name>/env_steps`)."""
        if name not in self.subs:
            child = Tracker(self.run_dir, self.config, fresh=False)
            child.dir, child.root, child.name, child._started = self.dir / name, self, name, True
            self.subs[name] = child
        return self.subs[name]

    def _start(self) -> None:
        """The run's first scalar (of any sub-run): replace an earlier run's event files, open the W&B run."""
        if self._started:
            return
        self._started = True
        if self.fresh and self.dir.exists():
            import shutil

            shutil.rmtree(self.dir)
        if self.wandb_project:
            import wandb

            # wandb writes to <run>/wandb; a run folder that does not exist yet made it warn "git root ... does not
            # exist" on the console before any setting (quiet's silent too) applied
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.wandb = wandb.init(project=self.wandb_project, dir=str(self.run_dir), config=self.config,
                                        name=self.run_dir.name,
                                        **({"settings": wandb.Settings(silent=True)} if self.quiet else {}))
            except Exception as err:  # noqa: BLE001 - wandb raises many kinds (no login, no network, bad project)
                text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                raise TrackingError(
                    f"--wandb {self.wandb_project}: W&B did not start ({type(err).__name__}{': ' + text if text else ''})"
                    ": run `wandb login` or set WANDB_API_KEY; without network, set WANDB_MODE=offline (the run is "
                    f"kept in {self.run_dir / 'wandb'} for `wandb sync`); or leave --wandb out (TensorBoard event "
                    "files are written either way)") from err

    def start(self) -> None:
        """Start the run's tracking now instead of at the first scalar: replace an earlier run's event files (when
        `fresh`) and open the W&B run. A command calls it once its checks have passed and before it compiles, so a
        W&B that cannot start (no login, no network) is one line before any work. Raises `TrackingError`."""
        self.root._start()

    def _open(self) -> None:
        from tensorboardX import SummaryWriter

        self.root._start()
        self.writer = SummaryWriter(logdir=str(self.dir), flush_secs=30, purge_step=self.purge_step)
        run = self.root.wandb
        if run is not None and self.name:  # a sub-run's own x-axis: its steps restart at 0
            run.define_metric(f"{self.name}/env_steps")
            run.define_metric(f"{self.name}/*", step_metric=f"{self.name}/env_steps")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log `{tag: value}` at `step` (env steps per seed); non-finite values are logged as they are."""
        if self.writer is None:
            self._open()
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), int(step))
        run = self.root.wandb
        if run is not None:
            if self.name:
                run.log({f"{self.name}/env_steps": int(step),
                         **{f"{self.name}/{tag}": float(v) for tag, v in values.items()}})
            else:
                run.log(dict(values), step=int(step))

    def ppo_metrics(self, metrics: Mapping[str, np.ndarray], env_steps: np.ndarray) -> None:
        """One chunk of PPO metrics shaped (seeds, updates) as `charts/...` and `losses/...` (`tag_of`; others are
        left out), each update at its env steps per seed (updates,)."""
        arrays = {tag_of(k): np.asarray(v, np.float64) for k, v in metrics.items()
                  if np.ndim(v) == 2 and tag_of(k) is not None}
        for i, step in enumerate(np.asarray(env_steps).reshape(-1)):
            self.scalars({tag: v[:, i].mean() for tag, v in arrays.items()}, int(step))
        self.flush()

    def flush(self) -> None:
        """Write what is buffered (after each chunk: a killed run's event files end where its metrics do)."""
        for t in (self, *self.subs.values()):
            if t.writer is not None:
                t.writer.flush()

    def close(self) -> None:
        for t in (*self.subs.values(), self):
            if t.writer is not None:
                t.writer.close()
                t.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def sub_runs(run_dir: str | Path) -> list[str]:
    """The names of a run's TensorBoard sub-runs (an ULTRA run: "pretrain" and its methods), sorted."""
    folder = Path(run_dir) / EVENTS_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_events(run_dir: str | Path, sub: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run's event files (`sub`: of its sub-run, e.g. an ULTRA run's "pretrain" or "RA"),
    `{tag: [(step, value), ...]}` (what TensorBoard shows, a resumed run's purge applied: values at or after a
    restart's purge step written before it are dropped; for tests and scripts). Reads with tensorboardX's own
    protobufs: no TensorFlow needed."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    folder = Path(run_dir) / EVENTS_DIR / (sub or "")
    for path in sorted(folder.glob("events.out.tfevents.*")):
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
