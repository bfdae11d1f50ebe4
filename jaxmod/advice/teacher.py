"""TeacherAdvisor: answers ULTRA's questions from a stronger saved PPO policy and its value function.

For tasks without a simple heuristic (the brax ones), a better-trained agent is the expert. The
teacher reads the same prompts (it parses the episode table, whose features are the raw observation
for the envs it supports), so it can be served over HTTP like an LLM:

- critical steps: where the agent's action is least likely under the teacher, weighted up where the
  teacher's value drops;
- action: the teacher's greedy action;
- implicit reward: how much the teacher agrees with the agent's action, in [-1, 1].
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.checkpoint import load_checkpoint
from jaxmod.envs.brax_backend import SPARSE_SUFFIX
from jaxmod.envs.describe import describer_for
from jaxmod.llm.prompts import Messages
from jaxmod.llm.scripted import ScriptedError, _floats, _max_critical, _section, parse_table
from jaxmod.ppo.train import PPOLearner


class TeacherBackend:
    """A saved policy that answers prompts. `answer(messages) -> JSON text`, like `ScriptedBackend`."""

    name = "teacher"

    def __init__(self, checkpoint_dir: str | Path, seed_index: int = 0) -> None:
        ckpt = load_checkpoint(checkpoint_dir)
        state = ckpt.state
        if ckpt.num_seeds is not None:
            state = jax.tree.map(lambda x: x[seed_index], state)
        self.config = ckpt.config
        learner = PPOLearner(ckpt.config)
        self.net, self.env = learner.net, learner.env
        self.params = state.params
        self.obs_rms = state.env_state.obs_rms
        core = self.env.core
        self.describer = describer_for(core.env_id, core.obs_shape, core.action_space.dim)
        if len(self.describer.features) != int(np.prod(core.obs_shape)) or core.family == "minatar":
            raise ValueError(f"the teacher needs raw-observation features; {core.env_id}'s describer is not one")
        self._head = jax.jit(lambda o: self.net.policy_head(self.params, self.env.observe(self.obs_rms, o)))
        self._value = jax.jit(lambda o: self.net.value(self.params, self.env.observe(self.obs_rms, o)))

    # --------------------------------------------------------------- policy queries
    def _agreement(self, head: np.ndarray, took: np.ndarray) -> np.ndarray:
        """How much the teacher agrees with each action taken, in [-1, 1]."""
        space = self.env.action_space
        if space.discrete:
            probs = np.asarray(jax.nn.softmax(head, axis=-1))
            return 2.0 * probs[np.arange(len(took)), took.astype(int)] - 1.0
        std = np.exp(np.asarray(self.params["log_std"]))
        z2 = np.mean(((took - head) / std) ** 2, axis=-1)
        return 2.0 * np.exp(-0.5 * z2) - 1.0

    def _parse_actions(self, texts: list[str]) -> np.ndarray:
        if self.env.action_space.discrete:
            names = list(self.describer.card.action_names)
            return np.array([names.index(t) if t in names else 0 for t in texts])
        return np.array([_floats(t) for t in texts], dtype=np.float32)

    def advises(self, env_id: str) -> bool:
        """Its own task, or that task's sparse variant (same states, actions and physics; brax/hopper's
        teacher advises brax/hopper-sparse)."""
        return env_id.removesuffix(SPARSE_SUFFIX) == self.env.core.env_id.removesuffix(SPARSE_SUFFIX)

    def answer(self, messages: Messages) -> str:
        user = next((m["content"] for m in messages if m.get("role") == "user"), "")
        env_m = re.search(r"Environment: (\S+)", user)
        if not env_m or not self.advises(env_m.group(1)):
            raise ScriptedError(f"this teacher knows {self.env.core.env_id} (and its {SPARSE_SUFFIX} variant) only")
        if "## Episode" in user:
            return json.dumps(self._identify(parse_table(_section(user, "Episode")), _max_critical(messages, 3)))
        if "## Critical state" in user:
            return json.dumps(self._advise(user))
        raise ScriptedError("prompt asks neither for critical states nor for advice")

    def _identify(self, table, k: int) -> dict:
        obs = jnp.asarray(np.array([r[1] for r in table.rows], dtype=np.float32))
        took = self._parse_actions([r[2] for r in table.rows])
        head = np.asarray(self._head(obs))
        values = np.asarray(self._value(obs))
        disagreement = 1.0 - self._agreement(head, took)  # in [0, 2]
        drop = np.zeros(len(values))
        drop[:-1] = np.maximum(0.0, values[:-1] - values[1:])
        score = disagreement * (1.0 + drop / (np.abs(values).mean() + 1e-6))
        order = np.argsort(-score)[:k]
        return {"critical_steps": [
            {"step": int(table.rows[i][0]),
             "reason": f"teacher disagrees with the action (agreement {1 - disagreement[i]:+.2f}); "
                       f"teacher value {values[i]:.2f}"} for i in order]}

    def _advise(self, user: str) -> dict:
        table = parse_table(_section(user, "Recent steps"))
        t = int(re.search(r"## Critical state \(episode \d+, step (\d+)\)", user).group(1))
        row = next((r for r in table.rows if r[0] == t), table.rows[-1])
        obs = jnp.asarray(np.array([row[1]], dtype=np.float32))
        head = np.asarray(self._head(obs))
        took = self._parse_actions([re.search(r"Agent's action: (.*)", user).group(1).strip()])
        agree = float(self._agreement(head, took)[0])
        if self.env.action_space.discrete:
            action: int | list[float] = int(np.argmax(head[0]))
        else:
            space = self.env.action_space
            action = [round(float(x), 4) for x in np.clip(head[0], space.low, space.high)]
        return {"action": action, "reward": round(agree, 4), "reason": "the teacher policy's greedy action"}
