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
from jaxmod.advice.modulation import ModulationConfig, ModulationError
from jaxmod.llm import (
    Advisor,
    ClientSettings,
    DelayedBackend,
    HTTPBackend,
    LLMClient,
    LocalBackend,
    NoisyBackend,
    Transcript,
)
from jaxmod.llm.advisors import ChatBackend
from jaxmod.methods import BASELINES, METHODS, MethodContext, method
from jaxmod.parallel import seed_keys
from jaxmod.ppo import PPOConfig, PPOLearner, default_config
from jaxmod.ultra.advise import CriticalRow
from jaxmod.ultra.async_advice import AdvisorThread
from jaxmod.ultra.collect import make_collector
from jaxmod.ultra.heap import frozen_heap
from jaxmod.ultra.refine import RefinementProgram, refine_chunks
from jaxmod.ultra.rounds import AdviceRounds
from jaxmod.ultra.schedule import AsyncSchedule, ReplaySchedule, Schedule, SyncSchedule

BASELINE = "PPO"


@dataclass(frozen=True)
class UltraSettings:
    """One ULTRA experiment. Step counts are env steps per seed."""

    env_id: str = "CartPole-v1"
    seeds: int = 5
    seed: int = 0
    pretrain_steps: int = 60_000  # a sub-optimal agent: stopped early
    refine_steps: int = 100_000
    refine_lr: float = 1e-4
    chunks: int = 10  # refinement chunks: advice refreshes and evaluation points
    variants: tuple[str, ...] = ("PPO", "A", "R", "RA")
    advisor: str = "scripted"  # scripted | smollm2 | teacher:<ckpt> | replay:<transcript> | http(s)://host:port/v1
    model: str = "default"  # model name for an HTTP advisor
    noise: float = 0.0  # fraction of answers corrupted (NoisyAdvisor)
    advisor_concurrency: int = 16  # questions in flight at once (HTTP advisors; the embedded smollm2 takes 1)
    advisor_latency_s: float = 0.0  # added latency per answer (DelayedBackend): a stand-in for a slow remote LLM
    advisor_priority: str = "normal"  # host-side advisor threads: "normal", or "idle" (Linux SCHED_IDLE: only CPU
    # time training leaves; on a CPU-only machine training is then not slowed, but advice arrives later)
    episodes_per_round: int = 8  # episodes per seed sent to the advisor each round
    max_critical: int = 2
    capacity: int = 32
    restart_prob: float = 0.5
    reward_scale: float = 1.0
    kl_coef: float = 1.0
    match_radius: float = 0.0
    kl_filter: bool = False
    verify_samples: int = 4  # advice verification: samples per group before a slot can be refuted (0: off)
    consensus_radius: float = 2.0  # advice consensus: out-voted slots stop acting (0: off)
    collect_envs: int = 8
    collect_steps: int = 256
    eval_envs: int = 16
    eval_steps: int = 600
    ppo_overrides: tuple[tuple[str, Any], ...] = ()
    sync_advice: bool = False  # wait for each advice round before the next chunk: reproducible (and replayable)
    # runs at the cost of stalls; the default never waits
    swap_schedule: str | None = None  # a run's ultra.json: swap advice in at exactly the chunks that run did
    # (with advisor replay:<its transcript>, an asynchronous run replays exactly)
    # baselines (jaxmod.baselines): RICE's mask net, its (p, lambda) (None = RICE Table 3 for the task), JSRL
    mask_steps: int = 100_000  # env steps of mask-net training per seed
    mask_alpha: float = 0.01
    rice_p: float | None = None
    rice_lambda: float | None = None
    jsrl_steps: int = 0  # initial guide roll-in horizon; 0 = the agents' mean episode length
    agents_dir: str | None = None  # save the pre-trained agents here and reuse them in later runs

    def __post_init__(self) -> None:
        for v in self.variants:
            method(v)  # raises a one-line MethodError listing the valid names
        if not 0.0 <= self.noise <= 1.0 or self.advisor_latency_s < 0 or self.advisor_concurrency < 1:
            raise ModulationError("advisor noise must lie in [0, 1], advisor latency be >= 0 seconds and advisor "
                                  "concurrency >= 1")
        if self.advisor_priority not in ("idle", "normal"):
            raise ModulationError(f"advisor priority must be 'idle' or 'normal', not {self.advisor_priority!r}")

    @classmethod
    def replay_of(cls, run_dir: Path) -> UltraSettings:
        """Settings that re-run the finished run in `run_dir` exactly: its settings, its transcript as the
        advisor (answers as recorded, noise included), and its advice swap schedule."""
        run_dir = Path(run_dir)
        summary_path = run_dir / "ultra.json"
        if not summary_path.exists():
            raise FileNotFoundError(f"no ultra.json in {run_dir}")
        recorded = json.loads(summary_path.read_text())["settings"]
        recorded["variants"] = tuple(recorded["variants"])
        recorded["ppo_overrides"] = tuple(tuple(kv) for kv in recorded["ppo_overrides"])
        return cls(**{**recorded, "advisor": f"replay:{run_dir / 'transcript.jsonl'}", "noise": 0.0,
                      "swap_schedule": str(summary_path)})

    def ppo_config(self, total_steps: int, **changes: Any) -> PPOConfig:
        return default_config(self.env_id, total_timesteps=total_steps, **{**dict(self.ppo_overrides), **changes})

    def modulation(self) -> ModulationConfig:
        """ULTRA's knobs of this experiment (the A / R switches are set per variant by `jaxmod.methods`)."""
        return ModulationConfig(capacity=self.capacity, restart_prob=self.restart_prob,
                                reward_scale=self.reward_scale, kl_coef=self.kl_coef, match_radius=self.match_radius,
                                kl_filter=self.kl_filter, verify_samples=self.verify_samples,
                                verify_memory=max(64, self.verify_samples), consensus_radius=self.consensus_radius)

    def modulator(self, variant: str, guide_steps: int = 1):
        """`variant`'s modulator (`jaxmod.methods`), built from these settings."""
        ctx = MethodContext(self.env_id, self.modulation(), self.jsrl_steps or guide_steps, self.rice_p,
                            self.rice_lambda)
        return method(variant).build(ctx)


