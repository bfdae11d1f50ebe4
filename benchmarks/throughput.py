"""Env steps per second of jaxmod PPO on the exact configs of shared/anchors.md, with final returns.

Each row: compile seconds (lower + compile), run seconds (block_until_ready, compile excluded),
env steps/s over all seeds, and the final mean episode return, so speed never hides broken learning.
PureJaxRL's measured H100 numbers are printed beside ours.

    python benchmarks/throughput.py                 # all anchor rows (meant for a GPU)
    python benchmarks/throughput.py --preset cpu    # the CPU comparison (CartPole 1 and 4 seeds)
    python benchmarks/throughput.py --rows cartpole-1 --reference   # also time the PureJaxRL-style reference
    python benchmarks/throughput.py --compile-cache # compile time cold vs from the persistent cache
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jaxmod.parallel import MultiSeed, seed_keys
from jaxmod.ppo import PPOConfig, default_config, make_train


@dataclass(frozen=True)
class Row:
    name: str
    config: PPOConfig
    seeds: int
    anchor_compile_s: float | None = None  # PureJaxRL on an H100 (shared/anchors.md)
    anchor_run_s: float | None = None
    anchor_return: float | None = None


CARTPOLE = default_config("CartPole-v1")
BREAKOUT = default_config("Breakout-MinAtar")
HOPPER = default_config("brax/hopper", env_options=(("backend", "positional"),))

ROWS = {
    "cartpole-1": Row("CartPole-v1", CARTPOLE, 1, 6.5, 5.95, 494),
    "cartpole-256": Row("CartPole-v1", CARTPOLE, 256, 7.0, 8.70, 489),
    "cartpole-2048": Row("CartPole-v1", CARTPOLE, 2048, 7.3, 29.57, 490),
    "breakout-1": Row("Breakout-MinAtar", BREAKOUT, 1, 9.8, 16.28, 34.3),
    "breakout-16": Row("Breakout-MinAtar", BREAKOUT, 16, 13.3, 22.45, 32.6),
    "hopper-2048envs": Row("brax/hopper (positional)", HOPPER, 1, 20.4, 22.10, 1990),
    # CPU rows (anchors: PureJaxRL on the 2-core CPU: 1 seed 4.5 s compile / 3.49 s run; 4 seeds 6.4 / 11.5)
    "cpu-cartpole-1": Row("CartPole-v1", CARTPOLE, 1, 4.5, 3.49, 500),
    "cpu-cartpole-4": Row("CartPole-v1", CARTPOLE, 4, 6.4, 11.5, 477),
}
PRESETS = {
    "gpu": ["cartpole-1", "cartpole-256", "cartpole-2048", "breakout-1", "breakout-16", "hopper-2048envs"],
    "cpu": ["cpu-cartpole-1", "cpu-cartpole-4"],
}


def measure(row: Row, repeats: int) -> dict:
    """Compile once, run `repeats` times, report the fastest run and the last run's final return."""
    if row.seeds == 1:
        fn = jax.jit(make_train(row.config))
        args = (jax.random.PRNGKey(0),)
    else:
        ms = MultiSeed(row.config, row.seeds)
        keys = seed_keys(0, row.seeds)
        fn = ms._jit(jax.vmap(make_train(row.config)))  # noqa: SLF001 - same sharding as MultiSeed.train
        args = (keys,)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    runs = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    run_s = min(runs)
    final = np.asarray(out.metrics["episode_return"])[..., -1]
    steps = row.seeds * row.config.num_updates * row.config.batch_size
    return {
        "row": row.name, "seeds": row.seeds, "num_envs": row.config.num_envs,
        "total_steps_per_seed": row.config.num_updates * row.config.batch_size,
        "compile_s": round(compile_s, 2), "run_s": round(run_s, 3), "runs_s": [round(r, 3) for r in runs],
        "steps_per_s": steps / run_s, "final_return": float(final.mean()), "final_return_std": float(final.std()),
        "anchor_compile_s": row.anchor_compile_s, "anchor_run_s": row.anchor_run_s,
        "anchor_return": row.anchor_return,
    }


