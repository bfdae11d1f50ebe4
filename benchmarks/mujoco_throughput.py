"""Env steps per second and compile seconds of jaxmod's PPO on the MuJoCo tasks (brax), per backend and env count:
the measurements `paper_curves.py --preset cpu-mujoco` budgets from.

Each row compiles the vmapped multi-seed PPO program twice: cold (an empty persistent cache) and again from the
persistent cache (in-memory caches cleared), then runs it `--repeats` times (fastest kept). The machine's load
average (`os.getloadavg`) is recorded beside every row: on a shared machine treat the times as upper bounds. So is
the process's CPU time (all threads, `resource.getrusage`), which other processes inflate far less than wall time:
on a quiet machine a step takes between CPU time / cores and CPU time.

    python benchmarks/mujoco_throughput.py                       # the CPU grid (hopper x envs x backends, others at 256)
    python benchmarks/mujoco_throughput.py --tasks brax/hopper --envs 256 --backends spring --seeds 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxmod.parallel import seed_keys
from jaxmod.ppo import default_config, make_train


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_s() -> float:
    """CPU seconds this process has used so far (user + system, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(env_id: str, backend: str, num_envs: int, seeds: int, updates: int, repeats: int,
            cache_dir: str | None) -> dict:
    """One row: cold and cached compile seconds, fastest run seconds, env steps/s over all seeds."""
    cfg = default_config(env_id, num_envs=num_envs, num_minibatches=max(1, num_envs * 10 // 640),
                         total_timesteps=updates * num_envs * 10, env_options=(("backend", backend),))
    train = make_train(cfg)
    keys = seed_keys(0, seeds)
    row = {"task": env_id, "backend": backend, "num_envs": num_envs, "seeds": seeds,
           "steps_per_seed": cfg.num_updates * cfg.batch_size, "load_before": load()}
    times = []
    for _ in range(2 if cache_dir else 1):  # cold, then from the persistent cache
        jax.clear_caches()
        t0, c0 = time.perf_counter(), cpu_s()
        compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
        times.append((round(time.perf_counter() - t0, 2), round(cpu_s() - c0, 2)))
    row["compile_cold_s"], row["compile_cold_cpu_s"] = times[0]
    row["compile_cached_s"], row["compile_cached_cpu_s"] = times[1] if len(times) > 1 else (None, None)
    runs, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_s()
        out = jax.block_until_ready(compiled(keys))
        runs.append(time.perf_counter() - t0)
        cpus.append(cpu_s() - c0)
    row["run_s"] = round(min(runs), 3)
    row["run_cpu_s"] = round(min(cpus), 3)
    row["steps_per_cpu_s"] = round(seeds * row["steps_per_seed"] / min(cpus))
    row["steps_per_s"] = round(seeds * row["steps_per_seed"] / min(runs))
    row["final_return"] = float(np.asarray(out.metrics["episode_return"])[..., -1].mean())
    row["load_after"] = load()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="brax/hopper,brax/walker2d,brax/halfcheetah")
    ap.add_argument("--envs", default="64,128,256", help="env counts per seed (first task: all; others: the last)")
    ap.add_argument("--backends", default="positional,spring")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--updates", type=int, default=30, help="PPO updates per timed run (10 env steps each)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-cache-check", action="store_true", help="compile once (no cold-vs-cached pair)")
    ap.add_argument("--json", default="benchmarks/results/mujoco_throughput.json")
    args = ap.parse_args()
    envs = [int(n) for n in args.envs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = None if args.no_cache_check else str(Path(tmp) / "cache")
        if cache:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        for i, task in enumerate(args.tasks.split(",")):
            for backend in args.backends.split(","):
                for n in envs if i == 0 else envs[-1:]:
                    rows.append(measure(task, backend, n, args.seeds, args.updates, args.repeats, cache))
                    print(json.dumps(rows[-1]), flush=True)
                    out = Path(args.json)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps({"device": str(jax.devices()[0]), "jax": jax.__version__,
                                               "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
