"""Does advice help? From the same sub-optimal agents, refine with continued PPO and ULTRA-A / R / RA for
equal refinement steps, >= 5 seeds, with the scripted advisor, clean and with 30% corrupted answers.

    python benchmarks/ultra_gain.py --seeds 30            # CartPole-v1 and MountainCar-v0 (README table, ~8 min)
    python benchmarks/ultra_gain.py --seeds 30 --sync-advice --json benchmarks/results/ultra_gain_sync.json
    python benchmarks/ultra_gain.py --envs CartPole-v1 --seeds 8

Writes benchmarks/results/ultra_gain.json and prints a markdown table: final evaluation return per variant as
the IQM over seeds with its 95% bootstrap CI (`jaxmod.stats`), the paired gain over continued PPO from the same
agents (IQM difference, 95% CI, verdict), refinement wall time relative to continued PPO, and the advice overhead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from jaxmod.methods import METHODS
from jaxmod.reporting import gain_summary, seed_summary
from jaxmod.stats import MIN_RUNS, few_runs_note
from jaxmod.ultra.pipeline import UltraRun, UltraSettings

PRESETS = {
    # CartPole knobs: matching radius 0.5 (in units of the advice states' spread) from a small sweep; KL 0.05 from
    # a sweep with synchronous advice over 3 groups of 10 seeds (new agents and new corrupted answers per group),
    # RA final return clean / 30% noise: KL 0.3 486 / 372, KL 0.05 471 / 419 (continued PPO 373): a strong pull
    # toward a 30%-wrong book costs more than it gains. Every variant uses the same knobs.
    "CartPole-v1": dict(pretrain_steps=60_000, refine_steps=100_000, kl_coef=0.05, match_radius=0.5),
    # MountainCar's preset normalises observations (its velocity is +-0.07; on raw inputs every method stays at -200)
    "MountainCar-v0": dict(pretrain_steps=100_000, refine_steps=200_000, restart_prob=0.5, episodes_per_round=4,
                           match_radius=0.5),
}


def markdown(rows: list[dict]) -> str:
    """The printed table: final return IQM [95% CI] over seeds, paired gain over continued PPO with its verdict;
    below `MIN_RUNS` seeds a note says the intervals mean little (and verdicts read "too few seeds")."""
    note = few_runs_note(min((r["seeds"] for r in rows if "seeds" in r), default=MIN_RUNS))  # rows of older runs: none
    lines = ["", "Final evaluation return: IQM [95% bootstrap CI] over seeds; gain: IQM difference to continued PPO "
             "from the same agents (paired bootstrap)." + (f" {note}." if note else ""), "",
             "| env | advisor noise | method | start | final IQM [95% CI] | gain vs PPO | wall vs PPO | advice overhead |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["gain_vs_ppo"]
        gain = "-" if g is None else f"{g['iqm']:+.1f} [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}] {g['verdict']}"
        lines.append(f"| {r['env']} | {r['noise']:.0%} | {METHODS[r['variant']].label} | {r['start']:.1f} | "
                     f"{r['final_cell']} | {gain} | {r['wall_vs_ppo']:.2f}x | {r['advice_overhead_frac']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--envs", default="CartPole-v1,MountainCar-v0",
                    help=f"comma list of env ids (presets for {', '.join(PRESETS)}; others run UltraSettings' "
                         "defaults)")
    ap.add_argument("--seeds", type=int, default=5,
                    help=f"seeds per env and noise (the same agents for every method); below {MIN_RUNS} the "
                         "intervals are not meaningful")
    ap.add_argument("--noise", default="0,0.3", help="comma list of advisor noise fractions")
    ap.add_argument("--kl-filter", action="store_true", help="KL only where the advised step's advantage > 0")
    ap.add_argument("--verify-samples", type=int, default=4, help="advice verification (0: off, trust every answer)")
    ap.add_argument("--consensus-radius", type=float, default=2.0, help="advice consensus (0: off)")
    ap.add_argument("--sync-advice", action="store_true",
                    help="wait for every advice round (reproducible; the default swaps rounds in when they arrive)")
    ap.add_argument("--json", default="benchmarks/results/ultra_gain.json", help="where the rows are written")
    args = ap.parse_args()
    rows = []
    for env_id in args.envs.split(","):
        for noise in (float(x) for x in args.noise.split(",")):
            settings = UltraSettings(env_id=env_id, seeds=args.seeds, noise=noise, kl_filter=args.kl_filter,
                                     verify_samples=args.verify_samples,
                                     consensus_radius=args.consensus_radius, sync_advice=args.sync_advice,
                                     **PRESETS.get(env_id, {}))
            with tempfile.TemporaryDirectory() as tmp:
                run = UltraRun(settings, Path(tmp), log=print)
                results = run.run()
            ppo_wall = results["PPO"].wall_s
            for name, r in results.items():
                final = np.array(r.eval_returns[-1])
                summary = seed_summary(final)
                overhead = next((a["advice_overhead_frac"] for a in run.advice_stats if a["variant"] == name), 0.0)
                refuted = [c.get("advice_refuted", 0.0) for c in r.chunk_metrics]
                outvoted = [c.get("advice_outvoted", 0.0) for c in r.chunk_metrics]
                rows.append({"env": env_id, "noise": noise, "kl_filter": args.kl_filter,
                             "verify_samples": args.verify_samples, "variant": name,
                             "start": float(np.mean(r.eval_returns[0])), "advice_refuted_mean": float(np.mean(refuted)),
                             "advice_outvoted_mean": float(np.mean(outvoted)), "consensus_radius": args.consensus_radius,
                             "sync_advice": args.sync_advice, "seeds": args.seeds,
                             "final_per_seed": [round(float(x), 2) for x in final],
                             "final_mean": float(final.mean()), "final_std": float(final.std()),
                             "final_iqm": summary.as_dict()["iqm"], "final_ci95": summary.as_dict()["ci95"],
                             "final_cell": summary.iqm_cell(),
                             "gain_vs_ppo": None if name == "PPO" else gain_summary(final, results["PPO"].eval_returns[-1]),
                             "wall_s": r.wall_s, "wall_vs_ppo": r.wall_s / ppo_wall, "advice_overhead_frac": overhead})
                print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
