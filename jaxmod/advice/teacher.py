"""TeacherBackend: answers ULTRA's questions from a stronger saved PPO policy and its value function.

For tasks without a simple heuristic (the brax ones), a better-trained agent is the expert:

- critical steps: where the agent's action is least likely under the teacher, weighted up where the
  teacher's value drops;
- action: the teacher's greedy (mode) action;
- implicit reward: how much the teacher agrees with the agent's action, in [-1, 1].

It computes on exact observations. In-process (`LocalBackend(TeacherBackend(...))`, `--advisor teacher:<ckpt>`)
every question carries them in its `NumericContext`, for every env family (vectors, images, brax). Served over
HTTP (`jaxmod serve-advisor --backend teacher`) it sees text only: the env's describer reads the table back and
rebuilds observations from the printed features (exact up to the printed digits), which works where the features
determine the observation (classic control, brax, Pong's vector) and is refused with a clear error elsewhere
(MinAtar and Pong pixel images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import softmax

from jaxmod.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, read_meta
from jaxmod.envs.describe import DescriberError
from jaxmod.envs.registry import describer_of
from jaxmod.envs.sparse import SPARSE_SUFFIX
from jaxmod.llm.prompts import Messages, NumericContext, PromptError, read_question
from jaxmod.llm.scripted import ScriptedError
from jaxmod.ppo.train import PPOLearner

DEFAULT_MAX_CRITICAL = 3
BLOCK = 256  # rows per evaluation of an episode by the teacher's network (a program compiled on loading)
SMALL = 8  # questions of at most this many states (advice at one state) use a program of this many rows: a 256-row
# block of 40x40 Pong pixels costs ~40 ms against ~0.5 ms for one row
AGREE_TOLERANCE = 0.1  # continuous actions agree within this share of the action range (mean over dimensions)


def teacher_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder of a teacher given as a `jaxmod train --out` run folder (as `jaxmod eval` takes) or
    as that run's checkpoint/ folder."""
    path = Path(path)
    return path / "checkpoint" if has_checkpoint(path / "checkpoint") else path


def check_teacher(checkpoint_dir: str | Path, env_id: str, what: str = "teacher") -> None:
    """Raise `ModulationError` (one line, before anything runs) unless `checkpoint_dir` (or the run folder around
    it) holds a saved policy of `env_id` (or of its dense task, for a sparse variant). Reads only the checkpoint's
    metadata."""
    from jaxmod.advice.modulation import ModulationError

    checkpoint_dir = teacher_checkpoint(checkpoint_dir)
    try:
        record = read_meta(checkpoint_dir)
    except FileNotFoundError:
        raise ModulationError(f"no saved policy for the {what} at {checkpoint_dir} (no checkpoint there): pass the "
                              "folder of a `jaxmod train --out DIR` run, or its checkpoint/ folder") from None
    except CheckpointError as err:
        raise ModulationError(f"the {what} at {checkpoint_dir} cannot be read: {err}") from None
    saved = record.get("config", {}).get("env_id", "")
    if saved.removesuffix(SPARSE_SUFFIX) != env_id.removesuffix(SPARSE_SUFFIX):
        raise ModulationError(f"the {what} at {checkpoint_dir} was trained on {saved}, not {env_id}: train one on "
                              f"{env_id} with `jaxmod train --env {env_id} --out DIR`")


