"""A PureJaxRL-style reference PPO (ppo.py's algorithm, rewritten for gymnax 1.0) to time jaxmod against
on the same machine. PureJaxRL itself breaks on gymnax >= 1.0 (six-value `step`), and this keeps its
structure: value computed in the rollout, reverse-scan GAE, nested epoch/minibatch scans, done =
terminated | truncated (no bootstrap), gymnax's own auto-reset.

Usage: python benchmarks/reference_ppo.py [--seeds N] [--total-steps 5e5]
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmod.ppo.networks import orthogonal  # same initialiser, immune to the CPU vmap deadlock


class _MLP(nn.Module):
    out: int
    scale: float

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(64, kernel_init=orthogonal(np.sqrt(2)))(x))
        x = jnp.tanh(nn.Dense(64, kernel_init=orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.out, kernel_init=orthogonal(self.scale))(x)


def make_reference_train(env_id: str = "CartPole-v1", num_envs: int = 4, num_steps: int = 128,
                         total_timesteps: int = 500_000, epochs: int = 4, minibatches: int = 4, lr: float = 2.5e-4):
    env, env_params = gymnax.make(env_id)
    n_act = env.action_space(env_params).n
    num_updates = total_timesteps // num_steps // num_envs
    mb_size = num_envs * num_steps // minibatches
    actor, critic = _MLP(n_act, 0.01), _MLP(1, 1.0)

    def schedule(count):
        return lr * (1.0 - (count // (minibatches * epochs)) / num_updates)

    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(schedule, eps=1e-5))

    def apply(params, obs):
        return actor.apply(params["a"], obs), critic.apply(params["c"], obs)[..., 0]

    def train(rng):
        rng, ka, kc, kr = jax.random.split(rng, 4)
        dummy = jnp.zeros(env.observation_space(env_params).shape)
        params = {"a": actor.init(ka, dummy), "c": critic.init(kc, dummy)}
        opt = tx.init(params)
        obs, est = jax.vmap(env.reset, (0, None))(jax.random.split(kr, num_envs), env_params)
        ep_ret = jnp.zeros(num_envs)
        last_ret = jnp.zeros(num_envs)

        def update(carry, _):
            params, opt, est, obs, ep_ret, last_ret, rng = carry

            def step(c, _):
                est, obs, ep_ret, last_ret, rng = c
                rng, k1, k2 = jax.random.split(rng, 3)
                logits, v = apply(params, obs)
                a = jax.random.categorical(k1, logits)
                logp = jnp.take_along_axis(jax.nn.log_softmax(logits), a[:, None], 1)[:, 0]
                obs2, est, r, term, trunc, _ = jax.vmap(env.step, (0, 0, 0, None))(
                    jax.random.split(k2, num_envs), est, a, env_params)
                done = term | trunc
                ep_ret = ep_ret + r
                last_ret = jnp.where(done, ep_ret, last_ret)
                ep_ret = jnp.where(done, 0.0, ep_ret)
                return (est, obs2, ep_ret, last_ret, rng), (obs, a, logp, v, r, done)

            (est, obs, ep_ret, last_ret, rng), tr = jax.lax.scan(step, (est, obs, ep_ret, last_ret, rng), None, num_steps)
            t_obs, t_a, t_logp, t_v, t_r, t_d = tr
            _, last_v = apply(params, obs)

            def gae_step(c, x):
                gae, nv = c
                d, v, r = x
                delta = r + 0.99 * nv * (1 - d) - v
                gae = delta + 0.99 * 0.95 * (1 - d) * gae
                return (gae, v), gae

            _, adv = jax.lax.scan(gae_step, (jnp.zeros_like(last_v), last_v), (t_d, t_v, t_r), reverse=True)
            tgt = adv + t_v

            def epoch(c, _):
                params, opt, rng = c
                rng, kp = jax.random.split(rng)
                perm = jax.random.permutation(kp, num_envs * num_steps)
                data = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[perm].reshape((minibatches, mb_size) + x.shape[2:]),
                                    (t_obs, t_a, t_logp, t_v, adv, tgt))

                def mb_step(c, mb):
                    params, opt = c
                    o, a, lp0, v0, ad, tg = mb

                    def loss(p):
                        logits, v = apply(p, o)
                        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), a[:, None], 1)[:, 0]
                        vc = v0 + jnp.clip(v - v0, -0.2, 0.2)
                        vl = 0.5 * jnp.maximum((v - tg) ** 2, (vc - tg) ** 2).mean()
                        ratio = jnp.exp(lp - lp0)
                        an = (ad - ad.mean()) / (ad.std() + 1e-8)
                        al = -jnp.minimum(ratio * an, jnp.clip(ratio, 0.8, 1.2) * an).mean()
                        ent = -(jax.nn.softmax(logits) * jax.nn.log_softmax(logits)).sum(-1).mean()
                        return al + 0.5 * vl - 0.01 * ent

                    g = jax.grad(loss)(params)
                    u, opt = tx.update(g, opt, params)
                    return (optax.apply_updates(params, u), opt), None

                (params, opt), _ = jax.lax.scan(mb_step, (params, opt), data)
                return (params, opt, rng), None

            (params, opt, rng), _ = jax.lax.scan(epoch, (params, opt, rng), None, epochs)
            return (params, opt, est, obs, ep_ret, last_ret, rng), last_ret.mean()

        carry, returns = jax.lax.scan(update, (params, opt, est, obs, ep_ret, last_ret, rng), None, num_updates)
        return returns

    return train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--total-steps", type=float, default=5e5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    train = make_reference_train(total_timesteps=int(args.total_steps))
    fn = jax.jit(jax.vmap(train)) if args.seeds > 1 else jax.jit(train)
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds) if args.seeds > 1 else jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = fn.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys))
        runs.append(time.perf_counter() - t0)
    print(json.dumps({"impl": "reference", "seeds": args.seeds, "compile_s": round(compile_s, 2),
                      "run_s": [round(r, 2) for r in runs], "final_return": float(np.asarray(out)[..., -1].mean())}))


if __name__ == "__main__":
    main()
