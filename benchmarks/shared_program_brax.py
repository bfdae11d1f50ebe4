"""One compiled program for every method on brax (`jaxmod.methods.shared_modulator`): on brax/hopper (spring, 8 envs),
the 8 methods' learners lower to the same program, which compiles once and runs 3 updates per method from one agent
with fixed advice (its recording's states, suggestions shifted by +0.5): finiteness and the pieces' counts per
method, wall and CPU seconds (a busy machine inflates the wall seconds only).

    python benchmarks/shared_program_brax.py   # ~170 CPU seconds: one brax compile
"""

from __future__ import annotations

import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.advice.modulation import ModulationConfig
from jaxmod.baselines.explain import critical_advice
from jaxmod.methods import MethodContext, shared_modulator
from jaxmod.ppo import PPOLearner, default_config
from jaxmod.ppo.acting import make_collector

GROUP = ("PPO", "A", "R", "RA", "StateMask-R", "RICE", "JSRL", "Random")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    t0, c0 = time.perf_counter(), cpu()
    env_id = "brax/hopper"
    cfg = default_config(env_id, num_envs=8, num_steps=10, num_minibatches=2, total_timesteps=8 * 10 * 3,
                         env_options=(("backend", "spring"),))
    agent = PPOLearner(cfg)
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    rec = jax.jit(make_collector(agent.env.replace_num_envs(4), agent.net, 200))(
        state.params, state.env_state.obs_rms, jax.random.PRNGKey(1))
    scores = jax.random.uniform(jax.random.PRNGKey(2), rec.reward.shape)
    advice = jax.jit(lambda r, s: critical_advice(r, s, 16))(rec, scores)
    advice = advice.replace(action=jnp.clip(advice.action + 0.5, -1, 1), weight=advice.valid.astype(jnp.float32),
                            reward=jnp.where(jnp.arange(16) % 2 == 0, 0.5, -0.5).astype(jnp.float32))
    print(f"setup {time.perf_counter() - t0:.0f} s wall {cpu() - c0:.0f} s cpu, valid slots {int(advice.valid.sum())}",
          flush=True)
    ctx = MethodContext(env_id, ModulationConfig(capacity=16, match_radius=1.5), guide_steps=50)
    rcfg = cfg.replace(lr=1e-4, anneal_lr=False)
    learners = {n: PPOLearner(rcfg, shared_modulator(GROUP, n, ctx)) for n in GROUP}
    starts = {n: lr.init(jax.random.PRNGKey(3), state.params) for n, lr in learners.items()}
    texts = {n: jax.jit(lambda s, a, lr=lr: lr.run(s, 3, a)).lower(starts[n], advice).as_text()
             for n, lr in learners.items()}
    print("one program:", all(t == texts["PPO"] for t in texts.values()), flush=True)
    t1, c1 = time.perf_counter(), cpu()
    compiled = jax.jit(lambda s, a, lr=learners["PPO"]: lr.run(s, 3, a)).lower(starts["PPO"], advice).compile()
    print(f"compile {time.perf_counter() - t1:.0f} s wall {cpu() - c1:.0f} s cpu", flush=True)
    for n in GROUP:
        t2, c2 = time.perf_counter(), cpu()
        st, m = jax.device_get(jax.block_until_ready(compiled(starts[n], advice)))
        finite = all(np.all(np.isfinite(np.asarray(x, float))) for x in jax.tree.leaves((st.params, m)))
        row = {"finite": bool(finite), "restarts": int(np.sum(m.get("restarts", 0))),
               **{k: float(np.mean(m.get(k, 0))) for k in ("critical_frac", "advice_executed", "guided_frac",
                                                            "rnd_bonus", "shaping")},
               "run_s": round(time.perf_counter() - t2, 2), "cpu_s": round(cpu() - c2, 2)}
        print(n, json.dumps(row), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s wall {cpu() - c0:.0f} s cpu")


if __name__ == "__main__":
    main()
