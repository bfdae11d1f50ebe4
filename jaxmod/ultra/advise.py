"""Identify critical states and ask for advice on a batch of recorded episodes (host side)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxmod.advice.arrays import AdviceItem
from jaxmod.envs.core import EnvCore
from jaxmod.envs.describe import Describer
from jaxmod.envs.registry import describer_of
from jaxmod.llm import Advised, Advisor, EpisodeView, NotAsked, NumericContext, Rejected, StateQuery
from jaxmod.llm.budget import PromptTooLong, estimate_tokens
from jaxmod.llm.prompts import Messages, advice_messages, choice_messages, identify_messages
from jaxmod.ultra.candidates import episode_scores, pick_candidates
from jaxmod.ultra.collect import EpisodeRecord, Recording, snapshot_at


@dataclass(frozen=True)
class CriticalRow:
    """One line of the critical-state table a run writes (what the advisor said and why)."""

    episode: int
    step: int
    episode_length: int
    episode_return: float
    state: str
    agent_action: str
    why_critical: str
    suggested_action: str
    implicit_reward: float | None
    advice_reason: str
    verdict: str


PROTOCOLS = ("candidates", "episodes")
CHOICE_CONTEXT_STEPS = 2  # recent steps shown with a multiple-choice question (jaxmod's choice: the state and the
# step before it, its trend; the rest of the prompt is the same for every question, which a server's prompt cache
# reuses, so these rows and the state are what a local LLM evaluates per question: ~35 tokens a row on SmolLM2)
TABLE_CHARS = 6000  # the longest episode table sent (bytes of its rows), context permitting


def _fit(render: Callable[[int], Any], messages: Callable[[Any], Messages], budget: int | None,
         chars: int = TABLE_CHARS) -> Any:
    """`render(chars)` with the largest table budget (at most `chars`) whose messages' `estimate_tokens` fit
    `budget` tokens (None: no limit). Raises PromptTooLong when even a few rows do not fit."""
    out = render(chars)
    if budget is None:
        return out
    fixed = estimate_tokens(messages(render(0)))  # everything but the rows (render(0) keeps the fewest)
    chars = min(chars, budget - fixed)
    while chars > 0:
        out = render(chars)
        over = estimate_tokens(messages(out)) - budget
        if over <= 0:
            return out
        chars -= max(over, 16)
    raise PromptTooLong(f"the question alone takes {fixed} of the {budget} prompt tokens")


def episode_views(describer: Describer, core: EnvCore, episodes: list[EpisodeRecord], budget_chars: int = TABLE_CHARS,
                  rows: dict[int, list[str]] | None = None, budget_tokens: int | None = None, max_critical: int = 2,
                  focus: dict[int, list[int]] | None = None) -> list[EpisodeView]:
    """The identification question's view of each episode (`rows`: their table rows by uid, if rendered), with the
    episode's exact observations and actions as its numeric side channel. With `budget_tokens` each view's table is
    windowed until its question (`identify_messages(view, max_critical)`) fits; where the context (not
    `budget_chars`) cuts an episode, the rows kept are windows around its `focus` steps (by uid: candidate critical
    steps) and its end, else the episode's start and end."""
    views = []
    for ep in episodes:
        def render(chars: int, ep: EpisodeRecord = ep) -> EpisodeView:
            table, _ = describer.render_episode(ep.obs, ep.actions, ep.rewards, episode_id=ep.uid,
                                                ended_by=ep.ended_by, budget_chars=chars,
                                                rows=None if rows is None else rows[ep.uid],
                                                focus=() if focus is None or chars >= budget_chars else
                                                focus.get(ep.uid, ()))  # windows only when the context binds
            return EpisodeView(ep.uid, ep.length, describer.card.text(), table,
                               numeric=NumericContext(core.env_id, ep.obs, ep.actions))

        views.append(_fit(render, lambda v: identify_messages(v, max_critical), budget_tokens, budget_chars))
    return views


