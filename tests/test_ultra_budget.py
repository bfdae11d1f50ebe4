"""The advice budget per round (issue 23 item 3): at most `round_budget` episodes asked per round, all seeds together,
near-duplicates deduplicated by state similarity and their answers shared by the seeds they stand for."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from jaxmod.ultra.collect import EpisodeRecord
from jaxmod.ultra.sharing import plan_round

pytestmark = pytest.mark.timeout(600)


def episode(uid: int, critical: list[float], length: int = 5) -> EpisodeRecord:
    """An episode whose best-scored step (the last) holds `critical`; earlier steps spread the observations."""
    obs = np.array([[float(uid + t)] * len(critical) for t in range(length - 1)] + [critical], np.float32)
    return EpisodeRecord(uid=uid, env_index=0, start=0, obs=obs, actions=np.zeros(length, np.int32),
                         rewards=np.ones(length, np.float32), ended_by="termination")


def scores_for(eps: list[EpisodeRecord]) -> np.ndarray:
    """[T, N] scores whose maximum is each episode's last step (episodes laid end to end in env 0)."""
    out = np.zeros((sum(ep.length for ep in eps), 1), np.float32)
    start = 0
    for i, ep in enumerate(eps):
        eps[i] = EpisodeRecord(ep.uid, 0, start, ep.obs, ep.actions, ep.rewards, ep.ended_by)
        out[start + ep.length - 1, 0] = 1.0
        start += ep.length
    return out


def seeds_of(states: list[list[list[float]]]) -> tuple[list[list[EpisodeRecord]], list[np.ndarray]]:
    uid, per_seed, scores = 0, [], []
    for seed_states in states:
        eps = []
        for critical in seed_states:
            eps.append(episode(uid, critical))
            uid += 1
        scores.append(scores_for(eps))
        per_seed.append(eps)
    return per_seed, scores


def test_within_the_budget_every_episode_is_asked_as_before():
    per_seed, scores = seeds_of([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0]]])  # identical states, but the budget holds
    plan = plan_round(per_seed, scores, budget=3, radius=10.0, key=0)
    assert [[ep.uid for ep in eps] for eps in plan.asked] == [[0, 1], [2]]
    assert plan.shared_with == {} and plan.counts() == {"round_candidates": 3, "round_asked": 3,
                                                         "round_deduplicated": 0, "round_unasked": 0}


def test_near_duplicates_are_asked_once_and_shared_with_their_seeds():
    far = [[10.0, -10.0], [-10.0, 10.0], [10.0, 10.0], [-10.0, -10.0]]
    # every seed's first episode ends in (almost) the same state; the second ones are far apart
    per_seed, scores = seeds_of([[[0.0, 0.0], far[s]] for s in range(3)] + [[[0.01, 0.0], far[3]]])
    plan = plan_round(per_seed, scores, budget=4, radius=0.1, key=7)
    c = plan.counts()
    assert c["round_candidates"] == 8 and c["round_asked"] <= 4
    assert c["round_asked"] + c["round_deduplicated"] + c["round_unasked"] == 8
    firsts = {eps[0].uid for eps in per_seed}
    asked_firsts = [ep.uid for eps in plan.asked for ep in eps if ep.uid in firsts]
    assert len(asked_firsts) == 1  # one of the four near-identical states is asked...
    owner = next(s for s, eps in enumerate(per_seed) if eps[0].uid == asked_firsts[0])
    assert plan.shared_with[asked_firsts[0]] == tuple(s for s in range(4) if s != owner)  # ...for every seed
    assert c["round_deduplicated"] == 3 and c["round_unasked"] == 1  # 3 far ones fit the budget, one does not


