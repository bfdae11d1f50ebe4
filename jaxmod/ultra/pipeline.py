"""`run_ultra`: pretrain a sub-optimal agent -> collect its episodes -> identify critical states ->
advise -> pack -> refine with ULTRA-A / R / RA and with continued PPO from the same agent, over many
seeds in one program, with the advisor queried asynchronously between refinement chunks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmod.advice.arrays import Advice, AdviceBook
from jaxmod.advice.modulation import VARIANT_SWITCHES, ModulationError
from jaxmod.llm import (
    Advisor,
    DelayedBackend,
    HTTPBackend,
    LLMClient,
    LocalBackend,
    NoisyBackend,
    Transcript,
    advisor_spec,
    markdown_table,
    redact_url,
)
from jaxmod.llm.advisors import ChatBackend
from jaxmod.llm.pacing import Pacer
from jaxmod.llm.pool import EndpointPool, split_urls
from jaxmod.methods import method, method_names
from jaxmod.parallel import SeedPrograms, gather, is_primary, seed_keys
from jaxmod.ppo import PPOLearner
from jaxmod.ppo.config import ConfigError
from jaxmod.ppo.train import params_finite, seeds_params_finite
from jaxmod.reporting import (
    PARAMS_FINITE,
    WIN_RATE_ENVS,
    NonFiniteError,
    check_finite,
    gain_summary,
    json_safe,
    seed_summary,
    win_rate,
)
from jaxmod.stats import MIN_RUNS, few_runs_note
from jaxmod.ultra.advise import CriticalRow
from jaxmod.ultra.async_advice import AdvisorThread
from jaxmod.ultra.collect import make_collector
from jaxmod.ultra.config import UltraConfig, UltraSettings
from jaxmod.ultra.guard import FineTuningRecord, OutcomeGuard, guard_keys
from jaxmod.ultra.heap import frozen_heap
from jaxmod.ultra.multihost import SharedRounds
from jaxmod.ultra.refine import RefinementProgram, refine_chunks
from jaxmod.ultra.rounds import AdviceRounds
from jaxmod.ultra.schedule import AsyncSchedule, ReplaySchedule, Schedule, SyncSchedule

BASELINE = "PPO"
__all__ = ["BASELINE", "UltraConfig", "UltraRun", "UltraSettings", "VariantResult"]


@dataclass
class VariantResult:
    name: str
    steps: list[int] = field(default_factory=list)  # env steps per seed at each evaluation
    eval_returns: list[list[float]] = field(default_factory=list)  # per evaluation, per seed
    wall_s: float = 0.0
    compile_s: float = 0.0  # seconds compiling its programs before refinement (0: all shared with an earlier method)
    chunk_metrics: list[dict[str, Any]] = field(default_factory=list)
    # verification switched the advisor off as a whole: {"seeds": how many, "first_chunk": when}; None: it never did
    advisor_switched_off: dict[str, int] | None = None
    # the outcome guard acted (`jaxmod.ultra.guard`): {"chunk", "gap", "ci", "level", "seeds"}; None: it never did
    guard_restored: dict[str, Any] | None = None


def _advisor_factory(config: UltraConfig, transcript: Transcript | None) -> Callable:
    """An async context manager factory yielding the configured `Advisor` (and its server if embedded)."""
    a = config.advisor
    deadline_s = a.deadline_s if a.deadline_s is not None else 300.0

    def wrap(backend: ChatBackend) -> ChatBackend:
        """The configured corruption and added latency around a live backend (not around a replay)."""
        if a.noise:
            backend = NoisyBackend(backend, a.noise, seed=config.seed)
        if a.latency_s:
            backend = DelayedBackend(backend, a.latency_s)
        return backend

    def local(backend: ChatBackend, top_logprobs: int = 0) -> Advisor:
        return Advisor(backend, a.max_critical, transcript, deadline_s=deadline_s, context_tokens=a.context_tokens,
                       max_tokens=a.max_tokens or 512, top_logprobs=top_logprobs)

    @contextlib.asynccontextmanager
    async def factory():
        spec = advisor_spec(a.spec, None)
        if spec.startswith("replay:"):
            from jaxmod.llm import ReplayBackend

            yield local(ReplayBackend(spec.split(":", 1)[1]), a.logprobs)  # recorded log-probabilities: same targets
        elif spec in ("random", "constant"):  # control advisors: no knowledge of the task, same validation path
            from jaxmod.llm.control_advisors import CONTROL_ADVISORS

            yield local(wrap(LocalBackend(CONTROL_ADVISORS[spec](config.seed) if spec == "random"
                                          else CONTROL_ADVISORS[spec]())))
        elif spec.startswith("teacher:"):
            from jaxmod.advice.teacher import TeacherBackend

            yield local(wrap(LocalBackend(TeacherBackend(spec.split(":", 1)[1]))))
        else:
            async with _http_advisor(config, spec, wrap, transcript, deadline_s) as advisor:
                yield advisor

    return factory


@contextlib.asynccontextmanager
async def _http_advisor(config: UltraConfig, spec: str, wrap: Callable, transcript: Transcript | None,
                        deadline_s: float):
    """An `Advisor` over HTTP: an embedded server (scripted, smollm2) in a child process, or the URL `spec`."""
    a, server = config.advisor, None
    if spec in ("scripted", "smollm2"):  # embedded: a real local HTTP server, in a child process
        from jaxmod.llm.server import ServerProcess

        server = ServerProcess(spec, logprobs=a.logprobs > 0).start()
        url, model = server.url, server.model
    else:
        url, model = spec, a.model
    try:
        urls = split_urls(url)  # several: an endpoint pool, each URL with its own limit
        limits = (1,) if spec == "smollm2" else a.limits(len(urls))
        settings = [a.client_settings(base_url=u, model=model, concurrency=limit,
                                      max_tokens=160 if spec == "smollm2" else 512, timeout_s=120,
                                      retry_connect=len(urls) == 1) for u, limit in zip(urls, limits, strict=True)]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(LLMClient(cs)) for cs in settings]
            backend = HTTPBackend(clients[0]) if len(clients) == 1 else EndpointPool(clients)
            yield Advisor(wrap(backend), a.max_critical, transcript, deadline_s=deadline_s,
                          concurrency=sum(limits), context_tokens=a.context_tokens,
                          max_tokens=settings[0].max_tokens, top_logprobs=a.logprobs)
    finally:
        if server is not None:
            server.stop()


def check_advice(advice: Advice, core: Any, capacity: int, seeds: int) -> None:
    """Raise `ModulationError` (one line, before anything is traced) unless `advice` has the shapes the learner
    was built for: `seeds` x `capacity` slots of `core`'s observations, snapshots and actions."""
    expected = jax.eval_shape(lambda: Advice.empty(core, capacity))
    got_cap = tuple(np.shape(advice.valid))
    if got_cap != (seeds, capacity):
        raise ModulationError(f"advice holds {got_cap[-1] if got_cap else 0} slots x {got_cap[0] if got_cap else 0} "
                              f"seeds but the config asks for capacity {capacity} x {seeds} seeds: build the advice "
                              "with the config's modulation.capacity (or set capacity to the advice's)")
    mismatch = [f"{jax.tree_util.keystr(path)} {tuple(np.shape(x))} != {(seeds, *e.shape)}"
                for (path, x), e in zip(jax.tree_util.tree_flatten_with_path(advice)[0], jax.tree.leaves(expected),
                                        strict=False) if tuple(np.shape(x)) != (seeds, *e.shape)]
    if mismatch or jax.tree.structure(advice) != jax.tree.structure(expected):
        raise ModulationError(f"advice does not fit {core.env_id}: {'; '.join(mismatch[:3]) or 'other fields'} "
                              "(advice from another env, or packed for other observation/action shapes)")


