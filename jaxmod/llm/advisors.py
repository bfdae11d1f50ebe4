"""Advisors behind one interface: prompts in, validated answers out, every exchange logged.

An `Advisor` pairs a chat backend with the prompts and validators. Backends: `HTTPBackend` (any
OpenAI-compatible server through `LLMClient`), `LocalBackend` (in-process heuristics or a teacher, not an LLM),
`ReplayBackend` (a transcript, no server), `NoisyBackend` (corrupts a fraction of another backend's
answers, to measure robustness), `DelayedBackend` (adds a fixed latency per answer, to measure how
training copes with a slow LLM). The teacher backend (a stronger saved policy) lives in
`jaxmod.advice.teacher` because it runs a network.

Every question may carry a `NumericContext` (the exact recorded numbers behind its text). The advisor hands it
to the backend as `complete(..., numeric=...)`; only an in-process answerer with `answer_numeric` uses it (a
teacher policy). Everything that goes over HTTP, into transcripts and caches, or into a replay key stays text.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from jaxmod.llm.answers import (
    Advised,
    Identified,
    NotAsked,
    Rejected,
    identify_schema,
    validate_advice,
    validate_choice,
    validate_identify,
)
from jaxmod.llm.budget import DEFAULT_CONTEXT_TOKENS, estimate_tokens, prompt_budget
from jaxmod.llm.client import Accept, ChatResult, LLMClient
from jaxmod.llm.logprobs import NoDistribution, choice_distribution, parse_token_logprobs, to_json
from jaxmod.llm.pacing import PACED, Pacer
from jaxmod.llm.prompts import (
    EpisodeView,
    Messages,
    NumericContext,
    StateQuery,
    advice_messages,
    choice_messages,
    identify_messages,
)
from jaxmod.llm.scripted import ScriptedBackend, ScriptedError
from jaxmod.llm.secrets import RedactingFilter, one_line
from jaxmod.llm.transcript import Transcript, current_tags, load_transcript, prompt_key, tags_key

log = logging.getLogger("jaxmod.llm")
log.addFilter(RedactingFilter())
MAX_REASONING_CHARS = 20_000  # reasoning kept per transcript record


class ChatBackend(Protocol):
    """Anything that answers chat messages. `accept(content, finish_reason)` is the asker's validator: a backend
    with a cache stores only answers it accepts (wrappers pass it on). `numeric`: the question's exact numbers,
    which a backend may use (in-process answerers) or ignore (anything that only sends text). `top_logprobs` > 0:
    the answer's token log-probabilities are wanted (`ChatResult.logprobs`; a backend without them returns None)."""

    name: str

    async def complete(self, messages: Messages, schema: dict[str, Any] | None, name: str,
                       deadline: float | None, accept: Accept | None = None, *,
                       numeric: NumericContext | None = None, top_logprobs: int = 0) -> ChatResult: ...


class Answerer(Protocol):
    """An in-process answerer for `LocalBackend`: the question's text in, the answer's JSON text out; raises
    `ScriptedError` for a question it cannot answer. One that also has `answer_numeric(numeric, schema) -> str`
    answers from the exact numbers whenever a question carries them."""

    name: str

    def answer(self, messages: Messages) -> str: ...


class HTTPBackend:
    """An OpenAI-compatible server through an open `LLMClient` (its cache, if any, sees the validator)."""

    def __init__(self, client: LLMClient) -> None:
        self.client = client

    @property
    def name(self) -> str:  # the URL carries no credentials; the model may be discovered on the first request
        return f"http:{self.client.base_url}:{self.client.model or 'auto'}"

    async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None,
                       top_logprobs=0) -> ChatResult:
        return await self.client.chat(messages, schema, name, deadline, accept=accept,  # HTTP carries text only
                                      top_logprobs=top_logprobs)

    async def context_tokens(self) -> int | None:
        """The server's context window in tokens, where it tells (`LLMClient.context_tokens`)."""
        return await self.client.context_tokens()


