"""JSRL (Uchendu et al., ICML 2023) as a baseline: a frozen guide policy rolls in the first h steps of every
episode, and h shrinks linearly from `guide_steps` to 0 over the refinement (`GuideRollIn`).

The guide is the refinement's initial policy (the sub-optimal agent), frozen at `PPOLearner.init`. Its steps
train the learner as its own (the learner's log-prob of the guide's action), as JSRL's off-policy learners use
guide data: with the guide's log-prob as the behaviour's (a true importance ratio) PPO's clip stops learning
from them once the learner drifts (Pong win rate 0.25 instead of 0.50, 6 seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.ppo.modulator import Modulator
from jaxmod.ppo.rollout import where_envs


@struct.dataclass
class GuideAux:
    guide: dict  # the frozen guide policy's params (the actor-critic's pytree)
    steps: jax.Array  # float32 scalar: the initial roll-in horizon h (traced: horizons share one program; 0: off)


@dataclass(frozen=True)
class GuideRollIn(Modulator):
    """Writes `traj.extras["guided"]` ([T, N] bool: the guide chose the action); metric `guided_frac`."""

    reports = ("guided_frac",)
    guide_steps: int = 1

    def init(self, key, spec, params):
        return GuideAux(guide=params, steps=jnp.float32(self.guide_steps))

    def prepare(self, aux, advice, plan, ctx, spec):
        frac = 1.0 - ctx.update_step.astype(jnp.float32) / spec.config.num_updates
        return aux, {**plan, "guide_horizon": jnp.ceil(aux.steps * frac).astype(jnp.int32)}

    def step(self, aux, plan, xs, s, spec):
        net = spec.net
        guide_action, _ = net.sample(aux.guide, net.policy_head(aux.guide, s.obs), jax.random.fold_in(s.key, 1))
        guided = s.time < plan["guide_horizon"]
        return s.replace(action=where_envs(guided, guide_action, s.action), extras={**s.extras, "guided": guided})

    def metrics(self, aux, plan, traj, spec):
        return {"guided_frac": traj.extras["guided"].mean()}
