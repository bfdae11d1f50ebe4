"""Log-probabilities as a soft KL target (issue 18 item 6): where the server returns token log-probabilities, the
LLM's distribution over a multiple choice's actions becomes the KL target and its confidence the advice weight;
missing or partial log-probabilities fall back to the one-hot target, counted."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.advice.kl import advice_kl
from jaxmod.llm.logprobs import NoDistribution, choice_distribution, parse_token_logprobs
from jaxmod.llm.responses import parse_json_body, parse_sse_body
from tests.fault_server import FaultServer, body, completion, ok, status

pytestmark = pytest.mark.timeout(300)

NAMES = ("push_left", "push_right")
ANSWER = '{"action": "push_right"}'
LOGPROB_LEFT, LOGPROB_RIGHT = -1.4, -0.3  # at the token where the two options part


def _entry(token: str, logprob: float, top: list[tuple[str, float]] = ()) -> dict:
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}


def answer_tokens(left: float = LOGPROB_LEFT, right: float = LOGPROB_RIGHT) -> list[dict]:
    """`ANSWER` as a server tokenises it: the options share the token "push" and part at the next one."""
    return [_entry('{"', 0.0), _entry("action", 0.0), _entry('":', 0.0), _entry(' "', -0.01, [(' "', -0.01)]),
            _entry("push", -0.02, [("push", -0.02), ("pull", -4.5)]),
            _entry("_right", right, [("_right", right), ("_left", left), ("_l", -6.0)]), _entry('"}', 0.0)]


def softmax(*logits: float) -> np.ndarray:
    e = np.exp(np.asarray(logits) - max(logits))
    return e / e.sum()


def test_the_distribution_is_the_softmax_where_the_options_part():
    tokens = parse_token_logprobs({"content": answer_tokens()})
    dist = choice_distribution(ANSWER, tokens, NAMES, 1)
    left = math.log(math.exp(LOGPROB_LEFT) + math.exp(-6.0))  # "_l" spells push_left's next characters too
    np.testing.assert_allclose(dist, softmax(left, LOGPROB_RIGHT), rtol=1e-9)
    single = [_entry('{"action": "', 0.0), _entry("up", -0.2, [("up", -0.2), ("down", -1.9), ("stay", -2.5)]),
              _entry('"}', 0.0)]  # options that part at their first token
    np.testing.assert_allclose(choice_distribution('{"action": "up"}', parse_token_logprobs(single),
                                                   ("stay", "up", "down"), 1), softmax(-2.5, -0.2, -1.9), rtol=1e-9)


def test_what_follows_the_name_does_not_count_against_it():
    """SmolLM2's own answer (recorded): it wanted to go on with '",' (another field), the schema closed with '"}';
    that token says nothing about the options, and the alternatives' later tokens are not known either."""
    smol = [_entry('{"', -5.99), _entry("action", -2.06), _entry('":', -0.15), _entry(' "', -3.42),
            _entry("push", -0.02, [("push", -0.02), ("pull", -6.49)]), _entry("_", -0.0, [("_", -0.0), ("-", -9.15)]),
            _entry("left", -0.168, [("left", -0.168), ("right", -1.89), ("up", -7.9)]),
            _entry('"}', -2.217, [('",', -0.22), ('"}', -2.217)])]
    dist = choice_distribution('{"action": "push_left"}', parse_token_logprobs(smol), NAMES, 0)
    np.testing.assert_allclose(dist, softmax(-0.168, -1.89), rtol=1e-9)


@pytest.mark.parametrize("tokens,why", [
    (None, "no logprobs"),
    (answer_tokens()[:-1], "do not spell"),  # partial: the last token is missing
    ([*answer_tokens()[:5], _entry("_right", -0.3, [("_right", -0.3)]), _entry('"}', 0.0)], "push_left"),
])
def test_missing_or_partial_logprobs_give_no_distribution(tokens, why):
    with pytest.raises(NoDistribution, match=why):
        choice_distribution(ANSWER, parse_token_logprobs(tokens), NAMES, 1)


@pytest.mark.parametrize("bad", [
    [{"token": 3, "logprob": -0.1}], [{"token": "a", "logprob": float("nan")}], [{"token": "a", "logprob": 0.5}],
    [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "b", "logprob": "x"}]}], [], "x", None])
def test_malformed_logprobs_are_dropped_whole(bad):
    assert parse_token_logprobs(bad) is None


def test_responses_carry_the_logprobs_json_and_streamed():
    data = completion(ANSWER)
    data["choices"][0]["logprobs"] = {"content": answer_tokens()}
    assert [t.token for t in parse_json_body(data).logprobs] == [e["token"] for e in answer_tokens()]
    events = [{"choices": [{"index": 0, "delta": {"content": ANSWER[:12]},
                            "logprobs": {"content": answer_tokens()[:4]}}]},
              {"choices": [{"index": 0, "delta": {"content": ANSWER[12:]}, "finish_reason": "stop",
                            "logprobs": {"content": answer_tokens()[4:]}}]}]
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    done = parse_sse_body(text)
    assert done.content == ANSWER and "".join(t.token for t in done.logprobs) == ANSWER
    assert parse_json_body(completion(ANSWER)).logprobs is None