@dataclass
class VariantResult:
    name: str
    steps: list[int] = field(default_factory=list)  # env steps per seed at each evaluation
    eval_returns: list[list[float]] = field(default_factory=list)  # per evaluation, per seed
    wall_s: float = 0.0
    chunk_metrics: list[dict[str, Any]] = field(default_factory=list)


def _advisor_factory(settings: UltraSettings, transcript: Transcript | None) -> Callable:
    """An async context manager factory yielding the configured `Advisor` (and its server if embedded)."""

    def wrap(backend: ChatBackend) -> ChatBackend:
        """The configured corruption and added latency around a live backend (not around a replay)."""
        if settings.noise:
            backend = NoisyBackend(backend, settings.noise, seed=settings.seed)
        if settings.advisor_latency_s:
            backend = DelayedBackend(backend, settings.advisor_latency_s)
        return backend

    @contextlib.asynccontextmanager
    async def factory():
        spec = settings.advisor
        server = None
        if spec in ("scripted", "smollm2"):  # embedded: a real local HTTP server, in a child process
            from jaxmod.llm.server import ServerProcess

            server = ServerProcess(spec).start()
            url, model = server.url, server.model
        elif spec.startswith("replay:"):
            from jaxmod.llm import ReplayBackend

            yield Advisor(ReplayBackend(spec.split(":", 1)[1]), settings.max_critical, transcript)
            return
        elif spec.startswith("teacher:"):
            from jaxmod.advice.teacher import TeacherBackend

            yield Advisor(wrap(LocalBackend(TeacherBackend(spec.split(":", 1)[1]))), settings.max_critical, transcript)
            return
        else:
            url, model = spec, settings.model
        try:
            limit = 1 if spec == "smollm2" else settings.advisor_concurrency
            client_settings = ClientSettings(base_url=url, model=model, concurrency=limit,
                                             max_tokens=160 if spec == "smollm2" else 512, timeout_s=120)
            async with LLMClient(client_settings) as client:
                yield Advisor(wrap(HTTPBackend(client)), settings.max_critical, transcript, concurrency=limit)
        finally:
            if server is not None:
                server.stop()

    return factory


