"""The ULTRA pipeline end to end on a tiny budget, through the real HTTP path, and the async loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time

import jax
import pytest

from jaxmod.llm import Advisor, DelayedBackend, LocalBackend
from jaxmod.ultra.async_advice import AdvisorThread
from jaxmod.ultra.config import UltraConfig
from jaxmod.ultra.pipeline import UltraRun

pytestmark = pytest.mark.timeout(600)

TINY = dict(seeds=2, pretrain_steps=4 * 128 * 4, refine_steps=4 * 128 * 6, chunks=3, collect_envs=4,
            collect_steps=96, eval_envs=4, eval_steps=128, episodes_per_round=3)


def test_end_to_end_through_the_http_advisor(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-written-123")
    settings = UltraConfig.flat(variants=("PPO", "RA"), **TINY)
    logs: list[str] = []
    run = UltraRun(settings, tmp_path / "run", log=logs.append)
    results = run.run()
    assert set(results) == {"PPO", "RA"}
    # the run says so exactly when ULTRA-R's trust-scaled bonus never acted
    shaped = [c["shaping"] for c in results["RA"].chunk_metrics]
    assert any("RA: the implicit reward never acted" in m for m in logs) == (not any(shaped))
    for r in results.values():
        assert len(r.steps) == 4 and len(r.eval_returns[-1]) == 2
    summary = json.loads((tmp_path / "run" / "ultra.json").read_text())
    st = summary["advisor"][0]
    assert st["valid"] > 0 and st["invalid"] == 0
    assert summary["modulation_choices"]["jaxmod_choices"]["restart_prob"] == 0.5
    table = (tmp_path / "run" / "critical_states.md").read_text().splitlines()
    assert len(table) > 2 and "push\\_" in table[2]  # Markdown-escaped
    transcript = (tmp_path / "run" / "transcript.jsonl").read_text().splitlines()
    assert transcript and all(json.loads(ln)["verdict"] for ln in transcript)
    assert (tmp_path / "run" / "ultra.png").exists()
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file() and f.suffix != ".png":
            assert "sk-never-written-123" not in f.read_text()
    chunks = results["RA"].chunk_metrics
    assert any(c.get("critical_frac", 0) > 0 for c in chunks[:-1])
    # 2 seeds: the outcome guard reports the gap to fine-tuning per chunk, says it cannot act, and never does
    assert all("guard_gap" in c for c in chunks) and results["RA"].guard_restored is None
    assert sum("outcome guard needs 5 or more seeds" in m for m in logs) == 1


def _slow_factory(transcript=None, delay_s: float = 0.5):
    @contextlib.asynccontextmanager
    async def factory():
        yield Advisor(DelayedBackend(LocalBackend(), delay_s), max_critical=2, transcript=transcript, concurrency=1)

    return factory


def test_advisor_thread_overlaps_a_slow_advisor():
    with AdvisorThread(_slow_factory()) as thread:
        async def job(adv):
            await asyncio.sleep(0.5)
            return "done"

        t0 = time.perf_counter()
        fut = thread.submit(job)
        submitted = time.perf_counter() - t0
        assert submitted < 0.05 and not fut.done()
        assert fut.result(timeout=5) == "done"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling classes are Linux's")
def test_advisor_thread_runs_on_idle_cpu_time_only():
    """With idle priority the advisor loop and the threads it starts (an embedded server's) take only CPU time
    training leaves."""
    async def policies(_adv):
        seen = []
        child = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(threading.get_native_id())))
        child.start()
        child.join()
        return os.sched_getscheduler(threading.get_native_id()), seen[0]

    with AdvisorThread(_slow_factory(), idle_priority=True) as thread:
        assert thread.submit(policies).result(timeout=5) == (os.SCHED_IDLE, os.SCHED_IDLE)
    with AdvisorThread(_slow_factory()) as thread:  # the default: normal priority
        assert thread.submit(policies).result(timeout=5) == (os.SCHED_OTHER, os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own priority is untouched


def test_frozen_heap_freezes_only_for_its_block_and_keeps_a_callers_freeze():
    """The objects alive when refinement starts are out of the collector's reach during it (the advisor's
    allocations must not trigger rescans of the whole heap), and back in it afterwards."""
    import gc

    from jaxmod.ultra.heap import frozen_heap

    assert gc.get_freeze_count() == 0
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 1000
        young = [[] for _ in range(10)]
        assert gc.get_freeze_count() == frozen and gc.is_tracked(young)  # new objects are collected as usual
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a caller's own freeze survives the block
    try:
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_refinement_does_not_stall_on_a_slow_advisor(tmp_path):
    settings = UltraConfig.flat(variants=("RA",), **{**TINY, "chunks": 6})
    run = UltraRun(settings, tmp_path / "slow", advisor_factory=_slow_factory())
    results = run.run()
    chunks = results["RA"].chunk_metrics
    # with 0.5 s per answer (and one at a time), an advice round takes seconds: training must go on with the
    # advice it has instead of waiting, so fewer than the 5 chunks after the first (the first can never swap:
    # no round is handed over before it) swap in new advice, and the loop's own waiting stays small
    assert len(chunks) == 6 and not chunks[0]["swapped_advice"]
    assert sum(c["swapped_advice"] for c in chunks[1:]) < 5
    st = run.advice_stats[0]
    assert st["stall_in_refinement_s"] < 0.5 * results["RA"].wall_s
    # the first round is not waited for either: refinement starts at once on empty advice, the round's answers
    # (seconds away) swap in later, and the reported overhead is every wait of the loop, all inside its wall time
    assert st["initial_advice_s"] == 0.0 and st["advice_overhead_s"] == st["stall_in_refinement_s"]
    assert abs(st["advice_overhead_frac"] * results["RA"].wall_s - st["advice_overhead_s"]) < 1e-3  # s rounded
    assert st["first_advice_chunk"] is None or st["first_advice_chunk"] >= 2


def test_a_synchronous_run_replays_exactly_from_its_transcript(tmp_path):
    base = dict(TINY, variants=("RA",), sync_advice=True)
    first = UltraRun(UltraConfig.flat(**base), tmp_path / "live").run()
    transcript = tmp_path / "live" / "transcript.jsonl"
    replayed = UltraRun(UltraConfig.flat(**base, advisor=f"replay:{transcript}"), tmp_path / "replay").run()
    assert first["RA"].eval_returns == replayed["RA"].eval_returns
    live_rows = (tmp_path / "live" / "critical_states.md").read_text()
    assert live_rows == (tmp_path / "replay" / "critical_states.md").read_text()
    assert live_rows.startswith("| variant | seed | episode |") and "| RA | 1 |" in live_rows
    # every question is tagged, so replay serves exactly per (variant, round, seed, question)
    tags = [json.loads(ln)["tags"] for ln in transcript.read_text().splitlines()]
    assert {(t["variant"], t["seed"]) for t in tags} == {("RA", 0), ("RA", 1)}
    assert {t["round"] for t in tags} == {0, 1, 2}


def test_an_asynchronous_run_replays_exactly_from_its_run_folder(tmp_path):
    # normal priority: on a busy 2-core CPU an idle-priority advisor may answer only after this tiny run ends
    live = UltraRun(UltraConfig.flat(variants=("RA",), advisor_priority="normal", **{**TINY, "chunks": 6}),
                    tmp_path / "live")
    live.advisor_factory = _slow_factory(live.transcript, delay_s=0.0)
    first = live.run()
    swaps = [c["swapped_advice"] for c in first["RA"].chunk_metrics]
    assert sum(swaps) > 0  # advice swapped in when it arrived: a timing no second run would meet by itself
    settings = UltraConfig.replay_of(tmp_path / "live")
    assert settings.advisor.spec.startswith("replay:") and settings.schedule.chunks == 6
    again = UltraRun(settings, tmp_path / "replay").run()
    assert [c["swapped_advice"] for c in again["RA"].chunk_metrics] == swaps
    assert again["RA"].eval_returns == first["RA"].eval_returns
    with pytest.raises(ValueError, match="no refinement of 'R'"):
        UltraRun(dataclasses.replace(settings, variants=("R",)), tmp_path / "other").schedule("R")


class _StallingBackend(DelayedBackend):
    """The scripted advisor answering its first `instant` questions at once and every later one after `delay_s`."""

    def __init__(self, instant: int, delay_s: float) -> None:
        super().__init__(LocalBackend(), delay_s)
        self.calls, self.instant = 0, instant

    async def complete(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.instant:
            return await self.inner.complete(*args, **kwargs)
        return await super().complete(*args, **kwargs)


def test_answers_act_as_they_arrive_and_a_partial_swap_replays_exactly(tmp_path):
    # 6 identification questions and the first 3 advice questions answered at once, the rest 60 s later (after
    # the run): the first answers must act while the round is still being answered, and a replay of the run
    # must pack exactly those answers before the same chunk
    live = UltraRun(UltraConfig.flat(variants=("RA",), advisor_priority="normal", **{**TINY, "chunks": 6}),
                    tmp_path / "live")

    @contextlib.asynccontextmanager
    async def factory():
        yield Advisor(_StallingBackend(9, 60.0), max_critical=2, transcript=live.transcript, concurrency=1)

    live.advisor_factory = factory
    first = live.run()
    rows = first["RA"].chunk_metrics
    partial = [r for r in rows if r["swapped_advice"]]
    assert len(partial) == 1 and not partial[0]["round_complete"] and partial[0]["packed"] == 3
    assert len(partial[0]["taken"]) == 3 and {seed for seed, _, _ in partial[0]["taken"]} <= {0, 1}
    assert any(r.get("critical_frac", 0) > 0 for r in rows)  # the three answers acted
    st = live.advice_stats[0]  # the rest of the round was still out when refinement ended, and says so
    assert st["unanswered"] > 0 and st["questions"] == 9
    again = UltraRun(UltraConfig.replay_of(tmp_path / "live"), tmp_path / "replay").run()
    replayed = [r for r in again["RA"].chunk_metrics if r["swapped_advice"]]
    assert [(r["chunk"], r["taken"]) for r in replayed] == [(r["chunk"], r["taken"]) for r in partial]
    assert again["RA"].eval_returns == first["RA"].eval_returns


def test_the_agents_are_evaluated_once_before_refinement_for_every_method(tmp_path, monkeypatch):
    from jaxmod.ultra.refine import RefinementProgram

    calls = []
    real = RefinementProgram.evaluate

    def counted(self, state, i):
        calls.append(i)
        return real(self, state, i)

    monkeypatch.setattr(RefinementProgram, "evaluate", counted)
    results = UltraRun(UltraConfig.flat(variants=("PPO", "A", "Random"), **TINY), tmp_path / "run").run()
    assert calls.count(0) == 1 and len(calls) == 1 + 3 * 3  # once before refinement, then after each chunk
    starts = [r.eval_returns[0] for r in results.values()]
    assert all(s == starts[0] for s in starts)


def test_baselines_run_in_the_same_pipeline_without_an_advisor(tmp_path):
    settings = UltraConfig.flat(variants=("PPO", "StateMask-R", "RICE", "JSRL", "Random"), mask_steps=4 * 128 * 2,
                             **TINY)
    run = UltraRun(settings, tmp_path / "base")
    results = run.run()
    assert set(results) == {"PPO", "StateMask-R", "RICE", "JSRL", "Random"}
    assert run.advice_stats == []  # no advisor was asked
    rice, jsrl = results["RICE"].chunk_metrics, results["JSRL"].chunk_metrics
    assert all(c["advice_valid"] > 0 for c in rice) and all("rnd_bonus" in c for c in rice)
    assert all(c["restarts"] > 0 for c in results["StateMask-R"].chunk_metrics)
    assert jsrl[0]["guided_frac"] > jsrl[-1]["guided_frac"]
    assert (tmp_path / "base" / "ultra.png").exists()


def test_advice_items_carry_the_agents_own_action_as_the_rated_one():
    """The implicit reward rates the agent's action at the critical step, so each packed item records that
    action (shaping applies where it is taken again), and its snapshot and observation are that step's."""
    import jax
    import numpy as np

    from jaxmod.ppo import PPOLearner, default_config
    from jaxmod.ultra.advise import advise_episodes
    from jaxmod.ultra.collect import make_collector, split_episodes

    learner = PPOLearner(default_config("CartPole-v1", total_timesteps=512))
    params = learner.net.init(jax.random.PRNGKey(0))
    collect = make_collector(learner.env.replace_num_envs(4), learner.net, 64)
    rec = jax.device_get(collect(params, learner.init(jax.random.PRNGKey(0)).env_state.obs_rms, jax.random.PRNGKey(1)))
    episodes = split_episodes(rec, 0, 3)
    advisor = Advisor(LocalBackend(), max_critical=2)
    items, verdicts, rows = asyncio.run(advise_episodes(advisor, learner.env.core, rec, episodes))
    assert items and len(items) == len(verdicts) == len(rows)
    by_uid = {ep.uid: ep for ep in episodes}
    for item in items:
        ep = by_uid[item.episode]
        assert item.rated_action == ep.actions[item.step]
        np.testing.assert_array_equal(item.obs, ep.obs[item.step])
        np.testing.assert_array_equal(item.snapshot.obs, ep.obs[item.step])


