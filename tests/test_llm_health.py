"""Advisor health before and during a run: endpoint resolution, preflight one-liners, the failure policy,
transcripts (one run per file, UTF-8, tags and replay), markdown cells, and no jax in jaxmod.llm."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jaxmod.llm import (
    Advisor,
    AdvisorFailure,
    AdvisorUnavailable,
    BackendUnavailable,
    ClientSettings,
    FailurePolicy,
    LLMConfigError,
    LocalBackend,
    ReplayBackend,
    RoundCounts,
    StateQuery,
    Transcript,
    TranscriptExists,
    markdown_cell,
    markdown_table,
    preflight,
    redact_url,
    resolve_endpoint,
    tagged,
)
from jaxmod.llm.advisors import AdvisorStats
from tests.fault_server import FaultServer, echo_auth, ok, stall, status

pytestmark = pytest.mark.timeout(60)

GOOD = '{"action": 1, "reward": 0.5, "reason": "r"}'
NO_ENV: dict[str, str] = {}


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def check(url: str, model: str | None = None, env: dict[str, str] | None = None, **kw):
    return preflight(ClientSettings(base_url=url, model=model, **kw), timeout_s=kw.pop("timeout_s", 5.0),
                     env=NO_ENV if env is None else env)


# ---------------------------------------------------------------------------------------------- endpoint
def test_endpoint_from_arguments_and_environment():
    env = {"OPENAI_BASE_URL": "http://10.0.0.1:8000/v1/", "OPENAI_MODEL": "qwen", "OPENAI_API_KEY": "sk-abcdef"}
    ep = resolve_endpoint(None, "default", env)
    assert (ep.base_url, ep.model, ep.api_key, ep.url_source) == ("http://10.0.0.1:8000/v1", "qwen", "sk-abcdef",
                                                                  "OPENAI_BASE_URL")
    assert ep.headers() == {"Authorization": "Bearer sk-abcdef"} and "sk-abcdef" not in repr(ep)
    env["ADVISOR_BASE_URL"], env["ADVISOR_MODEL"] = "http://h:1/v1", "m2"
    ep = resolve_endpoint(None, None, env)
    assert (ep.base_url, ep.model) == ("http://h:1/v1", "m2")
    assert resolve_endpoint("http://x:2/v1", "mine", env).model == "mine"
    assert resolve_endpoint("http://x:2/v1", None, {}).model is None


@pytest.mark.parametrize("url,message", [
    ("http://", "has no host"), ("ftp://h/v1", "must start with http"), ("http://h:port/v1", "not a valid URL"),
    ("127.0.0.1:8080/v1", "must start with http"),
])
def test_bad_urls_are_one_line_config_errors(url, message):
    with pytest.raises(LLMConfigError, match=message) as err:
        resolve_endpoint(url, None, {})
    assert "\n" not in str(err.value) and isinstance(err.value, BackendUnavailable)  # the CLI reports it in one line


def test_url_credentials_are_split_off_and_redacted():
    ep = resolve_endpoint("http://alice:pw-7f3a9c11@127.0.0.1:9/v1?api_key=qq-secret-1", None, {})
    assert ep.base_url == "http://127.0.0.1:9/v1" and ep.basic_auth == ("alice", "pw-7f3a9c11")
    assert ep.headers()["Authorization"].startswith("Basic ")
    shown = redact_url("http://alice:pw-7f3a9c11@127.0.0.1:9/v1?api_key=qq-secret-1")
    assert "pw-7f3a9c11" not in shown and "qq-secret-1" not in shown and "127.0.0.1:9/v1" in shown


# ---------------------------------------------------------------------------------------------- preflight
def test_preflight_no_server():
    with pytest.raises(AdvisorUnavailable, match=r"no server at http://127\.0\.0\.1:\d+/v1 \(connection refused\)"):
        check(f"http://127.0.0.1:{closed_port()}/v1")


def test_preflight_key_rejected_never_shows_the_key():
    canary = "sk-canary-preflight-31f0"
    with FaultServer([ok(GOOD)], models_action=echo_auth(401)) as srv:
        with pytest.raises(AdvisorUnavailable, match="key rejected by") as err:
            check(srv.url, env={"OPENAI_API_KEY": canary})
    assert canary not in str(err.value) and "set OPENAI_API_KEY" in str(err.value)


def test_preflight_missing_v1_suggests_it():
    with FaultServer([ok(GOOD)]) as srv:
        with pytest.raises(AdvisorUnavailable, match=rf"did you mean {srv.root}/v1\?"):
            check(srv.root)


def test_preflight_unknown_model_lists_the_served_ones():
    with FaultServer([ok(GOOD)], models=["llama3:latest", "qwen3:8b"]) as srv:
        with pytest.raises(AdvisorUnavailable, match=r"model 'gpt-4' is not served .*models served: llama3:latest, "
                                                     r"qwen3:8b"):
            check(srv.url, "gpt-4")
        with pytest.raises(AdvisorUnavailable, match="serves 2 models: llama3:latest, qwen3:8b; choose one"):
            check(srv.url)
        assert check(srv.url, "llama3").model == "llama3"  # Ollama's implicit :latest


def test_preflight_defaults_to_the_only_model_and_uses_the_environment():
    with FaultServer([ok(GOOD)], models=["only-one"]) as srv:
        result = check(None, env={"OPENAI_BASE_URL": srv.url, "OPENAI_API_KEY": "sk-env-key-1234"})
        assert (result.model, result.base_url, result.models) == ("only-one", srv.url, ("only-one",))
        assert srv.requests[0]["model"] == "only-one" and srv.requests[0]["max_tokens"] == 16
        assert srv.headers[0]["Authorization"] == "Bearer sk-env-key-1234"


def test_preflight_completion_failure_is_explained():
    with FaultServer([status(500, '{"error": {"message": "CUDA out of memory"}}')]) as srv:
        with pytest.raises(AdvisorUnavailable, match="failed a test completion .*CUDA out of memory"):
            check(srv.url)


def test_preflight_is_bounded_when_the_server_never_answers():
    with FaultServer([stall(60)]) as srv:
        t0 = time.monotonic()
        with pytest.raises(AdvisorUnavailable, match="did not answer"):
            check(srv.url, timeout_s=1.0)
        assert time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------------------------------------- failure policy
def test_failure_policy_stops_when_most_answers_fail():
    policy = FailurePolicy()
    assert policy.check(RoundCounts(10, 6, 1, 3)) is None
    with pytest.raises(AdvisorFailure, match=r"failed 9 of 16 questions in RA round 2 \(no answer \(http 401\) x9\)"):
        policy.check(RoundCounts(16, 0, 7, 9, {"no answer (http 401)": 9}), "RA round 2")


def test_failure_policy_stops_after_rounds_without_advice_and_continue_mode_warns():
    policy = FailurePolicy(max_rounds_without_advice=2)
    assert policy.check(RoundCounts(4, 2, 2, 0)) is None  # a first round with usable advice
    assert policy.check(RoundCounts(4, 0, 4, 0)) is None
    assert policy.check(RoundCounts(0, 0, 0, 0)) is None  # nothing asked: no evidence either way
    with pytest.raises(AdvisorFailure, match="no valid advice for 2 advice round"):
        policy.check(RoundCounts(4, 0, 3, 1))
    warn = FailurePolicy(mode="continue", max_rounds_without_advice=1)
    assert "continuing without advice" in warn.check(RoundCounts(4, 0, 4, 0))
    with pytest.raises(LLMConfigError):
        FailurePolicy(mode="ignore")


def test_failure_policy_stops_when_the_first_round_brings_nothing_usable():
    """An advisor that answers, but never validly (HTTP 200 with unparseable text), must not leave an ULTRA row
    trained on no advice: the first round already stops the run."""
    with pytest.raises(AdvisorFailure, match=r"none of the advisor's 32 answers in its first round \(A round 0\) "
                                             r"was usable: 32 invalid and 0 failed"):
        FailurePolicy().check(RoundCounts(32, 0, 32, 0, {"unparseable": 32}), "A round 0")


def test_non_llm_servers_pass_the_preflight():
    """`jaxmod serve-advisor --backend scripted` answers the preflight's test question, so `jaxmod ultra` can use
    it by URL (its heuristics read only real questions)."""
    from jaxmod.llm import ClientSettings, preflight
    from jaxmod.llm.server import make_server

    with make_server("scripted") as srv:
        result = preflight(ClientSettings(base_url=srv.url))
    assert result.model == "jaxmod-scripted"


def test_round_counts_from_advisor_stats_feed_the_policy():
    async def go():
        adv = Advisor(LocalBackend())
        before = adv.stats.copy()
        q = StateQuery(0, 0, "Environment: Nowhere-v0", "t | x | action | reward\n0 | 0 | a | 0", "x=0", "a",
                       True, 2)
        await adv.advise([q, q])
        return RoundCounts.between(before, adv.stats)

    counts = asyncio.run(go())
    assert (counts.questions, counts.valid, counts.failed) == (2, 0, 2)
    with pytest.raises(AdvisorFailure, match="failed 2 of 2"):
        FailurePolicy().check(counts)
    assert RoundCounts.between(AdvisorStats(), AdvisorStats(questions=1, valid=1)).valid == 1


# ---------------------------------------------------------------------------------------------- transcripts
def test_transcript_refuses_an_earlier_runs_file_unless_overwriting(tmp_path):
    path = tmp_path / "transcript.jsonl"
    Transcript(path).append({"content": "first run"})
    with pytest.raises(TranscriptExists, match="already holds a transcript"):
        Transcript(path)
    assert "first run" in path.read_text(encoding="utf-8")
    Transcript(path, overwrite=True).append({"content": "second run"})
    assert "first run" not in path.read_text(encoding="utf-8")


def test_transcript_is_utf8_under_a_non_utf8_locale(tmp_path):
    text = "\\u03c0 \\u2248 3.14 \\u2014 \\u6771\\u4eac"  # escaped: the command line itself stays ASCII
    code = ("import sys, locale; from jaxmod.llm import Transcript; from jaxmod.llm.transcript import load_transcript\n"
            f"text = '{text}'\n"
            "try:\n    open(sys.argv[1] + '.plain', 'w').write(text); plain = 'wrote'\n"
            "except UnicodeEncodeError:\n    plain = 'failed'\n"
            "t = Transcript(sys.argv[1]); t.append({'content': text})\n"
            "print(plain, load_transcript(sys.argv[1])[0]['content'] == text)")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t.jsonl")], capture_output=True, text=True,
                         env=env, cwd=os.getcwd(), timeout=30)
    assert out.returncode == 0 and out.stdout.split() == ["failed", "True"], out.stdout + out.stderr


def test_replay_serves_every_tagged_answer_exactly(tmp_path):
    """The same question asked in two rounds got different answers; replay gives each round its own."""
    path = tmp_path / "t.jsonl"
    q = StateQuery(0, 3, "Environment: CartPole-v1", "t | a | action | reward", "a=0", "push_left", True, 2)
    answers = ['{"action": 0, "reward": 0.1}', '{"action": 1, "reward": -0.2}']

    async def live():
        with FaultServer([ok(a) for a in answers]) as srv:
            from tests.test_llm_faults import pipeline_advisor

            transcript, out = Transcript(path), []
            for r in range(2):  # one advisor per round: within one, the second asking would share the first's answer
                async with pipeline_advisor(srv.url, transcript=transcript) as adv:
                    with tagged(variant="RA", round=r):
                        out += await adv.advise([q])
            return out

    recorded = asyncio.run(live())
    assert [v.action for v in recorded] == [0, 1]
    replay = Advisor(ReplayBackend(path))

    async def again(rounds):
        out = []
        for r in rounds:
            with tagged(variant="RA", round=r):
                out += await replay.advise([q])
        return out

    assert asyncio.run(again([1, 0])) == [recorded[1], recorded[0]]  # by tag, whatever the order
    untagged = Advisor(ReplayBackend(path))
    assert asyncio.run(untagged.advise([q, q])) in ([recorded[0], recorded[1]], [recorded[1], recorded[0]])
    assert [json.loads(ln)["tags"] for ln in path.read_text(encoding="utf-8").splitlines()] == \
        [{"round": 0, "variant": "RA"}, {"round": 1, "variant": "RA"}]


# ---------------------------------------------------------------------------------------------- markdown
def test_markdown_cell_neutralises_escapes_markup_and_pipes():
    cell = markdown_cell("\x1b[2J\x1b[31mred\x1b[0m <img src=x onerror=alert(1)> a|b\n**bold** \u202eevil `code`")
    assert "\x1b" not in cell and "<" not in cell and "\n" not in cell and "\u202e" not in cell
    assert "a\\|b" in cell and "\\*\\*bold\\*\\*" in cell and "&lt;img" in cell and "\\`code\\`" in cell
    table = markdown_table(["variant", "seed", "why"], [["RA", 0, "x|y"]])
    assert table.splitlines()[2] == "| RA | 0 | x\\|y |"
    assert markdown_cell("x" * 500, max_chars=10) == "xxxxxxx..." and markdown_cell("") == "-"


# ---------------------------------------------------------------------------------------------- layering
def test_jaxmod_llm_never_imports_jax():
    code = ("import sys, jaxmod.llm, jaxmod.llm.server, jaxmod.llm.preflight, jaxmod.llm.health, "
            "jaxmod.llm.markdown; bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', "
            "'jaxlib', 'flax', 'optax'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_advisor_limits_map_to_client_settings_and_policy():
    """The advisor's limits and failure policy as `jaxmod ultra` builds them (`AdvisorConfig`, whose fields are
    the `--advisor-*` flags), and the advisor chosen from arguments and the environment."""
    from jaxmod.llm import advisor_spec
    from jaxmod.ultra.config import AdvisorConfig

    config = AdvisorConfig(timeout_s=2.5, deadline_s=9, max_tokens=64, temperature=0.7, max_response_bytes=4096,
                           failure="continue", failure_rounds=5)
    over = config.client_overrides()
    assert over == {"timeout_s": 2.5, "deadline_s": 9.0, "max_tokens": 64, "temperature": 0.7,
                    "max_response_bytes": 4096}
    s = ClientSettings(base_url="http://h/v1", **over)
    assert (s.timeout_s, s.deadline_s, s.max_tokens) == (2.5, 9.0, 64)
    policy = config.failure_policy()
    assert (policy.mode, policy.max_rounds_without_advice) == ("continue", 5)
    assert AdvisorConfig().client_overrides() == {}
    with pytest.raises(LLMConfigError):
        ClientSettings(base_url="http://h/v1", timeout_s=0)
    env = {"OPENAI_BASE_URL": "http://e:1/v1"}
    assert advisor_spec(None, None, env) == "http://e:1/v1" and advisor_spec(None, None, {}) == "scripted"
    assert advisor_spec("smollm2", None, env) == "smollm2" and advisor_spec("x", "http://u/v1", env) == "http://u/v1"