class LocalBackend:
    """An in-process `Answerer`, no HTTP: `ScriptedBackend` by default (it reads the text, as it would behind a
    server), or a `TeacherBackend` (it answers from the question's `NumericContext` when there is one)."""

    def __init__(self, answerer: Answerer | None = None) -> None:
        self.answerer = answerer if answerer is not None else ScriptedBackend()
        self.name = self.answerer.name

    async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None,
                       top_logprobs=0) -> ChatResult:
        t0 = time.monotonic()  # an answerer, not a language model: no token log-probabilities
        answer_numeric = getattr(self.answerer, "answer_numeric", None)
        try:
            if numeric is not None and answer_numeric is not None:
                content = answer_numeric(numeric, schema)
            else:
                content = self.answerer.answer(messages)
        except ScriptedError as err:
            return ChatResult(error=f"{self.name}: {err}", latency_s=time.monotonic() - t0)
        return ChatResult(content=content, finish_reason="stop", latency_s=time.monotonic() - t0, attempts=1,
                          model=f"jaxmod-{self.name}")


class ReplayBackend:
    """Answers from a transcript, with no server. A question asked under tags (`tagged(variant=..., round=...)`)
    gets exactly the answer recorded for it under the same tags; otherwise (or for a transcript written before
    tags) the n-th asking of a question gets its n-th recorded answer. A question asked more often than recorded
    gets its last answer again (counted in `reused`); one never seen is an error."""

    name = "replay"

    def __init__(self, transcript_path) -> None:
        self.by_tags: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in load_transcript(transcript_path):
            if "prompt_key" in rec:
                self.by_prompt[rec["prompt_key"]].append(rec)
                if rec.get("tags"):
                    self.by_tags[(tags_key(rec["tags"]), rec["prompt_key"])].append(rec)
        self._served: dict[tuple[str, str], int] = defaultdict(int)
        self.reused = 0
        self.context = next((rec["context_tokens"] for recs in self.by_prompt.values() for rec in recs
                             if rec.get("context_tokens")), None)

    async def context_tokens(self) -> int | None:
        """The context window the recorded run used (its prompts were windowed to it); None: unlimited."""
        return self.context

    def _next(self, key: tuple[str, str], records: list[dict[str, Any]]) -> dict[str, Any]:
        i = self._served[key]
        self._served[key] = i + 1
        if i >= len(records):
            self.reused += 1
            return records[-1]
        return records[i]

    async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None,
                       top_logprobs=0) -> ChatResult:
        pkey = prompt_key(list(messages), schema)
        tkey = tags_key(current_tags())
        if tkey and (tkey, pkey) in self.by_tags:
            rec = self._next((tkey, pkey), self.by_tags[(tkey, pkey)])
        elif pkey in self.by_prompt:
            rec = self._next(("", pkey), self.by_prompt[pkey])
        else:
            return ChatResult(error="replay: question not in transcript", kind="replay")
        return ChatResult(content=rec.get("content"), finish_reason=rec.get("finish_reason"),
                          usage=rec.get("usage") or {}, model=rec.get("model"), error=rec.get("error"), attempts=1,
                          kind=rec.get("error_kind"), logprobs=parse_token_logprobs(rec.get("logprobs")))