def _with_normalisers(state, pre_env_state):
    return state.replace(env_state=state.env_state.replace(obs_rms=pre_env_state.obs_rms,
                                                           return_rms=pre_env_state.return_rms))


def _modulation_row(m: dict[str, np.ndarray]) -> dict[str, Any]:
    """A chunk's modulation metrics (arrays of (seeds, updates)) as one row of the run summary: those the
    method's modulators report."""
    row: dict[str, Any] = {}
    if "critical_frac" in m:
        row.update(critical_frac=float(np.mean(m["critical_frac"])), restarts=int(np.sum(m["restarts"])),
                   advice_valid=int(np.mean(m["advice_valid"][:, -1])))
    row.update({k: float(np.mean(m[k][:, -1])) for k in ("advice_refuted", "advice_outvoted") if k in m})
    row.update({k: float(np.mean(m[k])) for k in ("guided_frac", "rnd_bonus") if k in m})
    return row


class UltraRun:
    """Stages of one experiment; `run()` does them all. Each stage can be called alone."""

    def __init__(self, settings: UltraSettings, out: Path, log: Callable[[str], None] = lambda _: None,
                 progress: Callable[[str, int, int], None] = lambda *_: None,
                 advisor_factory: Callable | None = None) -> None:
        self.s, self.out, self.log, self.progress = settings, Path(out), log, progress
        self.advisor_factory = advisor_factory
        self.out.mkdir(parents=True, exist_ok=True)
        self.transcript = Transcript(self.out / "transcript.jsonl")
        self.critical_rows: list[CriticalRow] = []
        self.advice_stats: list[dict[str, Any]] = []
        self._recording: tuple[Any, float] | None = None  # the pre-trained agents' episodes, mean length
        self._explained: dict[str, Advice] = {}  # baselines' critical states, by explanation kind

    # ------------------------------------------------------------------ stage 1: pretrain
    @cached_property
    def agent_learner(self) -> PPOLearner:
        """The learner of the pre-trained agents (built once: brax envs take seconds to build)."""
        return PPOLearner(self.s.ppo_config(self.s.pretrain_steps))

    def pretrain(self):
        """A sub-optimal agent per seed (PPO stopped early); returns the batched final train states.
        With `agents_dir`, agents are loaded from there when a matching run saved them."""
        learner = self.agent_learner
        cfg = learner.config
        saved = None
        if self.s.agents_dir:
            from jaxmod.checkpoint import load_checkpoint, save_checkpoint

            tag = f"{cfg.env_id.replace('/', '_')}-{self.s.pretrain_steps}steps-{self.s.seeds}x{self.s.seed}"
            saved = Path(self.s.agents_dir) / tag
            if (saved / "meta.json").exists():
                ckpt = load_checkpoint(saved)
                if ckpt.config == cfg and ckpt.num_seeds == self.s.seeds:
                    self.log(f"loaded {self.s.seeds} pre-trained agents from {saved}")
                    return ckpt.state
        t0 = time.perf_counter()
        state, metrics = jax.jit(jax.vmap(lambda k: learner.run(learner.init(k), cfg.num_updates)))(
            seed_keys(self.s.seed, self.s.seeds))
        jax.block_until_ready(state)
        self.log(f"pretrained {self.s.seeds} sub-optimal agents in {time.perf_counter() - t0:.1f}s "
                 f"(training return {np.asarray(metrics['episode_return'])[:, -1].mean():.1f})")
        if saved is not None:
            save_checkpoint(saved, state, cfg, num_seeds=self.s.seeds)
        return state

    # ------------------------------------------------------------------ baselines' explanations
    def agent_episodes(self, pre_state) -> tuple[Any, float]:
        """One (seeds, T, N) recording of the pre-trained agents and their mean episode length (JSRL's
        horizon); collected once per run and shared by every baseline."""
        if self._recording is None:
            s = self.s
            learner = self.agent_learner
            collect = make_collector(learner.env.replace_num_envs(s.collect_envs), learner.net, s.collect_steps)
            rec = jax.jit(jax.vmap(collect))(pre_state.params, pre_state.env_state.obs_rms,
                                             seed_keys(s.seed + 3000, s.seeds))
            done = np.asarray(rec.terminated | rec.truncated)
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
            mc = MaskConfig(alpha=s.mask_alpha, num_envs=c.num_envs, num_steps=c.num_steps,
                            total_timesteps=max(s.mask_steps, c.num_envs * c.num_steps))
            mask_net, train_mask = make_mask_trainer(learner.env, learner.net, mc)
            masks = jax.jit(jax.vmap(train_mask))(seed_keys(s.seed + 4000, s.seeds), pre_state.params, obs_rms)
            obs = jax.vmap(learner.env.observe)(obs_rms, rec.obs)
            scores = jax.vmap(lambda p, o: mask_importance(mask_net, p, o))(masks.params, obs)
            self.log(f"mask nets trained in {time.perf_counter() - t0:.1f}s (blinded share "
                     f"{float(np.mean(np.asarray(masks.blind_frac)[:, -1])):.2f}, masked-agent return "
                     f"{float(np.mean(np.asarray(masks.episode_return)[:, -1])):.1f})")
        else:
            scores = jax.random.uniform(jax.random.PRNGKey(s.seed + 5000), rec.reward.shape)
        self._explained[kind] = jax.jit(jax.vmap(lambda r, sc: critical_advice(r, sc, s.capacity)))(rec, scores)
        return self._explained[kind]

    # ------------------------------------------------------------------ stages 2-5 + refinement
    def refinement_start(self, variant: str, pre_state, guide_steps: int = 1) -> tuple[PPOLearner, Any]:
        """`variant`'s refinement learner and its per-seed start states: the pre-trained agents' parameters
        and normalisers, a fresh optimiser, and the same refinement seeds for every variant."""
        s = self.s
        cfg = s.ppo_config(s.refine_steps, lr=s.refine_lr, anneal_lr=False)
        learner = PPOLearner(cfg, s.modulator(variant, guide_steps=guide_steps))
        state = jax.vmap(lambda k, p: learner.init(k, p))(self.refinement_keys, pre_state.params)
        return learner, jax.vmap(_with_normalisers)(state, pre_state.env_state)

    @property
    def refinement_keys(self) -> jax.Array:
        """(seeds,) keys of the refinement: the same for every variant (collection rounds fold them in)."""
        return seed_keys(self.s.seed + 1000, self.s.seeds)

    def refine(self, variant: str, pre_state, advisor: AdvisorThread | None) -> VariantResult:
        """Refine the pre-trained agents with `variant` (continued PPO, an ULTRA variant or a baseline) in chunks,
        with `advisor` answering in the background; returns evaluation returns per chunk and the wall time."""
        with frozen_heap():  # the advisor's allocations must not make the collector rescan the whole heap
            return self._refine(variant, pre_state, advisor)

    def schedule(self, variant: str) -> Schedule:
        """When `variant` swaps fresh advice in: a recorded run's chunks, every round, or whenever ready."""
        if self.s.swap_schedule:
            return ReplaySchedule.of_run(self.s.swap_schedule, variant)
        return SyncSchedule() if self.s.sync_advice else AsyncSchedule()

    def _refine(self, variant: str, pre_state, advisor: AdvisorThread | None) -> VariantResult:
        s = self.s
        source = method(variant).critical
        guide_steps = max(1, round(self.agent_episodes(pre_state)[1])) if variant in BASELINES else 1
        learner, state = self.refinement_start(variant, pre_state, guide_steps)
        program = RefinementProgram.build(learner, s.chunks, self.refinement_keys, seed_keys(s.seed + 2000, s.seeds),
                                          s.collect_envs, s.collect_steps, s.eval_envs, s.eval_steps)
        rounds = None
        advice = AdviceBook.stacked([AdviceBook(learner.env.core, s.capacity)] * s.seeds)  # no advice yet
        if source in ("mask", "random"):
            advice = self.explain(source, pre_state)
        elif source == "advisor":  # initial advice on the pre-trained agents' own episodes
            from jaxmod.llm import AdvisorStats

            advisor.advisor.stats = AdvisorStats()  # per-variant accounting
            rounds = AdviceRounds(advisor, learner.env.core, s.seeds, s.capacity, s.episodes_per_round,
                                  self.critical_rows.extend)
            t0 = time.perf_counter()
            rounds.hand_over(program.record(state, 0))
            advice, counts = rounds.take()
            self.log(f"{variant}: initial advice {counts['packed']} packed, {counts['dropped']} dropped "
                     f"in {time.perf_counter() - t0:.1f}s")
        program.compile(state, advice)  # before the clock starts: wall time compares refinement, not compilers
        result = VariantResult(variant)
        cfg, modulated = learner.config, not learner.modulator.identity

        def read(mean, done: int, row: dict[str, Any] | None, metrics) -> None:
            """Record an evaluation (and its chunk's row); called while the device runs the next chunk."""
            result.steps.append(min(done, cfg.num_updates) * cfg.batch_size)
            result.eval_returns.append(np.asarray(mean).tolist())
            if row is None:  # the evaluation before refinement
                return
            row["eval_return"] = float(np.mean(mean))
            if modulated:
                row.update(_modulation_row(jax.device_get(metrics)))
            result.chunk_metrics.append(row)
            self.progress(variant, min(done, cfg.num_updates), cfg.num_updates)

        no_swap: dict[str, Any] = {"swapped_advice": False, **({"advisor_latency_s": None} if modulated else {})}
        loop = refine_chunks(program, state, advice, rounds, self.schedule(variant), read, no_swap)
        result.wall_s = loop.wall_s
        if rounds is not None:
            st = advisor.advisor.stats.as_dict()
            self.advice_stats.append({"variant": variant, "advice_overhead_s": round(loop.stall_s, 3),
                                      "advice_overhead_frac": loop.stall_s / max(result.wall_s, 1e-9), **st})
            rounds.cancel()
        return result

    def run(self) -> dict[str, VariantResult]:
        pre = self.pretrain()
        results: dict[str, VariantResult] = {}
        needs_advisor = any(method(v).critical == "advisor" for v in self.s.variants)
        factory = self.advisor_factory or _advisor_factory(self.s, self.transcript)
        ctx = AdvisorThread(factory, self.s.advisor_priority == "idle") if needs_advisor else contextlib.nullcontext()
        with ctx as advisor:
            for variant in self.s.variants:
                results[variant] = self.refine(variant, pre, advisor)
                r = results[variant]
                self.log(f"{variant}: eval return {np.mean(r.eval_returns[0]):.1f} -> "
                         f"{np.mean(r.eval_returns[-1]):.1f} (+- {np.std(r.eval_returns[-1]):.1f}) in {r.wall_s:.1f}s")
        self.write(results)
        return results

    # ------------------------------------------------------------------ outputs
    def write(self, results: dict[str, VariantResult]) -> None:
        from jaxmod.reporting import plot_curves

        summary = {name: {"steps": r.steps, "eval_returns": r.eval_returns, "wall_s": r.wall_s,
                          "chunks": r.chunk_metrics} for name, r in results.items()}
        summary["settings"] = dataclasses.asdict(self.s)
        summary["advisor"] = self.advice_stats
        summary["modulation_choices"] = self.s.modulation().choices()
        (self.out / "ultra.json").write_text(json.dumps(summary, indent=2, default=str))
        with open(self.out / "critical_states.md", "w") as fh:
            fh.write("| episode | step | length | return | state | agent action | why critical | suggested | "
                     "implicit reward | advice reason | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
            for r in self.critical_rows:
                cells = [r.episode, r.step, r.episode_length, f"{r.episode_return:.1f}", r.state, r.agent_action,
                         r.why_critical, r.suggested_action,
                         "-" if r.implicit_reward is None else f"{r.implicit_reward:+.2f}", r.advice_reason, r.verdict]
                fh.write("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |\n")
        series = [(METHODS[n].label, np.array(r.steps), np.array(r.eval_returns)) for n, r in results.items()]
        plot_curves(series, self.out / "ultra.png", title=f"Refinement on {self.s.env_id} ({self.s.advisor} advisor)",
                    xlabel="refinement env steps per seed", ylabel="evaluation return")
