"""Is the advice good for THIS agent? At the critical states a teacher names in the agent's own episodes, the
discounted return of executing the teacher's suggestion first and the agent's policy after it, against the agent's
own sampled action first, by Monte-Carlo rollouts from the exact env snapshot (common random numbers: both arms of
a rollout pair draw the same keys after the first action).

    python benchmarks/advice_value.py --agent runs/agents/Asterix-MinAtar-300000steps-5x0 \\
        --teacher runs/agents/teacher-Asterix-MinAtar-1500000

(`benchmarks/ultra_suite.py --agents DIR` saves both kinds of folder.) This is what ULTRA's advice verification
(`jaxmod.advice.verify`) estimates online from GAE advantages, measured here without the critic: Q(s, a_teacher) -
Q(s, a_agent) under the agent's continuation, for `--horizon` steps or to the episode's end. A stronger policy's
greedy action need not be better for a weaker agent that continues on its own: where it is not, ULTRA cannot gain
from that advisor and verification is right to give it no influence. Writes one JSON record per run to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/advice_value.py` from anywhere
from jaxmod.advice.teacher import TeacherBackend  # noqa: E402
from jaxmod.checkpoint import CheckpointError, read_meta  # noqa: E402
from jaxmod.ultra.collect import make_collector, snapshot_at, split_episodes  # noqa: E402


def make_arms(agent: TeacherBackend, horizon: int):
    """A jitted `values(params, obs_rms, snapshot, advised_action, keys [M]) -> (advised [M], own [M])`: discounted
    returns (the agent's gamma) of M rollout pairs from one env snapshot, the first action the advice's or the
    policy's own sample, the policy (`params`, `obs_rms`) after it; an episode's end (termination or time limit)
    stops a rollout. The policy is an argument, so every seed of the agent shares one compiled program."""
    env, net, gamma = agent.env, agent.net, float(agent.config.gamma)
    core, space = env.core, env.action_space

    def act(params, rms, obs, key):
        action, _ = net.sample(params, net.policy_head(params, env.observe(rms, obs[None])), key)
        return action[0]

    def executable(action):
        if space.discrete:
            return action
        return jnp.clip(action, jnp.asarray(space.low), jnp.asarray(space.high))

    def rollout(params, rms, snapshot, first, key):
        def body(carry, k):
            state, alive, ret, discount, i = carry
            k_act, k_env = jax.random.split(k)
            action = jnp.where(i == 0, first, act(params, rms, state.obs, k_act))
            nxt, reward, terminated = core.step(k_env, state, executable(action))
            ret = ret + alive * discount * reward
            ended = terminated | (nxt.time >= core.max_steps)
            return (nxt, alive * (1.0 - ended.astype(jnp.float32)), ret, discount * gamma, i + 1), None

        init = (snapshot, jnp.float32(1.0), jnp.float32(0.0), jnp.float32(1.0), jnp.int32(0))
        (_, _, ret, _, _), _ = jax.lax.scan(body, init, jax.random.split(key, horizon))
        return ret

    def pair(params, rms, snapshot, advised, key):
        k_first, k_rest = jax.random.split(key)
        own = act(params, rms, snapshot.obs, k_first)
        return rollout(params, rms, snapshot, advised, k_rest), rollout(params, rms, snapshot, own, k_rest)

    return jax.jit(jax.vmap(pair, in_axes=(None, None, None, None, 0)))


@dataclass(frozen=True)
class Programs:
    """The compiled collection and rollout programs of one agent's task (`make_programs`), shared by its seeds."""

    collect: Callable
    arms: Callable


def make_programs(agent: TeacherBackend, horizon: int = 100, collect_steps: int = 400) -> Programs:
    """Programs for `advice_values`: 16 envs recorded for `collect_steps` steps, rollouts of `horizon` steps."""
    return Programs(collect=make_collector(agent.env.replace_num_envs(16), agent.net, collect_steps),
                    arms=make_arms(agent, horizon))


def check_pair(agent: TeacherBackend, teacher: TeacherBackend) -> None:
    """Raise ValueError (one line) unless `teacher` advises the agent's task."""
    if not teacher.advises(agent.env_id):
        raise ValueError(f"the teacher plays {teacher.env_id}, the agent {agent.env_id}: pass a teacher of the "
                         "agent's task")


def advice_values(agent: TeacherBackend, teacher: TeacherBackend, programs: Programs | None = None, episodes: int = 12,
                  critical: int = 2, rollouts: int = 64, seed: int = 0) -> dict[str, Any]:
    """Per critical state (the teacher's `critical` steps of each of the agent's first `episodes` episodes recorded
    by `programs.collect`): the mean discounted return (the agent's gamma) of the advised and the own arm over
    `rollouts` pairs and their difference (gap, with its standard error); and over all states: the mean gap, its
    standard error and the share of states where the advice wins. `agent`: a saved agent (one seed of it: the
    `seed_index` it was loaded with); `teacher`: a saved policy of the same task; `programs`: `make_programs(agent)`
    (made here when None)."""
    check_pair(agent, teacher)
    programs = programs or make_programs(agent)
    rec = jax.device_get(programs.collect(agent.params, agent.obs_rms, jax.random.PRNGKey(seed)))
    found = split_episodes(rec, max_episodes=episodes, unfinished=True)
    states = []
    for ep in found:
        for item in teacher.identify(ep.obs, ep.actions, critical)["critical_steps"]:
            step = item["step"]
            snapshot = jax.tree.map(jnp.asarray, snapshot_at(rec, ep, step))
            advised = teacher.advise(ep.obs[step], ep.actions[step])["action"]
            keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed + 1), len(states)), rollouts)
            adv, own = (np.asarray(x, np.float64) for x in programs.arms(agent.params, agent.obs_rms, snapshot,
                                                                         jnp.asarray(advised), keys))
            diff = adv - own
            states.append({"episode": ep.uid, "step": step, "advised": advised, "advised_return": adv.mean(),
                           "own_return": own.mean(), "gap": diff.mean(),
                           "gap_se": diff.std(ddof=1) / np.sqrt(len(diff))})
    gaps = np.array([s["gap"] for s in states])
    summary = {"states": len(states), "mean_gap": float(gaps.mean()) if len(gaps) else None,
               "gap_se": float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None,
               "advice_wins": float(np.mean(gaps > 0)) if len(gaps) else None}
    return {"task": agent.env_id, "rollouts": rollouts, "gamma": float(agent.config.gamma), **summary,
            "per_state": [{k: (float(v) if isinstance(v, np.floating) else v) for k, v in s.items()}
                          for s in states]}


