"""benchmarks/paper_curves.py: the cpu-mujoco preset's budget fits the hour, bad input is refused before anything
compiles, a whole preset runs end to end (a toy CartPole preset: teacher ladder, shared program, statistics,
tables; slow: ~150 CPU seconds), and benchmarks/gpu_all.sh runs at toy budgets on a CPU (slow: brax compiles)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import paper_curves as pc  # noqa: E402


def test_cpu_mujoco_preset_covers_the_issue_and_fits_the_hour():
    preset = pc.PRESETS["cpu-mujoco"]
    assert set(preset["tasks"]) >= {"brax/hopper", "brax/walker2d", "brax/halfcheetah", "brax/hopper-sparse",
                                    "brax/walker2d-sparse"}
    assert preset["common"]["seeds"] >= 5 and preset["common"]["share_programs"] == "all"
    # the projection from the measured components fits the hour, with the persistent compilation cache and without
    b = pc.budget(preset, list(preset["tasks"]), pc.ALL_METHODS, cached=True)
    assert b["total_s"] <= 3600, pc.budget_text(b)
    b = pc.budget(preset, list(preset["tasks"]), pc.ALL_METHODS)
    assert b["total_s"] <= 3600, pc.budget_text(b)
    # one training program per step of the protocol: pretrain, teacher (dense tasks), mask nets, ONE refinement
    assert b["tasks"]["brax/hopper"]["programs"]["train"] == 4
    assert b["tasks"]["brax/hopper-sparse"]["programs"]["train"] == 3
    per_method = pc.budget({**preset, "common": {**preset["common"], "share_programs": "off"}}, ["brax/hopper"],
                           pc.ALL_METHODS)
    assert per_method["tasks"]["brax/hopper"]["programs"]["train"] == 3 + len(pc.ALL_METHODS)
    # sparse variants reuse the dense teacher: no teacher steps of their own
    assert b["tasks"]["brax/hopper-sparse"]["steps"]["teacher"] == 0 < b["tasks"]["brax/hopper"]["steps"]["teacher"]


def test_bad_task_or_method_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "benchmarks/paper_curves.py", "--preset", "cpu-mujoco", "--methods",
                           "PPO,SAC"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "SAC" in proc.stderr


def test_a_sparse_variant_waits_for_its_dense_tasks_teacher(tmp_path):
    tasks = ["brax/hopper", "brax/hopper-sparse", "brax/walker2d-sparse"]
    assert pc.ready_to_start("brax/hopper", tasks, tmp_path, {})
    assert pc.ready_to_start("brax/walker2d-sparse", tasks, tmp_path, {})  # its dense task is not run: it trains one
    assert not pc.ready_to_start("brax/hopper-sparse", tasks, tmp_path, {})
    marker = pc.task_folder(tmp_path, "brax/hopper") / pc.TEACHER_READY
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert pc.ready_to_start("brax/hopper-sparse", tasks, tmp_path, {})
    assert pc.ready_to_start("brax/hopper-sparse", tasks, tmp_path / "elsewhere", {"brax/hopper": {}})


@pytest.mark.timeout(600)
def test_jobs_run_tasks_side_by_side_with_the_numbers_of_a_task_run_alone(tmp_path, monkeypatch):
    """--jobs 2: two tasks in two worker processes (the preset as the parent has it), the tables in the tasks'
    order; a task's numbers equal those of the same task run alone in this process."""
    tasks = ("CartPole-v1", "Acrobot-v1")
    toy = {"tasks": tasks,
           "common": dict(seeds=2, chunks=2, eval_envs=2, eval_steps=50, mask_steps=4 * 8 * 2,
                          share_programs="all", ppo_overrides=(("num_envs", 4), ("num_steps", 8))),
           **{t: dict(pretrain_steps=4 * 8 * 2, refine_steps=4 * 8 * 2) for t in tasks},
           "teacher_steps": 0, "jobs": 2}
    monkeypatch.setitem(pc.PRESETS, "toy-jobs", toy)
    argv = ["paper_curves.py", "--preset", "toy-jobs", "--methods", "PPO,Random", "--agents", str(tmp_path / "agents")]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "both")])
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pc.main()
    both = json.loads((tmp_path / "both" / "paper_curves.json").read_text())
    assert [r["task"] for r in both["tasks"]] == list(tasks)
    assert [(r["task"], r["method"]) for r in both["rows"]] == [(t, m) for t in tasks for m in ("PPO", "Random")]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "alone"), "--tasks", "Acrobot-v1", "--jobs", "1"])
    pc.main()
    alone = json.loads((tmp_path / "alone" / "paper_curves.json").read_text())
    assert [r["final"] for r in alone["rows"]] == [r["final"] for r in both["rows"] if r["task"] == "Acrobot-v1"]
    assert [r["curve"] for r in alone["rows"]] == [r["curve"] for r in both["rows"] if r["task"] == "Acrobot-v1"]


