"""Questions a small LLM can answer (issue 18, items 5-6): prompts fitted to the context window, overflows classified
and never retried, identical questions asked once per run, multiple-choice questions at device-picked candidates,
episodes that outlast the recording window still asked about."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from jaxmod.llm import Advised, Advisor, HTTPBackend, LLMClient, LocalBackend, Rejected, StateQuery
from jaxmod.llm.answers import choice_schema, validate_choice
from jaxmod.llm.budget import estimate_tokens, prompt_budget
from jaxmod.llm.client import ClientSettings, classify_error
from jaxmod.llm.prompts import choice_messages, read_question
from jaxmod.ultra.candidates import pick_candidates
from jaxmod.ultra.collect import WINDOW_END, split_episodes
from tests.fault_server import FaultServer, ok, status

pytestmark = pytest.mark.timeout(300)

NAMES = ("push_left", "push_right")
QUERY = StateQuery(episode_id=0, step=3, card="Environment: CartPole-v1\nActions (discrete): 0 = push_left, "
                   "1 = push_right", context="t | a[m] | action | reward\n3 | +0.1 | push_left | +1",
                   state_text="a=+0.1 m", agent_action="push_left", discrete=True, num_actions=2,
                   action_names=NAMES, agent_index=0)


def test_choice_answers_are_validated_and_rewarded_by_agreement():
    assert validate_choice('{"action": "push_right"}', NAMES, 0) == Advised(1, -1.0, "")
    assert validate_choice('{"action": " Push_Left "}', NAMES, 0).reward == 1.0
    assert validate_choice('{"action": 1, "reward": 0.3}', NAMES, 1).reward == 1.0  # an index, from in-process
    for bad in ('{"action": "jump"}', '{"action": 2}', '{"action": true}', '{}', "no json"):
        assert isinstance(validate_choice(bad, NAMES, 0), Rejected)
    assert choice_schema(NAMES)["properties"]["action"]["enum"] == list(NAMES)


def test_choice_question_reads_back_as_an_advice_question():
    q = read_question(choice_messages(QUERY))  # what the scripted heuristic and the teacher read over HTTP
    assert (q.kind, q.step, q.agent_action, q.env_id) == ("advise", 3, "push_left", "CartPole-v1")
    assert '"push_left", "push_right"' in choice_messages(QUERY)[1]["content"]


def test_estimate_is_bytes_plus_template_and_budget_counts_the_answer():
    msgs = [{"role": "system", "content": "ab"}, {"role": "user", "content": "é" * 10}]  # 2 + 20 bytes
    assert estimate_tokens(msgs) == 22 + 2 * 8 + 16
    assert prompt_budget(4096, 160) == 3936
    with pytest.raises(ValueError, match="advisor-context-tokens"):
        prompt_budget(512, 400)


@pytest.mark.parametrize("code,body,kind", [
    (500, '{"error": {"message": "Requested tokens (4516) exceed context window of 4096", "type": "server_error"}}',
     "context"),
    (400, '{"error": {"message": "the request exceeds the available context size", '
          '"type": "exceed_context_size_error"}}', "context"),
    (400, '{"error": {"code": "context_length_exceeded", "message": "maximum context length is 8192"}}', "context"),
    (500, '{"error": {"message": "bad field", "type": "invalid_request_error"}}', "request"),
    (500, '{"error": {"message": "out of memory", "type": "server_error"}}', "http"),
    (503, "Loading model", "http"),
])
def test_errors_are_classified(code, body, kind):
    assert classify_error(code, body.encode()) == kind


def test_context_overflow_500_is_not_retried():
    overflow = '{"error": {"message": "Requested tokens (4516) exceed context window of 4096"}}'
    with FaultServer([status(500, overflow), ok('{"action": 1, "reward": 0, "reason": "x"}')]) as srv:
        async def go():
            async with LLMClient(ClientSettings(base_url=srv.url, max_retries=3, timeout_s=5.0)) as client:
                adv = Advisor(HTTPBackend(client))
                return await adv.advise([QUERY]), adv

        (verdict,), adv = asyncio.run(go())
    assert isinstance(verdict, Rejected) and len(srv.requests) == 1  # asked once, not five times
    assert adv.stats.reasons == {"no answer (context 500)": 1}


class Counting:
    """An in-process answerer that counts the questions it was asked and answers every one validly."""

    name = "counting"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.asked: list[str] = []
        self.delay_s = delay_s

    async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None):
        from jaxmod.llm import ChatResult

        self.asked.append(messages[-1]["content"])
        await asyncio.sleep(self.delay_s)
        if schema and "critical_steps" in schema["properties"]:
            return ChatResult(content='{"critical_steps": [{"step": 0, "reason": "r"}]}', finish_reason="stop")
        return ChatResult(content='{"action": 0, "reward": 1, "reason": "r"}', finish_reason="stop")


def test_identical_questions_are_asked_once_even_in_flight():
    backend = Counting(delay_s=0.05)
    adv = Advisor(backend, concurrency=4)

    async def go():
        first = asyncio.gather(adv.advise([QUERY, QUERY]), adv.advise([QUERY]))
        together = await first
        again = await adv.advise([QUERY])
        return together, again

    (a, b), c = asyncio.run(go())
    assert len(backend.asked) == 1 and adv.stats.questions == 4 and adv.stats.reused == 3
    assert all(isinstance(v, Advised) for v in [*a, *b, *c])


def test_a_prompt_over_the_budget_is_not_sent():
    backend = Counting()
    adv = Advisor(backend, context_tokens=600, max_tokens=100)  # 500 tokens for the prompt
    long = StateQuery(**{**QUERY.__dict__, "context": "x" * 600})
    (verdict,) = asyncio.run(adv.advise([long]))
    assert isinstance(verdict, Rejected) and backend.asked == [] and adv.stats.over_budget == 1
    assert adv.stats.failed == 1 and "no answer (context)" in adv.stats.reasons


def test_in_process_answerers_have_no_budget_unless_configured():
    assert asyncio.run(Advisor(LocalBackend()).prompt_budget()) is None
    assert asyncio.run(Advisor(LocalBackend(), context_tokens=2048, max_tokens=48).prompt_budget()) == 2000


def test_embedded_server_tells_its_context_window():
    from jaxmod.llm.server import SCRIPTED_CONTEXT_TOKENS, make_server

    with make_server("scripted") as srv:
        async def go():
            async with LLMClient(ClientSettings(base_url=srv.url, model="jaxmod-scripted")) as client:
                return await client.context_tokens()

        assert asyncio.run(go()) == SCRIPTED_CONTEXT_TOKENS
    with FaultServer([ok("{}")]) as srv:  # a server without /props: unknown, so the config's or 4096 is used
        async def unknown():
            async with LLMClient(ClientSettings(base_url=srv.url, model="m")) as client:
                adv = Advisor(HTTPBackend(client), max_tokens=96)
                return await client.context_tokens(), await adv.prompt_budget()

        assert asyncio.run(unknown()) == (None, 4096 - 96)


def test_candidates_are_the_best_scores_spaced_apart():
    scores = np.array([0.0, 5.0, 4.9, 1.0, 3.0, 0.5])
    assert pick_candidates(scores, 2) == [1, 4]
    assert pick_candidates(scores, 3, min_gap=1) == [1, 2, 4]


def test_unfinished_episodes_are_sent_when_too_few_complete():
    from jaxmod.ppo.acting import Recording

    T, N = 20, 3
    done = np.zeros((T, N), bool)
    done[5, 0] = True  # env 0: one complete episode of 6 steps, then 14 running; envs 1-2 never end
    rec = Recording(core=None, obs=np.zeros((T, N, 2)), action=np.zeros((T, N), int), reward=np.ones((T, N)),
                    terminated=done, truncated=np.zeros((T, N), bool))
    assert len(split_episodes(rec, max_episodes=8)) == 1
    eps = split_episodes(rec, max_episodes=8, unfinished=True)
    assert [(e.env_index, e.start, e.length, e.ended_by) for e in eps] == [
        (0, 0, 6, "termination"), (1, 0, 20, WINDOW_END), (2, 0, 20, WINDOW_END), (0, 6, 14, WINDOW_END)]
    assert len(split_episodes(rec, max_episodes=2, unfinished=True)) == 2


def test_windows_keep_the_focus_steps_and_the_end():
    from jaxmod.envs.registry import describer_of, make_core

    d = describer_of(make_core("CartPole-v1"))
    n = 200
    obs, acts, rews = np.zeros((n, 4)), np.zeros(n, int), np.ones(n)
    text, shown = d.render_episode(obs, acts, rews, budget_chars=1500, focus=[50, 120])
    assert {50, 120, n - 1} <= set(shown) and len(text.encode()) < 1500 + 400
    assert len(shown) < n and shown == sorted(shown)
    _, plain = d.render_episode(obs, acts, rews, budget_chars=1500)
    assert plain[:3] == [0, 1, 2] and 50 not in plain  # without focus: the start and the latest steps


@pytest.mark.parametrize("flag,message", [(["--advice-protocol", "foo"], "advice protocol must be"),
                                          (["--advisor-context-tokens", "600"], "advisor context tokens must leave")])
def test_bad_protocol_or_context_is_one_line_exit_2(flag, message, capsys, tmp_path):
    from jaxmod.cli import main

    code = main(["ultra", *flag, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_choice_questions_share_their_prefix_up_to_the_rows():
    """Two multiple-choice questions of one env, built as a round builds them (`state_query` with the choice
    question), differ only from the recent steps' rows on: the table header sits in the shared prefix a server's
    prompt cache reuses, the episode's title line moves to the critical state's section, and the question still reads
    back as an advice question whose table the describer parses."""
    import os

    from jaxmod.envs.registry import describer_of, make_core
    from jaxmod.ultra.advise import CHOICE_CONTEXT_STEPS, state_query
    from jaxmod.ultra.collect import EpisodeRecord

    core = make_core("CartPole-v1")
    d = describer_of(core)
    rng = np.random.default_rng(0)
    eps = [EpisodeRecord(uid, 0, 0, rng.normal(size=(20, 4)) * 0.1, rng.integers(0, 2, 20), np.ones(20), "termination")
           for uid in (3, 4)]
    a, b = (choice_messages(state_query(d, core, ep, 15, CHOICE_CONTEXT_STEPS, question=choice_messages))[1]["content"]
            for ep in eps)  # as `advise_episodes` asks a round's multiple-choice questions
    shared = os.path.commonprefix([a, b])
    assert ("## Recent steps\n" + d.header() + "\n") in shared and "## Critical state" not in shared
    assert "## Critical state (episode 3, step 15)\nEpisode 3, steps 14-15 (of 20)" in a
    q = read_question([{"role": "user", "content": a}])
    assert (q.kind, q.step, q.env_id) == ("advise", 15, "CartPole-v1")
    assert d.parse_rows(q.table).steps.tolist() == list(range(16 - CHOICE_CONTEXT_STEPS, 16))
