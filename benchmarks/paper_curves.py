"""Reproduce the paper's comparison: every refinement method, from the same sub-optimal agents, for the
same refinement steps, on Pong (win rate) and the MuJoCo set (dense and RICE's sparse variants).

    python benchmarks/paper_curves.py --preset cpu      # Pong only, tiny budgets: minutes on 2 CPU cores
    python benchmarks/paper_curves.py --preset gpu      # all tasks, 5 seeds: the full run (one GPU)
    python benchmarks/paper_curves.py --preset gpu --tasks brax/hopper,brax/hopper-sparse
    python benchmarks/paper_curves.py --preset smoke    # one sparse MuJoCo task, toy budgets: the gpu path on a CPU
    python benchmarks/paper_curves.py --preset cpu-mujoco   # 5 MuJoCo tasks x 8 methods x 5 seeds on a 2-core CPU
    python benchmarks/paper_curves.py --preset cpu-mujoco --budget   # its budget arithmetic, nothing run
    python benchmarks/paper_curves.py --preset cpu-mujoco --jobs 1   # one task at a time (the preset runs 3)

Per task: pre-trained agents are saved under --agents and reused; the MuJoCo teacher advisor (a longer
PPO run on the dense task; sparse variants share it) is saved there too, trained further (doubling its steps, up
to the preset's cap) until it scores at least `TEACHER_RATIO` times the agents' evaluation return on the task,
else the run says so loudly and records it. Seeds run vmapped; with `share_programs="all"` (the MuJoCo presets)
every method, fine-tuning included, runs through one compiled program per task (`jaxmod.methods.shared_modulator`).
Writes, under --out: one folder per task (curves PNG, ultra.json, critical states, transcript),
`paper_curves.md` (final IQM [95% bootstrap CI] per method
and task, each method's paired change over fine-tuning beside the direction of RICE's Table 1, the teachers'
and agents' returns, compile and run seconds per task, ULTRA's critical visits / restarts / advised steps per
chunk) and `paper_curves.json`.

`--jobs N` runs up to N tasks at a time, each in its own process (a sparse variant starts once its dense task's
teacher is final): one task's compiled programs keep about 1.5 of this 2-core CPU's cores busy, so tasks side by
side fill the machine. Every task's numbers are the same as when it runs alone (its own process, seeds and keys).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxmod.envs.sparse import SPARSE_SUFFIX
from jaxmod.methods import METHODS
from jaxmod.reporting import WIN_RATE_ENVS, seed_summary, win_rate
from jaxmod.stats import iqm, iqm_difference_ci, verdict
from jaxmod.ultra.pipeline import UltraRun, UltraSettings

ALL_METHODS = ("PPO", "A", "R", "RA", "StateMask-R", "RICE", "JSRL", "Random")
MUJOCO = ("brax/hopper", "brax/walker2d", "brax/halfcheetah", "brax/reacher",
          "brax/hopper-sparse", "brax/walker2d-sparse", "brax/halfcheetah-sparse")
PONG = "jaxmod/Pong-OnePoint"

CPU_MUJOCO = ("brax/hopper", "brax/walker2d", "brax/halfcheetah", "brax/hopper-sparse", "brax/walker2d-sparse")
TEACHER_RATIO = 1.5  # a teacher's evaluation return must be at least this many times the agents' (same evaluation)


def teacher_bar(agents_return: float) -> float:
    """The return a teacher must reach: `TEACHER_RATIO` times the agents' where that is positive, and in general the
    agents' plus (TEACHER_RATIO - 1) times its magnitude (agents at -100 need a teacher at -50, not -150). A teacher
    must also score strictly above the agents (`strong_teacher`): at agents of 0 the bar alone would pass a teacher of
    0."""
    return agents_return + (TEACHER_RATIO - 1.0) * abs(agents_return)

# RICE (ICML 2024) Table 1: each baseline's final reward minus PPO fine-tuning's (mean of 3 seeds), dense MuJoCo.
# Sparse tasks: RICE's Fig. 2 shows RICE above fine-tuning (no values); ULTRA's paper has no MuJoCo values.
RICE_TABLE1_CHANGE = {
    "hopper": {"JSRL": 3635.08 - 3638.75, "StateMask-R": 3652.06 - 3638.75, "RICE": 3663.91 - 3638.75,
               "Random": 3648.98 - 3638.75},
    "walker2d": {"JSRL": 3963.57 - 3965.63, "StateMask-R": 3966.96 - 3965.63, "RICE": 3982.79 - 3965.63,
                 "Random": 3969.64 - 3965.63},
    "halfcheetah": {"JSRL": 2128.04 - 2133.31, "StateMask-R": 2085.28 - 2133.31, "RICE": 2138.89 - 2133.31,
                    "Random": 2132.01 - 2133.31},
}

def _brax_overrides(backend: str, num_envs: int = 64) -> tuple:
    """PPO overrides of the CPU MuJoCo preset: `num_envs` per seed, minibatches of 320 env steps, `backend`."""
    return (("num_envs", num_envs), ("num_minibatches", 2), ("env_options", (("backend", backend),)))


# Per preset: shared settings, then per-task overrides. Step counts are env steps per seed.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "tasks": (PONG,),
        "common": dict(seeds=6, chunks=5, eval_envs=32, eval_steps=400, mask_steps=100_000),
        PONG: dict(pretrain_steps=200_000, refine_steps=300_000),
        "teacher_steps": 0,
    },
    # the gpu preset's code path (brax env, teacher advisor, every method) at toy budgets, to check it on a CPU
    "smoke": {
        "tasks": ("brax/hopper-sparse",),
        "common": dict(seeds=2, chunks=2, eval_envs=4, eval_steps=50, collect_envs=4, collect_steps=100,
                       episodes_per_round=2, mask_steps=64 * 10 * 2,
                       ppo_overrides=(("num_envs", 64), ("num_minibatches", 4), ("env_options", (("backend", "spring"),)))),
        "mujoco": dict(pretrain_steps=64 * 10 * 4, refine_steps=64 * 10 * 4, share_programs="all"),
        "teacher_steps": 64 * 10 * 8,
        "teacher_max_steps": 64 * 10 * 8,
    },
    # the paper's MuJoCo comparison on a 2-core CPU in <= 60 minutes (budget: `--budget`, measurements:
    # benchmarks/mujoco_throughput.py and benchmarks/results/cpu_mujoco_design_2026-11-30.md). 64 envs per seed: on
    # this CPU 5 seeds x 64 envs step about as fast as 5 x 256 (8.9k against 9.5k env steps/s, brax/hopper,
    # positional) and PPO learns ~4x more per env step (hopper: ~1000 after 128k steps, against ~500 after 256k
    # with 256 envs). Backends by measurement: positional for hopper and walker2d (on spring, hopper stalls at
    # ~350-420 for 1.5M steps; positional reaches ~1000 by 400k), spring for halfcheetah (3,347 env steps per CPU
    # second against positional's 1,350: brax steps its cheetah 16 frames on both; generalized 949).
    "cpu-mujoco": {
        "tasks": CPU_MUJOCO,
        "common": dict(seeds=5, chunks=4, eval_envs=8, eval_steps=1000, collect_envs=8, collect_steps=1000,
                       episodes_per_round=4, mask_steps=25_600, share_programs="all", sync_advice=True,
                       match_radius=1.5, ppo_overrides=_brax_overrides("positional")),
        "mujoco": dict(pretrain_steps=16_000, refine_steps=25_600),  # 25 and 40 updates of 64 envs x 10 steps
        "brax/halfcheetah": dict(ppo_overrides=_brax_overrides("spring")),
        "brax/halfcheetah-sparse": dict(ppo_overrides=_brax_overrides("spring")),
        "teacher_steps": 256_000,  # 400 updates of the agents' 64 envs; doubled while below 1.5x the agents
        "teacher_max_steps": 1_024_000,
        # tasks side by side (each its own process): one task keeps ~1.5 of the 2 cores busy (its run: 5,921 CPU s in
        # 4,093 s), and 3 at a time balance the tasks' unequal lengths (halfcheetah's is ~1.7x hopper's)
        "jobs": 3,
    },
    "gpu": {
        "tasks": (PONG, *MUJOCO),
        "common": dict(seeds=5, chunks=10, eval_envs=128, eval_steps=1000, collect_envs=16, collect_steps=1000,
                       episodes_per_round=8, mask_steps=1_000_000),
        PONG: dict(pretrain_steps=300_000, refine_steps=2_000_000, eval_steps=600),
        "mujoco": dict(pretrain_steps=3_000_000, refine_steps=5_000_000, refine_lr=1e-4, share_programs="all"),
        "teacher_steps": 30_000_000,
        "teacher_max_steps": 60_000_000,
    },
}


def teacher_dir(env_id: str, steps: int, agents: Path, overrides: tuple = ()) -> Path:
    """Where `ensure_teacher` keeps `env_id`'s dense-task teacher after `steps` env steps."""
    dense = env_id.removesuffix(SPARSE_SUFFIX)
    tag = f"-{hashlib.sha1(repr(tuple(overrides)).encode()).hexdigest()[:8]}" if overrides else ""
    return agents / f"teacher-{dense.replace('/', '_')}-{steps}{tag}"


