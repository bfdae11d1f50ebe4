"""What ULTRA's modulation costs in wall time, next to continued PPO for the same refinement steps.

1. device: the compiled refinement alone (fixed advice, no advisor): ULTRA-RA with restarts, matching,
   overrides, shaping, KL, verification and consensus vs continued PPO, best of `--repeats` runs;
2. end to end: the refinement loop with the scripted advisor behind a fixed latency per answer
   (`DelayedBackend`, `jaxmod ultra --advisor-latency`; 64 questions in flight, as a vLLM server takes
   them): wall time vs continued PPO (the median of paired runs: each RA run against the PPO run just before
   it), and the share of wall time the main thread spent on advice instead of training (splitting episodes
   and handing them over, swapping advice in), median of `--repeats` runs.

    python benchmarks/ultra_overhead.py                      # CartPole-v1 and MountainCar-v0, 10 seeds
    python benchmarks/ultra_overhead.py --latency 0,0.5,2 --repeats 5 --concurrency 16
    python benchmarks/ultra_overhead.py --advisor-priority idle --json benchmarks/results/ultra_overhead_idle.json
    python benchmarks/ultra_overhead.py --envs CartPole-v1 --seeds 2 --pretrain-steps 1024 --refine-steps 2048 \
        --chunks 2 --latency 0 --repeats 1 --json /tmp/overhead.json     # a toy run (tests/test_benchmark_smoke.py)

Writes benchmarks/results/ultra_overhead.json and prints a markdown table. Compilation is excluded
(every program is compiled before its clock starts).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ultra_gain import PRESETS  # noqa: E402
from jaxmod.ultra.async_advice import AdvisorThread  # noqa: E402
from jaxmod.ultra.pipeline import UltraRun, UltraSettings, _advisor_factory  # noqa: E402


def _run_all(learner, state, advice):
    """The whole refinement as one program (continued PPO ignores the advice)."""
    return learner.run(state, learner.config.num_updates, advice)


def device_cost(run: UltraRun, pre, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds of the whole compiled refinement, PPO vs RA, on the same advice; the two
    programs take turns, so a drift in the machine's speed (a shared VM) hits both alike."""
    advice = run.explain("random", pre)  # fixed advice: the compiled work does not depend on its values
    programs = {}
    for variant in ("PPO", "RA"):
        learner, state = run.refinement_start(variant, pre)
        fn = jax.jit(jax.vmap(partial(_run_all, learner)))
        programs[variant] = (fn.lower(state, advice).compile(), state, advice)
    times: dict[str, list[float]] = {variant: [] for variant in programs}
    for _ in range(repeats):
        for variant, (compiled, state, arg) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, arg))
            times[variant].append(time.perf_counter() - t0)
    return {variant: min(ts) for variant, ts in times.items()}


def end_to_end(run: UltraRun, pre, repeats: int) -> dict[str, object]:
    """Median wall seconds of PPO and RA through `refine` (chunks, evaluation, collection, advisor thread), the
    median of the paired RA / PPO ratios, RA's stall share, advice rounds swapped in, and the advisor's mean
    latency per answer."""
    walls: dict[str, list[float]] = {"PPO": [], "RA": []}
    stall, swaps, latency = [], [], []
    with AdvisorThread(_advisor_factory(run.s, None), run.s.advisor.priority == "idle") as advisor:
        for _ in range(repeats):
            for variant in walls:
                result = run.refine(variant, pre, advisor)
                walls[variant].append(result.wall_s)
            st = run.advice_stats[-1]
            stall.append(st["stall_in_refinement_s"] / max(result.wall_s, 1e-9))  # waits inside the loop
            swaps.append(sum(bool(c["swapped_advice"]) for c in result.chunk_metrics))
            latency.append(st["latency_s"] / max(1, st["questions"]))
    ppo, ra = float(np.median(walls["PPO"])), float(np.median(walls["RA"]))
    paired = np.array(walls["RA"]) / np.array(walls["PPO"])  # each RA run against the PPO run just before it
    return {"ppo_s": ppo, "ra_s": ra, "wall_vs_ppo": float(np.median(paired)), "wall_vs_ppo_runs": paired.tolist(),
            "stall_frac": float(np.median(stall)),
            "stall_frac_max": float(np.max(stall)), "rounds_swapped": float(np.median(swaps)),
            "answer_latency_s": float(np.mean(latency))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="CartPole-v1,MountainCar-v0")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--latency", default="0,0.5", help="comma list of added seconds per advisor answer")
    ap.add_argument("--concurrency", type=int, default=64, help="advisor questions in flight at once")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--advisor-priority", choices=("normal", "idle"), default="normal",
                    help="CPU priority of the advisor threads (idle: Linux SCHED_IDLE)")
    ap.add_argument("--agents-dir", default=None, help="reuse pre-trained agents saved here")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="env steps of pretraining per seed (default: the env's preset in benchmarks/ultra_gain.py)")
    ap.add_argument("--refine-steps", type=int, default=None,
                    help="env steps of refinement per seed and method (default: the env's preset)")
    ap.add_argument("--chunks", type=int, default=None, help="refinement chunks: advice rounds (default: UltraConfig's)")
    ap.add_argument("--json", default="benchmarks/results/ultra_overhead.json")
    args = ap.parse_args()
    rows = []
    sizes = {k: v for k, v in (("pretrain_steps", args.pretrain_steps), ("refine_steps", args.refine_steps),
                               ("chunks", args.chunks)) if v is not None}
    for env_id in args.envs.split(","):
        base = {**dict(env_id=env_id, seeds=args.seeds, agents_dir=args.agents_dir), **PRESETS.get(env_id, {}), **sizes}
        with tempfile.TemporaryDirectory() as tmp:
            run = UltraRun(UltraSettings(**base), Path(tmp))
            pre = run.pretrain()
            dev = device_cost(run, pre, args.repeats)
            row = {"env": env_id, "seeds": args.seeds, "pretrain_steps": run.s.pretrain_steps,
                   "refine_steps": run.s.refine_steps, "device_ppo_s": dev["PPO"], "device_ra_s": dev["RA"],
                   "device_ra_vs_ppo": dev["RA"] / dev["PPO"], "end_to_end": {}}
            for latency in (float(x) for x in args.latency.split(",")):
                # a run of its own per latency (the pipeline resolves its settings, e.g. the advice protocol, when
                # it is built), refining the same pre-trained agents
                timed = UltraRun(UltraSettings(**base, advisor_latency_s=latency, advisor_concurrency=args.concurrency,
                                               advisor_priority=args.advisor_priority), Path(tmp))
                row["end_to_end"][f"{latency:g}"] = end_to_end(timed, pre, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{jax.devices()[0].device_kind}, {platform.python_version()}, jax {jax.__version__}")
    print("| env | device: PPO s | RA s | RA vs PPO | advisor latency per answer | end to end: RA vs PPO "
          "| stall share (median / max) | advice rounds swapped in |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for latency, e in r["end_to_end"].items():
            print(f"| {r['env']} | {r['device_ppo_s']:.2f} | {r['device_ra_s']:.2f} | {r['device_ra_vs_ppo']:.2f}x "
                  f"| +{latency} s ({e['answer_latency_s']:.2f} s) | {e['wall_vs_ppo']:.2f}x "
                  f"| {e['stall_frac']:.1%} / {e['stall_frac_max']:.1%} | {e['rounds_swapped']:.0f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                               "advisor_priority": args.advisor_priority, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