def test_rice_direction_follows_table1():
    assert pc.rice_direction("brax/hopper", "RICE").startswith("up")
    assert pc.rice_direction("brax/halfcheetah", "StateMask-R").startswith("down")
    assert pc.rice_direction("brax/hopper-sparse", "RICE") == "up (Fig. 2)"
    assert pc.rice_direction("brax/hopper", "RA") == "-"


@pytest.mark.slow  # ~150 CPU seconds (9 compiled CartPole programs): minutes on the 2-core CI
@pytest.mark.timeout(2400)
def test_a_toy_preset_runs_every_method_through_shared_programs(tmp_path, monkeypatch, capsys):
    task = "CartPole-v1"
    toy = {"tasks": (task,),
           "common": dict(seeds=3, chunks=2, eval_envs=4, eval_steps=200, collect_envs=4, collect_steps=100,
                          episodes_per_round=2, mask_steps=4 * 16 * 2, share_programs="methods",
                          ppo_overrides=(("num_envs", 4), ("num_steps", 16))),
           task: dict(pretrain_steps=4 * 16 * 4, refine_steps=4 * 16 * 4),
           "teacher_steps": 4 * 16 * 8, "teacher_max_steps": 4 * 16 * 16}
    monkeypatch.setitem(pc.PRESETS, "toy", toy)
    monkeypatch.setattr(sys, "argv", ["paper_curves.py", "--preset", "toy", "--out", str(tmp_path / "out"),
                                      "--agents", str(tmp_path / "agents")])
    pc.main()
    data = json.loads((tmp_path / "out" / "paper_curves.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == set(pc.ALL_METHODS)
    # one compile for the shared group (its first method), none for the others; fine-tuning compiles its own
    group = [m for m in pc.ALL_METHODS if m != "PPO"]
    assert rows[group[0]]["compile_s"] > 0 and rows["PPO"]["compile_s"] > 0
    assert all(rows[m]["compile_s"] == 0 for m in group[1:])
    for r in rows.values():
        assert len(r["final"]) == 3 and "iqm" in r
        assert (r["method"] == "PPO") == ("gain" not in r)
    # the teacher was judged against the agents on the same evaluation, and the ladder stopped at its cap or the ratio
    (rec,) = data["tasks"]
    assert rec["teacher_ratio_met"] == (rec["teacher_return"] >= pc.teacher_bar(rec["agents_return"])
                                        and rec["teacher_return"] > rec["agents_return"])
    assert rec["teacher_steps"] in (4 * 16 * 8, 4 * 16 * 16)
    assert not rec["teacher_ratio_met"] or "WARNING" not in capsys.readouterr().out
    md = (tmp_path / "out" / "paper_curves.md").read_text()
    assert "Change over fine-tuning" in md and "critical visits / restarts / advised steps" in md
    assert (tmp_path / "out" / "paper_curves.png").stat().st_size > 10_000  # every task's curves in one figure
    # ULTRA-A and RA executed suggestions: advised steps are counted per chunk
    assert any(c.get("advice_executed", 0) > 0 for m in ("A", "RA") for c in rows[m]["advice_per_chunk"])


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_gpu_script_runs_at_toy_budgets_on_a_cpu(tmp_path):
    """The accelerator's one command, at toy budgets (brax smoke preset: minutes of compiles on a CPU)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "OUT": str(tmp_path / "results"),
           "PRESET": "smoke", "AGENTS": str(tmp_path / "agents"),
           "THROUGHPUT_ARGS": "--rows cpu-cartpole-1 --repeats 1",
           "MUJOCO_ARGS": "--tasks brax/hopper --envs 8 --backends spring --seeds 1 --updates 2 --repeats 1 "
                          "--no-cache-check",
           "CURVES_ARGS": "--methods PPO,RA,RICE,JSRL"}
    proc = subprocess.run(["bash", "benchmarks/gpu_all.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=2900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results"
    assert json.loads((out / "throughput-smoke.json").read_text())["results"]
    assert json.loads((out / "mujoco_throughput-smoke.json").read_text())["rows"]
    rows = json.loads((out / "paper_curves-smoke" / "paper_curves.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"PPO", "RA", "RICE", "JSRL"}


def _one_line_exit_2(argv: list[str], tmp_path: Path) -> str:
    proc = subprocess.run([sys.executable, "benchmarks/paper_curves.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran
    return proc.stderr


@pytest.mark.timeout(600)
def test_bad_input_is_refused_in_one_line_before_anything_runs(tmp_path):
    out = ["--out", str(tmp_path / "out")]
    assert "invalid choice: 'cpu-mujuco'" in _one_line_exit_2(["--preset", "cpu-mujuco", *out], tmp_path)
    assert "named twice" in _one_line_exit_2(["--preset", "cpu", "--tasks", "CartPole-v1,CartPole-v1", *out],
                                             tmp_path)
    assert "named twice" in _one_line_exit_2(["--preset", "cpu", "--methods", "PPO,RA,PPO", *out], tmp_path)
    assert "unrecognized arguments: --job" in _one_line_exit_2(["--preset", "cpu", "--job", "2", *out], tmp_path)
    assert "--budget projects brax" in _one_line_exit_2(["--preset", "cpu", "--budget", *out], tmp_path)
    (tmp_path / "file").write_text("")
    assert "--agents" in _one_line_exit_2(["--preset", "cpu", "--agents", str(tmp_path / "file" / "agents"), *out],
                                          tmp_path)
    # gpu_all.sh checks the curves' arguments before its other (hours-long) steps; gpu_quick.sh its STEPS names
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "PRESET": "cpu-mujuco"}
    proc = subprocess.run(["bash", "benchmarks/gpu_all.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "== throughput" not in proc.stdout and "cpu-mujuco" in proc.stderr
    proc = subprocess.run(["bash", "benchmarks/gpu_quick.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(tmp_path / "quick"), "STEPS": "ultra,curve"})
    assert proc.returncode == 2 and "unknown step 'curve'" in proc.stderr and not (tmp_path / "quick").exists()


def test_budget_takes_the_callers_jobs_and_projects_brax_tasks_only():
    preset = pc.PRESETS["cpu-mujoco"]
    tasks = list(preset["tasks"])
    three, one = pc.budget(preset, tasks, pc.ALL_METHODS), pc.budget(preset, tasks, pc.ALL_METHODS, jobs=1)
    assert three["jobs"] == 3 and one["jobs"] == 1 and one["total_s"] == one["sequential_s"] > three["total_s"]
    gpu = pc.budget(pc.PRESETS["gpu"], list(pc.PRESETS["gpu"]["tasks"]), pc.ALL_METHODS)
    assert gpu["not_projected"] == [pc.PONG] and pc.PONG not in gpu["tasks"]
    assert gpu["assumed_rate"] == ["brax/reacher"] and "slowest measured rate assumed" in pc.budget_text(gpu)


TOY_DRIVER = """import sys
sys.path.insert(0, {root!r})
from benchmarks import paper_curves as pc
tasks = ("CartPole-v1", "Acrobot-v1")
pc.PRESETS["toy-driver"] = {{"tasks": tasks,
    "common": dict(seeds=2, chunks=2, eval_envs=2, eval_steps=50, mask_steps=64, share_programs="all",
                   ppo_overrides=(("num_envs", 4), ("num_steps", 8))),
    **{{t: dict(pretrain_steps=64, refine_steps=64) for t in tasks}}, "teacher_steps": 0, "jobs": 2}}
pc.PRESETS["toy-driver"]["Acrobot-v1"].update({acrobot})
sys.argv = ["paper_curves.py", "--preset", "toy-driver", *sys.argv[1:]]
pc.main()
"""


def _workers(out: Path) -> list[int]:
    """The ids of running processes that are workers of the run writing to `out`."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and str(out / ".preset.pickle") in (d / "cmdline").read_bytes().decode(errors="replace"):
                if (d / "stat").read_text().split(")")[-1].split()[0] != "Z":
                    pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _toy_run(tmp_path: Path, acrobot: dict, out: Path) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(TOY_DRIVER.format(root=str(ROOT), acrobot=repr(acrobot)))
    return subprocess.Popen([sys.executable, str(driver), "--methods", "PPO,Random", "--out", str(out),
                             "--agents", str(tmp_path / "agents")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.timeout(600)
def test_a_failing_worker_stops_the_others_and_an_earlier_runs_records_do_not_pass(tmp_path):
    out = tmp_path / "out"
    for task in ("CartPole-v1", "Acrobot-v1"):  # an earlier run's files in this run's --out
        folder = pc.task_folder(out, task)
        folder.mkdir(parents=True)
        (folder / pc.TASK_RECORD).write_text(json.dumps({"record": {"wall_s": 1, "compile_s": 0, "refine_s": 0},
                                                         "rows": []}))
        (folder / pc.TEACHER_READY).write_text("{}")
    proc = _toy_run(tmp_path, {"seeds": -3}, out)  # Acrobot's worker fails on its settings
    stdout, stderr = proc.communicate(timeout=540)
    assert proc.returncode == 1, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("paper_curves.py: task Acrobot-v1 failed (exit 1)")
    assert "seeds must be >= 1" in stderr  # the worker's own error is above the parent's line
    assert _workers(out) == []  # CartPole's worker was stopped with the run
    assert not (out / "paper_curves.md").exists()
    assert not any((pc.task_folder(out, t) / pc.TASK_RECORD).exists() for t in ("CartPole-v1", "Acrobot-v1"))


@pytest.mark.timeout(600)
def test_sigterm_to_the_parent_stops_its_workers_with_one_line(tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    proc = _toy_run(tmp_path, {}, out)
    deadline = time.monotonic() + 400
    while len(_workers(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = _workers(out)
    assert len(workers) == 2, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # the parent alone
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and _workers(out) == []
    assert stderr.strip().splitlines() == ["paper_curves.py: interrupted (Ctrl-C or SIGTERM); tasks still running "
                                           "were stopped, finished tasks' files are in their folders under --out, no "
                                           "paper_curves.md was written"]
