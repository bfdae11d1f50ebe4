"""Prompts for the two ULTRA questions, with the four parts the paper names: environment card,
multi-step reasoning instruction, the episode as text, and the answer format (schema in the system
prompt too, since local servers constrain tokens but do not show the schema to the model).

`read_question` reads those parts back out of the messages (what a server, which sees only text, needs);
the rows inside the episode tables are read by the env's describer (`jaxmod.envs.describe.Describer.parse_rows`).
A question may also carry a `NumericContext`: the exact recorded numbers, for advisors that run in-process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from jaxmod.llm.answers import advice_schema, choice_schema, identify_schema

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


CHOICE_INSTRUCTIONS = (
    "The agent is about to act in the critical state below. Which action is best in this state? Think about where "
    "each action leads next, then answer with exactly one of: {choices}.")


TABLE_HEADER = "t | "  # how a describer's episode table header begins (`jaxmod.envs.describe.Describer.header`)


class PromptError(ValueError):
    """Messages that are not one of the two ULTRA questions `identify_messages` and `advice_messages` write."""


@dataclass(frozen=True, eq=False)
class NumericContext:
    """The exact recorded numbers behind one question: a side channel for in-process advisors that compute with
    them (a teacher policy). It is never rendered into the prompt, never sent over HTTP, and no part of a
    question's transcript, cache or replay key. llm/ only carries it: the arrays are the recorder's (numpy).

    env_id: the env the episode was recorded in. obs: (T, *obs_shape) raw observations (before any
    normalisation), obs[t] the state at step t. actions: (T,) int action indices or (T, A) float actions the
    agent took. step: the critical step an advice question is about; None for an identification question.
    """

    env_id: str
    obs: Any
    actions: Any
    step: int | None = None


@dataclass(frozen=True)
class EpisodeView:
    """One recorded episode as text, for critical-state identification."""

    episode_id: int
    length: int
    card: str  # environment card text
    table: str  # rendered episode (header + one line a step)
    numeric: NumericContext | None = field(default=None, compare=False, repr=False)  # the whole episode


@dataclass(frozen=True)
class StateQuery:
    """One critical state, for action suggestion and implicit reward."""

    episode_id: int
    step: int
    card: str
    context: str  # rendered recent steps up to and including `step` (a title line, then the table)
    state_text: str  # the critical state's named features
    agent_action: str  # what the agent did there
    discrete: bool
    num_actions: int = 0
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    numeric: NumericContext | None = field(default=None, compare=False, repr=False)  # the episode, step = `step`
    action_names: tuple[str, ...] = ()  # discrete actions' names, by index (the multiple-choice question's options)
    agent_index: int = 0  # the agent's discrete action at `step`, by index (the choice's implicit reward)

    def schema(self) -> dict[str, Any]:
        return advice_schema(self.discrete, self.num_actions, self.low, self.high)

    def choice_schema(self) -> dict[str, Any]:
        return choice_schema(self.action_names)


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


def choice_messages(query: StateQuery) -> Messages:
    """A multiple-choice question at one candidate state (discrete actions): which of the action names is best.
    Laid out as an advice question (the same sections, so `read_question` reads it as one) with everything that is
    the same for every question of an env first, up to the recent steps' table header, so a server's prompt cache
    (llama.cpp keeps the longest common prefix) evaluates only the rows and the state: the context's title line
    (`StateQuery.context`'s lines before the table header: the episode's length, end and return) moves to the
    critical state's section."""
    choices = ", ".join(f'"{n}"' for n in query.action_names)
    lines = query.context.split("\n")
    at = next((i for i, ln in enumerate(lines) if ln.startswith(TABLE_HEADER)), 0)  # the describer's header line
    title, table = "\n".join(lines[:at]), "\n".join(lines[at:])
    user = "\n\n".join([
        "## Environment\n" + query.card,
        "## Answer format\nJSON: {\"action\": <one of " + choices + ">}",
        "## Task\n" + CHOICE_INSTRUCTIONS.format(choices=choices),
        "## Recent steps\n" + table,
        f"## Critical state (episode {query.episode_id}, step {query.step})\n" + (title + "\n" if title else "") +
        f"{query.state_text}\nAgent's action: {query.agent_action}",
    ])
    return [{"role": "system", "content": _system(query.choice_schema())}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- reading a question back
@dataclass(frozen=True)
class AskedQuestion:
    """The parts of a question, read back from its messages by `read_question`.

    kind: "identify" or "advise". env_id: the card's `Environment:` line. table: the rendered episode
    (identify) or the recent steps up to the critical state (advise), as the describer wrote them.
    max_critical: the answer schema's limit on critical steps (identify; None if the system prompt has no
    schema). step, agent_action: the critical step and the agent's action text there (advise only).
    """

    kind: str
    env_id: str
    card: str
    table: str
    max_critical: int | None = None
    step: int | None = None
    agent_action: str | None = None


def _section(text: str, title: str) -> str:
    m = re.search(rf"## {re.escape(title)}[^\n]*\n(.*?)(?=\n## |\Z)", text, re.S)
    return m.group(1) if m else ""


def read_question(messages: Messages) -> AskedQuestion:
    """What `identify_messages` or `advice_messages` wrote, read back from the messages alone.

    Raises PromptError if there is no user message with an `Environment:` line, or the user message asks
    neither for critical states (`## Episode`) nor for advice (`## Critical state (episode e, step t)` with an
    `Agent's action:` line). The tables are returned as text, unchecked."""
    user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    env = re.search(r"Environment: (\S+)", user)
    if env is None:
        raise PromptError("no 'Environment:' line in the prompt")
    card = _section(user, "Environment").strip() or user
    if "## Episode" in user:
        return AskedQuestion("identify", env.group(1), card, _section(user, "Episode"), _max_critical(messages))
    if "## Critical state" in user:
        crit = re.search(r"## Critical state \(episode \d+, step (\d+)\)", user)
        took = re.search(r"Agent's action: (.*)", user)
        if crit is None or took is None:
            raise PromptError("an advice question needs '## Critical state (episode e, step t)' and "
                              "'Agent's action: ...' lines")
        return AskedQuestion("advise", env.group(1), card, _section(user, "Recent steps"), None,
                             int(crit.group(1)), took.group(1).strip())
    raise PromptError("prompt asks neither for critical states nor for advice")


def _max_critical(messages: Messages) -> int | None:
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    m = re.search(r'"maxItems":(\d+)', system)
    return int(m.group(1)) if m else None