TEACHER_CHUNK_UPDATES = 100  # the teacher trains in chunks of this many updates: one program for every rung


def ensure_teacher(env_id: str, steps: int, agents: Path, log, overrides: tuple = (),
                   from_steps: int = 0) -> str:
    """A saved stronger PPO agent for `env_id`'s dense task (sparse variants share it): the advisor spec.
    It trains with the agents' config `overrides` (same backend and network) for `steps` env steps, continuing the
    saved teacher of `from_steps` steps where one is given (the learning rate is constant on brax), in chunks of
    `TEACHER_CHUNK_UPDATES` updates (one compiled program, whatever the steps)."""
    from jaxmod.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
    from jaxmod.ppo import PPOLearner, default_config

    dense = env_id.removesuffix(SPARSE_SUFFIX)
    where = teacher_dir(env_id, steps, agents, overrides)
    if not has_checkpoint(where):
        import jax

        cfg = default_config(dense, **{**dict(overrides), "total_timesteps": steps})
        learner = PPOLearner(cfg)
        t0 = time.perf_counter()
        state = (load_checkpoint(teacher_dir(env_id, from_steps, agents, overrides)).state if from_steps
                 else jax.jit(learner.init)(jax.random.PRNGKey(123)))
        chunk = jax.jit(lambda s: learner.run(s, TEACHER_CHUNK_UPDATES))
        done, metrics = int(state.update_step), None
        while done < cfg.num_updates:
            n = min(TEACHER_CHUNK_UPDATES, cfg.num_updates - done)  # a shorter last chunk compiles its own program
            state, metrics = (chunk if n == TEACHER_CHUNK_UPDATES else jax.jit(lambda s, n=n: learner.run(s, n)))(state)
            done += n
        ret = float(metrics["episode_return"][-1]) if metrics is not None else float("nan")
        log(f"teacher for {dense}: {steps - from_steps:,} steps in {time.perf_counter() - t0:.0f}s "
            f"({steps:,} in all), training return {ret:.1f}")
        save_checkpoint(where, state, cfg)
    return f"teacher:{where}"


