"""The fixed method set whose outputs the architecture must keep: every refinement method on CartPole-v1 and
jaxmod/Pong-OnePoint, 2 seeds, synchronous advice from the embedded scripted advisor, tiny budgets.

`python tests/regression_methods.py [ENV ...]` records `tests/data/regression_methods.json` (the named envs only,
keeping the others' entries; default: all of `ENVS`); `tests/test_regression.py` re-runs the same set through the
product's own path (`UltraRun`) and compares."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

METHODS = ("PPO", "A", "R", "RA", "StateMask-R", "RICE", "JSRL", "Random")
ENVS = {
    "CartPole-v1": dict(pretrain_steps=8_192, refine_steps=4_096),
    "jaxmod/Pong-OnePoint": dict(pretrain_steps=16_384, refine_steps=8_192),
}
DATA = Path(__file__).parent / "data" / "regression_methods.json"


def settings(env_id: str):
    from jaxmod.ultra.config import UltraConfig

    # the knobs recorded before the env families set them (match_radius, trust_prior): the learner's arithmetic is
    # what this set keeps, not the defaults
    return UltraConfig.flat(env_id=env_id, seeds=2, seed=0, chunks=2, variants=METHODS, advisor="scripted",
                            match_radius=0.0, trust_prior=0.0,
                            sync_advice=True, episodes_per_round=2, collect_envs=4, collect_steps=128, eval_envs=4,
                            eval_steps=200, mask_steps=2_048, **ENVS[env_id])


def run_set(env_id: str) -> dict:
    """Per method: evaluation returns per chunk and seed, and the modulation rows of every chunk."""
    from jaxmod.ultra.pipeline import UltraRun

    with tempfile.TemporaryDirectory() as out:
        results = UltraRun(settings(env_id), Path(out)).run()
    rows = {}
    for name, r in results.items():
        chunks = [{k: v for k, v in row.items() if k not in ("advisor_latency_s",)} for row in r.chunk_metrics]
        rows[name] = {"steps": r.steps, "eval_returns": r.eval_returns, "chunks": chunks}
    return rows


def main(argv: list[str]) -> int:
    envs = argv or list(ENVS)
    unknown = [e for e in envs if e not in ENVS]
    if unknown:
        print(f"unknown env(s) {', '.join(unknown)}: choose from {', '.join(ENVS)}", file=sys.stderr)
        return 2
    data = json.loads(DATA.read_text(encoding="utf-8")) if DATA.exists() else {}
    data.update({env: run_set(env) for env in envs})
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(DATA)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
