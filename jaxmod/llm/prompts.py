"""Prompts for the two ULTRA questions, with the four parts the paper names: environment card,
multi-step reasoning instruction, the episode as text, and the answer format (schema in the system
prompt too, since local servers constrain tokens but do not show the schema to the model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jaxmod.llm.answers import advice_schema, identify_schema

Messages = list[dict[str, str]]

SYSTEM = ("You are an expert reinforcement-learning coach. You read an agent's recorded behaviour and give "
          "precise, checkable advice. Answer with one JSON object that follows this JSON schema exactly, and "
          "nothing else:\n{schema}")

IDENTIFY_INSTRUCTIONS = (
    "Find the critical states of this episode: the steps where the agent's action most changed its ability to "
    "collect future reward (for example the last moment a failure could still be avoided). Reason step by step: "
    "(1) say how the episode ended and why, (2) trace back to when things started to go wrong, (3) pick at most "
    "{k} step indices t from the table, most important first, each with a one-line reason.")

ADVICE_INSTRUCTIONS = (
    "The state at step {t} was identified as critical. Reason about the environment's dynamics from the recent "
    "steps, then (1) propose the best action at step {t}, and (2) rate the agent's own action at step {t} with "
    "an implicit reward in [-1, 1] (-1 clearly harmful, 0 neutral, +1 clearly right), with a one-line reason.")


@dataclass(frozen=True)
class EpisodeView:
    """One recorded episode as text, for critical-state identification."""

    episode_id: int
    length: int
    card: str  # environment card text
    table: str  # rendered episode (header + one line a step)


@dataclass(frozen=True)
class StateQuery:
    """One critical state, for action suggestion and implicit reward."""

    episode_id: int
    step: int
    card: str
    context: str  # rendered recent steps up to and including `step`
    state_text: str  # the critical state's named features
    agent_action: str  # what the agent did there
    discrete: bool
    num_actions: int = 0
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def schema(self) -> dict[str, Any]:
        return advice_schema(self.discrete, self.num_actions, self.low, self.high)


def _system(schema: dict[str, Any]) -> str:
    return SYSTEM.format(schema=json.dumps(schema, separators=(",", ":")))


def identify_messages(view: EpisodeView, max_critical: int) -> Messages:
    """Messages asking for the critical steps of one episode."""
    schema = identify_schema(max_critical)
    user = "\n\n".join([
        "## Environment\n" + view.card,
        "## Task\n" + IDENTIFY_INSTRUCTIONS.format(k=max_critical),
        "## Episode\n" + view.table,
        "## Answer format\nJSON: {\"critical_steps\": [{\"step\": <t>, \"reason\": \"...\"}]}",
    ])
    return [{"role": "system", "content": _system(schema)}, {"role": "user", "content": user}]


def advice_messages(query: StateQuery) -> Messages:
    """Messages asking for an action suggestion and an implicit reward at one critical state."""
    if query.discrete:
        action_fmt = f"an integer action index in 0..{query.num_actions - 1}"
    else:
        action_fmt = f"a list of {len(query.low)} numbers within the action bounds"
    user = "\n\n".join([
        "## Environment\n" + query.card,
        "## Task\n" + ADVICE_INSTRUCTIONS.format(t=query.step),
        "## Recent steps\n" + query.context,
        f"## Critical state (episode {query.episode_id}, step {query.step})\n{query.state_text}\n"
        f"Agent's action: {query.agent_action}",
        f"## Answer format\nJSON: {{\"action\": {action_fmt}, \"reward\": <number in [-1, 1]>, \"reason\": \"...\"}}",
    ])
    return [{"role": "system", "content": _system(query.schema())}, {"role": "user", "content": user}]