def evaluate_agents(run: UltraRun, pre_state, teacher: str) -> tuple[list[float], float]:
    """The pre-trained agents' evaluation returns ([seeds]) and the teacher's (mean over the same evaluation keys),
    both on the run's task with plain resets and the run's evaluation sizes: what `TEACHER_RATIO` compares."""
    import jax

    from jaxmod.checkpoint import load_checkpoint
    from jaxmod.parallel import seed_keys
    from jaxmod.ppo.acting import make_evaluator

    s, learner = run.s, run.agent_learner
    evaluate = jax.jit(jax.vmap(make_evaluator(learner.env.replace_num_envs(s.sizes.eval_envs), learner.net,
                                               run.eval_steps)))
    keys = seed_keys(s.seed + 2000, s.seeds)  # the refinement's first evaluation's keys
    agents = np.asarray(evaluate(pre_state.params, pre_state.env_state.obs_rms, keys)[0])
    t = load_checkpoint(teacher.split(":", 1)[1]).state
    tile = lambda x: jax.numpy.broadcast_to(x, (s.seeds, *np.shape(x)))  # noqa: E731 - the teacher on every key
    mean = np.asarray(evaluate(jax.tree.map(tile, t.params), jax.tree.map(tile, t.env_state.obs_rms), keys)[0])
    return agents.tolist(), float(mean.mean())


def strong_teacher(env_id: str, preset: dict[str, Any], kw: dict[str, Any], run: UltraRun, agents: Path, log
                   ) -> tuple[str, dict[str, Any]]:
    """The task's teacher, trained further (its steps doubled, up to the preset's `teacher_max_steps`) until its
    evaluation return is at least `TEACHER_RATIO` times the agents' mean; says so loudly when the cap is reached
    first. Returns the advisor spec and the record (both returns, the steps, whether the ratio was met)."""
    overrides = tuple(kw.get("ppo_overrides", ()))
    steps, cap = preset["teacher_steps"] or kw["pretrain_steps"] * 4, preset.get("teacher_max_steps", 0)
    pre = run.pretrain()
    prev = 0
    while True:
        spec = ensure_teacher(env_id, steps, agents, log, overrides, from_steps=prev)
        agent_returns, teacher_return = evaluate_agents(run, pre, spec)
        need = teacher_bar(float(np.mean(agent_returns)))
        ok = teacher_return >= need and teacher_return > float(np.mean(agent_returns))  # agents at 0: strictly above
        if ok or steps * 2 > max(cap, steps):
            break
        log(f"teacher for {env_id}: return {teacher_return:.1f} after {steps:,} steps is below {TEACHER_RATIO}x the "
            f"agents' {np.mean(agent_returns):.1f}: training it further")
        prev, steps = steps, steps * 2
    if not ok:
        log(f"WARNING: the teacher for {env_id} ({teacher_return:.1f} after {steps:,} steps) is below {TEACHER_RATIO}x "
            f"the agents' return ({np.mean(agent_returns):.1f}); advice may not help. Raise teacher_max_steps.")
    record = {"teacher_return": teacher_return, "agents_return": float(np.mean(agent_returns)),
              "agents_returns": agent_returns, "teacher_steps": steps, "teacher_ratio_met": bool(ok),
              "ratio": teacher_return / max(abs(float(np.mean(agent_returns))), 1e-9)}
    return spec, record


def knobs_for(preset: dict[str, Any], env_id: str) -> dict[str, Any]:
    family = "mujoco" if env_id.startswith("brax/") else env_id
    return {**preset["common"], **preset.get(family, {}), **preset.get(env_id, {})}  # task's own keys last


