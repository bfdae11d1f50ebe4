"""Protocol and fault tests of the async client and advisors against real loopback servers."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time

import pytest

from jaxmod.llm import (
    Advisor,
    ClientSettings,
    EpisodeView,
    HTTPBackend,
    LLMClient,
    LLMConfigError,
    Rejected,
    ReplayBackend,
    ResponseCache,
    StateQuery,
    Transcript,
)
from jaxmod.llm.answers import extract_json, validate_advice, validate_identify
from tests.fault_server import FaultServer, ok, raw, stall, status

pytestmark = pytest.mark.timeout(120)

GOOD_ADVICE = json.dumps({"action": 1, "reward": 0.5, "reason": "push under the lean"})
QUERY = StateQuery(episode_id=0, step=3, card="Environment: CartPole-v1\nActions (discrete): 0 = push_left, "
                   "1 = push_right", context="t | a[m] | action | reward\n3 | +0.1 | push_left | +1",
                   state_text="a=+0.1 m", agent_action="push_left", discrete=True, num_actions=2)


class SleepRecorder:
    """Replaces asyncio.sleep in the client so retry waits are checked without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(coro):
    return asyncio.run(coro)


async def _advise(url: str, sleep=None, **settings):
    kwargs = {"base_url": url, "max_retries": 3, "timeout_s": 5.0, **settings}
    client = LLMClient(ClientSettings(**kwargs), sleep=sleep or asyncio.sleep)
    async with client:
        adv = Advisor(HTTPBackend(client))
        out = await adv.advise([QUERY])
    return out[0], adv, client


def test_429_retry_after_is_honoured():
    rec = SleepRecorder()
    with FaultServer([status(429, headers={"Retry-After": "2"}), ok(GOOD_ADVICE)]) as srv:
        verdict, adv, client = run(_advise(srv.url, rec))
    assert not isinstance(verdict, Rejected) and verdict.action == 1
    assert rec.waits == [2.0] and client.stats.retries == 1 and len(srv.requests) == 2


def test_retry_after_ms_and_cap():
    rec = SleepRecorder()
    with FaultServer([status(429, headers={"retry-after-ms": "250"}), status(503, headers={"Retry-After": "9999"}),
                      ok(GOOD_ADVICE)]) as srv:
        verdict, _, _ = run(_advise(srv.url, rec))
    assert not isinstance(verdict, Rejected)
    assert rec.waits[0] == pytest.approx(0.25)
    assert 0 < rec.waits[1] <= 1.0  # above the cap: ignored, exponential backoff instead (0.5 * 2, jittered)


def test_5xx_backoff_is_exponential_with_jitter_and_bounded():
    rec = SleepRecorder()
    with FaultServer([status(503), status(500), status(502), status(500), status(500)]) as srv:
        verdict, adv, client = run(_advise(srv.url, rec, max_retries=3))
    assert isinstance(verdict, Rejected) and "HTTP 500" in verdict.reason
    assert len(srv.requests) == 4  # 1 try + 3 retries, then stop
    for i, w in enumerate(rec.waits):
        assert 0.75 * 0.5 * 2**i <= w <= 0.5 * 2**i
    assert adv.stats.failed == 1


def test_400_is_not_retried():
    rec = SleepRecorder()
    with FaultServer([status(400, '{"error": {"message": "context too long"}}')]) as srv:
        verdict, _, client = run(_advise(srv.url, rec))
    assert isinstance(verdict, Rejected) and "HTTP 400" in verdict.reason
    assert len(srv.requests) == 1 and rec.waits == []


def test_connection_refused_is_bounded():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here
    rec = SleepRecorder()
    verdict, _, client = run(_advise(f"http://127.0.0.1:{port}/v1", rec, max_retries=2, model="m"))
    assert isinstance(verdict, Rejected) and "connection error" in verdict.reason
    assert len(rec.waits) == 2


