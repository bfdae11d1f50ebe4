"""Your own environment in jaxmod: a small new env, its describer, PPO with `jaxmod.make_train`, and ULTRA on it.

The env, `Thermostat`, is written against gymnax's API (`reset(key, params)`, `step(key, state, action, params)`,
`default_params`, `action_space`, `observation_space`): a room heated in 1-minute steps towards a 21 degC setpoint
while heat leaks to the outdoors. Any such object (or a brax `Env`) works the same way:

    jaxmod.register_env("Thermostat-v0", Thermostat())               # the id configs, the CLI and ULTRA name
    jaxmod.register_describer("Thermostat-v0", thermostat_describer())  # what prompts call each number

Without a describer the env still runs; its prompts then show x0, x1, ... and a warning says how to write one.
Importing this file registers both, so the command line can name the env as `module:EnvId`:

    cd examples && jaxmod train --env custom_env:Thermostat-v0 --out runs/thermostat-ppo

Run it:  python examples/custom_env.py --out runs/thermostat      (2 min of CPU time; mostly compiling)
It trains PPO on several seeds in one program, saves seed 0 as a teacher, then runs ULTRA (PPO fine-tuning vs
ULTRA-RA) from briefly pre-trained agents with that teacher as the advisor (no LLM, no network), and prints each
method's final evaluation return (IQM and 95% bootstrap interval over seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

import jaxmod
from jaxmod.envs import Describer, EnvCard, raw_feature

ENV_ID = "Thermostat-v0"
SETPOINT_C = 21.0


@struct.dataclass
class ThermostatState(environment.EnvState):
    room_c: jax.Array  # room temperature, degC
    outdoor_c: jax.Array  # outdoor temperature, degC (fixed for an episode)
    time: int


@struct.dataclass
class ThermostatParams(environment.EnvParams):
    heat_c_per_min: tuple = (0.0, 0.5, 1.0)  # heating rate of each action (off, half, full), degC / minute
    leak_per_min: float = 0.05  # share of the room-outdoor difference lost per minute
    noise_c: float = 0.1  # std of the room temperature's random drift per minute, degC
    comfort_c: float = 8.0  # the episode ends (the room is unusable) once |room - setpoint| exceeds this, degC
    max_steps_in_episode: int = 120  # minutes


class Thermostat(environment.Environment):
    """Keep a room at 21 degC. Observation (3,) float32: room temperature, outdoor temperature and the room's error
    to the setpoint, all in degC. Actions: 0 heater off, 1 half power, 2 full power. Reward per minute:
    -|room - 21| / 8 (0 at the setpoint, -1 at the comfort bound); the episode ends early at -10 once the room
    leaves 21 +- 8 degC."""

    @property
    def default_params(self) -> ThermostatParams:
        return ThermostatParams()

    def reset_env(self, key: jax.Array, params: ThermostatParams):
        k_room, k_out = jax.random.split(key)
        state = ThermostatState(room_c=jax.random.uniform(k_room, (), minval=16.0, maxval=24.0),
                                outdoor_c=jax.random.uniform(k_out, (), minval=-2.0, maxval=14.0), time=0)
        return self.get_obs(state), state

    def step_env(self, key: jax.Array, state: ThermostatState, action: jax.Array, params: ThermostatParams):
        heat = jnp.asarray(params.heat_c_per_min)[action]
        drift = params.noise_c * jax.random.normal(key, ())
        room = state.room_c + heat - params.leak_per_min * (state.room_c - state.outdoor_c) + drift
        state = state.replace(room_c=room, time=state.time + 1)
        error = jnp.abs(room - SETPOINT_C)
        failed = error > params.comfort_c
        reward = jnp.where(failed, -10.0, -error / params.comfort_c)
        done = failed | (state.time >= params.max_steps_in_episode)
        return self.get_obs(state), state, reward, done, {}

    def get_obs(self, state: ThermostatState, params=None, key=None) -> jax.Array:
        return jnp.stack([state.room_c, state.outdoor_c, state.room_c - SETPOINT_C]).astype(jnp.float32)

    @property
    def name(self) -> str:
        return ENV_ID

    @property
    def num_actions(self) -> int:
        return 3

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(3)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-50.0, 50.0, (3,), jnp.float32)


def thermostat_describer() -> Describer:
    """The env for prompts: its goal, rules and reward in words, each observation entry named with its unit, the
    actions named."""
    card = EnvCard(ENV_ID, goal=f"keep the room temperature at the {SETPOINT_C:g} degC setpoint",
                   termination=f"room temperature outside {SETPOINT_C:g} +- 8 degC, or 120 minutes",
                   reward="-|room - setpoint| / 8 per minute; -10 when the room leaves the comfort band",
                   action_names=("heater_off", "heater_half", "heater_full"),
                   notes="one step is one minute; half power adds 0.5 degC/min, full 1.0 degC/min; the room loses "
                         "5% of its difference to the outdoors per minute, so colder days need more heat")
    features = (raw_feature("room_temperature", "degC", 0), raw_feature("outdoor_temperature", "degC", 1),
                raw_feature("error_to_setpoint", "degC", 2))
    return Describer(card, features, digits=2, obs_shape=(3,))


def register() -> None:
    """Make `Thermostat-v0` known to jaxmod (idempotent: a second call replaces the first)."""
    jaxmod.register_env(ENV_ID, Thermostat())
    jaxmod.register_describer(ENV_ID, thermostat_describer())


register()  # at import: `--env custom_env:Thermostat-v0` imports this module, which makes the id known


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/thermostat"), help="output folder (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of each run (default: %(default)s)")
    parser.add_argument("--teacher-steps", type=int, default=100_000,
                        help="env steps per seed of the PPO run whose seed 0 becomes the teacher (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=8_192,
                        help="env steps per seed of ULTRA's sub-optimal agents (default: %(default)s)")
    parser.add_argument("--refine-steps", type=int, default=16_384,
                        help="env steps per seed of each refinement (default: %(default)s)")
    parser.add_argument("--variants", default="PPO,RA",
                        help="methods refined side by side, comma-separated (default: %(default)s)")
    args = parser.parse_args(argv)
    if min(args.seeds, args.teacher_steps, args.pretrain_steps, args.refine_steps) < 1:
        parser.error("--seeds and the step counts must be positive")
    register()
    from jaxmod.checkpoint import save_checkpoint
    from jaxmod.stats import iqm_ci
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    try:  # every setting is checked before anything compiles
        ultra = UltraConfig.flat(dict(num_envs=8, num_steps=64), env_id=ENV_ID, seeds=args.seeds,
                                 pretrain_steps=args.pretrain_steps, refine_steps=args.refine_steps,
                                 variants=tuple(args.variants.split(",")), advisor=f"teacher:{args.out / 'teacher'}",
                                 chunks=2, collect_envs=4, collect_steps=256, eval_envs=8, eval_steps=256,
                                 episodes_per_round=3)
    except ValueError as err:  # ConfigError, MethodError
        parser.error(str(err))

    # 1. plain PPO, every seed in one jitted program
    config = jaxmod.default_config(ENV_ID, num_envs=8, num_steps=64, total_timesteps=args.teacher_steps)
    train = jaxmod.make_train(config)
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.PRNGKey(0), args.seeds))
    finals = jax.device_get(out.metrics["episode_return"][:, -1])
    print(f"PPO on {ENV_ID}, {args.teacher_steps} steps per seed: final training return per seed "
          f"{[round(float(x), 1) for x in finals]}")
    save_checkpoint(args.out / "teacher", jax.tree.map(lambda x: x[0], out.state), config)

    # 2. ULTRA with the saved policy as the advisor (critical states, suggested actions, implicit rewards)
    results = UltraRun(ultra, args.out / "ultra", log=print, overwrite=True).run()
    for name, result in results.items():
        print(f"{name}: final evaluation return, IQM [95% CI] over {args.seeds} seeds: "
              f"{iqm_ci(result.eval_returns[-1])}")
    print(f"outputs in {args.out / 'ultra'} (ultra.json, ultra.png, critical_states.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
