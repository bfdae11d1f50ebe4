"""Control advisors: answers that carry no knowledge of the task, to measure that advice does no harm.

- `RandomAnswerer` (`--advisor random`): random critical steps, random actions within the action space and random
  implicit rewards in [-1, 1]; seeded, and a function of the seed and the question only (the same question gets the
  same answer in every variant and run).
- `ConstantAnswerer` (`--advisor constant`): always the same answer, like a degenerate small LLM (SmolLM2-135M on
  CartPole named step 1 or 2 of every episode, always action 1 with reward 1): the first steps of each episode as
  critical, the last discrete action (the upper bound of every continuous dimension) and implicit reward +1.

They answer in-process (`LocalBackend`), from the question's schema (how many critical steps, the action's range, or
the action names of a multiple-choice question) and its `NumericContext` (the episode's length), and return JSON
text: their answers go through the same
validation and packing as an LLM's. Neither is an LLM nor a heuristic.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np

from jaxmod.llm.prompts import Messages, NumericContext
from jaxmod.llm.scripted import ScriptedError

DEFAULT_MAX_CRITICAL = 3


def _critical_count(schema: dict[str, Any] | None) -> int:
    items = ((schema or {}).get("properties") or {}).get("critical_steps") or {}
    return int(items.get("maxItems", DEFAULT_MAX_CRITICAL))


def _action_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    action = ((schema or {}).get("properties") or {}).get("action")
    if not action:
        raise ScriptedError("the advice question's schema names no action space")
    return action


class _InProcess:
    name = "control"

    def answer(self, messages: Messages) -> str:
        raise ScriptedError(f"the {self.name} advisor answers in-process only (jaxmod ultra --advisor {self.name}), "
                            "from the question's recorded numbers")

    def answer_numeric(self, numeric: NumericContext, schema: dict[str, Any] | None) -> str:
        length = len(numeric.obs)
        if numeric.step is None:
            steps = self.critical_steps(numeric, length, min(_critical_count(schema), length))
            return json.dumps({"critical_steps": [{"step": int(t), "reason": f"{self.name} advisor"} for t in steps]})
        action_schema = _action_schema(schema)
        if "enum" in action_schema:  # a multiple-choice question (candidates protocol): one of the action names
            return json.dumps({"action": self.choice(numeric, list(action_schema["enum"]))})
        action, reward = self.advice(numeric, action_schema)
        return json.dumps({"action": action, "reward": reward, "reason": f"{self.name} advisor"})

    def choice(self, numeric: NumericContext, names: list[str]) -> str:
        raise NotImplementedError

    def critical_steps(self, numeric: NumericContext, length: int, k: int) -> list[int]:
        raise NotImplementedError

    def advice(self, numeric: NumericContext, action: dict[str, Any]) -> tuple[int | list[float], float]:
        raise NotImplementedError


class RandomAnswerer(_InProcess):
    """Random critical steps, actions and implicit rewards, drawn from a generator seeded by `seed` and the question
    (env, episode's recorded numbers, step)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _rng(self, numeric: NumericContext) -> np.random.Generator:
        digest = zlib.crc32(np.ascontiguousarray(numeric.obs, np.float32).tobytes())
        digest = zlib.crc32(np.ascontiguousarray(numeric.actions).tobytes(), digest)
        digest = zlib.crc32(numeric.env_id.encode(), digest)
        step = -1 if numeric.step is None else int(numeric.step)
        return np.random.default_rng([self.seed & 0xFFFFFFFF, digest, step + 1])

    def critical_steps(self, numeric, length, k):
        return sorted(self._rng(numeric).choice(length, size=k, replace=False).tolist())

    def choice(self, numeric, names):
        return names[int(self._rng(numeric).integers(len(names)))]

    def advice(self, numeric, action):
        rng = self._rng(numeric)
        reward = round(float(rng.uniform(-1.0, 1.0)), 3)
        if action.get("type") == "integer":
            return int(rng.integers(int(action["minimum"]), int(action["maximum"]) + 1)), reward
        items = action["items"]
        return [round(float(x), 4) for x in rng.uniform(items["minimum"], items["maximum"], int(action["maxItems"]))], \
            reward


class ConstantAnswerer(_InProcess):
    """The same answer to every question: the first steps of each episode, the last action (continuous: the upper
    bound), implicit reward +1."""

    name = "constant"

    def critical_steps(self, numeric, length, k):
        return list(range(k))

    def choice(self, numeric, names):
        return names[-1]

    def advice(self, numeric, action):
        if action.get("type") == "integer":
            return int(action["maximum"]), 1.0
        return [float(action["items"]["maximum"])] * int(action["maxItems"]), 1.0


CONTROL_ADVISORS = {"random": RandomAnswerer, "constant": ConstantAnswerer}