def run_task(preset: dict[str, Any], env_id: str, agents: Path, methods: tuple[str, ...], out: Path, log
             ) -> tuple[dict, dict[str, Any]]:
    """One task: its teacher made strong enough (MuJoCo), then every method. Returns the methods' results and the
    task's record (teacher, times)."""
    t0 = time.perf_counter()
    kw = knobs_for(preset, env_id)
    folder = task_folder(out, env_id)
    record: dict[str, Any] = {"task": env_id}
    if env_id == PONG:
        settings = UltraSettings(env_id=env_id, variants=methods, advisor="scripted", agents_dir=str(agents), **kw)
        run = UltraRun(settings, folder, log=log, overwrite=True)
    else:
        needs = any(METHODS[m].critical == "advisor" for m in methods)
        # the agents first (a teacher spec is needed to build the run: a placeholder rung, replaced below)
        settings = UltraSettings(env_id=env_id, variants=("PPO",), agents_dir=str(agents), **kw)
        probe = UltraRun(settings, folder, log=log, overwrite=True)
        t1 = time.perf_counter()
        spec, teacher = strong_teacher(env_id, preset, kw, probe, agents, log) if needs else (None, {})
        record.update(teacher, teacher_s=time.perf_counter() - t1)
        settings = UltraSettings(env_id=env_id, variants=methods, agents_dir=str(agents), advisor=spec or "random",
                                 **kw)
        run = UltraRun(settings, folder, log=log, overwrite=True)
        (folder / TEACHER_READY).write_text(json.dumps({"advisor": spec, **teacher}, default=str))
    results = run.run()
    record.update(wall_s=time.perf_counter() - t0, compile_s=sum(r.compile_s for r in results.values()),
                  refine_s=sum(r.wall_s for r in results.values()))
    return results, record


ADVICE_COUNTS = ("critical_steps", "restarts", "advice_executed")
TEACHER_READY = "teacher_ready.json"  # in a task's folder once its teacher is final (its sparse variant may start)
TASK_RECORD = "task_record.json"  # a task's rows and record, written by the process that ran it (`--jobs`)
T0_VAR = "JAXMOD_PAPER_CURVES_T0"  # the parent's start (Unix seconds), for its workers' log clocks


def task_folder(out: Path, env_id: str) -> Path:
    return out / env_id.replace("/", "_")


def summarise(env_id: str, results: dict) -> list[dict[str, Any]]:
    """One row per method: final mean (std) and IQM [95% CI] over seeds, the paired IQM change over fine-tuning
    (PPO) with its verdict, compile and run seconds, the curve, and per chunk the advice counts (critical-state
    visits, restarts, advised steps; summed over seeds). A non-finite seed makes the row `failed`."""
    rows = []
    base = results.get("PPO")
    for name, r in results.items():
        final = np.array(r.eval_returns[-1], float)
        row = {"task": env_id, "method": name, "label": METHODS[name].label, "start": float(np.mean(r.eval_returns[0])),
               "final_mean": float(final.mean()), "final_std": float(final.std()), "final": final.tolist(),
               "wall_s": r.wall_s, "compile_s": r.compile_s, "steps": r.steps, "curve": np.mean(
                   np.asarray(r.eval_returns, float), axis=1).tolist(),
               "advice_per_chunk": [{k: c[k] for k in ADVICE_COUNTS if k in c} for c in r.chunk_metrics]}
        summary = seed_summary(final)  # IQM and its 95% CI, once (None where a seed is not finite)
        if not np.all(np.isfinite(final)):
            row["failed"] = f"{int(np.sum(~np.isfinite(final)))} non-finite seed(s)"
        else:
            row["iqm"] = summary.iqm.as_dict()
            if base is not None and name != "PPO" and np.all(np.isfinite(base.eval_returns[-1])):
                gain = iqm_difference_ci(final, np.asarray(base.eval_returns[-1], float))
                row.update(gain=gain.as_dict(), verdict=verdict(gain))
        flat = summary.as_dict()  # the same IQM and CI as flat keys too
        row.update(start_iqm=seed_summary(r.eval_returns[0]).as_dict()["iqm"], final_iqm=flat["iqm"],
                   final_ci95=flat["ci95"])
        if env_id in WIN_RATE_ENVS:  # one-point games: return +1 win / -1 loss, so win rate = (return + 1) / 2
            rate, start = seed_summary(win_rate(final)).as_dict(), seed_summary(win_rate(r.eval_returns[0])).as_dict()
            row.update(win_rate_mean=rate["mean"], win_rate_std=rate["std"], win_rate_iqm=rate["iqm"],
                       win_rate_ci95=rate["ci95"], start_win_rate_iqm=start["iqm"])
        rows.append(row)
    return rows