def test_the_kl_term_reads_the_target_distribution_and_keeps_the_one_hot_without_one():
    class Net:
        class action_space:  # noqa: N801
            discrete = True

    head = jnp.array([[0.3, -0.2, 1.0], [0.5, 0.1, -0.4]], jnp.float32)
    suggested = jnp.array([2, 0], jnp.int32)
    target = jnp.array([[0.2, 0.0, 0.8], [0.0, 0.0, 0.0]], jnp.float32)  # row 2: no distribution
    kl = np.asarray(advice_kl(Net, {}, head, suggested, 0.2, target))
    log_pi = np.asarray(jax.nn.log_softmax(head, axis=-1))
    np.testing.assert_allclose(kl[0], 0.2 * (np.log(0.2) - log_pi[0, 0]) + 0.8 * (np.log(0.8) - log_pi[0, 2]),
                               rtol=1e-5)
    assert kl[1] == np.asarray(advice_kl(Net, {}, head, suggested, 0.2))[1] == np.float32(-log_pi[1, 0])
    grad = jax.grad(lambda h: advice_kl(Net, {}, h, suggested, 0.2, target).sum())(head)
    np.testing.assert_allclose(grad[0], np.exp(log_pi[0]) - np.asarray(target[0]), atol=1e-6)  # pulls toward it


TINY = dict(seeds=1, pretrain_steps=4 * 128 * 4, refine_steps=4 * 128 * 4, chunks=2, collect_envs=4,
            collect_steps=96, eval_envs=4, eval_steps=64, episodes_per_round=3, sync_advice=True)


def test_an_llm_servers_logprobs_become_the_packed_target_through_ultrarun(tmp_path, monkeypatch):
    """A fake OpenAI server answers every multiple choice with push_right, with log-probabilities on two of every
    three answers and none on the third: the packed targets are the softmax of the returned log-probabilities over
    the action tokens where they came, the one-hot elsewhere (counted), and the advice weight is the confidence."""
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun
    from jaxmod.ultra.rounds import AdviceRounds

    with_lp = completion(ANSWER)
    with_lp["choices"][0]["logprobs"] = {"content": answer_tokens()}
    packed = []
    take = AdviceRounds.take

    def spy(self, *args, **kwargs):  # observes what the product packs; changes nothing
        advice, row = take(self, *args, **kwargs)
        packed.append(jax.device_get(advice))
        return advice, row

    monkeypatch.setattr(AdviceRounds, "take", spy)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-logprobs")
    with FaultServer([ok('{"ok": true}'), body(with_lp), body(with_lp), ok(ANSWER)] * 40 + [body(with_lp)]) as srv:
        config = UltraConfig.flat(env_id="CartPole-v1", variants=("RA",), advisor=srv.url, **TINY)
        assert config.advisor.logprobs == 20 and config.advisor.resolved_protocol(srv.url) == "candidates"
        run = UltraRun(config, tmp_path / "run")
        run.run()
        asked = [r for r in srv.requests if r.get("response_format")]
    assert asked and all(r["logprobs"] is True and r["top_logprobs"] == 20 for r in asked)
    expected = softmax(math.log(math.exp(LOGPROB_LEFT) + math.exp(-6.0)), LOGPROB_RIGHT)
    advice = packed[-1]
    valid = np.asarray(advice.valid)[0]
    rows = np.asarray(advice.target)[0][valid]
    soft = rows.sum(axis=1) > 0
    assert soft.any() and (~soft).any()
    np.testing.assert_allclose(rows[soft], np.broadcast_to(expected, rows[soft].shape), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(advice.action)[0][valid], 1)  # ULTRA-A executes the choice
    weights = np.asarray(advice.weight)[0][valid]
    np.testing.assert_allclose(weights[soft], expected[1], rtol=1e-6)  # the confidence weighs the advice
    np.testing.assert_array_equal(weights[~soft], 1.0)
    stats = json.loads((tmp_path / "run" / "ultra.json").read_text())["advisor"][0]
    assert stats["soft_targets"] > 0 and stats["soft_fallbacks"].get("no logprobs", 0) > 0
    assert stats["soft_targets"] + sum(stats["soft_fallbacks"].values()) == stats["valid"]
    records = [json.loads(line) for line in (tmp_path / "run" / "transcript.jsonl").read_text().splitlines()]
    targets = [r["soft_target"] for r in records if r.get("kind") == "choose" and r["verdict"] == "valid"]
    assert any(t == "one-hot: no logprobs" for t in targets)
    np.testing.assert_allclose([t for t in targets if isinstance(t, list)][0], expected, atol=1e-6)


def test_logprobs_can_be_switched_off_and_are_range_checked():
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.ultra.config import UltraConfig

    assert UltraConfig.flat(logprobs=0).advisor.logprobs == 0
    with pytest.raises(ModulationError, match="logprobs"):
        UltraConfig.flat(logprobs=21)


REFUSE_LOGPROBS = status(400, json.dumps({"error": {"message": "logprobs are not supported by this server",
                                                    "type": "invalid_request_error"}}))
