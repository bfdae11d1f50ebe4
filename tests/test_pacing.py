"""Advisor pacing (`jaxmod.llm.pacing`): under the asynchronous schedule a question goes out only when its answer
is expected before the refinement's last advice swap; the rest are not asked (counted, never failures), and a
replay skips exactly the same ones."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from jaxmod.llm.pacing import Pacer
from jaxmod.ultra.config import UltraConfig
from jaxmod.ultra.pipeline import UltraRun

pytestmark = pytest.mark.timeout(300)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_first_question_is_a_probe_and_admission_follows_the_measured_rate():
    clock = Clock()
    pacer = Pacer(clock)

    async def scenario():
        assert await pacer.admit()  # no rate, no deadline: one question at a time
        second = asyncio.ensure_future(pacer.admit())
        await asyncio.sleep(0.01)
        assert not second.done()  # waits for the probe's answer
        clock.t += 2.0  # the probe took 2 s: 0.5 answers per busy second
        pacer.release()
        assert await second  # no deadline yet: still one at a time, now the second
        assert pacer.rate == pytest.approx(0.5)
        clock.t += 2.0
        pacer.release()
        pacer.set_deadline(clock.t + 5.0)  # answers must be in within 5 s
        assert await pacer.admit()  # expected back in 1 / 0.5 = 2 s
        assert await pacer.admit()  # in 4 s (one ahead of it)
        assert not await pacer.admit()  # in 6 s: too late, not sent
        assert pacer.in_flight == 2
        clock.t += 10.0
        pacer.release()
        pacer.release()
        assert not await pacer.admit()  # the deadline has passed: nothing more until a later one is set
        pacer.set_deadline(clock.t + 100.0)
        assert await pacer.admit()

    asyncio.run(scenario())


def test_a_parallel_advisor_is_paced_by_its_latency_not_only_its_rate():
    clock = Clock()
    pacer = Pacer(clock)

    async def scenario():
        assert await pacer.admit()
        clock.t += 1.0
        pacer.release()  # 1 answer in 1 s: rate 1/s, latency 1 s
        pacer.set_deadline(clock.t + 100.0)
        for _ in range(8):  # a parallel server: 8 answers back together after 1 s each
            assert await pacer.admit()
        clock.t += 1.0
        for _ in range(pacer.in_flight):
            pacer.release()
        assert pacer.rate == pytest.approx(4.5) and pacer.latency == pytest.approx(1.0)
        pacer.set_deadline(clock.t + 0.5)  # 9 answers a busy second, but none comes back within 0.5 s
        assert not await pacer.admit()
        pacer.set_deadline(clock.t + 1.5)
        assert await pacer.admit()

    asyncio.run(scenario())


def test_a_deadline_set_from_another_thread_wakes_a_waiting_question():
    clock = Clock()
    pacer = Pacer(clock)

    async def scenario():
        assert await pacer.admit()
        waiting = asyncio.ensure_future(pacer.admit())
        await asyncio.sleep(0.01)
        clock.t += 1000.0  # the refinement ended while it waited
        threading.Thread(target=pacer.set_deadline, args=(clock.t - 1.0,)).start()
        assert await asyncio.wait_for(waiting, 5.0) is False

    asyncio.run(scenario())


TINY = dict(seeds=2, pretrain_steps=4 * 128 * 4, refine_steps=4 * 128 * 12, chunks=6, collect_envs=4,
            collect_steps=96, eval_envs=4, eval_steps=128, episodes_per_round=3, advisor_priority="normal")


def test_a_slow_advisor_is_asked_only_what_it_can_answer_in_time_and_the_run_replays_exactly(tmp_path):
    # the scripted advisor behind 0.4 s per answer, through the product's own factory (--advisor-latency): a
    # round of 2 seeds x 3 episodes takes ~7 s, far more than this refinement's few seconds
    live = UltraRun(UltraConfig.flat(variants=("PPO", "RA"), advisor="scripted", latency_s=0.4, **TINY),
                    tmp_path / "live")
    first = live.run()
    st = live.advice_stats[0]
    assert st["paced"] > 0  # questions whose answers could not have acted were not asked
    assert st["failed"] == 0 and st["unanswered"] <= 1  # what was asked was answered (one may still be out)
    assert st["questions"] == st["valid"] + st["invalid"]
    assert st["wall_vs_ppo"] == pytest.approx(first["RA"].wall_s / first["PPO"].wall_s)  # the whole cost, said
    records = [json.loads(ln) for ln in (tmp_path / "live" / "transcript.jsonl").read_text().splitlines()]
    not_asked = [r for r in records if r["verdict"] == "not asked"]
    assert len(not_asked) == st["paced"] and all(r["tags"]["variant"] == "RA" for r in not_asked)
    assert "not asked" not in (tmp_path / "live" / "critical_states.md").read_text()
    # the replay (its transcript, its swap chunks) skips the same questions and gives the same numbers
    again = UltraRun(UltraConfig.replay_of(tmp_path / "live"), tmp_path / "replay")
    replayed = again.run()
    assert replayed["RA"].eval_returns == first["RA"].eval_returns
    assert (tmp_path / "replay" / "critical_states.md").read_text() == \
        (tmp_path / "live" / "critical_states.md").read_text()
    assert again.advice_stats[0]["paced"] > 0  # served from the transcript's "not asked" records


def test_without_pacing_every_question_is_asked(tmp_path):
    run = UltraRun(UltraConfig.flat(variants=("RA",), advisor="scripted", latency_s=0.05, pacing=False,
                                    **{**TINY, "chunks": 3}), tmp_path / "run")
    run.run()
    assert run.advice_stats[0]["paced"] == 0
