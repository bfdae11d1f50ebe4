"""Several advisor endpoints (`--advisor URL1,URL2`, issue 23 item 3): questions balanced by in-flight requests, each
endpoint within its own concurrency limit; one endpoint down among live ones is skipped (counted, warned once);
all down is the usual one-line error."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from jaxmod.advice.modulation import ModulationError
from jaxmod.ultra.config import UltraConfig
from jaxmod.ultra.pipeline import _advisor_factory
from tests.fault_server import FaultServer, ok, stall

pytestmark = pytest.mark.timeout(600)
QUESTION = [{"role": "user", "content": "Which action?"}]
ANSWER = '{"action": "push_right"}'


def dead_url() -> str:
    """A loopback URL where nothing listens (a port just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def ask(spec: str, n: int, concurrency: int) -> tuple[list, object]:
    """`n` questions at once through the advisor `jaxmod ultra` builds for `spec` (its backend, as the advisor
    asks it); returns the results and the advisor."""
    config = UltraConfig.flat(advisor=spec, advisor_concurrency=concurrency, model="fault-model",
                              advisor_retries=0)

    async def go():
        async with _advisor_factory(config, None)() as advisor:
            return list(await asyncio.gather(*(advisor.backend.complete(QUESTION, None, "x", None)
                                               for _ in range(n)))), advisor

    return asyncio.run(go())


def test_questions_are_balanced_by_in_flight_requests_within_each_endpoints_limit():
    with FaultServer([stall(0.4)]) as a, FaultServer([stall(0.4)]) as b:
        results, advisor = ask(f"{a.url},{b.url}", 8, concurrency=2)
    assert all(r.ok for r in results)
    assert len(a.requests) == len(b.requests) == 4
    assert advisor._concurrency == 4  # the advisor's own limit: each endpoint's, summed
    for srv in (a, b):  # at most 2 in flight per endpoint: its third request waited for its first answer
        t = sorted(srv.times)
        assert t[2] - t[0] >= 0.3 and t[3] - t[1] >= 0.3


def test_each_endpoint_has_its_own_concurrency_when_given_one_per_url():
    # endpoint a takes 1 question at a time, b 3: balanced by in-flight requests relative to each limit, b gets 3x
    with FaultServer([stall(0.4)]) as a, FaultServer([stall(0.4)]) as b:
        results, advisor = ask(f"{a.url},{b.url}", 8, concurrency=(1, 3))
    assert all(r.ok for r in results)
    assert advisor._concurrency == 4 and [c.settings.concurrency for c in advisor.backend.clients] == [1, 3]
    assert len(a.requests) == 2 and len(b.requests) == 6
    t = sorted(a.times)
    assert t[1] - t[0] >= 0.3  # a's second question waited for its first answer


@pytest.mark.parametrize("spec, concurrency", [("http://a.test/v1,http://b.test/v1", (1, 2, 3)),
                                               ("http://a.test/v1", (1, 2))])
def test_concurrency_values_that_do_not_match_the_urls_are_one_line(spec, concurrency):
    with pytest.raises(ModulationError, match="give one value for all, or one per URL"):
        UltraConfig.flat(advisor=spec, advisor_concurrency=concurrency)


def test_an_endpoint_that_is_down_is_skipped_counted_and_warned_about_once(caplog):
    with FaultServer([ok(ANSWER)]) as live, caplog.at_level(logging.WARNING, logger="jaxmod.llm"):
        results, advisor = ask(f"{dead_url()},{live.url}", 6, concurrency=4)
    assert all(r.ok and r.content == ANSWER for r in results) and len(live.requests) == 6
    pool = advisor.backend
    moved = sum(r.failovers for r in results)
    assert moved >= 1 and pool.outages == [1, 0]
    assert sum("is down" in r.getMessage() for r in caplog.records) == 1


TINY = ["--seeds", "1", "--pretrain-steps", "512", "--refine-steps", "512", "--num-envs", "4", "--num-steps", "64",
        "--num-minibatches", "2", "--update-epochs", "1", "--chunks", "2", "--collect-envs", "2", "--collect-steps",
        "64", "--eval-envs", "2", "--eval-steps", "64", "--episodes-per-round", "1", "--variant", "RA"]


def _ultra(advisor: str, out, timeout: int = 500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxmod.cli", "ultra", *TINY, "--advisor", advisor, "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "JAXMOD_DEBUG": ""})