class NoisyBackend:
    """Corrupts a `fraction` of the inner backend's answers: wrong critical step, wrong action,
    wrong-sign reward. Whether and how an answer is corrupted depends only on the seed and the question,
    so the same question is corrupted the same way in every run and every variant (comparisons between
    variants see the same bad answers), whatever the order or concurrency of the questions."""

    def __init__(self, inner: ChatBackend, fraction: float, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"noise fraction must lie in [0, 1], got {fraction}")
        self.inner, self.fraction, self.seed = inner, fraction, seed
        self.name = f"noisy({fraction:g}):{inner.name}"
        self.corrupted = 0

    async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None,
                       top_logprobs=0) -> ChatResult:
        # the cache sees true answers
        result = await self.inner.complete(messages, schema, name, deadline, accept, numeric=numeric,
                                           top_logprobs=top_logprobs)
        rng = random.Random(f"{self.seed}:{prompt_key(list(messages), schema)}")
        if not result.ok or rng.random() >= self.fraction:
            return result
        try:
            data = json.loads(result.content)
        except (TypeError, ValueError):
            return result
        self.corrupted += 1
        if "critical_steps" in data:
            for item in data["critical_steps"]:
                item["step"] = max(0, int(item.get("step", 0)) + rng.choice([-1, 1]) * rng.randint(5, 20))
                item["reason"] = "corrupted by NoisyAdvisor"
        if "action" in data:
            act = schema.get("properties", {}).get("action", {}) if schema else {}
            if isinstance(data["action"], int) and "maximum" in act:
                choices = [a for a in range(int(act["maximum"]) + 1) if a != data["action"]]
                data["action"] = rng.choice(choices) if choices else data["action"]
            elif isinstance(data["action"], list):
                lo, hi = act.get("items", {}).get("minimum", -1.0), act.get("items", {}).get("maximum", 1.0)
                data["action"] = [rng.uniform(lo, hi) for _ in data["action"]]
        if "reward" in data and isinstance(data["reward"], (int, float)):
            data["reward"] = -data["reward"] if data["reward"] != 0 else rng.choice([-1.0, 1.0])
        result.content = json.dumps(data)
        result.logprobs = None  # they were the true answer's
        return result

    async def context_tokens(self) -> int | None:
        return await _context_of(self.inner)


class DelayedBackend:
    """Another backend behind a fixed latency per answer (an `asyncio.sleep`, so answers still overlap up
    to the advisor's concurrency): a stand-in for a remote LLM when measuring the asynchronous loop."""

    def __init__(self, inner: ChatBackend, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"advisor latency must be >= 0 seconds, got {delay_s}")
        self.inner, self.delay_s = inner, delay_s
        self.name = f"delayed({delay_s:g}s):{inner.name}"

    async def complete(self, messages, schema, name, deadline, accept=None, *, numeric=None,
                       top_logprobs=0) -> ChatResult:
        t0 = time.monotonic()
        await asyncio.sleep(self.delay_s)
        result = await self.inner.complete(messages, schema, name, deadline, accept, numeric=numeric,
                                           top_logprobs=top_logprobs)
        result.latency_s = time.monotonic() - t0
        return result

    async def context_tokens(self) -> int | None:
        return await _context_of(self.inner)


UNLIMITED = object()  # a backend without a context window (an in-process answerer)


async def _context_of(backend: ChatBackend) -> int | None | object:
    """`backend`'s context window in tokens: its `context_tokens()` (None: it does not tell), or UNLIMITED for a
    backend that has none (in-process answerers)."""
    ask = getattr(backend, "context_tokens", None)
    if ask is None:
        return UNLIMITED
    n = await ask()
    return UNLIMITED if n is None and isinstance(backend, ReplayBackend) else n


@dataclass
class AdvisorStats:
    """Counts and costs per advisor (or per refinement chunk, via `snapshot`/`since`)."""

    questions: int = 0
    valid: int = 0
    invalid: int = 0  # answers that came back but failed validation
    failed: int = 0  # no answer (server error, timeout, deadline)
    items_dropped: int = 0  # parts of valid answers dropped (out-of-range steps, duplicates)
    reused: int = 0  # questions answered by an earlier asking of the same prompt in this run (not asked again)
    over_budget: int = 0  # questions not sent: the prompt would not fit the context window (counted as failed)
    paced: int = 0  # questions not asked: their answers could not arrive while they could still act (`Pacer`;
    # not questions, not failures)
    failovers: int = 0  # times a question moved to another endpoint because one was down (several endpoints)
    soft_targets: int = 0  # valid multiple-choice answers whose token log-probabilities gave a distribution
    soft_fallbacks: dict[str, int] = field(default_factory=dict)  # valid ones that fell back to one-hot, by why
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}

    def copy(self) -> AdvisorStats:
        """A snapshot (to count one round: `RoundCounts.between(before, advisor.stats)`)."""
        return copy.deepcopy(self)