def test_every_seed_gets_its_own_questions_across_rounds():
    per_seed, scores = seeds_of([[[float(10 * s + e), 0.0] for e in range(2)] for s in range(8)])
    asked = Counter()
    for rnd in range(8):
        plan = plan_round(per_seed, scores, budget=2, radius=0.0, key=(0, rnd))
        assert plan.episodes_asked == 2 and plan.deduplicated == 0
        asked.update(s for s, eps in enumerate(plan.asked) if eps)
    assert len(asked) >= 6  # drawn anew each round: not the same two seeds every time
    again = plan_round(per_seed, scores, budget=2, radius=0.0, key=(0, 7))
    assert [[ep.uid for ep in eps] for eps in again.asked] == [[ep.uid for ep in eps] for eps in plan.asked]


def test_bad_budget_knobs_are_one_line_errors():
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.ultra.config import UltraConfig

    with pytest.raises(ModulationError, match="--round-budget must be >= 1"):
        UltraConfig.flat(round_budget=0)
    with pytest.raises(ModulationError, match="dedup_radius"):
        UltraConfig.flat(dedup_radius=-1.0)


def test_a_budget_bound_round_records_fewer_envs_per_seed():
    """The recording shrinks with the budget: about ROUND_POOL x the budget's episodes over all seeds, at least one
    env per seed, unchanged where every seed's episodes fit the budget."""
    from jaxmod.ultra.config import ROUND_POOL, UltraConfig

    def envs(**knobs) -> int:
        return UltraConfig.flat(**knobs).round_collect_envs()

    assert envs(seeds=4, episodes_per_round=8, round_budget=32, collect_envs=8) == 8  # 32 episodes fit: as before
    # 64 seeds x 8 episodes against a budget of 32: ROUND_POOL x 32 = 128 episodes, 2 per seed, 2 envs each
    assert ROUND_POOL == 4 and envs(seeds=64, episodes_per_round=8, round_budget=32, collect_envs=8) == 2
    assert envs(seeds=1000, episodes_per_round=8, round_budget=1, collect_envs=8) == 1  # never below one env
    assert envs(seeds=16, episodes_per_round=8, round_budget=64, collect_envs=8) == 8  # 256 wanted: all 8 envs


def test_ultra_asks_within_the_budget_and_shares_answers_across_seeds(tmp_path):
    """`UltraRun` with 3 seeds, a budget of 1 episode per round and a radius that makes every episode a
    near-duplicate of the first one taken: one episode asked per round, its answers packed into all three seeds'
    advice, counted in ultra.json and the log. Each round records 2 of the 4 collection envs per seed
    (`round_collect_envs`): with 8-step recordings every env yields one CartPole episode (finished, or still running
    at 8 steps), so the round's candidates count the envs recorded."""
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    out, logs = tmp_path / "run", []
    config = UltraConfig.flat(seeds=3, pretrain_steps=1024, refine_steps=1536, chunks=2, collect_envs=4,
                              collect_steps=8, eval_envs=2, eval_steps=64, episodes_per_round=4, variants=("RA",),
                              advisor="scripted", sync_advice=True, round_budget=1, dedup_radius=1000.0,
                              ppo_overrides={"num_envs": 4, "num_steps": 64, "num_minibatches": 2,
                                             "update_epochs": 1})
    assert config.round_collect_envs() == 2
    UltraRun(config, out, log=logs.append).run()
    stats = json.loads((out / "ultra.json").read_text())["advisor"][0]
    records = [json.loads(line) for line in (out / "transcript.jsonl").read_text().splitlines()]
    per_round = Counter(r["tags"]["round"] for r in records if r["kind"] == "identify")
    rounds = len(per_round)
    assert rounds >= 1 and set(per_round.values()) == {1}  # one episode asked per round
    assert stats["round_asked"] == rounds and stats["round_candidates"] == stats["round_deduplicated"] + rounds
    assert stats["round_candidates"] == rounds * 3 * 2  # 3 seeds x 2 envs, one episode each
    valid_advice = sum(r["kind"] == "advise" and r["verdict"] == "valid" for r in records)
    assert valid_advice > 0 and stats["answers_shared"] == 2 * valid_advice  # with the two other seeds
    assert any(f"{stats['answers_shared']} answers shared with other seeds" in m for m in logs)