def _with_normalisers(state, pre_env_state):
    return state.replace(env_state=state.env_state.replace(obs_rms=pre_env_state.obs_rms,
                                                           return_rms=pre_env_state.return_rms))


def _modulation_row(m: dict[str, np.ndarray], batch_size: int, reports: tuple[str, ...] = ()) -> dict[str, Any]:
    """A chunk's modulation metrics (arrays of (seeds, updates)) as one row of the run summary: those the
    method's modulators report. Counts (`critical_steps`: critical-state visits, `restarts`, `advice_executed`:
    steps that executed a suggestion) are summed over the chunk's updates and seeds; `batch_size`: env steps per
    update. `reports`: the names the modulator declares (`Modulator.reports`), each its mean over the chunk."""
    row: dict[str, Any] = {}
    if "critical_frac" in m:
        row.update(critical_frac=float(np.mean(m["critical_frac"])), restarts=int(np.sum(m["restarts"])),
                   advice_valid=int(np.mean(m["advice_valid"][:, -1])),
                   critical_steps=int(round(float(np.sum(m["critical_frac"])) * batch_size)))
    row.update({k: float(np.mean(m[k][:, -1])) for k in ("advice_refuted", "advice_outvoted", "advice_trust",
                                                          "advisor_z") if k in m})
    if "advisor_off" in m:  # seeds whose advisor verification has switched off as a whole
        row["advisor_off_seeds"] = int(np.sum(m["advisor_off"][:, -1]))
    if "advice_executed" in m:  # ULTRA-A: suggestions executed in the chunk, all seeds together
        row["advice_executed"] = int(np.sum(m["advice_executed"]))
    row.update({k: float(np.mean(m[k])) for k in reports if k in m and k not in row})
    return row


