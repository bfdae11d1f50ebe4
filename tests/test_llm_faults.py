"""Fault suite: server faults and answer shapes against loopback servers, through the objects `jaxmod ultra` uses.

Each case asserts the right value, or a bounded drop that is counted (in `AdvisorStats`) and explained."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import pytest

from jaxmod.llm import (
    Advised,
    Advisor,
    ClientSettings,
    DelayedBackend,
    HTTPBackend,
    LLMClient,
    NoisyBackend,
    Rejected,
    ResponseCache,
    StateQuery,
    Transcript,
)
from tests.fault_server import (
    FaultServer,
    body,
    chunk,
    completion,
    echo_auth,
    huge,
    ok,
    raw,
    sse,
    stall,
    status,
    trickle,
    truncated,
)

pytestmark = pytest.mark.timeout(60)

GOOD = {"action": 1, "reward": 0.5, "reason": "push under the lean"}
GOOD_TEXT = json.dumps(GOOD)
QUERY = StateQuery(episode_id=0, step=3, card="Environment: CartPole-v1\nActions (discrete): 0 = push_left, "
                   "1 = push_right", context="t | a[m] | action | reward\n3 | +0.1 | push_left | +1",
                   state_text="a=+0.1 m", agent_action="push_left", discrete=True, num_actions=2)


@contextlib.asynccontextmanager
async def pipeline_advisor(url: str, transcript: Transcript | None = None, cache: ResponseCache | None = None,
                           noise: float = 0.0, latency_s: float = 0.0, **settings):
    """An HTTP `Advisor` built exactly as `jaxmod.ultra.pipeline._advisor_factory` builds one (settings, the
    NoisyBackend/DelayedBackend wrappers, concurrency), plus the limits a test sets."""
    limit = settings.pop("concurrency", 16)
    kwargs = {"base_url": url, "model": "default", "concurrency": limit, "max_tokens": 512, "timeout_s": 120,
              "backoff_base_s": 0.01, **settings}
    async with LLMClient(ClientSettings(**kwargs), cache=cache) as client:
        backend = HTTPBackend(client)
        if noise:
            backend = NoisyBackend(backend, noise, seed=0)
        if latency_s:
            backend = DelayedBackend(backend, latency_s)
        yield Advisor(backend, 3, transcript, concurrency=limit)


async def _ask(url: str, n: int = 1, **kw) -> tuple[list, Advisor, float]:
    async with pipeline_advisor(url, **kw) as adv:
        t0 = time.monotonic()
        out = await adv.advise([QUERY] * n)
        return out, adv, time.monotonic() - t0


def ask(actions: list[tuple], n: int = 1, **kw) -> tuple[list, Advisor, float, FaultServer]:
    with FaultServer(actions) as srv:
        out, adv, elapsed = asyncio.run(_ask(srv.url, n, **kw))
    return out, adv, elapsed, srv


def assert_value(out: list, action: int = 1, reward: float = 0.5) -> None:
    assert all(isinstance(v, Advised) and v.action == action and v.reward == reward for v in out), out


def assert_dropped(out: list, adv: Advisor, reason: str, failed: bool = True) -> None:
    assert all(isinstance(v, Rejected) and reason in v.reason for v in out), out
    assert adv.stats.valid == 0
    assert (adv.stats.failed if failed else adv.stats.invalid) == len(out) == adv.stats.questions
    assert sum(adv.stats.reasons.values()) == len(out)


# ---------------------------------------------------------------------------------------------- answer shapes
SHAPES = {
    "plain": ok(GOOD_TEXT),
    "think_draft_then_final": ok('<think>maybe {"action": 0, "reward": -1, "reason": "draft"}</think>\n' + GOOD_TEXT),
    "close_tag_only": ok('draft {"action": 0, "reward": -1, "reason": "d"} hmm</think>' + GOOD_TEXT),
    "reasoning_content_null_content": ok(None, reasoning_content='first {"action": 0, "reward": 0, "reason": "d"} '
                                                                 'final: ' + GOOD_TEXT),
    "reasoning_field_blank_content": ok("  ", reasoning=GOOD_TEXT),
    "content_parts": ok([{"type": "text", "text": GOOD_TEXT[:10]}, {"type": "text", "text": GOOD_TEXT[10:]}]),
    "fenced_with_prose": ok("Sure!\n```json\n" + GOOD_TEXT + "\n```\nGood luck."),
    "sse_stream": sse([chunk(role="assistant"), chunk(GOOD_TEXT[:7]), chunk(GOOD_TEXT[7:]), chunk(None, "stop")]),
    "sse_reasoning_then_content": sse([chunk(reasoning_content='{"action": 0, "reward": 0}'), chunk(GOOD_TEXT),
                                       chunk(None, "stop")]),
    "sse_as_json_content_type": sse([chunk(GOOD_TEXT, "stop")], content_type="application/json"),
    "sse_without_done": sse([chunk(GOOD_TEXT), chunk(None, "stop")], done=False),
    "extra_fields_and_choices": body({**completion(GOOD_TEXT), "system_fingerprint": "x", "timings": {"a": 1},
                                      "choices": completion(GOOD_TEXT)["choices"] * 2}),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_answer_shape_gives_the_right_value(shape):
    out, adv, _, _ = ask([SHAPES[shape]])
    assert_value(out)
    assert adv.stats.valid == 1


# ---------------------------------------------------------------------------------------------- bad answers
@pytest.mark.parametrize("action,reason,failed", [
    (ok('<think>{"action": 1, "reward": 0.5, "reason": "x"} and then', "length"), "no answer after the reasoning",
     False),
    (ok(None), "no answer text", True),
    (ok('{"action": 7, "reward": 0.1, "reason": "x"}'), "out of range", False),
    (ok('{"action": 1, "reward": 0.1, "rea', "length"), "finish_reason=length", False),
    (ok('{"a":"x",' * 16000), "no JSON object", False),
    (body({"error": {"message": "model overloaded"}}), "error in a 200 response", True),
    (sse(['{"error": {"message": "boom"}}']), "error event", True),
    (sse([chunk(GOOD_TEXT)], done=False), "ended early", True),
    (sse(["not json"]), "malformed event", True),
    (raw(b"\xff\xfe not utf-8"), "not UTF-8", True),
    (raw(b"[" * 100000), "not JSON", True),
    (raw(b'{"choices": [{"message": {"content": 5}}]}'), "content is not text", True),
])
def test_bad_answer_is_a_counted_drop(action, reason, failed):
    out, adv, elapsed, _ = ask([action], n=2)
    assert_dropped(out, adv, reason, failed)
    assert elapsed < 5


# ---------------------------------------------------------------------------------------------- limits
def test_trickled_body_is_cut_at_the_attempt_timeout_and_the_deadline_holds():
    data = json.dumps(completion(GOOD_TEXT)).encode()
    out, adv, elapsed, srv = ask([trickle(data, 0.05)], timeout_s=0.5, deadline_s=1.2, max_retries=5)
    assert_dropped(out, adv, "timeout")
    assert elapsed < 1.2 + 1.0
    assert len(srv.requests) >= 2  # retried within the deadline


def test_server_that_never_answers_costs_one_deadline():
    out, adv, elapsed, _ = ask([stall(60)], n=3, timeout_s=0.4, deadline_s=1.0, max_retries=10)
    assert_dropped(out, adv, "deadline")
    assert elapsed < 1.0 + 1.0


def test_batch_deadline_bounds_questions_waiting_for_a_connection():
    async def go(url):
        async with pipeline_advisor(url, timeout_s=5, concurrency=1) as adv:
            adv.deadline_s = 0.8
            t0 = time.monotonic()
            out = await adv.advise([QUERY] * 4)
            return out, adv, time.monotonic() - t0

    with FaultServer([stall(60)]) as srv:
        out, adv, elapsed = asyncio.run(go(srv.url))
    assert_dropped(out, adv, "deadline")
    assert elapsed < 0.8 + 1.0


def test_oversized_answer_is_refused_without_reading_it():
    out, adv, elapsed, _ = ask([huge(50 * 1024 * 1024)], max_response_bytes=1024 * 1024)
    assert_dropped(out, adv, "larger than 1048576 bytes")
    assert elapsed < 5


def test_body_shorter_than_declared_is_a_connection_error_retried_then_dropped():
    out, adv, _, srv = ask([truncated(b'{"choices": [', 500)], max_retries=2)
    assert_dropped(out, adv, "connection error")
    assert len(srv.requests) == 3


def test_html_error_page_becomes_one_line():
    out, adv, _, _ = ask([status(502, "<html>\n<body>\n<h1>Bad gateway</h1>\n</body></html>")], max_retries=0)
    assert_dropped(out, adv, "HTTP 502")
    assert "\n" not in out[0].reason and len(out[0].reason) < 400


def test_unavailable_then_answer_is_retried_to_the_value():
    out, adv, _, srv = ask([status(503), status(429, headers={"retry-after-ms": "10"}), ok(GOOD_TEXT)])
    assert_value(out)
    assert len(srv.requests) == 3


def test_unknown_model_is_a_counted_drop_not_a_retry():
    out, adv, _, srv = ask([status(404, json.dumps({"error": {"message": "The model `x` does not exist."}}))])
    assert_dropped(out, adv, "does not exist")
    assert len(srv.requests) == 1


def test_server_with_several_models_and_none_chosen_is_a_counted_drop():
    with FaultServer([ok(GOOD_TEXT)], models=["a", "b"]) as srv:
        out, adv, _ = asyncio.run(_ask(srv.url, 2))
    assert_dropped(out, adv, "serves 2 models")
    assert not srv.requests


def test_the_only_served_model_is_used():
    with FaultServer([ok(GOOD_TEXT)], models=["qwen3:8b"]) as srv:
        out, _, _ = asyncio.run(_ask(srv.url))
    assert_value(out)
    assert srv.requests[0]["model"] == "qwen3:8b"


def test_huge_reward_is_clipped_and_the_clipping_recorded(tmp_path):
    out, adv, _, _ = ask([ok('{"action": 0, "reward": 1e30, "reason": "x"}')],
                         transcript=Transcript(tmp_path / "t.jsonl"))
    assert out[0].reward == 1.0 and out[0].reward_clipped
    rec = json.loads((tmp_path / "t.jsonl").read_text(encoding="utf-8"))
    assert rec["reward_clipped"] == {"answered": 1e30, "used": 1.0}


# ---------------------------------------------------------------------------------------------- cache
BAD_STOP = ok('{"action": 9, "reward": 0.1, "reason": "x"}')  # out of range, yet finish_reason "stop"
TRUNCATED_STOP = ok('{"action": 1, "reward": 0.1, "rea')


@pytest.mark.parametrize("answer", [BAD_STOP, TRUNCATED_STOP], ids=["out_of_range", "truncated"])
def test_rejected_answers_are_never_cached_and_the_server_is_asked_again(tmp_path, answer):
    cache = ResponseCache(tmp_path / "cache")
    with FaultServer([answer, ok(GOOD_TEXT)]) as srv:
        first, _, _ = asyncio.run(_ask(srv.url, cache=cache))
        assert isinstance(first[0], Rejected)
        assert not list((tmp_path / "cache").rglob("*.json"))
        second, _, _ = asyncio.run(_ask(srv.url, cache=cache))
        third, _, _ = asyncio.run(_ask(srv.url, cache=cache))
    assert_value(second)
    assert_value(third)
    assert len(srv.requests) == 2  # the valid answer was cached and served the third time


def test_a_poisoned_cache_entry_is_refused_and_replaced(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with FaultServer([ok(GOOD_TEXT)]) as srv:
        asyncio.run(_ask(srv.url, cache=cache))
        (entry,) = list((tmp_path / "cache").rglob("*.json"))
        record = json.loads(entry.read_text(encoding="utf-8"))
        entry.write_text(json.dumps({**record, "content": '{"action": 5, "reward": 0}'}), encoding="utf-8")
        out, _, _ = asyncio.run(_ask(srv.url, cache=cache))
    assert_value(out)
    assert len(srv.requests) == 2 and json.loads(entry.read_text(encoding="utf-8"))["content"] == GOOD_TEXT


def test_noise_wrapper_caches_the_servers_answer_not_the_corruption(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with FaultServer([ok(GOOD_TEXT)]) as srv:
        asyncio.run(_ask(srv.url, cache=cache, noise=1.0))
    (entry,) = list((tmp_path / "cache").rglob("*.json"))
    assert json.loads(entry.read_text(encoding="utf-8"))["content"] == GOOD_TEXT


def test_the_real_advisor_factory_hands_its_validator_to_the_cache(tmp_path, monkeypatch):
    """`jaxmod.ultra.pipeline._advisor_factory` itself, with a cache given to the client it builds."""
    import functools

    pipeline = pytest.importorskip("jaxmod.ultra.pipeline")
    cache = ResponseCache(tmp_path / "cache")
    monkeypatch.setattr(pipeline, "LLMClient", functools.partial(LLMClient, cache=cache))
    with FaultServer([BAD_STOP, ok(GOOD_TEXT)]) as srv:
        settings = pipeline.UltraSettings(advisor=srv.url)

        async def go():
            async with pipeline._advisor_factory(settings, None)() as adv:
                return await adv.advise([QUERY])

        assert isinstance(asyncio.run(go())[0], Rejected)
        assert not list((tmp_path / "cache").rglob("*.json"))
        assert_value(asyncio.run(go()))
        assert_value(asyncio.run(go()))
    assert len(srv.requests) == 2


# ---------------------------------------------------------------------------------------------- secrets
def test_key_echoed_by_the_server_is_redacted_everywhere(tmp_path, monkeypatch, capsys, caplog):
    canary = "sk-canary-9c1e7f3b2d"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    transcript = Transcript(tmp_path / "transcript.jsonl")
    with FaultServer([echo_auth(401)]) as srv:
        out, adv, _ = asyncio.run(_ask(srv.url, 2, transcript=transcript, cache=ResponseCache(tmp_path / "c")))
        assert srv.model_headers[0]["Authorization"] == f"Bearer {canary}"
    assert_dropped(out, adv, "HTTP 401")
    assert "***" in out[0].reason
    seen = capsys.readouterr()
    texts = [seen.out, seen.err, caplog.text, repr(out), json.dumps(adv.stats.as_dict())]
    texts += [f.read_text(encoding="utf-8", errors="replace") for f in tmp_path.rglob("*") if f.is_file()]
    assert not any(canary in t for t in texts)


def test_url_credentials_are_sent_but_never_written(tmp_path, monkeypatch, capsys, caplog):
    canary = "pw-canary-5e8d0a77"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ADVISOR_API_KEY", raising=False)
    transcript = Transcript(tmp_path / "transcript.jsonl")
    with FaultServer([echo_auth(403), ok(GOOD_TEXT)]) as srv:
        url = srv.url.replace("http://", f"http://bob:{canary}@")
        out, adv, _ = asyncio.run(_ask(url, 1, transcript=transcript, max_retries=0))
        again, adv2, _ = asyncio.run(_ask(url, 1, transcript=None, max_retries=0))
        assert srv.headers[0]["Authorization"].startswith("Basic ")
    assert_dropped(out, adv, "HTTP 403")
    assert_value(again)
    seen = capsys.readouterr()
    texts = [seen.out, seen.err, caplog.text, repr(out), adv.backend.name, json.dumps(adv.stats.as_dict())]
    texts += [f.read_text(encoding="utf-8", errors="replace") for f in tmp_path.rglob("*") if f.is_file()]
    token = base64.b64encode(f"bob:{canary}".encode()).decode()  # the echoed header carries it encoded
    assert not any(canary in t or token in t for t in texts)
    assert "***" in out[0].reason
    record = json.loads((tmp_path / "transcript.jsonl").read_text(encoding="utf-8"))
    assert record["backend"] == f"http:{srv.url}:fault-model"