def measure_reference(seeds: int, repeats: int) -> dict:
    """The PureJaxRL-style reference (benchmarks/reference_ppo.py) on the same machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/throughput.py`
    from benchmarks.reference_ppo import make_reference_train

    train = make_reference_train()
    fn = jax.jit(jax.vmap(train)) if seeds > 1 else jax.jit(train)
    arg = seed_keys(0, seeds) if seeds > 1 else jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = fn.lower(arg).compile()
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(arg))
        runs.append(time.perf_counter() - t0)
    return {"row": "reference CartPole-v1", "seeds": seeds, "compile_s": round(compile_s, 2),
            "run_s": round(min(runs), 3), "runs_s": [round(r, 3) for r in runs],
            "final_return": float(np.asarray(out)[..., -1].mean())}


def compile_cache_check() -> dict:
    """Run the CLI's first chunk twice in fresh processes sharing a new cache dir; report both compiles."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, JAXMOD_CACHE_DIR=str(Path(tmp) / "cache"))
        code = ("import time, jax; from jaxmod.cli import _enable_compile_cache; _enable_compile_cache();"
                "from jaxmod.ppo import PPOConfig, make_train; t=time.perf_counter();"
                "jax.jit(make_train(PPOConfig())).lower(jax.random.PRNGKey(0)).compile();"
                "print(time.perf_counter()-t)")
        times = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times.append(float(proc.stdout.strip().splitlines()[-1]))
    return {"cold_compile_s": round(times[0], 2), "cached_compile_s": round(times[1], 2)}


def device_info() -> dict:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": getattr(d, "device_kind", str(d)), "count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "date": dt.date.today().isoformat()}


def print_table(info: dict, results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"jaxmod PPO throughput on {info['device']} x{info['count']} ({info['date']}, jax {info['jax']})")
    for col in ("task", "seeds", "compile s", "run s", "env steps/s", "final return", "PureJaxRL compile / run s",
                "run time vs PureJaxRL"):
        table.add_column(col, justify="right")
    for r in results:
        anchor = f"{r.get('anchor_compile_s')} / {r.get('anchor_run_s')}" if r.get("anchor_run_s") else "-"
        ratio = f"{r['run_s'] / r['anchor_run_s']:.2f}x" if r.get("anchor_run_s") else "-"
        sps = f"{r['steps_per_s'] / 1e6:.2f} M" if "steps_per_s" in r else "-"
        table.add_row(r["row"], str(r["seeds"]), f"{r['compile_s']:.1f}", f"{r['run_s']:.2f}", sps,
                      f"{r['final_return']:.1f}", anchor, ratio)
    Console(width=150).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="row set (default: gpu on GPUs, else cpu)")
    ap.add_argument("--rows", default=None, help=f"comma list of rows: {', '.join(ROWS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", action="store_true", help="also time the PureJaxRL-style reference (CartPole)")
    ap.add_argument("--compile-cache", action="store_true", help="measure cold vs cached compile in fresh processes")
    ap.add_argument("--json", default="benchmarks/results/throughput.json", help="where to write results")
    args = ap.parse_args()

    info = device_info()
    names = args.rows.split(",") if args.rows else PRESETS[args.preset or ("cpu" if info["platform"] == "cpu" else "gpu")]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"throughput.py: error: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    results = []
    for name in names:
        results.append(measure(ROWS[name], args.repeats))
        print(json.dumps(results[-1]), flush=True)
        if args.reference and ROWS[name].config.env_id == "CartPole-v1":
            results.append(measure_reference(ROWS[name].seeds, args.repeats))
            print(json.dumps(results[-1]), flush=True)
    extra = compile_cache_check() if args.compile_cache else None
    print_table(info, results)
    if extra:
        print(f"persistent compilation cache: cold compile {extra['cold_compile_s']} s, "
              f"repeated run {extra['cached_compile_s']} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": info, "results": results, "compile_cache": extra}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