class UltraRun:
    """Stages of one experiment; `run()` does them all. Each stage can be called alone.

    `out` is the run's folder: it gets config.json now (the whole config, advisor resolved, credentials redacted)
    and transcript.jsonl, ultra.json, ultra.png, critical_states.md as the run goes. A folder that holds an
    earlier run is refused unless `overwrite`.

    `log` gets progress messages, `warn` the ones that say something went differently than asked (advice rounds'
    failures, an advisor switched off, an implicit reward that never acted; default: `log`). `render_dir`: write
    one episode of the first seed's policy there as GIFs (`jaxmod.render`): pretrained.gif before refinement (the
    same agent for every method) and <method>.gif after each method's refinement, all from the same reset and
    action key; an env without a drawer raises `RenderError` here, before anything runs.

    `mesh`: the devices the seeds are spread over (default: every device; a 1-D `jaxmod.parallel.seed_mesh`, or
    with `config.env_shards` > 1 a 2-D `data_mesh`): every device program of the run (pretraining, the baselines'
    explanations, refinement chunks, evaluations, the advisor's recordings) is `jaxmod.parallel.SeedPrograms`',
    sharded over the seeds when they split evenly over the devices (else one device's program), and with
    `env_shards` > 1 each seed's training envs over a row of devices (data parallel). The host gathers every seed's
    recordings for the advisor and the results.

    Multi-process (after `jaxmod.parallel.init_distributed`; every process builds and runs the same `UltraRun`):
    the mesh spans every process's devices; process 0 alone runs the advisor, writes `out`'s files (the other
    processes write nothing there) and the pre-trained agents' checkpoint; its advice reaches the others at the
    same chunk (`jaxmod.ultra.multihost.SharedRounds`); every host reads the results (`jaxmod.parallel.gather`).
    `render_dir` is refused there (`ConfigError`)."""

    def __init__(self, config: UltraConfig, out: Path, log: Callable[[str], None] = lambda _: None,
                 progress: Callable[[str, int, int], None] = lambda *_: None,
                 advisor_factory: Callable | None = None, overwrite: bool = False, tracker: Any = None,
                 warn: Callable[[str], None] | None = None, render_dir: Path | None = None,
                 mesh: Any = None) -> None:
        if config.advisor.spec is None:  # the run records which advisor it asked
            config = dataclasses.replace(config, advisor=dataclasses.replace(config.advisor,
                                                                             spec=advisor_spec(None, None)))
        spec = config.advisor.spec
        # the protocol recorded in config.json is the one asked (a replay, whose spec is its transcript, reads it)
        config = dataclasses.replace(config, advisor=dataclasses.replace(
            config.advisor, protocol=config.advisor.resolved_protocol(spec)))
        config.check_advisor_files()  # one line now, not after pretraining
        # the knobs the env family sets, as this run uses them: config.json records them (a replay does the same)
        config = dataclasses.replace(config, modulation=config.modulation.for_env(config.env_id))
        self.s, self.out, self.log, self.progress = config, Path(out), log, progress
        # where the seeds' programs run (a layout that does not fit the devices: one line now, nothing written)
        self.layout = SeedPrograms(config.seeds, mesh, config.env_shards, config.ppo.num_envs)
        self.warn = log if warn is None else warn
        if config.needs_advisor:  # a registered describer that does not fit the env: one line now, not after pretraining
            from jaxmod.envs.registry import checked_describer_of

            checked_describer_of(self.agent_learner.env.core)
        self.render_dir = None if render_dir is None else Path(render_dir)
        if self.render_dir is not None and jax.process_count() > 1:
            raise ConfigError("--render draws one process's agent: leave it out of a multi-process run (render a "
                              "single-process run of the same config)")
        self._renderer = None
        if self.render_dir is not None:  # one recorder for every policy of the run (the same env and network)
            from jaxmod.render import EpisodeRenderer, check_render_dir

            check_render_dir(self.render_dir, overwrite, list(method_names()))
            for old in (self.render_dir / f"{n}.gif" for n in ("pretrained", *method_names())):  # not mixed with this run's
                old.unlink(missing_ok=True)
            self._renderer = EpisodeRenderer(self.agent_learner.env, self.agent_learner.net)
        self.advisor_factory = advisor_factory
        self.tracker = tracker  # a `jaxmod.tracking.Tracker` (sub-runs "pretrain" and one per method), or None
        if (self.out / "ultra.json").exists() and not overwrite:
            raise ConfigError(f"{self.out} already holds an ULTRA run; choose another output folder or overwrite it")
        self.primary = is_primary()  # process 0 (always, in one process) asks the advisor and writes the files
        self.transcript = None
        if self.primary:
            self.transcript = Transcript(self.out / "transcript.jsonl", overwrite=overwrite)
            (self.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        self.critical_rows: list[tuple[str, int, CriticalRow]] = []  # (variant, seed, row)
        self.advice_stats: list[dict[str, Any]] = []
        self._recording: tuple[Any, float] | None = None  # the pre-trained agents' episodes, mean length
        self._explained: dict[str, Advice] = {}  # baselines' critical states, by explanation kind
        self._programs: dict[tuple[str, ...], RefinementProgram] = {}  # compiled, by program group
        self._start_eval: tuple[Any, Any] = (None, None)  # (pre-trained state, its evaluation before refinement)
        self._last_wall: float | None = None  # the last refinement's seconds: the next one's expected (pacing)
        self._walls: dict[str, float] = {}  # refinement seconds per method run so far
        self._fine_tuning: FineTuningRecord | None = None  # continued PPO's run, for the outcome guard

    # ------------------------------------------------------------------ stage 1: pretrain
    @cached_property
    def agent_learner(self) -> PPOLearner:
        """The learner of the pre-trained agents (built once: brax envs take seconds to build)."""
        return PPOLearner(self.s.ppo_config(self.s.pretrain_steps), env_axis=self.layout.env_axis)

    @property
    def whole_episodes(self) -> bool:
        """Whether each evaluation's `eval_steps` hold the task's longest episode."""
        return self.eval_steps >= self.agent_learner.env.core.max_steps

    @property
    def eval_steps(self) -> int:
        """Steps of each evaluation: --eval-steps, else the task's episode limit (up to `EVAL_STEPS_CAP`)."""
        return self.s.sizes.eval_steps_for(self.agent_learner.env.core.max_steps)

    def pretrain(self):
        """A sub-optimal agent per seed (PPO stopped early); returns the batched final train states.
        With `agents_dir`, agents are loaded from there when a matching run saved them."""
        learner = self.agent_learner
        cfg = learner.config
        saved = None
        if self.s.agents_dir:
            from jaxmod.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint

            tag = f"{cfg.env_id.replace('/', '_')}-{self.s.pretrain_steps}steps-{self.s.seeds}x{self.s.seed}"
            saved = Path(self.s.agents_dir) / tag
            ckpt = None
            if has_checkpoint(saved):
                try:
                    ckpt = load_checkpoint(saved, warn=self.log)
                except CheckpointError as err:
                    self.log(f"{err}; pretraining the agents again")
                if ckpt is not None and ckpt.config == cfg and ckpt.num_seeds == self.s.seeds:
                    check_finite({PARAMS_FINITE: seeds_params_finite(ckpt.state.params)}, "PPO pretraining", "",
                                 f"the pre-trained agents saved in {saved} are unusable: delete that folder")
                    self.log(f"loaded {self.s.seeds} pre-trained agents from {saved}")
                    return self.layout.put(ckpt.state)
        t0 = time.perf_counter()

        def pretrain_one(key):
            st, met = learner.run(learner.init(key), cfg.num_updates)
            return st, {**met, PARAMS_FINITE: params_finite(st.params)}

        state, metrics = self.layout.jit(pretrain_one)(seed_keys(self.s.seed, self.s.seeds))
        metrics = gather(metrics)  # every process reads every seed's
        check_finite(metrics, "PPO pretraining", "", f"the run stops; a smaller --lr (now "
                     f"{cfg.lr:g}) or fewer --pretrain-steps may help", span=f"of {cfg.num_updates}")
        metrics.pop(PARAMS_FINITE)
        if self.tracker is not None:  # the pre-training's curves, sub-run "pretrain"
            host = jax.device_get(metrics)
            self.tracker.sub("pretrain").ppo_metrics(host, np.asarray(host["env_steps"])[0])
        self.log(f"pretrained {self.s.seeds} sub-optimal agents in {time.perf_counter() - t0:.1f}s "
                 f"(training return {np.asarray(metrics['episode_return'])[:, -1].mean():.1f})")
        if saved is not None:
            host = gather(state) if jax.process_count() > 1 else state  # every process takes part; process 0 writes
            if self.primary:
                save_checkpoint(saved, host, cfg, num_seeds=self.s.seeds)
        return state

    # ------------------------------------------------------------------ baselines' explanations
    def agent_episodes(self, pre_state) -> tuple[Any, float]:
        """One (seeds, T, N) recording of the pre-trained agents and their mean episode length (JSRL's
        horizon); collected once per run and shared by every baseline."""
        if self._recording is None:
            s = self.s
            learner = self.agent_learner
            collect = make_collector(learner.env.replace_num_envs(s.sizes.collect_envs), learner.net, s.sizes.collect_steps)
            rec = self.layout.jit(collect)(pre_state.params, pre_state.env_state.obs_rms,
                                           seed_keys(s.seed + 3000, s.seeds))
            done = np.asarray(gather(rec.terminated | rec.truncated))
            self._recording = (rec, float(done.size / max(1, done.sum())))
        return self._recording

    def explain(self, kind: str, pre_state) -> Advice:
        """Critical states of the pre-trained agents without an LLM ('mask': RICE's mask net, 'random'),
        packed as restart advice per seed. Computed once per run on device and shared by the methods
        that use it."""
        if kind in self._explained:
            return self._explained[kind]
        from jaxmod.baselines.explain import MaskConfig, critical_advice, make_mask_trainer, mask_importance

        s = self.s
        rec, _ = self.agent_episodes(pre_state)
        if kind == "mask":
            t0 = time.perf_counter()
            learner = self.agent_learner
            obs_rms = pre_state.env_state.obs_rms
            c = learner.config  # the agent's rollout shape; at least one update
            mc = MaskConfig(alpha=s.baselines.mask_alpha, num_envs=c.num_envs, num_steps=c.num_steps,
                            total_timesteps=max(s.baselines.mask_steps, c.num_envs * c.num_steps))
            mask_net, train_mask = make_mask_trainer(learner.env, learner.net, mc)
            masks = self.layout.jit(train_mask)(seed_keys(s.seed + 4000, s.seeds), pre_state.params, obs_rms)
            obs = jax.vmap(learner.env.observe)(obs_rms, rec.obs)
            scores = jax.vmap(lambda p, o: mask_importance(mask_net, p, o))(masks.params, obs)
            blind, ret = gather((masks.blind_frac, masks.episode_return))
            self.log(f"mask nets trained in {time.perf_counter() - t0:.1f}s (blinded share "
                     f"{float(np.mean(np.asarray(blind)[:, -1])):.2f}, masked-agent return "
                     f"{float(np.mean(np.asarray(ret)[:, -1])):.1f})")
        else:
            scores = jax.random.uniform(jax.random.PRNGKey(s.seed + 5000), rec.reward.shape)
        space = self.agent_learner.env.action_space
        width = space.num_actions if space.discrete else 0
        pack = self.layout.jit(lambda r, sc: critical_advice(r, sc, s.modulation.capacity, width))
        self._explained[kind] = pack(*self.layout.put((rec, scores)))
        return self._explained[kind]

    # ------------------------------------------------------------------ stages 2-5 + refinement
    def refinement_start(self, variant: str, pre_state, guide_steps: int = 1) -> tuple[PPOLearner, Any]:
        """`variant`'s refinement learner and its per-seed start states: the pre-trained agents' parameters
        and normalisers, a fresh optimiser, and the same refinement seeds for every variant."""
        s = self.s
        cfg = s.refine_config()
        learner = PPOLearner(cfg, s.modulator(variant, guide_steps=guide_steps), env_axis=self.layout.env_axis)
        state = jax.vmap(lambda k, p: learner.init(k, p))(self.refinement_keys, pre_state.params)
        return learner, self.layout.put(jax.vmap(_with_normalisers)(state, pre_state.env_state))

    @cached_property
    def reference(self):
        """The policy the advisor's answers are scored against (`advisor.reference`), or None."""
        if self.s.advisor.reference is None:
            return None
        from jaxmod.advice.teacher import TeacherBackend

        return TeacherBackend(self.s.advisor.reference)

    @property
    def refinement_keys(self) -> jax.Array:
        """(seeds,) keys of the refinement: the same for every variant (collection rounds fold them in)."""
        return seed_keys(self.s.seed + 1000, self.s.seeds)

    def refine(self, variant: str, pre_state, advisor: AdvisorThread | None) -> VariantResult:
        """Refine the pre-trained agents with `variant` (continued PPO, an ULTRA variant or a baseline) in chunks,
        with `advisor` answering in the background; returns evaluation returns per chunk and the wall time."""
        with frozen_heap():  # the advisor's allocations must not make the collector rescan the whole heap
            return self._refine(variant, pre_state, advisor)

    def program(self, variant: str, learner: PPOLearner) -> RefinementProgram:
        """`variant`'s refinement programs: its group's (`UltraConfig.program_group`) where an earlier method of the
        group built them, else new ones that reuse the run's evaluation and recording programs."""
        s = self.s
        shared = self._programs.get(s.program_group(variant))
        if shared is not None:
            return shared.share(learner)
        z = s.sizes
        return RefinementProgram.build(learner, s.schedule.chunks, self.refinement_keys,
                                       seed_keys(s.seed + 2000, s.seeds), s.round_collect_envs(), z.collect_steps,
                                       z.eval_envs, self.eval_steps, like=next(iter(self._programs.values()), None),
                                       layout=self.layout)

    def schedule(self, variant: str) -> Schedule:
        """When `variant` swaps fresh advice in: a recorded run's chunks, every round, or whenever ready."""
        if self.s.schedule.swap_schedule:
            return ReplaySchedule.of_run(self.s.schedule.swap_schedule, variant)
        return SyncSchedule() if self.s.schedule.sync_advice else AsyncSchedule()

    def initial_advice(self, variant: str, pre_state, learner: PPOLearner, state, program: RefinementProgram,
                       advisor: AdvisorThread | None) -> Advice | AdviceRounds | SharedRounds:
        """The advice `variant` starts from: none (all slots invalid), its baseline's explained critical states, or
        (for an advisor's method) its advice rounds, with the first round, on the pre-trained agents' own episodes,
        in flight: refinement starts at once on empty advice and swaps the round's answers in when the schedule
        says (`refine_chunks`). Multi-process: `SharedRounds` over process 0's rounds (`advisor` None elsewhere)."""
        s = self.s
        source = method(variant).critical
        if source in ("mask", "random"):
            return self.explain(source, pre_state)
        if source != "advisor":
            return AdviceBook.stacked([AdviceBook(learner.env.core, s.modulation.capacity)] * s.seeds)
        if jax.process_count() > 1:
            return self._shared_rounds(variant, learner, state, program, advisor)
        rounds = self._advice_rounds(variant, learner, advisor)
        rounds.hand_over(program.record(state, 0))
        return rounds

    def _advice_rounds(self, variant: str, learner: PPOLearner, advisor: AdvisorThread) -> AdviceRounds:
        """`variant`'s advice rounds over `advisor` (its accounting reset; paced where the schedule paces, the
        pacer keeping its measured rate across methods), the deadline unknown until the refinement is timed."""
        from jaxmod.llm import AdvisorStats

        s = self.s
        advisor.advisor.stats = AdvisorStats()  # per-variant accounting
        paced = s.advisor.pacing and self.schedule(variant).paces
        advisor.advisor.pacer = (advisor.advisor.pacer or Pacer()) if paced else None
        rounds = AdviceRounds(advisor, learner.env.core, s.seeds, s.modulation.capacity,
                              s.advisor.episodes_per_round, self.critical_rows.extend, variant,
                              s.advisor.failure_policy(), self.warn, protocol=s.advisor.protocol,
                              reference=self.reference, budget=s.advisor.round_budget,
                              radius=s.advisor.dedup_radius, key=s.seed)
        rounds.pace(None)  # the first round goes out one question at a time until the refinement is timed
        return rounds

    def _shared_rounds(self, variant: str, learner: PPOLearner, state, program: RefinementProgram,
                       advisor: AdvisorThread | None) -> SharedRounds:
        """`initial_advice`'s advice rounds in a multi-process run: process 0's `AdviceRounds` (its `advisor`) behind
        `SharedRounds` (`advisor` None on the other processes), the first round in flight."""
        s = self.s
        empty = AdviceBook.stacked([AdviceBook(learner.env.core, s.modulation.capacity)] * s.seeds)
        rounds = None if advisor is None else self._advice_rounds(variant, learner, advisor)
        shared = SharedRounds(rounds, empty)
        shared.hand_over(program.record(state, 0))
        return shared

    def _refine(self, variant: str, pre_state, advisor: AdvisorThread | None) -> VariantResult:
        """`refine` (in the frozen heap): build, compile, run the chunks, then report on the advice."""
        s = self.s
        guide_steps = max(1, round(self.agent_episodes(pre_state)[1])) if method(variant).rolls_in else 1
        learner, state = self.refinement_start(variant, pre_state, guide_steps)
        program = self.program(variant, learner)
        rounds, advice = None, self.initial_advice(variant, pre_state, learner, state, program, advisor)
        if isinstance(advice, (AdviceRounds, SharedRounds)):
            rounds, advice = advice, advice.advice()
        check_advice(advice, learner.env.core, s.modulation.capacity, s.seeds)
        result = VariantResult(variant)
        # before the clock starts: wall time compares refinement, not compilers
        result.compile_s = program.compile(state, advice)
        self._programs[s.program_group(variant)] = program
        self.log(f"{variant}: compiled in {result.compile_s:.1f}s" if result.compile_s > 0 else
                 f"{variant}: runs through the program compiled for {', '.join(s.program_group(variant))}")
        modulated = not learner.modulator.identity
        no_swap: dict[str, Any] = {"swapped_advice": False, **({"advisor_latency_s": None} if modulated else {})}
        guard = self._guard(variant, program)
        try:
            loop = refine_chunks(program, state, advice, rounds, self.schedule(variant),
                                 self._reader(result, learner, program), no_swap,
                                 start=self._start_eval[1] if self._start_eval[0] is pre_state else None,
                                 expected_s=self._last_wall, guard=guard)
        except NonFiniteError as err:
            if rounds is not None:
                rounds.cancel()
            err.result = result  # what the variant did up to the stop, for the run's summary
            raise
        result.wall_s = self._last_wall = self._walls[variant] = loop.wall_s
        if isinstance(guard, FineTuningRecord):
            guard.finish(loop.state, result.eval_returns)
            self._fine_tuning = guard
        elif isinstance(guard, OutcomeGuard):
            result.guard_restored = guard.tripped
        # every method refining these agents evaluates them with the same program and keys first: once is enough
        self._start_eval = (pre_state, loop.start_eval)
        self.render(f"{variant}.gif", loop.state)
        if rounds is not None:
            if advisor is not None:  # process 0's (the only one, in one process)
                self._record_advice_stats(result, rounds, loop, advisor)
            rounds.cancel()
        self._warn_if_reward_never_acted(result)
        return result

    @property
    def guarded(self) -> bool:
        """Whether the outcome guard watches this run's advised methods (`UltraConfig.outcome_guard`, an advised
        method and PPO fine-tuning among the variants)."""
        return self.s.outcome_guard and self.s.needs_advisor and BASELINE in self.s.variants

    def _guard(self, variant: str, program: RefinementProgram) -> FineTuningRecord | OutcomeGuard | None:
        """`refine_chunks`' guard hook for `variant`: fine-tuning's record (in a guarded run), an advised method's
        guard (once fine-tuning has run), or None."""
        if not self.guarded:
            return None
        keys = guard_keys(self.s.seed, self.s.seeds)
        if variant == BASELINE:
            return FineTuningRecord(program, keys)
        if method(variant).critical == "advisor" and self._fine_tuning is not None:
            return OutcomeGuard(program, keys, self._fine_tuning, program.chunks, acts=self.guard_acts)
        return None

    @property
    def guard_acts(self) -> bool:
        """Whether the outcome guard may act (it reports its gap either way): `MIN_RUNS` seeds or more, and
        evaluations that hold the task's whole episodes (an agent whose episodes outlast them scores 0)."""
        return self.s.seeds >= MIN_RUNS and self.whole_episodes

    def _report_guard(self, result: VariantResult, row: dict[str, Any], chunks: int) -> None:
        """Say so when the outcome guard acts on `result`'s method (its row for the chunk it acted after)."""
        low, high = row["guard_ci"]
        self.warn(f"{result.name}: the outcome guard acted after chunk {row['chunk']}/{chunks}: its agents fell "
                  f"below PPO fine-tuning's on the guard's evaluation (mean gap {row['guard_gap']:+.1f}, "
                  f"{row['guard_level']:.1%} CI [{low:+.1f}, {high:+.1f}] over {self.s.seeds} seeds; its own "
                  f"evaluation {row['own_eval_return']:.1f}), so the advisor is switched off and every seed's agent is "
                  "fine-tuning's from there on (its evaluations from this chunk on are fine-tuning's)")

    def _reader(self, result: VariantResult, learner: PPOLearner, program: RefinementProgram) -> Callable:
        """`refine_chunks`'s `read(mean, done, row, metrics)` for `result`'s method: records an evaluation ([S]
        mean returns; row None: the one before refinement) and its chunk's row; called while the device runs the
        next chunk. Stops the run (`NonFiniteError`) at a non-finite loss, parameter or return, from values the
        host reads anyway."""
        s, variant = self.s, result.name
        cfg, modulated = learner.config, not learner.modulator.identity
        label = method(variant).label
        chunks = program.chunks
        hint = (f"the run stops (finished methods' results are in {self.out / 'ultra.json'}); a smaller --refine-lr "
                f"(now {s.refine_lr:g}){' or --kl-coef' if modulated and s.modulation.uses_kl else ''} may help")

        def read(mean, done: int, row: dict[str, Any] | None, metrics) -> None:
            mean = np.asarray(gather(mean))  # the chunk is done: its evaluation ran after it
            if row is None:  # the evaluation before refinement
                check_finite({"eval_return": mean}, label, "before refinement", hint)
            elif metrics is None:  # after the outcome guard acted: fine-tuning's chunk, checked when it ran
                row["fine_tuning"] = True
            else:  # a stopped run's results end at the last chunk that was finite
                metrics = gather(metrics)
                check_finite({**metrics, "eval_return": mean}, label, f"refinement chunk {row['chunk']}/{chunks}",
                             hint)
            result.steps.append(min(done, cfg.num_updates) * cfg.batch_size)
            result.eval_returns.append(mean.tolist())
            if row is not None:
                row["eval_return"] = float(np.mean(mean))
                if modulated and metrics is not None:
                    row.update(_modulation_row(metrics, cfg.batch_size, learner.modulator.reports))
                    self._report_switch_off(result, row, s.seeds)
                if row.get("guard_restored"):
                    self._report_guard(result, row, chunks)
                result.chunk_metrics.append(row)
            self._track(variant, result.steps[-1], mean, row, metrics)
            if row is not None:
                self.progress(variant, min(done, cfg.num_updates), cfg.num_updates)

        return read

    def _track(self, variant: str, step: int, mean: np.ndarray, row: dict[str, Any] | None, metrics) -> None:
        """Log to `variant`'s sub-run of the run's tracker (`jaxmod.tracking`): after a chunk (`row`) its training
        curves (`charts/...`, `losses/...` per update, metrics [S, updates] on the host) and its row's numbers as
        `advice/<name>`; then the evaluation return `eval/return` (mean of `mean` [S] over seeds) at `step` env
        steps per seed (0: the pre-trained agents)."""
        if self.tracker is None:
            return
        sub = self.tracker.sub(variant)
        if row is not None and metrics is not None:  # None: fine-tuning's chunk after the outcome guard acted
            sub.ppo_metrics(metrics, np.asarray(metrics["env_steps"])[0])
            sub.scalars({f"advice/{k}": v for k, v in row.items() if k not in ("eval_return", "chunk")
                         and isinstance(v, (int, float)) and not isinstance(v, bool)}, step)
        if row is not None and (row.get("guard_restored") or row.get("fine_tuning")):  # 1: fine-tuning's agents
            sub.scalars({"advice/guard_restored": 1.0}, step)
        sub.scalars({"eval/return": float(np.mean(mean))}, step)
        sub.flush()

    def _record_advice_stats(self, result: VariantResult, rounds: AdviceRounds, loop: Any,
                             advisor: AdvisorThread) -> None:
        """After an advised method: its advisor's accounting and the advice's overhead in `advice_stats` (and the
        agreement with the reference policy in the log)."""
        variant = result.name
        st = advisor.advisor.stats.as_dict()
        # every wait for the advisor happens inside the loop's wall time (the first round's too): the overhead
        first = next((row["chunk"] for row in result.chunk_metrics if row.get("swapped_advice")), None)
        agree, judged = rounds.agreement
        unanswered = advisor.advisor.outstanding  # waiting or in flight as refinement ended (not in `questions`)
        if self.reference is not None:
            self.log(f"{variant}: the advisor agrees with the reference policy on {agree}/{judged} valid answers"
                     + (f" ({agree / judged:.0%})" if judged else ""))
        self.advice_stats.append({"variant": variant, "advice_overhead_s": round(loop.stall_s, 3),
                                  "advice_overhead_frac": loop.stall_s / max(result.wall_s, 1e-9),
                                  "initial_advice_s": round(loop.first_wait_s, 3),
                                  "stall_in_refinement_s": round(loop.stall_s, 3),
                                  "first_advice_chunk": first, "unanswered": unanswered,
                                  # the whole cost, waits and the advisor's share of the machine: vs continued PPO
                                  "wall_vs_ppo": (result.wall_s / self._walls[BASELINE]
                                                  if self._walls.get(BASELINE) else None),
                                  "context_tokens": advisor.advisor.context,
                                  "protocol": self.s.advisor.protocol,
                                  "reference_agreement": agree / judged if judged else None,
                                  "reference_judged": judged, **st, **rounds.sharing})
        self.log(f"{variant}: advice rounds asked about {rounds.sharing['round_asked']} of "
                 f"{rounds.sharing['round_candidates']} episodes ({rounds.sharing['round_deduplicated']} "
                 f"deduplicated, {rounds.sharing['round_unasked']} over the budget), "
                 f"{rounds.sharing['answers_shared']} answers shared with other seeds")

    def _warn_if_reward_never_acted(self, result: VariantResult) -> None:
        """Warn when a method with ULTRA-R ran with a shaping bonus of zero in every chunk."""
        shaped = [row["shaping"] for row in result.chunk_metrics if "shaping" in row]
        shapes = result.name in VARIANT_SWITCHES and VARIANT_SWITCHES[result.name][1]  # a method with ULTRA-R
        if shapes and shaped and not any(shaped):  # ULTRA-R's bonus scales with trust, which no slot earned here
            self.warn(f"{result.name}: the implicit reward never acted (no advice slot earned trust: advice must beat "
                      "the policy's own actions at its critical states first; a longer refinement or more advice "
                      "gathers that evidence), so its reward was the env's alone")

    def _report_switch_off(self, result: VariantResult, row: dict[str, Any], seeds: int) -> None:
        """Say so (once per variant, and again whenever more seeds follow) when verification switches the advisor
        off as a whole, and record it in the result."""
        off = row.get("advisor_off_seeds", 0)
        before = result.advisor_switched_off["seeds"] if result.advisor_switched_off else 0
        if off <= before:
            return
        first = result.advisor_switched_off["first_chunk"] if result.advisor_switched_off else row["chunk"]
        result.advisor_switched_off = {"seeds": off, "first_chunk": first}
        self.warn(f"{result.name}: advisor switched off in {off}/{seeds} seeds by chunk {row['chunk']}: its "
                 "suggestions did significantly worse than the policy's own actions; this variant continues as "
                 "plain PPO there")

    def render(self, name: str, state) -> None:
        """With `render_dir`: one episode of the first seed's policy in `state` (a train state, seeds batched) to
        render_dir/name, from the run's render key (the same reset and action draws for every policy)."""
        if self._renderer is None:
            return
        from jaxmod.render import RenderError

        first = jax.tree.map(lambda x: x[0], state)
        try:
            r = self._renderer(first.params, self.render_dir / name, first.env_state.obs_rms,
                               jax.random.PRNGKey(self.s.seed + 6000))
        except RenderError as err:  # a drawer failing on a later state: the run goes on without GIFs
            self._renderer = None
            self.warn(f"{name} not rendered, and no more GIFs in this run: {err}")
            return
        self.log(f"rendered seed 0's episode (return {r.episode_return:.1f}, {r.steps} steps) to {r.path}")

    def run(self) -> dict[str, VariantResult]:
        self._warn_if_evaluation_is_short()
        self._warn_if_unguarded()
        pre = self.pretrain()
        self.render("pretrained.gif", pre)
        results: dict[str, VariantResult] = {}
        needs_advisor = self.primary and any(method(v).critical == "advisor" for v in self.s.variants)
        factory = self.advisor_factory or _advisor_factory(self.s, self.transcript)
        ctx = AdvisorThread(factory, self.s.advisor.priority == "idle") if needs_advisor else contextlib.nullcontext()
        with ctx as advisor:
            for variant in self.order:
                try:
                    results[variant] = self.refine(variant, pre, advisor)
                except NonFiniteError as err:  # the summary keeps what ran, and says why the run stopped
                    results[variant] = err.result
                    if self.primary:
                        self.write(results, stopped=str(err))
                    raise
                r = results[variant]
                start, final = seed_summary(r.eval_returns[0]), seed_summary(r.eval_returns[-1])
                note = few_runs_note(final.seeds)
                self.log(f"{variant}: eval return IQM {start.iqm_cell()} -> {final.iqm_cell()} (95% CIs over "
                         f"{final.seeds} seeds{f'; {note}' if note else ''}) in {r.wall_s:.1f}s")
        if self.primary:  # process 0 writes the run's files
            self.write(results)
        return results

    @property
    def order(self) -> tuple[str, ...]:
        """The methods in the order they run: the variants', PPO fine-tuning first in a guarded run (the outcome
        guard compares the advised methods with it)."""
        v = self.s.variants
        return (BASELINE, *(x for x in v if x != BASELINE)) if self.guarded else v

    def _warn_if_unguarded(self) -> None:
        """Warn (before pretraining) where the outcome guard is on but cannot protect the advised methods: without
        PPO fine-tuning among the variants, or with fewer seeds than an interval needs (`MIN_RUNS`)."""
        if not (self.s.outcome_guard and self.s.needs_advisor):
            return
        if BASELINE not in self.s.variants:
            self.warn("the outcome guard compares advised methods with PPO fine-tuning, which this run does not "
                      "include: they run unguarded (add PPO to the variants)")
        elif self.s.seeds < MIN_RUNS:
            self.warn(f"the outcome guard needs {MIN_RUNS} or more seeds to tell harm from noise: with "
                      f"{self.s.seeds} it reports the advised methods' gap to fine-tuning per chunk (guard_gap) but "
                      "never acts")
        elif not self.guard_acts:
            self.warn(f"the outcome guard needs evaluations of whole episodes ({self.agent_learner.env.core.max_steps} "
                      f"steps; --eval-steps is {self.eval_steps}): it reports the advised methods' gap to fine-tuning "
                      "per chunk (guard_gap) but never acts")

    def _warn_if_evaluation_is_short(self) -> None:
        """Warn (before pretraining) where an evaluation's `eval_steps` cannot hold a whole episode: it averages the
        episodes that end within it, so longer ones are not counted and a seed whose episodes all outlast it reports
        0 (Acrobot-v1 with --eval-steps 200: every method's return 0.0, the best possible)."""
        limit, steps = self.agent_learner.env.core.max_steps, self.eval_steps
        if not self.whole_episodes:
            self.warn(f"evaluations run {steps} steps per env but {self.s.env_id}'s episodes last up to {limit}: "
                      "returns count only the episodes that end within them (a seed whose episodes all outlast them "
                      f"reports 0); --eval-steps {limit} or more evaluates whole episodes")

    # ------------------------------------------------------------------ outputs
    def write(self, results: dict[str, VariantResult], stopped: str | None = None) -> None:
        """The run's outputs. `final` per method summarises its last evaluation over seeds (IQM with its 95%
        bootstrap interval `ci95`, mean, std; none of them where a seed is non-finite: `non_finite_seeds` names them);
        `gain_vs_ppo` per method: its paired IQM gain over continued PPO from the same agents with `ci95` and
        `verdict` (null where a seed is non-finite); `final_win_rate` the same as `final` in win rate for one-point
        Pong (`WIN_RATE_ENVS`). Non-finite values are written as null; `stopped`: why the run stopped early (its
        last method's results go up to there). ultra.png: IQM curves with 95% bands (win rate for one-point Pong)."""
        from jaxmod.reporting import plot_curves

        last = {name: r.eval_returns[-1] if r.eval_returns else [] for name, r in results.items()}
        summary: dict[str, Any] = {name: {"steps": r.steps, "eval_returns": r.eval_returns, "wall_s": r.wall_s,
                                          "compile_s": r.compile_s, "final": seed_summary(last[name]).as_dict(),
                                          "chunks": r.chunk_metrics, "advisor_switched_off": r.advisor_switched_off,
                                          "guard_restored": r.guard_restored}
                   for name, r in results.items()}
        for name in summary:  # the paired gain over continued PPO from the same agents (IQM difference, 95% CI)
            if name != BASELINE and BASELINE in last:
                summary[name]["gain_vs_ppo"] = gain_summary(last[name], last[BASELINE])
            if self.s.env_id in WIN_RATE_ENVS:
                summary[name]["final_win_rate"] = seed_summary(win_rate(last[name])).as_dict()
        summary["config"] = self.s.to_dict()
        summary["advisor"] = self.advice_stats
        summary["modulation_choices"] = self.s.modulation.choices()  # resolved for the env in __init__
        if stopped is not None:
            summary["stopped"] = stopped
        text = json.dumps(json_safe(json.loads(json.dumps(summary, default=str))), indent=2, allow_nan=False)
        (self.out / "ultra.json").write_text(text, encoding="utf-8")
        columns = ("variant", "seed", "episode", "step", "length", "return", "state", "agent action", "why critical",
                   "suggested", "implicit reward", "advice reason", "verdict")
        rows = [(variant, seed, r.episode, r.step, r.episode_length, f"{r.episode_return:.1f}", r.state, r.agent_action,
                 r.why_critical, r.suggested_action, "-" if r.implicit_reward is None else f"{r.implicit_reward:+.2f}",
                 r.advice_reason, r.verdict) for variant, seed, r in self.critical_rows]
        (self.out / "critical_states.md").write_text(markdown_table(columns, rows), encoding="utf-8")
        rate = self.s.env_id in WIN_RATE_ENVS  # one-point games: the win rate, as their tables report
        series = [(method(n).label, np.array(r.steps), win_rate(r.eval_returns) if rate else np.array(r.eval_returns))
                  for n, r in results.items()]
        plot_curves(series, self.out / "ultra.png", title=f"Refinement on {self.s.env_id} ({redact_url(self.s.advisor.spec or '')} advisor)",
                    xlabel="refinement env steps per seed",
                    ylabel="evaluation win rate, (return + 1) / 2" if rate else "evaluation return")