# ---------------------------------------------------------------------------------------------- config and advisor
def test_the_config_is_checked_before_anything_runs(tmp_path):
    from jaxmod.advice.arrays import AdviceBook
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.envs import make_core
    from jaxmod.ppo import default_config
    from jaxmod.ppo.config import ConfigError
    from jaxmod.ultra.pipeline import check_advice

    with pytest.raises(ConfigError, match="ppo.env_id 'CartPole-v1' differs from env_id 'Acrobot-v1'"):
        UltraConfig(env_id="Acrobot-v1", ppo=default_config("CartPole-v1"))
    with pytest.raises(ConfigError, match="num_envs must be an integer, got 4.5"):
        UltraConfig(ppo=default_config("CartPole-v1", num_envs=4.5))
    with pytest.raises(ModulationError, match="match_radius must be a finite number"):
        UltraConfig.flat(match_radius=float("nan"))
    with pytest.raises(ConfigError, match="unknown knob"):
        UltraConfig.flat(capacityy=3)
    cartpole, acrobot = make_core("CartPole-v1"), make_core("Acrobot-v1")
    check_advice(AdviceBook.stacked([AdviceBook(cartpole, 8)] * 2), cartpole, 8, 2)
    with pytest.raises(ModulationError, match="capacity 16"):
        check_advice(AdviceBook.stacked([AdviceBook(cartpole, 8)] * 2), cartpole, 16, 2)
    with pytest.raises(ModulationError, match="does not fit CartPole-v1"):
        check_advice(AdviceBook.stacked([AdviceBook(acrobot, 8)] * 2), cartpole, 8, 2)
    config = UltraConfig.flat(capacity=8, **TINY)
    assert UltraConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def _failing_factory():
    from jaxmod.llm import ChatResult

    class Down:
        name = "down"

        async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None):
            return ChatResult(error="connection refused", kind="connect")

    @contextlib.asynccontextmanager
    async def factory():
        yield Advisor(Down(), max_critical=2)

    return factory


