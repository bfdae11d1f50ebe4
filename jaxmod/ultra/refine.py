"""The refinement loop: compiled chunks of any method, evaluations between them, and advice rounds overlapped with
the device's work.

`RefinementProgram` holds a variant's three compiled programs (run a chunk, evaluate, record episodes for the
advisor), all vmapped over seeds (sharded over the devices when the seeds split evenly over them:
`jaxmod.parallel.SeedPrograms`) and the chunk taking `Advice` (empty for methods that read none, so callers never
branch). `refine_chunks` is the loop: the device always has work queued; each chunk's evaluation and the advisor's
episodes are dispatched behind it, the host reads results and swaps advice in while the device evaluates, and
hands episodes to the advisor once the next chunk is queued (unless the schedule needs their answers before it);
an asynchronous schedule swaps in a round's answers as they arrive, a waiting one whole rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxmod.parallel import SeedPrograms, gather
from jaxmod.ppo import PPOLearner
from jaxmod.ppo.acting import make_collector, make_evaluator
from jaxmod.ppo.train import params_finite
from jaxmod.reporting import PARAMS_FINITE
from jaxmod.ultra.candidates import make_scorer
from jaxmod.ultra.rounds import AdviceRounds
from jaxmod.ultra.schedule import Schedule


def _fold(keys: jax.Array, i: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)


@dataclass
class RefinementProgram:
    """One variant's compiled programs over S seeds. `run(state, advice)` -> (state, metrics [S, updates], plus
    `PARAMS_FINITE` [S] bool: each seed's parameters are finite after the chunk);
    `evaluate(state, i)` -> [S] mean evaluation return (plain resets, normalisers frozen; i-th evaluation's keys);
    `record(state, i)` -> the i-th round's recording of the current policies ([S, T, N] arrays) and its [S, T, N]
    candidate scores (`jaxmod.ultra.candidates.make_scorer`)."""

    learner: PPOLearner
    chunk_updates: int
    keys: jax.Array  # (S,) refinement keys: collection rounds fold them in
    eval_keys: jax.Array  # (S,) evaluation keys: each evaluation folds them in
    run_fn: Callable
    evaluate_fn: Callable
    record_fn: Callable
    run_compiled: bool = False
    evaluate_compiled: bool = False
    layout: SeedPrograms | None = None  # where the seeds run (None: one device's plain programs)

    @classmethod
    def build(cls, learner: PPOLearner, chunks: int, keys: jax.Array, eval_keys: jax.Array, collect_envs: int,
              collect_steps: int, eval_envs: int, eval_steps: int,
              like: RefinementProgram | None = None, layout: SeedPrograms | None = None) -> RefinementProgram:
        """`like`: a program of the same run (same env, network and sizes) whose evaluation and recording programs
        this one reuses (compiled once per run, not once per method); `layout`: where the seeds run (None: one
        device's plain `jax.jit(jax.vmap(...))`)."""
        chunk_updates = max(1, math.ceil(learner.config.num_updates / chunks))
        env, net = learner.env, learner.net

        def run_chunk(st, adv):  # the parameters' check: one reduction per chunk, inside the chunk's program
            st, metrics = learner.run(st, chunk_updates, adv)
            return st, {**metrics, PARAMS_FINITE: params_finite(st.params)}

        jit = (lambda fn: jax.jit(jax.vmap(fn))) if layout is None else layout.jit
        run = jit(run_chunk)
        collector = make_collector(env.replace_num_envs(collect_envs), net, collect_steps)
        scorer = make_scorer(env, net, learner.config.gamma)

        def collect_and_score(params, obs_rms, return_rms, key):
            rec = collector(params, obs_rms, key)
            return rec, scorer(params, obs_rms, return_rms, rec)

        if like is not None:
            return cls(learner, chunk_updates, keys, eval_keys, run, like.evaluate_fn, like.record_fn,
                       evaluate_compiled=like.evaluate_compiled, layout=layout)
        collect = jit(collect_and_score)
        evaluate = jit(make_evaluator(env.replace_num_envs(eval_envs), net, eval_steps))
        return cls(learner, chunk_updates, keys, eval_keys, run, evaluate, collect, layout=layout)

    @property
    def chunks(self) -> int:
        """Chunks of the refinement: `chunk_updates` updates each, the last one possibly shorter."""
        return math.ceil(self.learner.config.num_updates / self.chunk_updates)

    def share(self, learner: PPOLearner) -> RefinementProgram:
        """This program for another member of its program group (`jaxmod.methods.shared_modulator`): the same
        compiled programs, `learner` for the member's own config and modulator."""
        return RefinementProgram(learner, self.chunk_updates, self.keys, self.eval_keys, self.run_fn,
                                 self.evaluate_fn, self.record_fn, self.run_compiled, self.evaluate_compiled,
                                 self.layout)

    def compile(self, state: Any, advice: Any) -> float:
        """Compile `run` and `evaluate` for these shapes now, unless compiled already (so wall time measures
        refinement, not compilers); returns the seconds spent compiling."""
        if self.run_compiled and self.evaluate_compiled:
            return 0.0
        t0 = time.perf_counter()
        if not self.run_compiled:
            self.run_fn = self.run_fn.lower(state, self._put(advice)).compile()
            self.run_compiled = True
        if not self.evaluate_compiled:
            self.evaluate_fn = self.evaluate_fn.lower(state.params, state.env_state.obs_rms, self.eval_keys).compile()
            self.evaluate_compiled = True
        return time.perf_counter() - t0

    def _put(self, advice: Any) -> Any:
        """Advice (host arrays, or device arrays of another layout) where the chunk's program takes it."""
        return advice if self.layout is None else self.layout.put(advice)

    def run(self, state: Any, advice: Any) -> tuple[Any, Any]:
        return self.run_fn(state, self._put(advice))

    def evaluate(self, state: Any, i: int) -> jax.Array:
        return self.evaluate_on(state, self.eval_keys if i == 0 else _fold(self.eval_keys, i))

    def evaluate_on(self, state: Any, keys: jax.Array) -> jax.Array:
        """[S] mean evaluation return of `state`'s agents on (S,) evaluation `keys` (the evaluation program)."""
        return self.evaluate_fn(state.params, state.env_state.obs_rms, keys)[0]

    def record(self, state: Any, i: int) -> Any:
        return self.record_fn(state.params, state.env_state.obs_rms, state.env_state.return_rms, _fold(self.keys, i))


def _pacing(rounds: AdviceRounds | None, schedule: Schedule, chunks: int,
            expected_s: float | None) -> Callable[[int, float], None]:
    """`pace(chunks done, seconds since the loop started)`: sets the advisor's deadline, the expected end of chunk
    `chunks - 1` (the last swap is before the last chunk). Sets the first one now, from `expected_s`."""
    if rounds is None or not schedule.paces:
        return lambda done, elapsed: None

    def pace(done: int, elapsed: float) -> None:
        per_chunk = elapsed / done
        rounds.pace(time.monotonic() + max(0.0, (chunks - 1 - done) * per_chunk))

    rounds.pace(None if expected_s is None else time.monotonic() + expected_s * (chunks - 1) / chunks)
    return pace


@dataclass
class LoopResult:
    state: Any
    wall_s: float
    stall_s: float  # host time the loop spent on advice while the device could have been fed (every wait)
    first_wait_s: float = 0.0  # of which waiting for the first round before the first chunk (a waiting schedule)
    start_eval: Any = None  # [S] the evaluation before refinement (what `refine_chunks`' `start` takes)


def _chunk(program: RefinementProgram, state: Any, advice: Any, chunk: int, guard: Any, restored: bool
           ) -> tuple[Any, Any, Any, dict[str, Any], bool]:
    """Run chunk `chunk` and queue its evaluation; ask `guard` (if any) about it. Returns (state, metrics, [S]
    evaluation, the guard's facts, restored): from the chunk the guard acts on, fine-tuning's agents and evaluation
    stand for the method's (at that chunk the method's own mean evaluation is kept as `own_eval_return`); after it
    nothing runs (metrics None)."""
    if restored:
        return state, None, guard.reported(chunk), {}, True
    state, metrics = program.run(state, advice)
    mean = program.evaluate(state, chunk)
    facts = {} if guard is None else guard.after_chunk(chunk, state)
    if facts.get("guard_restored"):  # the method's own evaluation of the chunk stays in its row
        facts["own_eval_return"] = float(np.mean(np.asarray(gather(mean))))
        return guard.restore(), metrics, guard.reported(chunk), facts, True
    return state, metrics, mean, facts, False


def refine_chunks(program: RefinementProgram, state: Any, advice: Any, rounds: AdviceRounds | None,
                  schedule: Schedule, read: Callable[[Any, int, dict | None, Any], None],
                  no_swap: dict[str, Any], start: Any = None, expected_s: float | None = None,
                  guard: Any = None) -> LoopResult:
    """Refine in chunks until `learner.config.num_updates`; after each chunk `read(mean, updates done, row, metrics)`
    is called for the previous evaluation (the first with row None: the one before refinement), while the device
    runs the next. `rounds`: advice rounds (None for methods without an advisor); `no_swap`: a row's facts when
    no advice was swapped in before its chunk; `start`: the evaluation before refinement where it is known already
    (every method of a run starts from the same agents and evaluates with the same program and keys).
    A pacing schedule (`schedule.paces`) tells the advisor's pacer when the last swap will be: from `expected_s`
    (the refinement's expected seconds, e.g. the previous method's; None: unknown) until a chunk has been timed,
    then from the chunks' measured mean time.
    `guard`: `after_chunk(chunk, state)` -> facts for the chunk's row, called once the chunk's evaluation is queued
    (`jaxmod.ultra.guard`); an `OutcomeGuard` that has `tripped` ends the method's own chunks: its agents become
    `guard.restore()`, its evaluations from that chunk on `guard.reported(chunk)` (metrics None: nothing ran), and
    the advisor gets no more episodes."""
    total = program.learner.config.num_updates
    pace = _pacing(rounds, schedule, program.chunks, expected_s)
    wall0 = time.perf_counter()
    done = chunk = 0
    stall = 0.0
    start = program.evaluate(state, 0) if start is None else start
    unread: tuple = (start, 0, None, None)
    swap, recorded = no_swap, None  # recorded: episodes collected after the previous chunk, handed over now
    first_wait = 0.0
    if rounds is not None and rounds.pending is not None and schedule.waits_before(1):  # the first round, if due
        t0 = time.perf_counter()
        advice, swap = rounds.take(only=schedule.taken_before(1))
        first_wait = time.perf_counter() - t0
        stall += first_wait
    restored = False  # the guard acted: the rest is fine-tuning's
    while done < total:
        chunk += 1
        state, metrics, mean, facts, restored = _chunk(program, state, advice, chunk, guard, restored)
        done += program.chunk_updates
        more = done < total
        if recorded is not None and not restored:
            stall += rounds.hand_over(recorded)
        recorded, live = None, rounds is not None and not restored
        rec = program.record(state, chunk) if live and rounds.pending is None and more else None
        read(*unread)
        unread, swap = (mean, done, {"chunk": chunk, **swap, **facts}, metrics), no_swap
        if rec is not None:  # a round due before the next chunk is handed over now; others once it is queued
            if schedule.waits_before(chunk + 1):
                stall += rounds.hand_over(rec)
            else:
                recorded = rec
        if rounds is not None and rounds.pending is not None and more and not restored:
            jax.block_until_ready(state)  # decide once the chunk is done, as late as the device allows
            pace(chunk, time.perf_counter() - wall0)
            waits = schedule.waits_before(chunk + 1)
            if waits or (schedule.swaps_when_ready and rounds.fresh()):  # whole rounds, or the answers in so far
                t0 = time.perf_counter()
                advice, swap = rounds.take(wait=waits, only=schedule.taken_before(chunk + 1))
                stall += time.perf_counter() - t0
    read(*unread)
    jax.block_until_ready(state)
    return LoopResult(state=state, wall_s=time.perf_counter() - wall0, stall_s=stall, first_wait_s=first_wait,
                      start_eval=start)