def test_stall_past_timeout_meets_deadline():
    with FaultServer([stall(3.0)]) as srv:
        async def go():
            async with LLMClient(ClientSettings(base_url=srv.url, timeout_s=0.3, max_retries=10,
                                                backoff_base_s=0.05)) as client:
                t0 = time.monotonic()
                res = await client.chat_many([([{"role": "user", "content": "hi"}], None, "a")] * 3, deadline_s=1.0)
                return res, time.monotonic() - t0

        results, elapsed = run(go())
    assert elapsed < 1.6
    assert all(not r.ok and ("deadline" in r.error or "timeout" in r.error) for r in results)


@pytest.mark.parametrize("action,reason", [
    (raw(b"this is not json"), "malformed response"),
    (raw(b'{"choices": [{"message": {}}]}'), "malformed response"),
    (ok('{"action": 1, "reason": "no reward"}'), "missing field reward"),
    (ok('{"action": 5, "reward": 0.1, "reason": "x"}'), "out of range"),
    (ok('{"action": 1, "reward": NaN, "reason": "x"}'), "not a finite number"),
    (ok('{"action": 1.5, "reward": 0.1, "reason": "x"}'), "not an integer"),
    (ok('{"action": 1, "reward": 0.1, "rea', "length"), "finish_reason=length"),
    (ok("I think you should push right."), "no JSON object"),
])
def test_bad_answers_are_dropped_and_counted(action, reason):
    with FaultServer([action]) as srv:
        verdict, adv, _ = run(_advise(srv.url, SleepRecorder()))
    assert isinstance(verdict, Rejected) and reason in verdict.reason
    assert adv.stats.valid == 0 and adv.stats.invalid + adv.stats.failed == 1


def test_huge_reward_is_clipped():
    with FaultServer([ok('```json\n{"action": 0, "reward": 1e300, "reason": "x"}\n```')]) as srv:
        verdict, adv, _ = run(_advise(srv.url))
    assert verdict.reward == 1.0 and verdict.reward_clipped and adv.stats.valid == 1


def test_response_format_fallback():
    refused = status(500, '{"error": {"message": "response_format type json_schema not supported"}}')
    with FaultServer([refused, ok(GOOD_ADVICE)]) as srv:
        verdict, _, client = run(_advise(srv.url, SleepRecorder()))
    assert not isinstance(verdict, Rejected)
    assert srv.requests[0]["response_format"]["type"] == "json_schema"
    assert srv.requests[1]["response_format"]["type"] == "json_object"
    assert srv.requests[1]["response_format"]["schema"]["required"] == ["action", "reward", "reason"]
    assert client.structured_mode == "json_object_schema" and client.stats.fallbacks == 1


def test_prompt_only_fallback_sends_no_response_format():
    refused = status(400, '{"error": {"message": "unknown field: schema"}}')
    with FaultServer([refused, refused, ok(GOOD_ADVICE)]) as srv:
        verdict, _, client = run(_advise(srv.url, SleepRecorder()))
    assert not isinstance(verdict, Rejected) and "response_format" not in srv.requests[2]
    assert client.structured_mode == "prompt"


