"""Reproduce the paper's comparison: every refinement method, from the same sub-optimal agents, for the
same refinement steps, on Pong (win rate) and the MuJoCo set (dense and RICE's sparse variants).

    python benchmarks/paper_curves.py --preset cpu      # Pong only, tiny budgets: minutes on 2 CPU cores
    python benchmarks/paper_curves.py --preset gpu      # all tasks, 5 seeds: the full run (one GPU)
    python benchmarks/paper_curves.py --preset gpu --tasks brax/hopper,brax/hopper-sparse
    python benchmarks/paper_curves.py --preset smoke    # one sparse MuJoCo task, toy budgets: the gpu path on a CPU

Per task: pre-trained agents are saved under --agents and reused; the MuJoCo teacher advisor (a longer
PPO run on the dense task) is saved there too. Seeds run vmapped in one program per method. Writes, under
--out: one folder per task (curves PNG: IQM over seeds with 95% bootstrap bands, win rate for Pong; ultra.json,
critical states, transcript), `paper_curves.md` (final IQM [95% bootstrap CI] over seeds per method and task,
`jaxmod.stats`; Pong as win rate) and `paper_curves.json` (also the mean and std).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxmod.envs.sparse import SPARSE_SUFFIX
from jaxmod.methods import METHODS
from jaxmod.reporting import WIN_RATE_ENVS, seed_summary, win_rate
from jaxmod.ultra.pipeline import UltraRun, UltraSettings

ALL_METHODS = ("PPO", "A", "R", "RA", "StateMask-R", "RICE", "JSRL", "Random")
MUJOCO = ("brax/hopper", "brax/walker2d", "brax/halfcheetah", "brax/reacher",
          "brax/hopper-sparse", "brax/walker2d-sparse", "brax/halfcheetah-sparse")
PONG = "jaxmod/Pong-OnePoint"

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
        "mujoco": dict(pretrain_steps=64 * 10 * 4, refine_steps=64 * 10 * 4),
        "teacher_steps": 64 * 10 * 8,
    },
    "gpu": {
        "tasks": (PONG, *MUJOCO),
        "common": dict(seeds=5, chunks=10, eval_envs=128, eval_steps=1000, collect_envs=16, collect_steps=1000,
                       episodes_per_round=8, mask_steps=1_000_000),
        PONG: dict(pretrain_steps=300_000, refine_steps=2_000_000, eval_steps=600),
        "mujoco": dict(pretrain_steps=3_000_000, refine_steps=5_000_000, refine_lr=1e-4),
        "teacher_steps": 30_000_000,
    },
}


def ensure_teacher(env_id: str, steps: int, agents: Path, log, overrides: tuple = ()) -> str:
    """A saved stronger PPO agent for `env_id`'s dense task (sparse variants share it): the advisor spec.
    It trains with the agents' config `overrides` (same backend and network) for `steps` env steps."""
    from jaxmod.checkpoint import has_checkpoint, save_checkpoint
    from jaxmod.ppo import PPOLearner, default_config

    dense = env_id.removesuffix(SPARSE_SUFFIX)
    tag = f"-{hashlib.sha1(repr(tuple(overrides)).encode()).hexdigest()[:8]}" if overrides else ""
    where = agents / f"teacher-{dense.replace('/', '_')}-{steps}{tag}"
    if not has_checkpoint(where):
        import jax

        cfg = default_config(dense, **{**dict(overrides), "total_timesteps": steps})
        learner = PPOLearner(cfg)
        t0 = time.perf_counter()
        state, metrics = jax.jit(lambda k: learner.run(learner.init(k), cfg.num_updates))(jax.random.PRNGKey(123))
        log(f"teacher for {dense}: {steps:,} steps in {time.perf_counter() - t0:.0f}s, "
            f"training return {float(metrics['episode_return'][-1]):.1f}")
        save_checkpoint(where, state, cfg)
    return f"teacher:{where}"


def settings_for(preset: dict[str, Any], env_id: str, agents: Path, methods: tuple[str, ...], log) -> UltraSettings:
    family = "mujoco" if env_id.startswith("brax/") else env_id
    kw = {**preset["common"], **preset.get(family, {})}
    if env_id == PONG:
        advisor = "scripted"
    else:
        advisor = ensure_teacher(env_id, preset["teacher_steps"] or kw["pretrain_steps"] * 4, agents, log,
                                 kw.get("ppo_overrides", ()))
    return UltraSettings(env_id=env_id, variants=methods, advisor=advisor, agents_dir=str(agents), **kw)


