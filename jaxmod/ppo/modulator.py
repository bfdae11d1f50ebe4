"""The modulator protocol: how a refinement method changes PPO without the learner knowing the method.

A modulator is a small object of pure hooks (optax's `GradientTransformation` is the model); `chain(a, b, ...)`
composes them. The learner (`jaxmod.ppo.train.PPOLearner`) calls every hook at a fixed point of its update and
never branches on who implements them:

| hook | when | what it may do |
|---|---|---|
| `init(key, spec, params) -> aux` | once, at `PPOLearner.init` | its state (traced knobs, nets, statistics) |
| `digest(aux, advice, plan) -> plan` | once per `PPOLearner.run` call | facts of the advice alone |
| `prepare(aux, advice, plan, ctx) -> (aux, plan)` | per rollout, before the step loop | per-step inputs (`plan["xs"]`), the loop's per-env carry (`plan["carry"]`) |
| `step(aux, plan, xs, s) -> s` | per env step, before the env steps | override `s.action`, set `s.reset`, `s.cut` |
| `after_step(aux, plan, xs, s, done) -> s` | per env step, after it | update `s.carry` |
| `finish(aux, plan, traj) -> (aux, traj)` | per rollout, after the loop | add `traj.extras`, keep the final carry |
| `reward(aux, plan, traj, reward, key) -> (aux, reward, metrics)` | before GAE | reward deltas (shaping, bonuses) |
| `weigh(aux, plan, traj, advantage, values, next_values) -> (aux, masks, fields)` | after GAE | per-sample loss masks and fields |
| `loss(aux, net, params, head, batch) -> (loss, info)` | every SGD step | extra loss terms |
| `metrics(aux, plan, traj) -> dict` | end of the update | scalar metrics |

A modulator names the scalar metrics a refinement run reports per chunk in its class attribute `reports`
(`jaxmod ultra`'s ultra.json rows and tracker; a `chain` reports its parts').

Every hook but `loss` also takes the learner's `LearnerSpec` (env, network, config) as its last argument.
`plan` is a dict that flows through the chain like optax's updates: a later modulator reads what an earlier one
wrote (e.g. `plan["trusted"]`); `s.extras` and `traj.extras` flow the same way per step and per rollout. Every
value in them is a jax array or pytree of static shape, so a chain traces once and new advice never recompiles.
`advice` is whatever the caller passes to `PPOLearner.run` (for `jaxmod.advice`'s modulators, an `Advice`
pytree of fixed capacity); a modulator that needs none ignores it.

`ppo/` names no method: the methods' modulators live in `jaxmod.advice` and `jaxmod.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
from flax import struct

Plan = dict[str, Any]
Metrics = dict[str, jax.Array]


@dataclass(frozen=True)
class LearnerSpec:
    """Static facts a modulator may build from: the vectorised env (`jaxmod.envs.VecEnv`), the actor-critic
    (`jaxmod.ppo.networks.ActorCritic`) and the PPO config (`jaxmod.ppo.config.PPOConfig`)."""

    env: Any
    net: Any
    config: Any


@struct.dataclass
class RolloutContext:
    """What `prepare` sees of the rollout about to run: its env state (`VecEnvState`, leading axis N), the
    update index (int32 scalar), the rollout's modulation key (shared by the chain: a second modulator that draws