def test_a_failing_advisor_stops_the_run_with_one_line(tmp_path):
    from jaxmod.llm import AdvisorFailure

    run = UltraRun(UltraConfig.flat(variants=("PPO", "RA"), **TINY), tmp_path / "down",
                   advisor_factory=_failing_factory())
    with pytest.raises(AdvisorFailure, match=r"the advisor failed \d+ of \d+ questions in RA round 0") as err:
        run.run()
    assert "\n" not in str(err.value) and "--advisor-failure continue" in str(err.value)


def test_no_credential_reaches_any_file_or_output(tmp_path):
    """`jaxmod ultra` against a loopback server that echoes the Authorization header back in its errors."""
    import subprocess

    from tests.fault_server import FaultServer, echo_auth, ok

    canary = "sk-canary-XXXX-7f3a9c"
    out = tmp_path / "run"
    tiny = ["--seeds", "1", "--pretrain-steps", "512", "--refine-steps", "512", "--num-envs", "4", "--num-steps", "64",
            "--num-minibatches", "2", "--update-epochs", "1", "--chunks", "2", "--collect-envs", "2",
            "--collect-steps", "64", "--eval-envs", "2", "--eval-steps", "64", "--episodes-per-round", "1"]
    with FaultServer([ok('{"ok": true}'), echo_auth(400)]) as srv:
        proc = subprocess.run([sys.executable, "-m", "jaxmod.cli", "ultra", *tiny, "--variant", "RA", "--advisor",
                               srv.url, "--advisor-failure", "continue", "--advisor-retries", "0", "--out", str(out)],
                              capture_output=True, text=True, timeout=500,
                              env={**os.environ, "OPENAI_API_KEY": canary, "JAXMOD_DEBUG": ""})
        assert srv.headers and all(h["Authorization"] == f"Bearer {canary}" for h in srv.headers)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted({f.relative_to(out).parts[0] for f in out.rglob("*") if f.is_file()})  # tb/: one per sub-run
    assert written == ["config.json", "critical_states.md", "tb", "transcript.jsonl", "ultra.json", "ultra.png"]
    transcript = (out / "transcript.jsonl").read_text()
    assert "***" in transcript  # the echoed key was there, redacted
    texts = [proc.stdout, proc.stderr] + [f.read_bytes().decode("utf-8", "replace") for f in out.rglob("*")
                                          if f.is_file()]
    assert sum(t.count(canary) for t in texts) == 0
    summary = json.loads((out / "ultra.json").read_text())
    assert summary["config"]["advisor"]["spec"] == srv.url and summary["config"]["advisor"]["model"] == "fault-model"


