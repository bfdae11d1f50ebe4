"""Learner-level regression data: every method's modulated update on fixed advice, bit for bit.

For CartPole-v1 and jaxmod/Pong-OnePoint: a short plain-PPO run gives the agent; its recording, scored at
random, gives fixed advice (suggested actions shifted to differ from the agent's, implicit rewards +-0.5);
each method's learner runs 3 updates from the agent with that advice. Recorded: per method, the sum and the
sum of squares of the final parameters and every metric of the last update, as float64 of the float32 values.
`tests/data/regression_learner.json` was recorded with the code before the modulator redesign (commit 0e8a851,
whose version of this script built the same set with that code's API); `tests/test_regression.py` compares."""

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


def agent_and_advice(env_id: str):
    """The plain-PPO agent (train state) and the fixed advice of `env_id`'s regression set."""
    from jaxmod.baselines.explain import critical_advice
    from jaxmod.ppo import PPOLearner, default_config
    from jaxmod.ppo.acting import make_collector

    cfg = default_config(env_id, num_envs=8, num_steps=32, total_timesteps=8 * 32 * 4)
    agent = PPOLearner(cfg)
    state, _ = jax.jit(lambda k: agent.run(agent.init(k), cfg.num_updates))(jax.random.PRNGKey(0))
    rec = make_collector(agent.env.replace_num_envs(8), agent.net, 128)(state.params, state.env_state.obs_rms,
                                                                        jax.random.PRNGKey(1))
    scores = jax.random.uniform(jax.random.PRNGKey(2), rec.reward.shape)
    advice = critical_advice(rec, scores, 16)
    n = agent.env.action_space.num_actions
    k = advice.valid.shape[0]
    advice = advice.replace(action=(advice.action + 1) % n,
                            reward=jnp.where(jnp.arange(k) % 2 == 0, 0.5, -0.5).astype(jnp.float32),
                            weight=advice.valid.astype(jnp.float32))
    return cfg, state, advice


def modulator(env_id: str, name: str):
    """`name`'s modulator for the regression set, built through `jaxmod.methods` as the pipeline builds it."""
    from jaxmod.advice.modulation import ModulationConfig
    from jaxmod.methods import MethodContext, method

    ultra = ModulationConfig(capacity=16, kl_coef=1.0, match_radius=0.5, verify_samples=1, verify_memory=64,
                             consensus_radius=2.0, trust_prior=0.0)
    return method(name).build(MethodContext(env_id, ultra, guide_steps=10))


def run_method(env_id: str, name: str, setup=None, extra=None) -> dict:
    """The digest of `name`'s 3 refinement updates from the agent with the fixed advice (`extra`: a modulator
    chained after the method's)."""
    from jaxmod.ppo import PPOLearner
    from jaxmod.ppo.modulator import chain

    cfg, state, advice = setup or agent_and_advice(env_id)
    rcfg = cfg.replace(total_timesteps=cfg.batch_size * 10, lr=1e-4, anneal_lr=False)
    mod = modulator(env_id, name)
    learner = PPOLearner(rcfg, mod if extra is None else chain(mod, extra))

    def go(key, params):
        return learner.run(learner.init(key, params), UPDATES, advice)

    st, metrics = jax.jit(go)(jax.random.PRNGKey(3), state.params)
    return digest(st.params, metrics)


def main() -> int:
    data = {}
    for env_id in ENVS:
        setup = agent_and_advice(env_id)
        data[env_id] = {name: run_method(env_id, name, setup) for name in METHODS}
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(DATA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