from it derives its own with `jax.random.fold_in`), and the rollout length T (static)."""

    env_state: Any
    update_step: jax.Array
    key: jax.Array
    num_steps: int = struct.field(pytree_node=False)


@struct.dataclass
class StepState:
    """One env step as the step hooks see it (leading axis N everywhere).

    - `obs`: [N, *obs_shape] float32 policy input; `time`: [N] int32 step index of each env's episode;
    - `action`: [N] int32 or [N, A] float32, the action to execute (the policy's sample until a hook overrides it;
      its log-probability under the policy is taken after all hooks, of what is executed);
    - `key`: the step's action key (hooks derive theirs with `jax.random.fold_in`);
    - `reset`: the batched `CoreState` each env restarts from if its episode ends at this step (fresh initial
      states unless a hook substitutes snapshots);
    - `cut`: [N] bool, episodes a hook ends at this step as a time limit would (truncated: bootstrapped), so that
      the env restarts from `reset` mid-episode (all False unless a hook sets it);
    - `carry`: per-env state carried from step to step (dict of [N, ...] arrays; starts as `plan["carry"]`, and
      `finish` sees the last step's in `plan["carry"]`, to keep in aux for the next rollout);
    - `extras`: per-step outputs, stacked to [T, N, ...] into `Trajectory.extras`."""

    obs: jax.Array
    time: jax.Array
    action: jax.Array
    key: jax.Array
    reset: Any
    cut: jax.Array
    carry: dict[str, jax.Array]
    extras: dict[str, jax.Array]


class Modulator:
    """Base class: every hook is the identity, so a modulator overrides only the hooks it needs.
    Subclasses are frozen dataclasses (hashable static configuration); all traced values live in `aux`."""

    identity = False  # True only for `Identity`: the learner then runs plain PPO's unroll
    # the scalar metrics (from `reward`, `loss` or `metrics`) a run reports per chunk (`jaxmod ultra`'s ultra.json
    # rows and its tracker's `advice/<name>`: their mean over the chunk's updates and seeds); a class attribute
    reports: ClassVar[tuple[str, ...]] = ()

    def init(self, key: jax.Array, spec: LearnerSpec, params: Any) -> Any:
        """Its aux state (a pytree; `()` for none) from a PRNG key and the learner's initial params."""
        return ()

    def digest(self, aux: Any, advice: Any, plan: Plan, spec: LearnerSpec) -> Plan:
        """Facts of the advice alone, added to `plan`; computed once per `PPOLearner.run` call, outside its scan."""
        return plan

    def prepare(self, aux: Any, advice: Any, plan: Plan, ctx: RolloutContext, spec: LearnerSpec) -> tuple[Any, Plan]:
        """Per rollout, before its step loop: per-step inputs go to `plan["xs"]` (arrays with leading axis T, sliced
        per step into the `xs` the step hooks see), the loop's per-env carry starts from `plan["carry"]`."""
        return aux, plan

    def step(self, aux: Any, plan: Plan, xs: dict[str, Any], s: StepState, spec: LearnerSpec) -> StepState:
        """Per env step, inside the scan, before the env steps: may replace `s.action` (what runs and trains),
        `s.reset` (what finished envs restart from) and `s.cut` (episodes to truncate now), and add [N, ...]
        `s.extras`."""
        return s

    def after_step(self, aux: Any, plan: Plan, xs: dict[str, Any], s: StepState, done: jax.Array,
                   spec: LearnerSpec) -> StepState:
        """Per env step, after it: `done` [N] bool marks envs whose episode ended; update `s.carry`."""
        return s

    def finish(self, aux: Any, plan: Plan, traj: Any, spec: LearnerSpec) -> tuple[Any, Any]:
        """Per rollout, after the loop: add [T, N, ...] `traj.extras` computed on the whole batch; keep the loop's
        final carry (`plan["carry"]`) in aux."""
        return aux, traj

    def reward(self, aux: Any, plan: Plan, traj: Any, reward: jax.Array, key: jax.Array,
               spec: LearnerSpec) -> tuple[Any, jax.Array, Metrics]:
        """The [T, N] float32 reward GAE sees, from the env's (`reward`, after earlier modulators' deltas); `key`
        is the update's minibatch key (derive with `fold_in`). Returns (aux, reward, scalar metrics)."""
        return aux, reward, {}

    def weigh(self, aux: Any, plan: Plan, traj: Any, advantage: jax.Array, values: jax.Array,
              next_values: jax.Array, spec: LearnerSpec) -> tuple[Any, dict[str, jax.Array], dict[str, jax.Array]]:
        """(aux, masks, fields): 0/1 masks [T, N] the loss averages over (normalised per minibatch; the learner
        reads `masks["policy"]` as the surrogate's samples) and other per-sample fields [T, N, ...]."""
        return aux, {}, {}

    def loss(self, aux: Any, net: Any, params: Any, head: jax.Array, batch: Any) -> tuple[jax.Array | None, Metrics]:
        """An extra loss term on a minibatch (None: none) and its metrics."""
        return None, {}

    def metrics(self, aux: Any, plan: Plan, traj: Any, spec: LearnerSpec) -> Metrics:
        """Scalar metrics of the update (stacked over updates by `PPOLearner.run`)."""
        return {}


@dataclass(frozen=True)
class Identity(Modulator):
    """Plain PPO: no hook changes anything."""

    identity = True


@dataclass(frozen=True)
class Chain(Modulator):
    """Modulators applied in order at every hook (`chain(a, b, ...)`); aux is the tuple of theirs."""

    parts: tuple[Modulator, ...]

    @property
    def reports(self) -> tuple[str, ...]:  # type: ignore[override]
        """Every part's `reports`, in chain order, each name once."""
        return tuple(dict.fromkeys(name for m in self.parts for name in m.reports))

    def init(self, key, spec, params):
        # one key for all: a modulator that draws at init derives its own with fold_in if it shares the chain
        return tuple(m.init(key, spec, params) for m in self.parts)

    def digest(self, aux, advice, plan, spec):
        for m, a in zip(self.parts, aux, strict=True):
            plan = m.digest(a, advice, plan, spec)
        return plan

    def prepare(self, aux, advice, plan, ctx, spec):
        out = []
        for m, a in zip(self.parts, aux, strict=True):
            a, plan = m.prepare(a, advice, plan, ctx, spec)
            out.append(a)
        return tuple(out), plan

    def step(self, aux, plan, xs, s, spec):
        for m, a in zip(self.parts, aux, strict=True):
            s = m.step(a, plan, xs, s, spec)
        return s

    def after_step(self, aux, plan, xs, s, done, spec):
        for m, a in zip(self.parts, aux, strict=True):
            s = m.after_step(a, plan, xs, s, done, spec)
        return s

    def finish(self, aux, plan, traj, spec):
        out = []
        for m, a in zip(self.parts, aux, strict=True):
            a, traj = m.finish(a, plan, traj, spec)
            out.append(a)
        return tuple(out), traj

    def reward(self, aux, plan, traj, reward, key, spec):
        out, metrics = [], {}
        for m, a in zip(self.parts, aux, strict=True):
            a, reward, met = m.reward(a, plan, traj, reward, key, spec)
            out.append(a)
            metrics.update(met)
        return tuple(out), reward, metrics

    def weigh(self, aux, plan, traj, advantage, values, next_values, spec):
        out, masks, fields = [], {}, {}
        for m, a in zip(self.parts, aux, strict=True):
            a, mk, fd = m.weigh(a, plan, traj, advantage, values, next_values, spec)
            out.append(a)
            masks.update(mk)
            fields.update(fd)
        return tuple(out), masks, fields

    def loss(self, aux, net, params, head, batch):
        total, info = None, {}
        for m, a in zip(self.parts, aux, strict=True):
            term, met = m.loss(a, net, params, head, batch)
            if term is not None:
                total = term if total is None else total + term
            info.update(met)
        return total, info

    def metrics(self, aux, plan, traj, spec):
        out: Metrics = {}
        for m, a in zip(self.parts, aux, strict=True):
            out.update(m.metrics(a, plan, traj, spec))
        return out


def chain(*modulators: Modulator) -> Modulator:
    """Compose modulators: each hook runs them in the given order (nested chains are flattened; identities
    dropped). `chain()` is `Identity()`, plain PPO."""
    parts: list[Modulator] = []
    for m in modulators:
        if isinstance(m, Chain):
            parts.extend(m.parts)
        elif not m.identity:
            parts.append(m)
    return Chain(tuple(parts)) if parts else Identity()