def test_pre_trained_agents_are_saved_once_and_reused(tmp_path):
    """With `agents_dir`, the first run saves its pre-trained agents and a later run with the same settings loads
    them instead of training again (the same states, bit for bit); other settings train their own."""
    import chex

    logs: list[str] = []
    first = UltraRun(UltraConfig.flat(variants=("PPO",), agents_dir=str(tmp_path / "agents"), **TINY),
                     tmp_path / "a", log=logs.append)
    saved = first.pretrain()
    assert any("pretrained 2 sub-optimal agents" in m for m in logs) and len(list((tmp_path / "agents").iterdir())) == 1
    logs.clear()
    again = UltraRun(UltraConfig.flat(variants=("PPO",), agents_dir=str(tmp_path / "agents"), **TINY),
                     tmp_path / "b", log=logs.append)
    loaded = again.pretrain()
    assert any("loaded 2 pre-trained agents" in m for m in logs)
    chex.assert_trees_all_equal(jax.device_get(loaded), jax.device_get(saved))
    other = UltraRun(UltraConfig.flat(variants=("PPO",), agents_dir=str(tmp_path / "agents"), **{**TINY, "seed": 1}),
                     tmp_path / "c", log=logs.append)
    other.pretrain()
    assert len(list((tmp_path / "agents").iterdir())) == 2