def figure(out: Path, tasks: list[str], path: Path, methods: tuple[str, ...] = ("PPO", "A", "R", "RA", "RICE")
           ) -> Path:
    """One panel per task: each of `methods`' evaluation return (IQM over seeds) against refinement env steps per
    seed, read from the tasks' `ultra.json` under `out`; legend outside the panels. Pong panels show win rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        summary = json.loads((out / task.replace("/", "_") / "ultra.json").read_text(encoding="utf-8"))
        for name in methods:
            if name in summary:
                returns = np.asarray(summary[name]["eval_returns"], float)  # [evaluations, seeds]
                y = iqm(win_rate(returns) if task in WIN_RATE_ENVS else returns, axis=1)
                ax.plot(summary[name]["steps"], y, label=METHODS[name].label, marker=".")
        ax.set_title(task.removeprefix("brax/"), fontsize=10)
        ax.set_xlabel("refinement steps per seed", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("evaluation return (IQM over seeds)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)
    return path


def rice_direction(task: str, method: str) -> str:
    """The sign of `method`'s change over fine-tuning in RICE's Table 1 (dense tasks), or where RICE shows it."""
    base = task.removeprefix("brax/")
    if base.endswith(SPARSE_SUFFIX):
        return "up (Fig. 2)" if method == "RICE" else "-"
    change = RICE_TABLE1_CHANGE.get(base, {}).get(method)
    if change is None:
        return "-"
    return f"{'up' if change > 0 else 'down'} ({change:+.1f})"


def comparison(rows: list[dict[str, Any]]) -> str:
    """Per task and method: the paired IQM change over fine-tuning [95% CI] and its verdict, beside the direction
    of RICE's Table 1 (absolute returns differ: brax physics is not gym MuJoCo v3)."""
    lines = ["| task | method | change over fine-tuning (IQM [95% CI]) | verdict | RICE Table 1 |", "|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "PPO":
            continue
        if "gain" in r:
            g = r["gain"]
            cell, word = f"{g['point']:+.1f} [{g['low']:+.1f}, {g['high']:+.1f}]", r["verdict"]
        else:
            cell, word = r.get("failed", "-"), "-"
        lines.append(f"| {r['task']} | {r['label']} | {cell} | {word} | {rice_direction(r['task'], r['method'])} |")
    return "\n".join(lines)


def task_table(records: list[dict[str, Any]]) -> str:
    """Per task: teacher and agents' evaluation returns, teacher steps, and the time spent."""
    lines = ["| task | agents' return | teacher's return | ratio | teacher steps | teacher s | compile s | "
             "refine s | task wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "teacher_return" in r:
            flag = "" if r["teacher_ratio_met"] else " (below 1.5x)"
            t = (f"{r['agents_return']:.1f} | {r['teacher_return']:.1f} | {r['ratio']:.2f}{flag} | "
                 f"{r['teacher_steps']:,} | {r['teacher_s']:.0f}")
        else:
            t = "- | - | - | - | -"
        lines.append(f"| {r['task']} | {t} | {r['compile_s']:.0f} | {r['refine_s']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def advice_table(rows: list[dict[str, Any]]) -> str:
    """ULTRA's action at MuJoCo scale: per task and advisor method, per chunk, critical-state visits / restarts /
    advised steps (summed over seeds)."""
    lines = ["| task | method | per chunk: critical visits / restarts / advised steps |", "|---|---|---|"]
    for r in rows:
        if METHODS[r["method"]].critical == "none" or not r["advice_per_chunk"]:
            continue
        cells = ", ".join(f"{c.get('critical_steps', 0)}/{c.get('restarts', 0)}/{c.get('advice_executed', '-')}"
                          for c in r["advice_per_chunk"])
        lines.append(f"| {r['task']} | {r['label']} | {cells} |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], device: str) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"Final evaluation after refinement: IQM [95% bootstrap CI] over seeds; Pong: win rate. {device}", "",
             "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    cell = {(r["task"], r["method"]): r for r in rows}
    for m in methods:
        vals = []
        for t in tasks:
            r = cell.get((t, m))
            if r is None:
                vals.append("-")
            elif r.get("win_rate_iqm") is not None:
                lo, hi = r["win_rate_ci95"]
                vals.append(f"{r['win_rate_iqm']:.2f} [{lo:.2f}, {hi:.2f}]")
            elif "iqm" in r:
                i = r["iqm"]
                vals.append(f"{i['point']:.1f} [{i['low']:.1f}, {i['high']:.1f}]")
            else:
                vals.append("NON-FINITE" if "failed" in r else "-")  # which seeds: the row's "failed"
        lines.append(f"| {METHODS[m].label} | " + " | ".join(vals) + " |")
    def start(t: str) -> str:  # the same agents start every method: the first method's start IQM
        r = next(r for r in rows if r["task"] == t)
        key = "start_win_rate_iqm" if "start_win_rate_iqm" in r else "start_iqm"
        return "NON-FINITE" if r[key] is None else f"{r[key]:.2f}" if key == "start_win_rate_iqm" else f"{r[key]:.1f}"

    lines.append("| (agent before refinement, IQM) | " + " | ".join(start(t) for t in tasks) + " |")
    return "\n".join(lines)


# Quiet-machine component costs of the cpu-mujoco preset on the 2-core CPU (issue 19's measurements and
# benchmarks/mujoco_throughput.py; a busy machine's wall times are upper bounds): env steps per second while training
# (1.8 cores x the env steps per CPU second measured with 5 seeds x 256 envs at load 16-23, each task on the preset's
# backend: benchmarks/results/cpu_mujoco_design_2026-11-30.md), and seconds per compiled brax program: a program
# that trains (PPO's SGD, the mask net's) 40-55 s cold, one that only steps the policy (evaluation, recordings)
# assumed half that, and any of them 9-21 s from the persistent compilation cache (a repeated run).
QUIET_STEPS_PER_S = {"hopper": 12_500, "walker2d": 9_600, "halfcheetah": 6_000}
COMPILE_S = {"train": 50.0, "light": 25.0, "cached": 15.0}
SHARED_OVERHEAD = 1.3  # run time of a method in the shared program over its own (computes the pieces it switches off)
EVAL_SPEEDUP = 2.0  # evaluation and recording steps (no SGD) against training steps
# The components above miss the host's share (Python between chunks, recordings handed to the advisor, the
# teacher's queries): the first complete cold run (one task at a time, 2026-11-30) took 4,093 s against 2,777 s
# projected from them, so projections are scaled by the measured ratio. That run's process used 5,921 CPU seconds:
# 1.45 of the 2 cores, which is what tasks side by side (`--jobs`) recover.
MEASURED_OVER_COMPONENTS = 4093 / 2777
CORES_PER_TASK, CORES = 1.45, 2


def _size_defaults(env_id: str) -> dict[str, int]:
    """`UltraSettings`' own evaluation, recording and mask-net sizes: what a run uses where a preset names none."""
    s = UltraSettings(env_id=env_id)
    return {**{k: getattr(s.sizes, k) for k in ("collect_envs", "collect_steps", "eval_envs", "eval_steps")},
            "mask_steps": s.baselines.mask_steps}


def budget(preset: dict[str, Any], tasks: list[str], methods: tuple[str, ...],
           rates: dict[str, float] | None = None, cached: bool = False, jobs: int | None = None) -> dict[str, Any]:
    """The preset's projected wall seconds per task on a quiet machine, from component costs: env steps / rate for
    pretraining, the teacher's first rung (dense tasks only: sparse variants share it), the mask nets, refinement
    (every method, the shared program's overhead included), evaluations and advisor recordings, plus each compiled
    program's `COMPILE_S` (`cached`: all from the persistent cache), scaled by `MEASURED_OVER_COMPONENTS`. Returns
    the arithmetic per task, the tasks' sum (`sequential_s`) and the projected wall time (`total_s`: with the
    preset's `jobs`, or `jobs` where given, the sum spread over the cores at `CORES_PER_TASK` per task, at least the
    longest task). Only brax tasks are projected (the rates are brax's): others are listed in `not_projected`; a
    brax task without a measured rate takes the slowest measured one (listed in `assumed_rate`)."""
    rates = rates or QUIET_STEPS_PER_S
    out: dict[str, Any] = {"tasks": {}, "total_s": 0.0, "cached": cached, "assumed_rate": [],
                           "not_projected": [t for t in tasks if not t.startswith("brax/")]}
    dense_done: set[str] = set()
    for env_id in (t for t in tasks if t.startswith("brax/")):
        kw = {**_size_defaults(env_id), **knobs_for(preset, env_id)}
        base = env_id.removeprefix("brax/").removesuffix(SPARSE_SUFFIX)
        rate = rates.get(base, min(rates.values()))
        if base not in rates:
            out["assumed_rate"].append(env_id)
        seeds, chunks = kw["seeds"], kw["chunks"]
        advisor = [m for m in methods if METHODS[m].critical == "advisor"]
        masked = [m for m in methods if METHODS[m].critical == "mask"]
        share = kw.get("share_programs", "off")
        steps = {"pretrain": seeds * kw["pretrain_steps"],
                 "teacher": 0 if base in dense_done else preset["teacher_steps"],
                 "mask": seeds * kw["mask_steps"] if masked else 0,
                 "refine": seeds * kw["refine_steps"] * len(methods) * (SHARED_OVERHEAD if share != "off" else 1.0),
                 "evaluate": (len(methods) * (chunks + 1) + 2) * seeds * kw["eval_envs"] * kw["eval_steps"]
                 / EVAL_SPEEDUP,  # + the agents' and the teacher's evaluation
                 "record": (len(advisor) * chunks + 1) * seeds * kw["collect_envs"] * kw["collect_steps"]
                 / EVAL_SPEEDUP}
        # compiled brax programs by kind (the teacher's evaluation is the refinement's evaluation program)
        programs = {"train": 1 + (steps["teacher"] > 0) + bool(masked)
                    + {"all": 1, "methods": 1 + ("PPO" in methods)}.get(share, len(methods)),
                    "light": 2 + bool(advisor)}  # agents' recording, evaluation, advisor recording
        dense_done.add(base)
        seconds = {k: v / rate for k, v in steps.items()}
        seconds["compile"] = (sum(programs.values()) * COMPILE_S["cached"] if cached else
                              sum(n * COMPILE_S[k] for k, n in programs.items()))
        total = sum(seconds.values()) * MEASURED_OVER_COMPONENTS
        out["tasks"][env_id] = {"rate": rate, "steps": steps, "programs": programs, "seconds": seconds,
                                "total_s": total}
        out["total_s"] += total
    # tasks side by side: the machine's cores shared out, but no sooner than the longest task alone
    out["jobs"] = jobs = min(jobs or preset.get("jobs", 1), max(len(out["tasks"]), 1))
    out["sequential_s"] = out["total_s"]
    if jobs > 1 and out["tasks"]:
        out["total_s"] = max(out["total_s"] * CORES_PER_TASK / CORES, max(t["total_s"] for t in out["tasks"].values()))
    return out


def budget_text(b: dict[str, Any]) -> str:
    first = next(iter(b["tasks"].values()))
    lines = ["| task | env steps/s | " + " | ".join(f"{k} s" for k in first["seconds"]) + " | total s |",
             "|---|---|" + "---|" * (len(first["seconds"]) + 1)]
    for task, t in b["tasks"].items():
        lines.append(f"| {task} | {t['rate']:,} | " + " | ".join(f"{v:.0f}" for v in t["seconds"].values())
                     + f" | {t['total_s']:.0f} |")
    cache = "every program from the persistent compilation cache" if b["cached"] else "a cold compilation cache"
    jobs = (f"; {b['jobs']} tasks at a time, {b['sequential_s']:.0f} s one at a time" if b["jobs"] > 1 else "")
    lines.append(f"\nProjected total: {b['total_s']:.0f} s ({b['total_s'] / 60:.1f} min) on a quiet machine, {cache}"
                 f"{jobs} (component seconds x {MEASURED_OVER_COMPONENTS:.2f}, the measured run's ratio).")
    if b["assumed_rate"]:
        lines.append(f"No measured env steps/s for {', '.join(b['assumed_rate'])}: the slowest measured rate assumed.")
    if b["not_projected"]:
        lines.append(f"Not projected (the budget's rates are brax's): {', '.join(b['not_projected'])}.")
    return "\n".join(lines)


def ready_to_start(env_id: str, tasks: list[str], out: Path, done: dict) -> bool:
    """Whether `env_id` may start beside the others: a sparse variant whose dense task is also run waits for that
    task's final teacher (it reuses it), so that two processes never train the same teacher."""
    dense = env_id.removesuffix(SPARSE_SUFFIX)
    return dense == env_id or dense not in tasks or dense in done or (task_folder(out, dense) / TEACHER_READY).exists()


def run_tasks_in_processes(args: argparse.Namespace, preset: dict[str, Any], tasks: list[str], jobs: int, out: Path,
                           log, t0: float) -> dict[str, dict[str, Any]]:
    """Run `tasks` up to `jobs` at a time, each by this script in its own process (`--worker`), in the given order,
    except that a sparse variant whose dense task is also listed starts only once that task's teacher is final (it
    reuses the teacher; see `strong_teacher`). Workers print their own log lines, timed from `t0` (Unix seconds: this
    run's start). Returns each task's rows and
    record; a worker that fails stops the others and the run (exit 1)."""
    for env_id in tasks:  # a previous run's files must not pass for this run's
        for name in (TEACHER_READY, TASK_RECORD):
            (task_folder(out, env_id) / name).unlink(missing_ok=True)

    spec = out / ".preset.pickle"  # the preset as this process has it (a test's, or one edited since)
    spec.write_bytes(pickle.dumps(preset))
    base = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset, "--methods", args.methods,
            "--out", str(out), "--agents", args.agents, "--jobs", "1", "--worker", str(spec)]
    waiting, running, done = list(tasks), {}, {}
    log(f"{len(tasks)} tasks, {jobs} at a time (each in its own process)")

    def stop(signum, frame):  # SIGTERM to this process alone: stop the workers too (the `finally` below), then exit
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while waiting or running:
            for env_id, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[env_id]
                if proc.returncode != 0:
                    raise SystemExit(f"paper_curves.py: task {env_id} failed (exit {proc.returncode}); its output "
                                     "is above. The other tasks were stopped.")
                record = task_folder(out, env_id) / TASK_RECORD
                if not record.exists():
                    raise SystemExit(f"paper_curves.py: task {env_id}'s process ended (exit 0) without writing "
                                     f"{record}; its output is above. The other tasks were stopped.")
                done[env_id] = json.loads(record.read_text())
                r = done[env_id]["record"]
                log(f"{env_id}: all methods in {r['wall_s']:.0f}s (compile {r['compile_s']:.0f}s, refinement "
                    f"{r['refine_s']:.0f}s; beside other tasks)")
            startable = [t for t in waiting if ready_to_start(t, tasks, out, done)]
            for nxt in startable[:jobs - len(running)]:
                waiting.remove(nxt)
                running[nxt] = subprocess.Popen([*base, "--tasks", nxt], env={**os.environ, T0_VAR: str(t0)})
            time.sleep(0.5)
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.wait()
        signal.signal(signal.SIGTERM, previous)
    return done


def main() -> None:
    """The script (see the module's docstring); Ctrl-C, or SIGTERM to a `--jobs` parent, ends it with one line once
    the running workers are stopped."""
    try:
        _main()
    except KeyboardInterrupt:
        if "--worker" in sys.argv:  # its parent says it (Ctrl-C reaches the whole process group)
            sys.exit(130)
        sys.exit("paper_curves.py: interrupted (Ctrl-C or SIGTERM); tasks still running were stopped, finished tasks' "
                 "files are in their folders under --out, no paper_curves.md was written")


def _main() -> None:
    from jaxmod.cli import Parser  # usage errors in one line, no abbreviated flags

    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", help=f"one of {', '.join(sorted(PRESETS))}")
    ap.add_argument("--tasks", default=None, help="comma list (default: the preset's)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--out", default=None, help="default runs/paper_curves-<preset>")
    ap.add_argument("--agents", default="runs/agents", help="saved pre-trained agents and teachers")
    ap.add_argument("--budget", action="store_true", help="print the preset's projected wall time and exit")
    ap.add_argument("--check", action="store_true",
                    help="check the arguments (and that --out and --agents can be written) and exit: runs nothing")
    ap.add_argument("--jobs", type=int, default=None,
                    help="tasks run at a time, each in its own process (default: the preset's, else 1)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one task for a parent's --jobs: its preset file
    args = ap.parse_args()
    if args.preset not in PRESETS and args.worker is None:
        ap.error(f"argument --preset: invalid choice: {args.preset!r} (choose from {', '.join(sorted(PRESETS))})")
    preset = PRESETS[args.preset] if args.worker is None else pickle.loads(Path(args.worker).read_bytes())
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(preset["tasks"])
    methods = tuple(m.strip() for m in args.methods.split(","))
    from jaxmod.envs.registry import list_env_ids

    unknown = [t for t in tasks if t not in list_env_ids()] + [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown task(s) or method(s) {unknown}: tasks are env ids (jaxmod.envs.registry.list_env_ids), methods "
                 f"{', '.join(METHODS)}")
    repeated = sorted({x for x in (*tasks, *methods) if (*tasks, *methods).count(x) > 1})
    if repeated:
        ap.error(f"{', '.join(repeated)} named twice in --tasks or --methods: name each task and method once")
    if args.jobs is not None and args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: give a number of tasks to run at a time, 1 or more")
    if args.budget:
        if not any(t.startswith("brax/") for t in tasks):
            ap.error(f"--budget projects brax MuJoCo tasks only (its env steps/s are brax's); {', '.join(tasks)} "
                     "has none: use --preset cpu-mujoco, smoke or gpu, or --tasks brax/...")
        print(budget_text(budget(preset, tasks, methods, jobs=args.jobs)) + "\n\n"
              + budget_text(budget(preset, tasks, methods, cached=True, jobs=args.jobs)))
        return
    out = Path(args.out or f"runs/paper_curves-{args.preset}")
    agents = Path(args.agents)
    for flag, folder in (("--agents", agents), ("--out", out)):  # before anything compiles
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            ap.error(f"{flag} {folder}: cannot create it ({e.strerror}); give a folder you can write")
        if not os.access(folder, os.W_OK | os.X_OK):
            ap.error(f"{flag} {folder}: not writable; give a folder you can write")
    if args.check:
        print(f"paper_curves.py: preset {args.preset}, {len(tasks)} task(s), {len(methods)} method(s): arguments valid")
        return
    import jax

    from jaxmod.cli import _enable_compile_cache

    _enable_compile_cache()  # a repeated run (or a re-run task) skips recompiling its programs

    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, " \
             f"{time.strftime('%Y-%m-%d')}"
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    # a worker's clock starts with its parent's, so that the lines of tasks side by side read on one time axis
    t_all = time.perf_counter() - (time.time() - float(os.environ[T0_VAR]) if args.worker and T0_VAR in os.environ
                                   else 0.0)
    load0 = os.getloadavg()[0]

    who = f"{tasks[0].removeprefix('brax/')}: " if args.worker else ""  # a worker's lines say whose they are

    def log(msg: str) -> None:  # wall and CPU seconds (all threads) so far: a busy machine inflates the first only
        r = resource.getrusage(resource.RUSAGE_SELF)
        print(f"[{time.perf_counter() - t_all:6.0f}s cpu {r.ru_utime + r.ru_stime:6.0f}s load "
              f"{os.getloadavg()[0]:4.1f}] {who}{msg}", flush=True)

    jobs = min(args.jobs or preset.get("jobs", 1), len(tasks))
    if jobs > 1 and not args.worker:
        done = run_tasks_in_processes(args, preset, tasks, jobs, out, log,
                                      t0=time.time() - (time.perf_counter() - t_all))
        for env_id in tasks:  # the tables in the tasks' order, whichever finished first
            rows.extend(done[env_id]["rows"])
            records.append(done[env_id]["record"])
    else:
        for env_id in tasks:
            results, record = run_task(preset, env_id, agents, methods, out, log)
            rows.extend(summarise(env_id, results))
            records.append(record)
            log(f"{'' if args.worker else env_id + ': '}all methods in {record['wall_s']:.0f}s (compile {record['compile_s']:.0f}s, refinement "
                f"{record['refine_s']:.0f}s)")
            if args.worker:
                (task_folder(out, env_id) / TASK_RECORD).write_text(json.dumps(
                    {"record": record, "rows": rows[-len(results):]}, default=float))
        if args.worker:
            return
    total = time.perf_counter() - t_all
    cores = os.cpu_count() or 1
    load = (f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({cores}-core machine: above "
            f"{cores} is shared)" + (f"; {jobs} tasks at a time, so the tasks' own seconds overlap" if jobs > 1 else ""))
    table = "\n\n".join([markdown(rows, device), "Change over fine-tuning (paired over seeds):", comparison(rows),
                          "Teachers, agents and time per task:", task_table(records),
                          "ULTRA at MuJoCo scale:", advice_table(rows)])
    (out / "paper_curves.md").write_text(table + f"\n\nTotal wall time {total:.0f}s; {load}.\n")
    (out / "paper_curves.json").write_text(json.dumps({"device": device, "preset": args.preset, "total_s": total,
                                                       "load": load, "tasks": records, "rows": rows}, indent=2))
    figure(out, tasks, out / "paper_curves.png")
    print(table)
    print(f"total {total:.0f}s ({load}); wrote {out}/paper_curves.md, {out}/paper_curves.json, paper_curves.png (every "
          "task) and per-task curves")


if __name__ == "__main__":
    main()