def test_cache_hit_miss_and_corruption(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with FaultServer([ok(GOOD_ADVICE)]) as srv:
        async def ask():
            async with LLMClient(ClientSettings(base_url=srv.url), cache=cache) as client:
                adv = Advisor(HTTPBackend(client))
                return (await adv.advise([QUERY]))[0]

        first = run(ask())
        second = run(ask())
        assert len(srv.requests) == 1 and first == second and cache.hits == 1
        files = list((tmp_path / "cache").rglob("*.json"))
        assert len(files) == 1
        files[0].write_text("{corrupt")
        third = run(ask())
        assert third == first and len(srv.requests) == 2 and cache.corrupt == 1
        assert json.loads(files[0].read_text())["content"] == GOOD_ADVICE  # rewritten


def test_invalid_answers_are_not_cached(tmp_path):
    cache = ResponseCache(tmp_path / "c")
    with FaultServer([ok('{"action": 9, "reward": 0, "reason": "x"}')]) as srv:
        async def ask():
            async with LLMClient(ClientSettings(base_url=srv.url), cache=cache) as client:
                backend = HTTPBackend(client)
                adv = Advisor(backend)
                # the advisor validates; caching of raw answers is gated by `accept`
                return await client.chat([{"role": "user", "content": "q"}], None, "a",
                                         accept=lambda text, fr: not isinstance(
                                             validate_advice(text, True, 2), Rejected)), adv

        run(ask())
    assert not list((tmp_path / "c").rglob("*.json"))


def test_transcript_replay_is_identical(tmp_path):
    from jaxmod.llm.server import make_server

    path = tmp_path / "t.jsonl"
    views = [EpisodeView(i, 4, "Environment: CartPole-v1\nActions (discrete): 0 = push_left, 1 = push_right",
                         "Episode\nt | cart_position[m] cart_velocity[m/s] pole_angle[rad] pole_angular_velocity[rad/s]"
                         " | action | reward\n" + "\n".join(f"{t} | 0.0 0.0 {0.01 * t:.2f} 0.1 | push_left | +1"
                                                          for t in range(4)), ) for i in range(3)]
    with make_server("scripted") as srv:
        async def live():
            async with LLMClient(ClientSettings(base_url=srv.url, max_retries=0)) as client:
                adv = Advisor(HTTPBackend(client), transcript=Transcript(path))
                return await adv.identify(views), await adv.advise([QUERY])

        live_id, live_adv = run(live())
    replay = Advisor(ReplayBackend(path))
    rep_id, rep_adv = run(replay.identify(views)), run(replay.advise([QUERY]))
    assert rep_id == live_id and rep_adv == live_adv
    assert replay.stats.valid == 3 and replay.stats.failed == 1  # QUERY's table is not a CartPole table


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-7f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FaultServer([status(503), ok(GOOD_ADVICE)]) as srv:
        async def go():
            async with LLMClient(ClientSettings(base_url=srv.url), cache=ResponseCache(tmp_path / "cache"),
                                 sleep=SleepRecorder()) as client:
                adv = Advisor(HTTPBackend(client), transcript=Transcript(tmp_path / "transcript.jsonl"))
                await adv.advise([QUERY])

        run(go())
    assert srv.headers[0]["Authorization"] == f"Bearer {secret}"
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="ignore"), f


def test_missing_url_is_a_clear_error(monkeypatch):
    for var in ("ADVISOR_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(LLMConfigError, match="--llm-url"):
        LLMClient(ClientSettings())


def test_extraction_and_identify_validation():
    assert extract_json('Sure! ```json\n{"a": 1}\n``` done') == {"a": 1}
    assert extract_json('prefix {"a": {"b": "}"}} suffix') == {"a": {"b": "}"}}
    v = validate_identify('{"critical_steps": [{"step": 3, "reason": "r"}, {"step": 3, "reason": "dup"}, '
                          '{"step": 99, "reason": "out"}, {"step": 1, "reason": "ok"}]}', episode_length=10,
                          max_critical=3)
    assert [s.step for s in v.steps] == [3, 1] and v.dropped == 2
    assert isinstance(validate_identify('{"critical_steps": [{"step": 50}]}', 10, 3), Rejected)
    cont = validate_advice('{"action": [0.5, -2.0], "reward": -0.2, "reason": "x"}', False, low=(-1, -1), high=(1, 1))
    assert isinstance(cont, Rejected) and "outside" in cont.reason
    cont = validate_advice('{"action": [0.5, -1.0], "reward": -0.2}', False, low=(-1, -1), high=(1, 1))
    assert cont.action == (0.5, -1.0) and math.isclose(cont.reward, -0.2)


def test_concurrency_bounds_questions_in_flight_and_sequential_ones_share_a_connection():
    import httpx

    active, peak, clients = 0, 0, set()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": GOOD_ADVICE}, "finish_reason": "stop"}]})

    async def go():
        settings = ClientSettings(base_url="http://advisor.test/v1", model="m", concurrency=3)
        async with LLMClient(settings, transport=httpx.MockTransport(handler)) as client:
            results = await client.chat_many([([{"role": "user", "content": str(i)}], None, "a") for i in range(10)])
            for _ in range(3):  # one at a time: always the client (connection) used last
                held = await client._idle.get()
                clients.add(id(held))
                client._idle.put_nowait(held)
            return results

    results = run(go())
    assert all(r.ok for r in results) and peak == 3 and len(clients) == 1