def _refuse(err: Exception) -> None:
    print(f"advice_value.py: {str(err).splitlines()[0]}", file=sys.stderr)
    raise SystemExit(2) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", required=True,
                    help="a saved agent: the checkpoint/ folder of a `jaxmod train --out DIR` run, or an ultra_suite "
                         "agents folder")
    ap.add_argument("--teacher", required=True,
                    help="a saved, stronger policy of the same task (a checkpoint folder, as --agent)")
    ap.add_argument("--seeds", type=int, default=1, help="agent seeds of a multi-seed checkpoint to measure (0..N-1)")
    ap.add_argument("--horizon", type=int, default=100, help="steps per rollout after the critical state")
    ap.add_argument("--rollouts", type=int, default=64, help="rollout pairs per critical state")
    ap.add_argument("--episodes", type=int, default=12, help="agent episodes whose critical states are measured")
    ap.add_argument("--out", default="benchmarks/results/advice_value.jsonl", help="JSON lines, one per seed")
    args = ap.parse_args()
    for name in ("seeds", "horizon", "rollouts", "episodes"):
        if getattr(args, name) < 1:
            print(f"advice_value.py: --{name} must be >= 1", file=sys.stderr)
            raise SystemExit(2)
    try:  # the teacher, the agent's task and every seed asked for, before anything runs
        teacher = TeacherBackend(args.teacher)
        num_seeds = read_meta(args.agent).get("num_seeds")
        if args.seeds > (num_seeds or 1):
            raise ValueError(f"the checkpoint at {args.agent} holds {num_seeds or 1} seed(s), not {args.seeds}")
        agent = TeacherBackend(args.agent)  # seed 0
        check_pair(agent, teacher)
    except (OSError, ValueError, CheckpointError) as err:  # a missing or foreign checkpoint: one line
        _refuse(err)
    programs = make_programs(agent, args.horizon)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for seed_index in range(args.seeds):
        t0 = time.perf_counter()
        if seed_index:
            agent = TeacherBackend(args.agent, seed_index=seed_index)
        record = {"agent": args.agent, "seed_index": seed_index, "teacher": args.teacher, "horizon": args.horizon,
                  **advice_values(agent, teacher, programs, args.episodes, rollouts=args.rollouts)}
        record["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{record['task']} seed {seed_index}: advice minus own action {record['mean_gap']:+.4f} "
              f"(se {record['gap_se']:.4f}) over {record['states']} critical states; advice better at "
              f"{100 * record['advice_wins']:.0f}% of them ({record['wall_s']} s)")


if __name__ == "__main__":
    main()
