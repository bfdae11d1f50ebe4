"""ULTRA-A on the device: execute the advisor's suggested action at critical steps (`ActionOverride`).

At a critical step (`traj.extras["slot"]` >= 0, from `CriticalStates`) the slot's suggested action runs instead
of the policy's sample, except on verification's control steps (`Verification` leaves a random share of them to
the policy). The rollout stores the log-probability of the executed action under the policy, so the PPO ratio
stays defined; but an imposed action is no sample of the policy (it has no behaviour probability to correct
with), so it gets no policy gradient: `masks["policy"]` excludes it, and it trains the critic and the KL term
(`KLTarget`) instead. Paper section 4 (ULTRA-A); excluding imposed actions from the surrogate is jaxmod's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.restarts import executes_suggestion, unpack_step_codes
from jaxmod.advice.slots import take_slot
from jaxmod.ppo.modulator import Modulator
from jaxmod.ppo.rollout import where_envs


@struct.dataclass
class OverrideAux:
    on: jax.Array  # bool scalar: whether suggestions are executed (traced, so methods with and without share a program)


@dataclass(frozen=True)
class ActionOverride(Modulator):
    """Writes `traj.extras["forced"]` ([T, N] bool: the action was imposed) and `masks["policy"]` (the others);
    metric `advice_executed`: the suggestions it executed in the rollout (int32). `switch` (None: always on) makes
    the override a traced on/off value (`OverrideAux`), so that methods with and without ULTRA-A share one compiled
    program (`jaxmod.methods.shared_modulator`)."""

    switch: bool | None = None

    def init(self, key, spec, params):
        return () if self.switch is None else OverrideAux(on=jnp.bool_(self.switch))

    def _executes(self, aux, slot, control):
        executes = executes_suggestion(slot, control)
        return executes if self.switch is None else executes & aux.on

    def step(self, aux, plan, xs, s, spec):
        slot = s.extras["slot"]
        _, _, control = unpack_step_codes(xs["critical_codes"])
        executes = self._executes(aux, slot, s.extras.get("control", control))  # matched steps: CriticalStates
        action = where_envs(executes, take_slot(plan["advice"].action, slot), s.action)
        return s.replace(action=action)

    def finish(self, aux, plan, traj, spec):
        forced = self._executes(aux, traj.extras["slot"], traj.extras.get("control", plan["control"]))
        return aux, traj.replace(extras={**traj.extras, "forced": forced})

    def weigh(self, aux, plan, traj, advantage, values, next_values, spec):
        return aux, {"policy": (~traj.extras["forced"]).astype(jnp.float32)}, {}

    def metrics(self, aux, plan, traj, spec):
        return {"advice_executed": traj.extras["forced"].sum().astype(jnp.int32)}
