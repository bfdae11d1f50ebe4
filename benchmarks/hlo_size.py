"""Instructions in the optimised HLO of one refinement update, continued PPO vs ULTRA-RA: a deterministic proxy for
what modulation adds to the compiled program (wall times on a shared VM vary by +-15% run to run).

    python benchmarks/hlo_size.py                    # MountainCar-v0, matching on
    python benchmarks/hlo_size.py --env CartPole-v1
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jaxmod.ultra.pipeline import UltraRun, UltraSettings  # noqa: E402


def count(env_id: str) -> dict[str, int]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = UltraRun(UltraSettings(env_id=env_id, seeds=2, pretrain_steps=4096, refine_steps=8192,
                                     match_radius=0.5, restart_prob=0.5), Path(tmp))
        pre = run.pretrain()
        advice = jax.tree.map(lambda x: x[0], run.explain("random", pre))
        for variant in ("PPO", "RA"):
            learner, state = run.refinement_start(variant, pre)
            state = jax.tree.map(lambda x: x[0], state)
            text = jax.jit(lambda st, adv, ln=learner: ln.run(st, 1, adv)).lower(state, advice).compile().as_text()
            out[variant] = sum(1 for line in text.splitlines() if re.match(r"\s+\S+ = ", line))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="MountainCar-v0")
    args = ap.parse_args()
    print(json.dumps({"env": args.env, "jax": jax.__version__, **count(args.env)}))


if __name__ == "__main__":
    main()
