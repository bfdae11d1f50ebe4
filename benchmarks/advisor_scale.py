"""The advisor at scale (issue 23 item 3): many seeds refined with ULTRA-RA against a slow advisor, wall time and CPU
seconds next to continued PPO from the same agents, with and without the per-round advice budget.

The advisor is the scripted heuristic behind jaxmod's embedded HTTP server with a fixed latency per answer
(`--advisor-latency`, `DelayedBackend`), asked asynchronously (the default schedule; `--sync-advice` waits for every
round). Each refinement runs through `UltraRun.refine` (chunks, evaluation, collection, the advisor thread); its wall
time excludes compilation (programs are compiled before its clock starts), and its CPU seconds (user + sys of this
process: training, the advisor thread, the HTTP client; not the embedded server's child process) count from the end
of compilation.

    python benchmarks/advisor_scale.py                                   # 64 seeds, CartPole-v1, 0.5 s
    python benchmarks/advisor_scale.py --seeds 8 --refine-steps 20000 --budgets 32,0
    python benchmarks/advisor_scale.py --seeds 4 --pretrain-steps 1024 --refine-steps 2048 --chunks 2 --latency 0 \
        --budgets 2,0 --sync-advice --json /tmp/scale.json     # a toy run (tests/test_benchmark_smoke.py)

`--budgets`: comma list of `round_budget` values (0: no budget, every seed's episodes asked). Writes
benchmarks/results/advisor_scale.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxmod.reporting import seed_summary  # noqa: E402
from jaxmod.ultra.async_advice import AdvisorThread  # noqa: E402
from jaxmod.ultra.config import UltraConfig  # noqa: E402
from jaxmod.ultra.pipeline import UltraRun, _advisor_factory  # noqa: E402


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def refine_timed(run: UltraRun, variant: str, pre, advisor, marks: dict[str, float]) -> dict[str, object]:
    """One refinement: wall seconds (compilation excluded), CPU seconds after compilation, final IQM, and for an
    advised variant the advisor's counts."""
    marks.clear()
    result = run.refine(variant, pre, advisor)
    cpu = cpu_s() - marks["compiled"]
    out = {"variant": variant, "wall_s": result.wall_s, "compile_s": result.compile_s, "cpu_s": cpu,
           "final_iqm": seed_summary(result.eval_returns[-1]).iqm.point,
           "rounds_swapped": sum(bool(c.get("swapped_advice")) for c in result.chunk_metrics)}
    if variant != "PPO":
        st = run.advice_stats[-1]
        out.update({k: st.get(k) for k in ("questions", "valid", "reused", "round_candidates", "round_asked",
                                           "round_deduplicated", "round_unasked", "answers_shared",
                                           "stall_in_refinement_s", "initial_advice_s")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.5, help="seconds added to every advisor answer")
    ap.add_argument("--concurrency", type=int, default=16, help="advisor questions in flight at once")
    ap.add_argument("--budgets", default="32,0", help="comma list of round_budget values (0: no budget)")
    ap.add_argument("--pretrain-steps", type=int, default=30_000)
    ap.add_argument("--refine-steps", type=int, default=50_000)
    ap.add_argument("--chunks", type=int, default=None, help="refinement chunks: advice rounds (default: UltraConfig's)")
    ap.add_argument("--sync-advice", action="store_true",
                    help="wait for every advice round (reproducible counts; the default swaps rounds in when they "
                         "arrive)")
    ap.add_argument("--json", default="benchmarks/results/advisor_scale.json")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        if "compiled in" in msg or "runs through the program" in msg:
            marks["compiled"] = cpu_s()
        print(msg, flush=True)

    base = UltraConfig.flat(env_id=args.env, seeds=args.seeds, pretrain_steps=args.pretrain_steps,
                            refine_steps=args.refine_steps, variants=("PPO", "RA"), advisor="scripted",
                            advisor_latency_s=args.latency, advisor_concurrency=args.concurrency,
                            sync_advice=args.sync_advice, **({} if args.chunks is None else {"chunks": args.chunks}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = UltraRun(base, Path(tmp), log=log)
        base = run.s  # the advisor's protocol resolved
        pre = run.pretrain()
        with AdvisorThread(_advisor_factory(run.s, None)) as advisor:
            rows.append({"round_budget": None, **refine_timed(run, "PPO", pre, advisor, marks)})
            for budget in budgets:
                n = budget or args.seeds * base.advisor.episodes_per_round
                run.s = dataclasses.replace(base, advisor=dataclasses.replace(base.advisor, round_budget=n))
                rows.append({"round_budget": budget or "none", **refine_timed(run, "RA", pre, advisor, marks)})
                print(json.dumps(rows[-1]), flush=True)
    ppo = rows[0]
    for r in rows:
        r["wall_vs_ppo"] = r["wall_s"] / ppo["wall_s"]
        r["cpu_vs_ppo"] = r["cpu_s"] / ppo["cpu_s"]
    print(f"\n{args.env}, {args.seeds} seeds, advisor +{args.latency:g} s per answer, {jax.devices()[0].device_kind}")
    print("| method | round budget | wall s | vs PPO | CPU s | vs PPO | questions | episodes asked / recorded "
          "(deduplicated) | answers shared | rounds swapped in | final IQM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "-" if r["variant"] == "PPO" else \
            f"{r['round_asked']} / {r['round_candidates']} ({r['round_deduplicated']})"
        print(f"| {r['variant']} | {r['round_budget'] or '-'} | {r['wall_s']:.1f} | {r['wall_vs_ppo']:.2f}x "
              f"| {r['cpu_s']:.1f} | {r['cpu_vs_ppo']:.2f}x | {r.get('questions', '-')} | {eps} "
              f"| {r.get('answers_shared', '-')} | {r['rounds_swapped']} | {r['final_iqm']:.1f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
                               "cpus": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
                               "env": args.env, "seeds": args.seeds, "latency_s": args.latency,
                               "concurrency": args.concurrency, "pretrain_steps": args.pretrain_steps,
                               "refine_steps": args.refine_steps, "chunks": base.schedule.chunks,
                               "sync_advice": args.sync_advice,
                               "note": "measured on a shared 2-core CPU with other jobs running: wall times are noisy",
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
