"""Learner-level regression data: every method's modulated update on fixed advice, bit for bit.

For CartPole-v1 and jaxmod/Pong-OnePoint: a short plain-PPO run gives the agent; its recording, scored at
random, gives fixed advice (suggested actions shifted to differ from the agent's, implicit rewards +-0.5);
each method's learner runs 3 updates from the agent with that advice. Recorded: per method, the sum and the
sum of squares of the final parameters and every metric of the last update, as float64 of the float32 values.
`python tests/regression_learner.py` records `tests/data/regression_learner.json` (it was recorded with the
code before the modulator redesign); `tests/test_regression.py` compares."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ENVS = ("CartPole-v1", "jaxmod/Pong-OnePoint")
METHODS = ("PPO", "A", "R", "RA", "restart", "StateMask-R", "RICE", "JSRL", "Random")
DATA = Path(__file__).parent / "data" / "regression_learner.json"
UPDATES = 3


def digest(params, metrics) -> dict:
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    out = {"param_sum": float(sum(x.sum() for x in leaves)), "param_sq": float(sum((x * x).sum() for x in leaves))}
    out.update({k: float(np.asarray(v)[-1]) for k, v in sorted(metrics.items())})
    return out


def main() -> int:
    from jaxmod.advice.modulation import ModulationConfig
    from jaxmod.baselines.explain import critical_advice
    from jaxmod.baselines.methods import baseline_modulation
    from jaxmod.ppo import PPOLearner, default_config
    from jaxmod.ultra.collect import make_collector

    data = {}
    for env_id in ENVS:
        cfg = default_config(env_id, num_envs=8, num_steps=32, total_timesteps=8 * 32 * 4)
        agent = PPOLearner(cfg)
        state, _ = jax.jit(lambda k, agent=agent: agent.run(agent.init(k), agent.config.num_updates))(jax.random.PRNGKey(0))
        rec = make_collector(agent.env.replace_num_envs(8), agent.net, 128)(state.params, state.env_state.obs_rms,
                                                                            jax.random.PRNGKey(1))
        scores = jax.random.uniform(jax.random.PRNGKey(2), rec.reward.shape)
        advice = critical_advice(rec, scores, 16)
        n = agent.env.action_space.num_actions
        k = advice.valid.shape[0]
        advice = advice.replace(action=(advice.action + 1) % n,
                                reward=jnp.where(jnp.arange(k) % 2 == 0, 0.5, -0.5).astype(jnp.float32),
                                weight=advice.valid.astype(jnp.float32))
        rcfg = cfg.replace(total_timesteps=cfg.batch_size * 10, lr=1e-4, anneal_lr=False)
        data[env_id] = {}
        for method in METHODS:
            if method == "PPO":
                mod = None
            elif method in ("A", "R", "RA", "restart"):
                mod = ModulationConfig.variant(method, capacity=16, kl_coef=1.0, match_radius=0.5,
                                               verify_samples=1, verify_memory=64, consensus_radius=2.0)
            else:
                mod = baseline_modulation(method, env_id, 16, guide_steps=10)
            learner = PPOLearner(rcfg, mod)

            def go(key, params, learner=learner, mod=mod, advice=advice):
                st = learner.init(key, params)
                return learner.run(st, UPDATES, advice if mod is not None else None)

            st, metrics = jax.jit(go)(jax.random.PRNGKey(3), state.params)
            data[env_id][method] = digest(st.params, metrics)
            print(env_id, method, data[env_id][method]["param_sum"], flush=True)
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(DATA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