def summarise(env_id: str, results: dict) -> list[dict[str, Any]]:
    """Per method: start and final evaluation over seeds (IQM, 95% CI, mean, std), and for one-point Pong the same
    as win rate (return +1 win / -1 loss, so win rate = (return + 1) / 2)."""
    rows = []
    for name, r in results.items():
        final = np.array(r.eval_returns[-1])
        summary = seed_summary(final).as_dict()
        row = {"task": env_id, "method": name, "label": METHODS[name].label, "start": float(np.mean(r.eval_returns[0])),
               "start_iqm": seed_summary(r.eval_returns[0]).as_dict()["iqm"],
               "final_mean": float(final.mean()), "final_std": float(final.std()), "final_iqm": summary["iqm"],
               "final_ci95": summary["ci95"], "wall_s": r.wall_s}
        if env_id in WIN_RATE_ENVS:
            rate, start = seed_summary(win_rate(final)).as_dict(), seed_summary(win_rate(r.eval_returns[0])).as_dict()
            row.update(win_rate_mean=rate["mean"], win_rate_std=rate["std"], win_rate_iqm=rate["iqm"],
                       win_rate_ci95=rate["ci95"], start_win_rate_iqm=start["iqm"])
        rows.append(row)
    return rows


def _cell(point: float | None, ci: list[float] | None, fmt: str) -> str:
    if point is None:
        return "NON-FINITE"
    return f"{point:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


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
            elif "win_rate_iqm" in r:
                vals.append(_cell(r["win_rate_iqm"], r["win_rate_ci95"], ".2f"))
            else:
                vals.append(_cell(r["final_iqm"], r["final_ci95"], ".1f"))
        lines.append(f"| {METHODS[m].label} | " + " | ".join(vals) + " |")
    def start(t: str) -> str:  # the same agents start every method: the first method's start IQM
        r = next(r for r in rows if r["task"] == t)
        key = "start_win_rate_iqm" if "start_win_rate_iqm" in r else "start_iqm"
        return "NON-FINITE" if r[key] is None else f"{r[key]:.2f}" if key == "start_win_rate_iqm" else f"{r[key]:.1f}"

    lines.append("| (agent before refinement, IQM) | " + " | ".join(start(t) for t in tasks) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--tasks", default=None, help="comma list (default: the preset's)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--out", default=None, help="default runs/paper_curves-<preset>")
    ap.add_argument("--agents", default="runs/agents", help="saved pre-trained agents and teachers")
    args = ap.parse_args()
    import jax

    from jaxmod.cli import _enable_compile_cache

    _enable_compile_cache()  # a repeated run (or a re-run task) skips recompiling its programs

    preset = PRESETS[args.preset]
    tasks = args.tasks.split(",") if args.tasks else list(preset["tasks"])
    methods = tuple(m.strip() for m in args.methods.split(","))
    out = Path(args.out or f"runs/paper_curves-{args.preset}")
    agents = Path(args.agents)
    out.mkdir(parents=True, exist_ok=True)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, " \
             f"{time.strftime('%Y-%m-%d')}"
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for env_id in tasks:
        t0 = time.perf_counter()
        settings = settings_for(preset, env_id, agents, methods, print)
        run = UltraRun(settings, out / env_id.replace("/", "_"), log=print)
        rows.extend(summarise(env_id, run.run()))
        print(f"{env_id}: all methods in {time.perf_counter() - t0:.0f}s", flush=True)
    table = markdown(rows, device)
    total = time.perf_counter() - t_all
    (out / "paper_curves.md").write_text(table + f"\n\nTotal wall time {total:.0f}s.\n")
    (out / "paper_curves.json").write_text(json.dumps({"device": device, "preset": args.preset, "total_s": total,
                                                       "rows": rows}, indent=2))
    print(table)
    print(f"total {total:.0f}s; wrote {out}/paper_curves.md, {out}/paper_curves.json and per-task curves")


if __name__ == "__main__":
    main()