def with_distribution(verdict: Advised, result: ChatResult, names: tuple[str, ...]) -> Advised:
    """A valid multiple-choice answer with the LLM's distribution over the options (`names`) read from its token
    log-probabilities, and its confidence (the chosen option's probability), or, where they give none (missing,
    partial, not spelling the answer), the answer as it was with `soft_fallback` saying why (one-hot target)."""
    try:
        dist = choice_distribution(result.content or "", result.logprobs, names, int(verdict.action))
    except NoDistribution as err:
        return dataclasses.replace(verdict, soft_fallback=str(err))
    return dataclasses.replace(verdict, distribution=dist, confidence=dist[int(verdict.action)])


class Advisor:
    """Asks a backend ULTRA's questions; returns validated answers or `Rejected`, never raises.

    Prompts fit the context: `prompt_budget()` is the backend's context window (the server's, where it tells; else
    `context_tokens`, else `DEFAULT_CONTEXT_TOKENS`; the smaller of the server's and `context_tokens` when both are
    known) less the answer's `max_tokens`; a question whose prompt may exceed it (`estimate_tokens`, an upper
    bound) is not sent but dropped and counted (`over_budget`). Identical questions (same messages, schema and exact
    numbers) are asked once per advisor, i.e. once per run: later askings, in flight or done, share the first
    one's answer (`reused`), and are still judged, counted and written to the transcript under their own tags
    (a `ReplayBackend` shares nothing: it serves every asking its own recorded answer).

    With a `pacer` (`jaxmod.llm.pacing`; the asynchronous schedule sets one) a question is sent only when its
    answer is expected while it can still act; one that is not is answered `NotAsked` (counted in `paced`, written
    to the transcript as not asked, so a replay skips it too)."""

    def __init__(self, backend: ChatBackend, max_critical: int = 3, transcript: Transcript | None = None,
                 deadline_s: float | None = 300.0, concurrency: int = 8, context_tokens: int | None = None,
                 max_tokens: int = 512, top_logprobs: int = 0) -> None:
        self.backend = backend
        self.top_logprobs = top_logprobs  # > 0: multiple-choice answers ask for token log-probabilities
        self.max_critical = max_critical
        self.transcript = transcript
        self.deadline_s = deadline_s
        self.stats = AdvisorStats()
        self.context_tokens, self.max_tokens = context_tokens, max_tokens
        self.context: int | None = None  # the context window in use, once `prompt_budget` resolved it
        self._budget: Any = UNLIMITED  # placeholder until resolved
        self._resolved = False
        self._memo: dict[str, asyncio.Future] = {}
        self._waiters: dict[str, int] = defaultdict(int)
        self._concurrency = concurrency
        self._limit: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self.outstanding = 0  # questions handed to `identify`/`judge`/`advise` and not answered or dropped yet
        self.pacer: Pacer | None = None  # set by the refinement's asynchronous schedule (None: every question asked)

    async def prompt_budget(self) -> int | None:
        """Tokens a prompt may take (the context window less `max_tokens`), or None for an answerer without a
        context window (in-process, or a replay of a run that had none). Resolved once; raises ValueError (one
        line) when the window leaves too little for a prompt."""
        if not self._resolved:
            told = await _context_of(self.backend)
            if told is UNLIMITED and self.context_tokens is None:
                self._budget = None
            else:
                known = [n for n in (None if told is UNLIMITED else told, self.context_tokens) if n is not None]
                self.context = min(known) if known else DEFAULT_CONTEXT_TOKENS
                self._budget = prompt_budget(self.context, self.max_tokens)
            self._resolved = True
        return self._budget

    def drop_over_budget(self, why: str) -> None:
        """Count a question its asker could not fit into the prompt budget (not sent): a failed question."""
        self.stats.questions += 1
        self.stats.failed += 1
        self.stats.over_budget += 1
        key = "no answer (context)"
        self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
        log.warning("advisor question dropped: %s", why)

    def _memo_key(self, messages: Messages, schema: dict[str, Any] | None, numeric: NumericContext | None) -> str:
        key = prompt_key(list(messages), schema)
        if numeric is None:
            return key
        h = hashlib.sha256(key.encode())
        for part in (numeric.env_id, numeric.step):
            h.update(repr(part).encode())
        for arr in (numeric.obs, numeric.actions):
            a = np.ascontiguousarray(np.asarray(arr))
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    async def _shared(self, key: str, make: Callable[[], Any]) -> tuple[ChatResult, bool]:
        """The answer to the question `key`: the first asking's (done or in flight) if it brought an answer, else
        a new asking (`make()`); and whether it was reused. A cancelled asker cancels the request only when no
        other asker waits for it."""
        reused = self._shareable(key)
        task = self._memo.get(key)
        if not reused:
            task = asyncio.ensure_future(make())
            self._memo[key] = task
        self._waiters[key] += 1
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._waiters[key] == 1 and not task.done():
                task.cancel()
                self._memo.pop(key, None)
            raise
        finally:
            self._waiters[key] -= 1
        return (copy.copy(result) if reused else result), reused

    async def _ask(self, kind: str, messages: Messages, schema: dict[str, Any], name: str, deadline: float | None,
                   validate: Callable[[str, str | None], Identified | Advised | Rejected],
                   numeric: NumericContext | None = None,
                   soft: Callable[[Advised, ChatResult], Advised] | None = None) -> Identified | Advised | Rejected:
        """One question: asked (or shared), judged, counted and logged. `soft`, for multiple-choice questions asked
        with token log-probabilities: a valid answer's distribution over the options (`with_distribution`)."""
        t0 = time.monotonic()
        top_logprobs = self.top_logprobs if soft is not None else 0

        def judge(text: str | None, finish_reason: str | None) -> Identified | Advised | Rejected:
            try:
                return validate(text, finish_reason)
            except Exception as err:  # a validator bug must not reach training either
                return Rejected(one_line(f"validator raised {type(err).__name__}: {err}"))

        def accept(text: str | None, finish_reason: str | None) -> bool:
            return not isinstance(judge(text, finish_reason), Rejected)

        async def complete() -> ChatResult:
            try:
                extra = {"top_logprobs": top_logprobs} if top_logprobs > 0 else {}  # backends without it still work
                return await self.backend.complete(messages, schema, name, deadline, accept, numeric=numeric, **extra)
            except Exception as err:  # a backend bug must not reach training
                return ChatResult(error=one_line(f"backend raised {type(err).__name__}: {err}"), kind="backend")

        result, reused = await self._answer(messages, schema, numeric, complete)
        if result.kind == "paced":  # never sent (or, in a replay, not sent by the recorded run): not a question
            self.stats.paced += 1
            if self.transcript is not None:
                self.transcript.append({"kind": kind, "backend": self.backend.name,
                                        "prompt_key": prompt_key(list(messages), schema),
                                        "messages": list(messages), "schema_name": name,
                                        "error": result.error, "error_kind": "paced", "verdict": "not asked",
                                        **({"tags": tags} if (tags := current_tags()) else {})})
            return NotAsked(result.error or PACED)
        self.stats.questions += 1
        self.stats.reused += int(reused)
        self.stats.failovers += 0 if reused else result.failovers
        self.stats.latency_s += result.latency_s or (time.monotonic() - t0)
        self.stats.prompt_tokens += int(result.usage.get("prompt_tokens", 0) or 0)
        self.stats.completion_tokens += int(result.usage.get("completion_tokens", 0) or 0)
        verdict = self._verdict(kind, result, judge, soft if top_logprobs > 0 else None)
        if self.transcript is not None:
            record = self._record(kind, messages, schema, name, result, verdict)
            if reused:
                record["reused"] = True
            if self.context is not None:  # the window its prompts were fitted to (a replay fits them the same)
                record["context_tokens"] = self.context
            self.transcript.append(record)
        return verdict

    async def _answer(self, messages: Messages, schema: dict[str, Any], numeric: NumericContext | None,
                      complete: Callable[[], Any]) -> tuple[ChatResult, bool]:
        """The backend's answer to one question (`complete()`), shared with identical askings, and whether it was
        shared; a prompt over the budget is not sent (a "context" failure, counted in `over_budget`)."""
        try:
            budget = await self.prompt_budget()
        except ValueError as err:
            return ChatResult(error=one_line(str(err)), kind="context"), False
        size = estimate_tokens(messages)
        if budget is not None and size > budget:
            self.stats.over_budget += 1
            return ChatResult(error=f"prompt of up to {size} tokens exceeds the budget of {budget} (context "
                                    f"{self.context} less max_tokens {self.max_tokens}): not sent",
                              kind="context"), False
        if isinstance(self.backend, ReplayBackend):  # a replay serves each asking its own record: share none
            return await complete(), False
        key = self._memo_key(messages, schema, numeric)
        pacer = self.pacer
        if pacer is None or self._shareable(key):  # an answer already asked for costs nothing more
            return await self._shared(key, complete)
        if not await pacer.admit():
            return ChatResult(error=PACED, kind="paced"), False
        try:
            return await self._shared(key, complete)
        finally:
            pacer.release()

    def _shareable(self, key: str) -> bool:
        """An asking of question `key` is in flight, or done with an answer (`_shared` would reuse it)."""
        task = self._memo.get(key)
        return task is not None and not (task.done() and (task.cancelled() or task.exception() is not None
                                                          or not task.result().ok))

    def _verdict(self, kind: str, result: ChatResult, judge: Callable[[str | None, str | None], Any],
                 soft: Callable[[Advised, ChatResult], Advised] | None) -> Identified | Advised | Rejected:
        """`result` judged and counted (valid, invalid, failed, why); `soft`: a valid answer's distribution over
        the options from its log-probabilities (None: not asked for)."""
        if not result.ok:
            verdict: Identified | Advised | Rejected = Rejected(f"no answer: {one_line(result.error or 'none')}")
            self.stats.failed += 1
        else:
            verdict = judge(result.content, result.finish_reason)
            if isinstance(verdict, Rejected):
                self.stats.invalid += 1
            else:
                self.stats.valid += 1
                self.stats.items_dropped += getattr(verdict, "dropped", 0)
                if soft is not None:
                    verdict = soft(verdict, result)
                    if verdict.distribution is not None:
                        self.stats.soft_targets += 1
                    else:
                        why = verdict.soft_fallback or "no logprobs"
                        self.stats.soft_fallbacks[why] = self.stats.soft_fallbacks.get(why, 0) + 1
        if isinstance(verdict, Rejected):
            key = verdict.reason.split(":")[0][:60]
            if key == "no answer" and result.kind:
                key = f"no answer ({result.kind}{f' {result.status}' if result.status else ''})"
            self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
            log.warning("advisor answer dropped (%s): %s", kind, verdict.reason)
        return verdict

    def _record(self, kind: str, messages: Messages, schema: dict[str, Any], name: str, result: ChatResult,
                verdict: Identified | Advised | Rejected) -> dict[str, Any]:
        """One transcript line: the question, the answer as received, how it was judged (and clipped)."""
        record = {
            "kind": kind, "backend": self.backend.name, "prompt_key": prompt_key(list(messages), schema),
            "messages": list(messages), "schema_name": name, "content": result.content,
            "finish_reason": result.finish_reason, "usage": result.usage, "model": result.model,
            "latency_s": round(result.latency_s, 4), "attempts": result.attempts, "error": result.error,
            "verdict": "valid" if not isinstance(verdict, Rejected) else f"rejected: {verdict.reason}",
        }
        if tags := current_tags():
            record["tags"] = tags
        if result.error is not None and result.kind:
            record["error_kind"] = result.kind
        if result.cached:
            record["cached"] = True
        if result.source != "content":
            record["answer_source"] = result.source
        if result.reasoning:
            record["reasoning"] = result.reasoning[:MAX_REASONING_CHARS]
        if result.logprobs:
            record["logprobs"] = to_json(result.logprobs)
        if getattr(verdict, "distribution", None) is not None:
            record["soft_target"] = [round(p, 6) for p in verdict.distribution]
        elif getattr(verdict, "soft_fallback", None):
            record["soft_target"] = f"one-hot: {verdict.soft_fallback}"
        if getattr(verdict, "reward_clipped", False):
            record["reward_clipped"] = {"answered": verdict.raw_reward, "used": verdict.reward}
        if getattr(verdict, "dropped", 0):
            record["items_dropped"] = verdict.dropped
        return record

    def _semaphore(self) -> asyncio.Semaphore:
        """One limit per advisor and event loop, shared by concurrent `identify`/`advise` calls (several
        seeds' rounds at once still ask at most `concurrency` questions at a time)."""
        loop = asyncio.get_running_loop()
        if self._limit is None or self._limit[0] is not loop:
            self._limit = (loop, asyncio.Semaphore(self._concurrency))
        return self._limit[1]

    async def _gather(self, questions) -> list:
        """Ask at most `concurrency` questions at a time. Each question is a zero-argument callable that
        makes its coroutine only once it may run, so a cancelled round leaves no coroutine un-awaited."""
        sem = self._semaphore()

        async def bounded(ask):
            self.outstanding += 1
            try:
                async with sem:
                    return await ask()
            finally:
                self.outstanding -= 1

        return list(await asyncio.gather(*(bounded(ask) for ask in questions)))

    async def identify(self, views: Sequence[EpisodeView]) -> list[Identified | Rejected]:
        """Critical steps for each episode view."""
        deadline = self.batch_deadline()
        schema = identify_schema(self.max_critical)
        return await self._gather(
            lambda v=v: self._ask("identify", identify_messages(v, self.max_critical), schema, "critical_states",
                                  deadline, lambda text, fr: validate_identify(text, v.length, self.max_critical, fr),
                                  v.numeric)
            for v in views)

    def batch_deadline(self) -> float | None:
        """The `time.monotonic()` instant by which a batch of questions asked now must be answered (`deadline_s`
        from now; None: no bound)."""
        return None if self.deadline_s is None else time.monotonic() + self.deadline_s

    async def judge(self, queries: Sequence[StateQuery], deadline: float | None = None) -> list[Advised | Rejected]:
        """The multiple-choice question at each (discrete-action) candidate state: one action name out of the
        env's, the implicit reward derived from it (`validate_choice`). `deadline`: a `batch_deadline()` shared
        with other calls (default: a new one)."""
        deadline = self.batch_deadline() if deadline is None else deadline
        return await self._gather(
            lambda q=q: self._ask("choose", choice_messages(q), q.choice_schema(), "choice", deadline,
                                  lambda text, fr: validate_choice(text, q.action_names, q.agent_index, fr),
                                  q.numeric, lambda v, r, q=q: with_distribution(v, r, q.action_names))
            for q in queries)

    async def advise(self, queries: Sequence[StateQuery], deadline: float | None = None) -> list[Advised | Rejected]:
        """Action suggestion and implicit reward for each critical state. `deadline`: as `judge`'s."""
        deadline = self.batch_deadline() if deadline is None else deadline
        return await self._gather(
            lambda q=q: self._ask("advise", advice_messages(q), q.schema(), "advice", deadline,
                                  lambda text, fr: validate_advice(text, q.discrete, q.num_actions, q.low, q.high, fr),
                                  q.numeric)
            for q in queries)