def state_query(describer: Describer, core: EnvCore, ep: EpisodeRecord, step: int, context_steps: int = 12,
                rows: list[str] | None = None, budget_tokens: int | None = None,
                question: Callable[[StateQuery], Messages] = advice_messages) -> StateQuery:
    """The advice question at `step` of `ep`, with up to `context_steps` steps up to it (`rows`: the episode's table
    rows, if rendered; fewer steps when `question(query)` would not fit `budget_tokens`) and the episode's exact
    numbers as its side channel."""
    space = core.action_space
    names = tuple(describer.card.action_names) if space.discrete else ()
    agent = int(np.asarray(ep.actions[step]).reshape(-1)[0]) if space.discrete else 0

    first = max(0, step - context_steps + 1)
    full = describer.rows(ep.obs[first:step + 1], ep.actions[first:step + 1], ep.rewards[first:step + 1],
                          first_step=first) if rows is None else rows[first:step + 1]
    width = max(len(r.encode("utf-8")) for r in full) + 1

    def render(chars: int) -> StateQuery:
        n = max(1, min(len(full), chars // width))  # the latest n steps up to `step`
        lo = step - n + 1
        window = full[len(full) - n:]
        table, _ = describer.render_episode(ep.obs[lo:step + 1], ep.actions[lo:step + 1], ep.rewards[lo:step + 1],
                                            title=f"Episode {ep.uid}, steps {lo}-{step} (of {ep.length}); ended by "
                                                  f"{ep.ended_by} with return {ep.ret:+.2f}.", rows=window)
        return StateQuery(ep.uid, step, describer.card.text(), table, describer.state_text(ep.obs[step]),
                          describer.action_text(ep.actions[step]), space.discrete, space.num_actions, space.low,
                          space.high, numeric=NumericContext(core.env_id, ep.obs, ep.actions, step),
                          action_names=names, agent_index=agent)

    return _fit(render, question, budget_tokens)


Picked = tuple[EpisodeRecord, int, str]  # (episode, critical step, why it is critical)


def _device_candidates(episodes: list[EpisodeRecord], scores: np.ndarray | None, k: int) -> list[Picked]:
    """The candidates protocol's critical steps: each episode's `k` best-scored steps (`pick_candidates`)."""
    if scores is None:
        raise ValueError("the candidates protocol needs the recording's candidate scores")
    picked: list[Picked] = []
    for ep, sc in zip(episodes, episode_scores(scores, episodes), strict=True):
        picked += [(ep, t, f"device candidate (score {float(sc[t]):+.2f}: value drop net of reward + policy "
                           "entropy, standardised)") for t in pick_candidates(sc, k)]
    return picked


async def _identified(advisor: Advisor, core: EnvCore, describer: Describer, episodes: list[EpisodeRecord],
                      rows: dict[int, list[str]], focus: dict[int, list[int]], budget: int | None) -> list[Picked]:
    """The paper's protocol's critical steps: the advisor reads each episode (windowed to `budget` tokens around
    its `focus` steps where needed; one that cannot fit is dropped and counted) and names them."""
    kept, views = [], []
    for ep in episodes:
        try:
            views.append(episode_views(describer, core, [ep], rows=rows, budget_tokens=budget,
                                       max_critical=advisor.max_critical, focus=focus)[0])
            kept.append(ep)
        except PromptTooLong as err:
            advisor.drop_over_budget(str(err))
    picked: list[Picked] = []
    for ep, ident in zip(kept, await advisor.identify(views), strict=True):
        if not isinstance(ident, Rejected):
            picked += [(ep, crit.step, crit.reason) for crit in ident.steps]
    return picked


Answered = Callable[[int, AdviceItem, Any, CriticalRow], None]  # (question's index, item, verdict, row) as it arrives


async def _advise_at(advisor: Advisor, core: EnvCore, describer: Describer, rec: Recording, picked: list[Picked],
                     rows: dict[int, list[str]], budget: int | None, context_steps: int, choice: bool,
                     on_answer: Answered | None = None) -> tuple[list[AdviceItem], list[Any], list[CriticalRow]]:
    """The advice question at each picked step (a multiple choice with `choice`), its packable item, verdict and
    report row; a question that cannot fit `budget` tokens is dropped and counted. The questions go out together
    (one deadline, the advisor's concurrency); `on_answer(i, item, verdict, row)` sees each one (the i-th asked) as
    it is judged; a question the advisor's pacer did not send (`NotAsked`) is left out of both."""
    question = choice_messages if choice else advice_messages
    steps = min(context_steps, CHOICE_CONTEXT_STEPS) if choice else context_steps
    deadline = advisor.batch_deadline()

    async def ask(i: int, ep: EpisodeRecord, step: int, why: str, query: StateQuery,
                  ) -> tuple[AdviceItem, Any, CriticalRow]:
        item = AdviceItem(episode=ep.uid, step=step, obs=ep.obs[step], snapshot=snapshot_at(rec, ep, step),
                          action=0, reward=0.0, reason=why, rated_action=ep.actions[step])
        verdict = (await (advisor.judge([query], deadline) if choice else advisor.advise([query], deadline)))[0]
        if isinstance(verdict, NotAsked):  # paced out (`jaxmod.llm.pacing`): no answer, no row
            return None
        ok = isinstance(verdict, Advised)
        row = CriticalRow(
            episode=ep.uid, step=step, episode_length=ep.length, episode_return=ep.ret, state=query.state_text,
            agent_action=query.agent_action, why_critical=why,
            suggested_action=describer.action_text(np.asarray(verdict.action)) if ok else "-",
            implicit_reward=verdict.reward if ok else None, advice_reason=verdict.reason if ok else "",
            verdict="valid" if ok else f"dropped: {verdict.reason}")
        if on_answer is not None:
            on_answer(i, item, verdict, row)
        return item, verdict, row

    asked = []
    for ep, step, why in picked:
        try:
            asked.append((ep, step, why, state_query(describer, core, ep, step, steps, rows[ep.uid], budget, question)))
        except PromptTooLong as err:
            advisor.drop_over_budget(str(err))
    answers = [a for a in await asyncio.gather(*(ask(i, *a) for i, a in enumerate(asked))) if a is not None]
    return [a[0] for a in answers], [a[1] for a in answers], [a[2] for a in answers]


async def advise_episodes(advisor: Advisor, core: EnvCore, rec: Recording, episodes: list[EpisodeRecord],
                          context_steps: int = 12, scores: np.ndarray | None = None, protocol: str = "episodes",
                          on_answer: Answered | None = None) -> tuple[list[AdviceItem], list[Any], list[CriticalRow]]:
    """Critical steps of `episodes` and advice at each; returns packable items with their verdicts (validated
    `Advised` or `Rejected`) and the report rows. `scores`: the recording's [T, N] candidate scores
    (`jaxmod.ultra.candidates`).

    protocol "episodes" (the paper's): the advisor reads each episode (windowed around its candidate steps when it
    does not fit the context) and names its critical steps, then answers an advice question at each.
    protocol "candidates" (jaxmod's extension; needs `scores`): the device's `advisor.max_critical` best-scored
    steps of each episode are the critical steps, and the advisor answers one short question at each: a multiple
    choice among the action names for discrete actions (`Advisor.judge`), the advice question otherwise. Every
    prompt fits the advisor's `prompt_budget`; one that cannot is dropped and counted. `on_answer(i, item,
    verdict, row)` is called with each advice answer (the i-th asked) as it is judged (to use answers before the
    whole batch is in)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown advice protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    describer = describer_of(core)
    budget = await advisor.prompt_budget()
    rows = {ep.uid: describer.rows(ep.obs, ep.actions, ep.rewards) for ep in episodes}  # rendered once per episode
    if protocol == "candidates":
        picked = _device_candidates(episodes, scores, advisor.max_critical)
    else:
        best = {} if scores is None else {
            ep.uid: pick_candidates(sc, advisor.max_critical)
            for ep, sc in zip(episodes, episode_scores(scores, episodes), strict=True)}
        picked = await _identified(advisor, core, describer, episodes, rows, best, budget)
    choice = protocol == "candidates" and core.action_space.discrete
    return await _advise_at(advisor, core, describer, rec, picked, rows, budget, context_steps, choice, on_answer)