def test_acrobot_agents_outlasting_the_window_are_still_asked_about(tmp_path):
    """A weak Acrobot agent's episodes run the whole 500 steps, longer than the recording window: the episodes
    still running at its end are sent, so the advisor is asked (whatever it can answer)."""
    settings = UltraConfig.flat(env_id="Acrobot-v1", variants=("RA",), advisor_failure="continue", **TINY)
    run = UltraRun(settings, tmp_path / "acrobot")
    run.run()
    st = run.advice_stats[0]
    assert st["questions"] > 0
    asked = [json.loads(ln) for ln in (tmp_path / "acrobot" / "transcript.jsonl").read_text().splitlines()]
    assert any("still running" in m["content"] for rec in asked for m in rec["messages"])


def test_episode_prompts_are_windowed_to_the_context(tmp_path):
    """The paper's protocol on a small context: every prompt sent fits the context less max_tokens (by the
    tokenizer-free upper bound), none overflows, and the advisor still answers."""
    from jaxmod.llm.budget import estimate_tokens

    settings = UltraConfig.flat(variants=("RA",), protocol="episodes", advisor_context_tokens=3072,
                                **{**TINY, "collect_steps": 200})
    run = UltraRun(settings, tmp_path / "windowed")
    run.run()
    st = run.advice_stats[0]
    assert st["context_tokens"] == 3072 and st["valid"] > 0 and st["over_budget"] == 0
    records = [json.loads(ln) for ln in (tmp_path / "windowed" / "transcript.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"identify", "advise"}
    assert max(estimate_tokens(r["messages"]) for r in records) <= 3072 - 512
    assert any("omitted" in r["messages"][1]["content"] for r in records if r["kind"] == "identify")


def test_variants_ask_the_first_round_once(tmp_path):
    """The first round's recording is the same for every variant: its questions are asked once per run and the
    later variants reuse the answers (still judged, counted and written under their own tags)."""
    settings = UltraConfig.flat(variants=("A", "RA"), sync_advice=True, **TINY)
    run = UltraRun(settings, tmp_path / "once")
    run.run()
    first, second = run.advice_stats
    assert first["reused"] == 0 and second["reused"] > 0
    records = [json.loads(ln) for ln in (tmp_path / "once" / "transcript.jsonl").read_text().splitlines()]
    round0 = [r for r in records if r["tags"]["round"] == 0]
    by_variant = {v: sorted(r["prompt_key"] for r in round0 if r["tags"]["variant"] == v) for v in ("A", "RA")}
    assert by_variant["A"] == by_variant["RA"]
    assert all(r.get("reused") for r in round0 if r["tags"]["variant"] == "RA")


def test_an_evaluation_shorter_than_an_episode_is_a_warning_before_pretraining(tmp_path):
    """Acrobot-v1's weak agents run its 500-step limit: with --eval-steps 200 no evaluation episode ended and every
    method reported a return of 0.0 (the best possible). The run says so before it pretrains; 600 steps do not warn."""
    class Stopped(Exception):
        pass

    warned: list[str] = []

    def warn(msg: str) -> None:
        warned.append(msg)
        raise Stopped

    short = UltraConfig.flat(dict(num_envs=4, num_steps=16), env_id="Acrobot-v1", seeds=1, pretrain_steps=64,
                             refine_steps=64, chunks=1, variants=("PPO",), eval_steps=200)
    with pytest.raises(Stopped):
        UltraRun(short, tmp_path / "short", warn=warn).run()
    assert len(warned) == 1 and "up to 500" in warned[0] and "--eval-steps 500" in warned[0], warned
    UltraRun(dataclasses.replace(short, sizes=dataclasses.replace(short.sizes, eval_steps=600)), tmp_path / "long",
             warn=warn)._warn_if_evaluation_is_short()
    assert len(warned) == 1
    unset = UltraRun(dataclasses.replace(short, sizes=dataclasses.replace(short.sizes, eval_steps=None)),
                     tmp_path / "unset", warn=warn)  # the default: the task's episode limit, whole episodes
    unset._warn_if_evaluation_is_short()
    assert len(warned) == 1 and unset.eval_steps == 500 and UltraConfig().sizes.eval_steps is None
    assert UltraConfig().sizes.eval_steps_for(2500) == 1000 and UltraConfig().sizes.eval_steps_for(200) == 200
