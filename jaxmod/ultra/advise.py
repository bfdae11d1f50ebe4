"""Identify critical states and ask for advice on a batch of recorded episodes (host side)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxmod.advice.arrays import AdviceItem
from jaxmod.envs.core import EnvCore
from jaxmod.envs.describe import Describer
from jaxmod.envs.registry import describer_of
from jaxmod.llm import Advised, Advisor, EpisodeView, NumericContext, Rejected, StateQuery
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


def episode_views(describer: Describer, core: EnvCore, episodes: list[EpisodeRecord], budget_chars: int = 6000,
                  rows: dict[int, list[str]] | None = None) -> list[EpisodeView]:
    """The identification question's view of each episode (`rows`: their table rows by uid, if rendered), with the
    episode's exact observations and actions as its numeric side channel."""
    views = []
    for ep in episodes:
        table, _ = describer.render_episode(ep.obs, ep.actions, ep.rewards, episode_id=ep.uid, ended_by=ep.ended_by,
                                            budget_chars=budget_chars, rows=None if rows is None else rows[ep.uid])
        views.append(EpisodeView(ep.uid, ep.length, describer.card.text(), table,
                                 numeric=NumericContext(core.env_id, ep.obs, ep.actions)))
    return views


def state_query(describer: Describer, core: EnvCore, ep: EpisodeRecord, step: int, context_steps: int = 12,
                rows: list[str] | None = None) -> StateQuery:
    """The advice question at `step` of `ep`, with the `context_steps` steps up to it (`rows`: the episode's table
    rows, if rendered) and the episode's exact numbers as its side channel."""
    lo = max(0, step - context_steps + 1)
    window = describer.rows(ep.obs[lo:step + 1], ep.actions[lo:step + 1], ep.rewards[lo:step + 1], first_step=lo) \
        if rows is None else rows[lo:step + 1]
    table, _ = describer.render_episode(ep.obs[lo:step + 1], ep.actions[lo:step + 1], ep.rewards[lo:step + 1],
                                        title=f"Episode {ep.uid}, steps {lo}-{step} (of {ep.length}); ended by "
                                              f"{ep.ended_by} with return {ep.ret:+.2f}.", rows=window)
    space = core.action_space
    return StateQuery(ep.uid, step, describer.card.text(), table, describer.state_text(ep.obs[step]),
                      describer.action_text(ep.actions[step]), space.discrete, space.num_actions, space.low, space.high,
                      numeric=NumericContext(core.env_id, ep.obs, ep.actions, step))


async def advise_episodes(advisor: Advisor, core: EnvCore, rec: Recording, episodes: list[EpisodeRecord],
                          context_steps: int = 12) -> tuple[list[AdviceItem], list[Any], list[CriticalRow]]:
    """Identify critical steps in `episodes`, ask for advice at each, and return packable items with
    their verdicts (validated `Advised` or `Rejected`) and the report rows."""
    describer = describer_of(core)
    rows = {ep.uid: describer.rows(ep.obs, ep.actions, ep.rewards) for ep in episodes}  # rendered once per episode
    idents = await advisor.identify(episode_views(describer, core, episodes, rows=rows))
    items: list[AdviceItem] = []
    queries: list[StateQuery] = []
    whys: list[tuple[EpisodeRecord, int, str]] = []
    for ep, ident in zip(episodes, idents, strict=True):
        if isinstance(ident, Rejected):
            continue
        for crit in ident.steps:
            queries.append(state_query(describer, core, ep, crit.step, context_steps, rows[ep.uid]))
            items.append(AdviceItem(episode=ep.uid, step=crit.step, obs=ep.obs[crit.step],
                                    snapshot=snapshot_at(rec, ep, crit.step), action=0, reward=0.0,
                                    reason=crit.reason, rated_action=ep.actions[crit.step]))
            whys.append((ep, crit.step, crit.reason))
    verdicts = await advisor.advise(queries)
    rows = []
    for (ep, step, why), query, verdict in zip(whys, queries, verdicts, strict=True):
        ok = isinstance(verdict, Advised)
        rows.append(CriticalRow(
            episode=ep.uid, step=step, episode_length=ep.length, episode_return=ep.ret, state=query.state_text,
            agent_action=query.agent_action, why_critical=why,
            suggested_action=describer.action_text(np.asarray(verdict.action)) if ok else "-",
            implicit_reward=verdict.reward if ok else None, advice_reason=verdict.reason if ok else "",
            verdict="valid" if ok else f"dropped: {verdict.reason}"))
    return items, verdicts, rows