QUESTION = [{"role": "user", "content": "Which action?"}]


def _ask_twice(url: str) -> tuple:
    """Two questions asked with top_logprobs 5 through one `LLMClient` (as `HTTPBackend` asks a multiple choice)."""
    import asyncio

    from jaxmod.llm import ClientSettings, LLMClient

    async def go():
        async with LLMClient(ClientSettings(base_url=url, model="fault-model", max_retries=0)) as client:
            return client, [await client.chat(QUESTION, None, top_logprobs=5) for _ in range(2)]

    return asyncio.run(go())


def test_a_server_refusing_logprobs_is_asked_again_without_them(caplog):
    """HTTP 400 to a request with logprobs: the same question is sent once more without them, counted, warned about
    once; once that worked the client stops asking for them."""
    import logging

    with FaultServer([REFUSE_LOGPROBS, ok(ANSWER)]) as srv, caplog.at_level(logging.WARNING, logger="jaxmod.llm"):
        client, answers = _ask_twice(srv.url)
    assert all(a.ok and a.content == ANSWER and a.logprobs is None for a in answers)
    assert [r.get("top_logprobs") for r in srv.requests] == [5, None, None]
    assert client.stats.logprobs_refused == 1 and client.logprobs_off
    assert sum("HTTP 400 to a request with logprobs" in r.getMessage() for r in caplog.records) == 1


def test_a_400_that_is_not_about_logprobs_is_not_retried_again_and_again():
    """When the request fails without logprobs too, the 400 was about something else: the question fails (one
    retry without logprobs, no more), and the next question asks for logprobs again."""
    with FaultServer([REFUSE_LOGPROBS, status(400), REFUSE_LOGPROBS, status(400)]) as srv:
        client, answers = _ask_twice(srv.url)
    assert all(not a.ok and "HTTP 400" in a.error for a in answers)
    assert [r.get("top_logprobs") for r in srv.requests] == [5, None, 5, None]
    assert client.stats.logprobs_refused == 2 and not client.logprobs_off


def test_continuous_advice_is_measured_in_half_ranges_of_the_action_box():
    """The KL pull and ULTRA-R's kernel mean the same on [-2, 2] as on [-1, 1]: everything scaled by 2 (policy
    mean and std, suggestion, action taken) gives the same KL and the same bonus."""
    from types import SimpleNamespace

    from jaxmod.advice.arrays import Advice
    from jaxmod.advice.shaping import shaping_bonus
    from jaxmod.envs.core import ActionSpace

    unit = ActionSpace(discrete=False, shape=(2,), low=(-1.0, -1.0), high=(1.0, 1.0))
    wide = ActionSpace(discrete=False, shape=(2,), low=(-2.0, -2.0), high=(2.0, 2.0))
    assert list(unit.unit) == [1.0, 1.0] and list(wide.unit) == [2.0, 2.0]
    assert list(ActionSpace(discrete=False, shape=(1,), low=(-np.inf,), high=(np.inf,)).unit) == [1.0]
    head = jnp.array([[0.1, -0.3], [0.5, 0.9]])
    suggested = jnp.array([[0.8, -0.8], [-0.5, 1.0]])
    params = {"log_std": jnp.array([-0.5, 0.2])}
    kl_unit = advice_kl(SimpleNamespace(action_space=unit), params, head, suggested, 0.2)
    kl_wide = advice_kl(SimpleNamespace(action_space=wide), {"log_std": params["log_std"] + jnp.log(2.0)}, 2 * head,
                        2 * suggested, 0.2)
    np.testing.assert_allclose(np.asarray(kl_wide), np.asarray(kl_unit), rtol=1e-5)
    # the pull moves the policy's mean only: its std is one parameter for every state, never pulled by advice
    g_std, g_mean = jax.grad(lambda p, h: advice_kl(SimpleNamespace(action_space=unit), p, h, suggested, 0.2).sum(),
                             argnums=(0, 1))(params, head)
    assert np.all(np.asarray(g_std["log_std"]) == 0.0) and np.all(np.abs(np.asarray(g_mean)) > 0.0)

    advice = Advice(obs=jnp.zeros((1, 3)), snapshot=None, action=jnp.zeros((1, 2)), reward=jnp.ones(1),
                    rated_action=jnp.array([[0.3, -0.2]]), weight=jnp.ones(1), target=jnp.zeros((1, 0)),
                    valid=jnp.ones(1, bool), episode=jnp.zeros(1, jnp.int32), step=jnp.zeros(1, jnp.int32))
    slot, critical, taken = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool), jnp.array([[[0.5, 0.0]]])
    b_unit = shaping_bonus(1.0, advice, slot, critical, taken, 0.2 * jnp.asarray(unit.unit))
    wide_advice = advice.replace(rated_action=2 * advice.rated_action)
    b_wide = shaping_bonus(1.0, wide_advice, slot, critical, 2 * taken, 0.2 * jnp.asarray(wide.unit))
    np.testing.assert_allclose(np.asarray(b_wide), np.asarray(b_unit), rtol=1e-6)
    assert 0.0 < float(b_unit[0, 0]) < 1.0