class TeacherBackend:
    """A saved policy that answers questions: `answer_numeric(numeric, schema)` from exact numbers, `answer(messages)`
    from the prompt text; both return the answer's JSON text and raise `ScriptedError` for a question they cannot
    answer (another env, an unreadable table)."""

    name = "teacher"

    def __init__(self, checkpoint_dir: str | Path, seed_index: int = 0) -> None:
        checkpoint_dir = teacher_checkpoint(checkpoint_dir)  # a run folder, or its checkpoint/ folder
        ckpt = load_checkpoint(checkpoint_dir)
        state = ckpt.state
        if ckpt.num_seeds is not None:
            if not 0 <= seed_index < ckpt.num_seeds:  # jax would clamp the index: another seed, silently
                raise ValueError(f"the checkpoint at {checkpoint_dir} holds {ckpt.num_seeds} seeds (0.."
                                 f"{ckpt.num_seeds - 1}), not seed {seed_index}")
            state = jax.tree.map(lambda x: x[seed_index], state)
        self.config = ckpt.config
        learner = PPOLearner(ckpt.config)
        self.net, self.env = learner.net, learner.env
        self.params = state.params
        self.obs_rms = state.env_state.obs_rms
        self.describer = describer_of(self.env.core)
        net, env = self.net, self.env
        self._evaluate = jax.jit(lambda params, rms, o: (net.policy_head(params, env.observe(rms, o)),
                                                         net.value(params, env.observe(rms, o))))
        # compiled here, before any question: its first answers are then as fast as the rest (a compile per
        # question size, under a busy refinement, held a first round back by seconds: chunks of advice lost)
        for rows in (SMALL, BLOCK):
            self.head_and_value(np.zeros((rows, *self.env.obs_shape), np.float32))

    @property
    def env_id(self) -> str:
        return self.env.core.env_id

    def advises(self, env_id: str) -> bool:
        """Its own task, or that task's sparse variant (same states, actions and physics; brax/hopper's
        teacher advises brax/hopper-sparse)."""
        return env_id.removesuffix(SPARSE_SUFFIX) == self.env_id.removesuffix(SPARSE_SUFFIX)

    # --------------------------------------------------------------- the policy on exact observations
    def head_and_value(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Policy head (logits, or Gaussian means) (n, A) and value (n,) of raw observations (n, *obs_shape).
        Evaluated in blocks of `BLOCK` rows, or one block of `SMALL` rows for at most `SMALL` states (the last block
        zero-padded): two programs, both compiled on loading, for every question."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape[1:] != tuple(self.env.obs_shape):
            raise ScriptedError(f"the teacher for {self.env_id} takes observations of shape {self.env.obs_shape}, "
                                f"got {obs.shape[1:]}")
        n = len(obs)
        rows = SMALL if n <= SMALL else BLOCK
        padded = np.zeros((-(-max(n, 1) // rows) * rows,) + obs.shape[1:], np.float32)
        padded[:n] = obs
        blocks = [self._evaluate(self.params, self.obs_rms, jnp.asarray(padded[i:i + rows]))
                  for i in range(0, len(padded), rows)]
        head, value = (np.concatenate([np.asarray(b[j]) for b in blocks]) for j in (0, 1))
        return head[:n], value[:n]

    def _agreement(self, head: np.ndarray, took: np.ndarray) -> np.ndarray:
        """How much the teacher agrees with each action taken, in [-1, 1]."""
        if self.env.action_space.discrete:  # scipy on the host, not jax.nn.softmax: that compiles per episode length
            probs = softmax(head, axis=-1)
            return 2.0 * probs[np.arange(len(took)), np.asarray(took).astype(int)] - 1.0
        std = np.exp(np.asarray(self.params["log_std"]))
        z2 = np.mean(((np.asarray(took, np.float32).reshape(head.shape) - head) / std) ** 2, axis=-1)
        return 2.0 * np.exp(-0.5 * z2) - 1.0

    def identify(self, obs: np.ndarray, actions: np.ndarray, k: int, steps: np.ndarray | None = None) -> dict:
        """The `k` critical steps of an episode: obs (T, *obs_shape) raw, actions (T,) or (T, A) as taken,
        steps (T,) their step indices (default 0..T-1). Returns the identification answer as a dict."""
        steps = np.arange(len(obs)) if steps is None else np.asarray(steps)
        head, values = self.head_and_value(obs)
        disagreement = 1.0 - self._agreement(head, np.asarray(actions))  # in [0, 2]
        drop = np.zeros(len(values))
        drop[:-1] = np.maximum(0.0, values[:-1] - values[1:])
        score = disagreement * (1.0 + drop / (np.abs(values).mean() + 1e-6))
        order = np.argsort(-score, kind="stable")[:k]
        return {"critical_steps": [
            {"step": int(steps[i]),
             "reason": f"teacher disagrees with the action (agreement {1 - disagreement[i]:+.2f}); "
                       f"teacher value {values[i]:.2f}"} for i in order]}

    def advise(self, obs: np.ndarray, action: Any) -> dict:
        """The teacher's mode action at one raw observation (obs_shape), within the action bounds, and its
        agreement with the agent's `action` (int, or (A,) floats) as the implicit reward."""
        head, _ = self.head_and_value(np.asarray(obs)[None])
        agree = float(self._agreement(head, np.asarray(action)[None])[0])
        space = self.env.action_space
        if space.discrete:
            suggested: int | list[float] = int(np.argmax(head[0]))
        else:
            suggested = [float(x) for x in np.clip(head[0], np.asarray(space.low, np.float32),
                                                    np.asarray(space.high, np.float32))]
        return {"action": suggested, "reward": agree, "reason": "the teacher policy's greedy action"}

    def agrees(self, obs: np.ndarray, actions: Any) -> np.ndarray:
        """[n] bool: whether each suggested action agrees with this policy's greedy action at its raw observation
        (obs [n, *obs_shape]; actions [n] ints or [n, A] floats): equal for discrete actions, within
        `AGREE_TOLERANCE` of the action range (mean absolute difference over dimensions) for continuous ones.
        An advisor's accuracy against a reference policy (issue 18, item 7; jaxmod's measure)."""
        head, _ = self.head_and_value(obs)
        space = self.env.action_space
        if space.discrete:
            return np.argmax(head, axis=-1) == np.asarray(actions).reshape(-1).astype(int)
        low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        greedy = np.clip(head, low, high)
        diff = np.abs(np.asarray(actions, np.float32).reshape(greedy.shape) - greedy) / (high - low)
        return np.mean(diff, axis=-1) <= AGREE_TOLERANCE

    # --------------------------------------------------------------- questions
    def _check_env(self, env_id: str) -> None:
        if not self.advises(env_id):
            raise ScriptedError(f"this teacher knows {self.env_id} (and its {SPARSE_SUFFIX} variant) only")

    def answer_numeric(self, numeric: NumericContext, schema: dict[str, Any] | None) -> str:
        """Answer from the exact recorded numbers (in-process): identification when `numeric.step` is None (the
        schema's maxItems critical steps), else advice at `numeric.step`."""
        self._check_env(numeric.env_id)
        obs, actions = np.asarray(numeric.obs), np.asarray(numeric.actions)
        if numeric.step is None:
            items = ((schema or {}).get("properties") or {}).get("critical_steps") or {}
            return json.dumps(self.identify(obs, actions, int(items.get("maxItems", DEFAULT_MAX_CRITICAL))))
        return json.dumps(self.advise(obs[numeric.step], actions[numeric.step]))

    def answer(self, messages: Messages) -> str:
        """Answer from the prompt text alone (over HTTP): the describer reads the table back and rebuilds the
        observations from the printed features."""
        try:
            q = read_question(messages)
        except PromptError as err:
            raise ScriptedError(str(err)) from None
        self._check_env(q.env_id)
        d = self.describer
        if not d.invertible:
            raise ScriptedError(f"over HTTP the teacher only sees the prompt's text, and {self.env_id}'s describer "
                                "cannot rebuild observations from it; run the teacher in-process instead "
                                "(--advisor teacher:<checkpoint>), where it reads the exact observations")
        try:
            table = d.parse_rows(q.table)
            obs = d.observations(table.values)
            if q.kind == "identify":
                return json.dumps(self.identify(obs, table.actions, q.max_critical or DEFAULT_MAX_CRITICAL,
                                                table.steps))
            return json.dumps(self.advise(obs[table.index_of(q.step)], d.parse_action(q.agent_action)))
        except DescriberError as err:
            raise ScriptedError(str(err)) from None
