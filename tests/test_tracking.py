"""jaxmod.tracking: a resumed run's event files show each step once (a killed run's later points are purged)."""

import time
from pathlib import Path

import pytest

from jaxmod.tracking import Tracker, read_events

pytestmark = pytest.mark.timeout(60)


def test_a_resumed_run_purges_the_killed_runs_later_points(tmp_path):
    with Tracker(tmp_path) as first:  # ran to step 6, checkpointed at step 3, then killed
        for step in range(1, 7):
            first.scalars({"charts/episode_return": float(step)}, step)
    time.sleep(1.1)  # event file names carry the second they were opened
    with Tracker(tmp_path, fresh=False, purge_step=4) as resumed:
        for step in range(4, 7):
            resumed.scalars({"charts/episode_return": 10.0 * step}, step)
    assert read_events(tmp_path)["charts/episode_return"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0),
                                                              (6, 60.0)]
    with Tracker(tmp_path) as fresh:  # a new run in the folder replaces the old event files
        fresh.scalars({"charts/episode_return": 7.0}, 1)
    assert read_events(tmp_path) == {"charts/episode_return": [(1, 7.0)]}


def test_nothing_is_created_before_the_first_scalar(tmp_path):
    with Tracker(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists()


class _FakeWandb:
    """Stands in for the optional wandb package (not installed in CI): records what a run logs."""

    def __init__(self):
        import importlib.machinery

        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.logged, self.step_metrics, self.finished = [], {}, False

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    @staticmethod
    def Settings(**kwargs):  # noqa: N802 - wandb's name
        return kwargs

    def define_metric(self, name, step_metric=None):
        self.step_metrics[name] = step_metric

    def log(self, values, step=None):
        self.logged.append((dict(values), step))

    def finish(self):
        self.finished = True


@pytest.mark.timeout(300)
def test_an_ultra_run_logs_pretraining_and_each_methods_curves(tmp_path, monkeypatch):
    """`jaxmod ultra`: sub-runs pretrain/ and one per method with train's tags (charts/..., losses/...), each
    method's eval/return from step 0 (the pre-trained agents, as ultra.png) to its last chunk, advice/<name> per
    chunk; with --wandb the same tags, prefixed by the sub-run, against the sub-run's own env steps."""
    import json
    import sys

    from jaxmod.cli import main
    from jaxmod.tracking import sub_runs

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    assert main(["ultra", "--env", "CartPole-v1", "--variant", "PPO,RA", "--advisor", "random", "--seeds", "2",
                 "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2",
                 "--pretrain-steps", "256", "--refine-steps", "256", "--chunks", "2", "--collect-envs", "4",
                 "--collect-steps", "32", "--eval-envs", "2", "--eval-steps", "32", "--episodes-per-round", "2",
                 "--wandb", "proj", "--quiet", "--out", str(out)]) == 0
    assert sub_runs(out) == ["PPO", "RA", "pretrain"]
    summary = json.loads((out / "ultra.json").read_text())
    train_tags = {f"charts/{n}" for n in ("episode_return", "episode_length", "env_steps", "lr")} | {
        f"losses/{n}" for n in ("actor_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "loss")}
    pre = read_events(out, "pretrain")
    assert train_tags <= set(pre) and [s for s, _ in pre["charts/episode_return"]] == [64, 128, 192, 256]
    for method in ("PPO", "RA"):
        ev = read_events(out, method)
        assert train_tags <= set(ev), sorted(ev)
        assert [s for s, _ in ev["charts/episode_return"]] == [64, 128, 192, 256]
        assert ev["eval/return"] == [(s, pytest.approx(sum(r) / len(r))) for s, r in
                                     zip(summary[method]["steps"], summary[method]["eval_returns"], strict=True)]
        assert ev["eval/return"][0][0] == 0
    assert "losses/advice_kl" in read_events(out, "RA") and "losses/advice_kl" not in read_events(out, "PPO")
    assert {"advice/critical_frac", "advice/advice_valid", "advice/restarts"} <= set(read_events(out, "RA"))
    assert not any(t.startswith("advice/") for t in read_events(out, "PPO"))
    # W&B: one run; each sub-run's tags against its own step (refinement restarts at 0 for every method)
    assert fake.finished and fake.step_metrics["RA/*"] == "RA/env_steps"
    ra = [(v["RA/env_steps"], v["RA/eval/return"]) for v, step in fake.logged if "RA/eval/return" in v]
    assert [s for s, _ in ra] == summary["RA"]["steps"]
    assert all(step is None for values, step in fake.logged if "RA/env_steps" in values)


class _WandbWithoutLogin(_FakeWandb):
    """wandb on a machine with no login and no terminal: `init` raises, as wandb 0.2x does."""

    class UsageError(Exception):
        pass

    def init(self, **kwargs):
        raise self.UsageError("No API key configured. Use `wandb login` to log in.")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["train", "ultra"])
def test_a_wandb_that_cannot_start_is_one_line_before_anything_compiles(tmp_path, monkeypatch, capsys, command):
    """--wandb with wandb installed but no login (or no network): one line that says what to do (login, API key,
    WANDB_MODE=offline, or no --wandb), exit 2, before compiling: no metrics, no pre-training (before: a wandb
    traceback after the first chunk had compiled and run)."""
    import sys

    from jaxmod.cli import main

    monkeypatch.setitem(sys.modules, "wandb", _WandbWithoutLogin())
    out = tmp_path / "run"
    argv = {"train": ["train", "--env", "CartPole-v1", "--total-steps", "2048"],
            "ultra": ["ultra", "--env", "CartPole-v1", "--variant", "RA", "--advisor", "random"]}[command]
    assert main([*argv, "--wandb", "proj", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "--wandb proj: W&B did not start (UsageError: No API key configured" in err[0]
    assert "wandb login" in err[0] and "WANDB_MODE=offline" in err[0] and "leave --wandb out" in err[0]
    assert not (out / "metrics.jsonl").exists() and not (out / "ultra.json").exists()
    assert not (out / "tb").exists() and not (out / "checkpoint").exists()


TINY_TRAIN = ["train", "--env", "CartPole-v1", "--total-steps", "128", "--num-envs", "4", "--num-steps", "16",
              "--num-minibatches", "2", "--update-epochs", "2"]


@pytest.mark.timeout(300)
def test_quiet_silences_wandb_through_the_runs_own_settings(tmp_path, monkeypatch):
    """--quiet hands W&B `Settings(silent=True)` for this run (its console summary, links and sync hints off);
    without --quiet W&B keeps its own output; no WANDB_* variable is set for the rest of the process."""
    import os
    import sys

    from jaxmod.cli import main

    for quiet in (True, False):
        fake = _FakeWandb()
        monkeypatch.setitem(sys.modules, "wandb", fake)
        before = {k: v for k, v in os.environ.items() if k.startswith("WANDB")}
        out = tmp_path / f"run-{quiet}"
        assert main([*TINY_TRAIN, "--wandb", "proj", *(["--quiet"] if quiet else []), "--out", str(out)]) == 0
        assert fake.finished and fake.logged
        assert fake.init_kwargs.get("settings") == ({"silent": True} if quiet else None)
        assert {k: v for k, v in os.environ.items() if k.startswith("WANDB")} == before


WANDB_CONTROL = """
import sys
from jaxmod.tracking import Tracker
with Tracker(sys.argv[1], {"seed": 0}, "proj", quiet=sys.argv[2] == "quiet") as t:
    t.scalars({"charts/episode_return": 1.0}, 1)
"""


@pytest.mark.timeout(300)
def test_quiet_with_real_wandb_offline_prints_only_the_table(tmp_path):
    """With wandb installed (the `tracking` extra), offline: `jaxmod train --wandb proj --quiet` prints its final
    table and nothing of W&B's (which still keeps the run under <out>/wandb); the same tracker without quiet
    prints W&B's lines (the check can fail)."""
    pytest.importorskip("wandb")
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
           "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("WANDB_SILENT", None)
    env.pop("WANDB_QUIET", None)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "jaxmod", *TINY_TRAIN, "--wandb", "proj", "--quiet", "--out",
                          str(out)], capture_output=True, text=True, env=env, timeout=280, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    said = run.stdout + run.stderr
    assert "wandb:" not in said.lower() and "W&B" not in said, said  # wandb's own lines start "wandb:"
    assert "result: PPO on CartPole-v1" in run.stdout, said  # the final table
    assert list((out / "wandb").glob("offline-run-*")), sorted(p.name for p in out.rglob("*"))[:20]
    for quiet in ("quiet", "loud"):  # the Tracker API, into a run folder not made yet (wandb then warned "git root
        # ... does not exist" before any setting applied)
        control = subprocess.run([sys.executable, "-c", WANDB_CONTROL, str(tmp_path / quiet / "run"), quiet],
                                 capture_output=True, text=True, env=env, timeout=200, cwd=tmp_path)
        assert control.returncode == 0, control.stderr[-3000:]
        said = control.stdout + control.stderr
        assert ("wandb:" in said.lower()) == (quiet == "loud"), said