def test_jaxmod_ultra_runs_on_the_live_endpoint_when_one_is_down(tmp_path):
    dead = dead_url()
    with FaultServer([ok('{"ok": true}'), ok(ANSWER)]) as live:
        proc = _ultra(f"{dead},{live.url}", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: advisor endpoint 1 of 2 is unusable (no server at" in proc.stderr
    assert "this run leaves it out" in proc.stderr
    stats = json.loads((tmp_path / "run" / "ultra.json").read_text())["advisor"][0]
    # the endpoint that failed the preflight gets no question (none fails over from it)
    assert stats["valid"] > 0 and stats["failed"] == 0 and stats["failovers"] == 0
    assert len(live.requests) > 1  # the preflight's ping and the questions
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["advisor"]
    assert saved["spec"] == live.url


def test_all_endpoints_down_is_the_usual_one_line_error(tmp_path):
    proc = _ultra(f"{dead_url()},{dead_url()}", tmp_path / "run", timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and not (tmp_path / "run").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # one line naming each endpoint, no warnings before it
    assert lines[0].startswith("jaxmod: error: none of the 2 advisor endpoints is usable: endpoint 1: no server at")
    assert "endpoint 2: no server at" in lines[0]


def test_a_dead_url_from_the_environment_is_named_as_the_variables(tmp_path, monkeypatch, capsys):
    """No --advisor: the URL is OPENAI_BASE_URL's, and the one-line error says so (where to fix it); a host name
    that does not resolve says that."""
    from jaxmod.cli import main

    url = dead_url()
    for var in ("ADVISOR_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    assert main(["ultra", *TINY, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxmod: error: no server at {url} (connection refused): start one (e.g. `jaxmod serve-advisor`) "
                   "or fix the URL (the URL is $OPENAI_BASE_URL's: fix or unset it, or pass --advisor)"], err
    assert main(["ultra", *TINY, "--advisor", "http://jaxmod-no-such-host.invalid:8080/v1", "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxmod: error: cannot reach http://jaxmod-no-such-host.invalid:8080/v1: "
                                               "its host name does not resolve: fix the URL"), err
    assert not (tmp_path / "run").exists()


def test_preflight_leaves_unusable_endpoints_and_their_concurrency_out():
    """`jaxmod ultra`'s preflight: a dead URL among several is dropped from the run's advisor (URLs and per-URL
    concurrency), so the pool never asks it; a trailing comma is no part of a URL."""
    from jaxmod.cli import _preflight_http
    from jaxmod.llm.pool import split_urls

    assert split_urls("http://a.test/v1,") == ["http://a.test/v1"]
    dead = dead_url()
    with FaultServer([ok('{"ok": true}')]) as live:
        config = UltraConfig.flat(advisor=f"{dead},{live.url}", advisor_concurrency=(3, 5))
        kept = _preflight_http(config, quiet=True)
    assert kept.advisor.urls() == [live.url] and kept.advisor.concurrency == (5,)


def test_a_bad_url_in_the_list_is_refused_in_one_line():
    from jaxmod.advice.modulation import ModulationError

    with pytest.raises(ModulationError, match="has no host"):
        UltraConfig.flat(advisor="http://127.0.0.1:8080/v1,http:///v1")


def test_a_config_of_an_earlier_version_with_one_concurrency_number_still_loads():
    data = UltraConfig.flat(advisor="http://a.test/v1,http://b.test/v1").to_dict()
    assert data["advisor"]["concurrency"] == [16]
    data["advisor"]["concurrency"] = 4  # as earlier versions wrote it
    config = UltraConfig.from_dict(json.loads(json.dumps(data)))
    assert config.advisor.concurrency == (4,) and config.advisor.limits(2) == (4, 4)
