"""Would an outcome-level check see advice's harm, and in time? Per chunk and seed, a method's evaluation return
minus fine-tuning's, from one `jaxmod ultra` run (every method refines the same agents and is evaluated on the same
keys, so the difference is paired), with the paired verdict over seeds per chunk (`jaxmod.stats`: the 95% bootstrap
interval of the IQM difference, better or worse where it excludes 0).

    python benchmarks/outcome_gap.py runs/cp-ra                 # RA against fine-tuning, chunk by chunk
    python benchmarks/outcome_gap.py runs/cp-ra --method A

The question it answers (docs/results.md, 2026-12-03): per-suggestion verification cannot see advice whose value
shows only when the policy follows it at many states (MountainCar-v0), so the next design judges the advisor by
the advised learner's evaluation against fine-tuning's; this prints what such a check would have seen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/outcome_gap.py` from anywhere
from jaxmod.stats import iqm_difference_ci, verdict  # noqa: E402


def chunk_gaps(summary: dict, method: str) -> list[dict]:
    """Per evaluation (the start, then each chunk): the method's per-seed return minus fine-tuning's ([seeds]
    float), their mean, the paired IQM difference's 95% interval and its verdict. Raises KeyError when the run has
    no such method or no fine-tuning."""
    ppo = np.asarray(summary["PPO"]["eval_returns"], float)  # [chunks + 1, seeds]
    other = np.asarray(summary[method]["eval_returns"], float)
    rows = []
    for c, (a, b) in enumerate(zip(other, ppo, strict=True)):
        gap = iqm_difference_ci(a, b)
        rows.append({"chunk": c, "diffs": (a - b).tolist(), "mean": float(np.mean(a - b)), "gap": gap.as_dict(),
                     "verdict": verdict(gap)})
    return rows


def _refuse(message: str) -> None:
    print(f"outcome_gap.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("run", help="a finished `jaxmod ultra --out DIR` run folder (its ultra.json)")
    ap.add_argument("--method", default="RA", help="the method to compare with fine-tuning (default: %(default)s)")
    args = ap.parse_args()
    path = Path(args.run) / "ultra.json"
    if not path.is_file():
        _refuse(f"no ultra.json in {args.run}: pass the folder of a finished `jaxmod ultra --out DIR` run")
    summary = json.loads(path.read_text())
    if args.method not in summary or "PPO" not in summary:
        methods = ", ".join(k for k, v in summary.items() if isinstance(v, dict) and "eval_returns" in v)
        _refuse(f"{args.run} holds methods {methods}: --method must be one of them, and fine-tuning (PPO) must "
                "have run")
    print(f"{args.method} minus fine-tuning, per evaluation (0: the agents), paired over seeds")
    for row in chunk_gaps(summary, args.method):
        g = row["gap"]
        print(f"{row['chunk']:3d}  mean {row['mean']:+9.1f}  IQM {g['point']:+9.1f} [{g['low']:+.1f}, {g['high']:+.1f}] "
              f"{row['verdict']:6s}  per seed " + " ".join(f"{d:+.0f}" for d in row["diffs"]))


if __name__ == "__main__":
    main()
