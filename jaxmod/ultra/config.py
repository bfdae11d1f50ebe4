"""`UltraConfig`: one ULTRA experiment as one nested frozen config, one default per knob.

    UltraConfig
      env_id, seeds, seed, pretrain_steps, refine_steps, refine_lr, variants, agents_dir, env_shards,
      outcome_guard, share_programs
      ppo: PPOConfig              the learner (default: the env family's preset, `jaxmod.ppo.default_config`)
      modulation: ModulationConfig  ULTRA's knobs (jaxmod.advice.modulation; A/R switches are set per variant)
      advisor: AdvisorConfig      who answers, its limits and failure policy
      schedule: ScheduleConfig    refinement chunks and when advice is swapped in
      baselines: BaselinesConfig  RICE / StateMask-R / JSRL knobs
      sizes: SizesConfig          collection and evaluation sizes

`jaxmod ultra`'s flags are generated from these fields (`jaxmod.config.flags_of`), their help from the comments
below; `UltraConfig.flat(**knobs)` builds one from flat knob names (`capacity=16, chunks=3`), as on the command
line. Every check runs in `__post_init__`, so Python users get the same one-line errors as the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxmod.advice.modulation import ModulationConfig, ModulationError
from jaxmod.config import (
    MAX_SEEDS,
    MAX_STEPS,
    at_most,
    check_fields,
    check_seed,
    flags_of,
    from_dict,
    orbax_pattern_in,
    positive,
    to_dict,
)
from jaxmod.llm import FailurePolicy, LLMConfigError
from jaxmod.methods import MethodContext, check_group, method
from jaxmod.ppo import PPOConfig, default_config
from jaxmod.ppo.config import ConfigError

ADVISOR_KINDS = ("scripted, smollm2, teacher:<train run or its checkpoint>, replay:<transcript.jsonl>, random, "
                 "constant or an http(s) URL")
LOCAL_ADVISORS = ("scripted", "smollm2", "random", "constant")  # advisors named by one word
# flag names that differ from the field names (kept from earlier versions of the command line)
FLAG_NAMES = {"spec": "--advisor", "concurrency": "--advisor-concurrency", "latency_s": "--advisor-latency",
              "priority": "--advisor-priority", "timeout_s": "--advisor-timeout", "deadline_s": "--advisor-deadline",
              "max_tokens": "--advisor-max-tokens", "temperature": "--advisor-temperature",
              "max_response_bytes": "--advisor-max-response-bytes", "retries": "--advisor-retries",
              "failure": "--advisor-failure", "failure_rounds": "--advisor-failure-rounds", "env_id": "--env",
              "variants": "--variant", "noise": "--noise", "model": "--model",
              "reference": "--advisor-reference", "context_tokens": "--advisor-context-tokens",
              "protocol": "--advice-protocol", "logprobs": "--advisor-logprobs",
              "pacing": "--advisor-pacing"}
ROUND_POOL = 4  # a budget-bound advice round records about this many times its budget's episodes
SHARE_PROGRAMS = ("off", "methods", "all")  # `UltraConfig.share_programs`
PER_VARIANT = frozenset({"override_action", "shape_reward", "ppo"})  # not knobs of a run: set per variant / own flags
# PPO fields refinement sets itself (`UltraConfig.refine_config`): they affect pretraining only, and `jaxmod ultra`'s
# help says so with these notes; every other PPO field applies to pretraining and refinement alike
PRETRAIN_ONLY = {"lr": "on ultra: pretraining only (refinement: --refine-lr)",
                 "anneal_lr": "on ultra: pretraining only (refinement's rate is constant: --refine-lr)"}


@dataclass(frozen=True)
class AdvisorConfig:
    """Who answers the advisor's questions, within which limits, and what happens when it stops answering."""

    spec: str | None = None  # scripted | smollm2 | teacher:<checkpoint dir> | replay:<transcript> | random |
    # constant (control advisors without task knowledge: random answers, or always the same) | an OpenAI-compatible
    # URL (.../v1), or several separated by commas (each question goes to the one with the fewest in flight; one
    # that is down is skipped); unset: ADVISOR_BASE_URL / OPENAI_BASE_URL, else scripted
    model: str | None = None  # model of an HTTP advisor (unset: OPENAI_MODEL, else the server's only model)
    noise: float = 0.0  # fraction of advisor answers corrupted (robustness experiments)
    concurrency: tuple[int, ...] = (16,)  # questions in flight at once for an HTTP advisor, per URL (match each
    # server's parallel slots): one value for every URL, or one per URL in the order given
    latency_s: float = 0.0  # seconds added to every answer (a stand-in for a slow remote LLM)
    pacing: bool = True  # asynchronous schedule: send a question only when its answer is expected before the
    # refinement's last advice swap, from the advisor's measured answers per second and the chunks' measured time
    # (jaxmod.llm.pacing); questions not sent are counted as `paced`, not as failures. A slow advisor then answers
    # what it can in time instead of leaving most of a round unanswered; a fast one is never held back
    priority: str = "normal"  # CPU priority of the host-side advisor work: normal, or idle (Linux: only CPU time
    # training leaves; on a CPU-only machine training is not slowed, but advice arrives later)
    episodes_per_round: int = 8  # episodes per seed recorded for the advisor each round
    round_budget: int = 32  # episodes the advisor is asked about per round, all seeds together: past it, episodes
    # are taken seed by seed in turn and one near an episode already taken (within dedup_radius) is not asked but
    # gets that episode's answers (jaxmod.ultra.sharing); the advisor's load, and the recording of each round's
    # episodes (fewer envs per seed: UltraConfig.round_collect_envs), are set by this, not by the seeds
    dedup_radius: float = 0.25  # how near two episodes' critical-candidate states must be for one answer to stand
    # for both, once the round budget binds: root-mean-square distance in standard deviations of each observation
    # element over the round's episodes
    max_critical: int = 2  # critical steps the advisor may name per episode (candidates protocol: the device's
    # best-scored steps it is asked about per episode)
    protocol: str = "auto"  # how the advisor is asked: candidates (the device picks critical-state candidates
    # from the agent's value drops and policy entropy; the advisor answers a short question at each, a multiple
    # choice among the action names for discrete actions), episodes (the paper's protocol: the advisor reads
    # whole episodes, names their critical steps, then advises at each), or auto: candidates for an LLM (smollm2,
    # a URL), episodes for the scripted, teacher and control advisors (programs that read whole episodes)
    logprobs: int = 20  # multiple-choice questions (candidates protocol) ask an HTTP advisor for its answer's token
    # log-probabilities with this many alternatives per token (OpenAI's top_logprobs, at most 20): the LLM's
    # distribution over the actions becomes the KL target and its confidence the advice weight; answers without
    # usable log-probabilities keep the one-hot target (counted). 0: off (the one-hot target for every answer)
    context_tokens: int | None = None  # the model's context window in tokens, prompt plus answer (unset: the
    # server's where it tells, llama.cpp /props or vLLM max_model_len; else 4096); prompts are windowed to fit
    timeout_s: float | None = None  # seconds one attempt may take, connect to last byte (unset: 120)
    deadline_s: float | None = None  # seconds a batch of questions (one seed's in a round) may take, retries
    # included (unset: 300); answers still out then count as failed
    max_tokens: int | None = None  # max_tokens asked for per answer (unset: 512; SmolLM2 160)
    temperature: float | None = None  # sampling temperature (unset: 0)
    max_response_bytes: int | None = None  # largest response body read (unset: 4 MiB)
    retries: int | None = None  # retries per question on timeouts, 429 and 5xx (unset: 4)
    failure: str = "stop"  # when the advisor fails (most answers of a round, or no valid advice for N rounds):
    # stop the run with an error, or continue without advice
    failure_rounds: int = 3  # rounds in a row without one valid answer before the failure policy trips
    reference: str | None = None  # a teacher checkpoint dir to score the advisor's answers against: the run
    # reports how often its suggested actions agree with that policy's on the critical states it judged

    def __post_init__(self) -> None:
        if isinstance(self.concurrency, int) and not isinstance(self.concurrency, bool):  # one number: every URL's
            object.__setattr__(self, "concurrency", (self.concurrency,))
        check_fields(self, ModulationError)
        if not 0.0 <= self.noise <= 1.0:
            raise ModulationError(f"--noise (the share of advisor answers corrupted) must lie in [0, 1], got "
                                  f"{self.noise:g}: give a fraction such as 0.3, or 0 for clean answers")
        if self.latency_s < 0:
            raise ModulationError(f"--advisor-latency (seconds added to every advisor answer) must be >= 0, got "
                                  f"{self.latency_s:g}: give 0 for none")
        if not self.concurrency:
            raise ModulationError("--advisor-concurrency is empty: give the advisor questions in flight at once, e.g. "
                                  "16 (one value for every URL, or one per URL)")
        if min(self.concurrency) < 1:
            raise ModulationError(f"--advisor-concurrency must be >= 1 (advisor questions in flight at once, per URL), "
                                  f"got {','.join(map(str, self.concurrency))}: give 1 or more for every URL")
        if self.priority not in ("idle", "normal"):
            raise ModulationError(f"advisor priority must be 'idle' or 'normal', not {self.priority!r}")
        for name, value, what in (("episodes-per-round", self.episodes_per_round, "episodes a seed offers a round"),
                                  ("round-budget", self.round_budget, "episodes a round asks about, all seeds"),
                                  ("max-critical", self.max_critical, "critical steps named per episode")):
            if value < 1:
                raise ModulationError(f"--{name} must be >= 1 ({what}: the advisor needs something to look at), "
                                      f"got {value}")
        if not self.dedup_radius >= 0:
            raise ModulationError("dedup_radius must be >= 0 (standard deviations; 0: only identical states)")
        if not 0 <= self.logprobs <= 20:
            raise ModulationError("advisor logprobs must lie in [0, 20] (alternatives per token; 0: off)")
        if self.protocol not in ("auto", "candidates", "episodes"):
            raise ModulationError(f"advice protocol must be 'auto', 'candidates' or 'episodes', not {self.protocol!r}")
        if self.context_tokens is not None and self.context_tokens - (self.max_tokens or 512) < 256:
            raise ModulationError("advisor context tokens must leave >= 256 tokens for the prompt after the answer's "
                                  "max tokens (default 512): raise --advisor-context-tokens or lower "
                                  "--advisor-max-tokens")
        if self.spec is not None and not (self.spec in LOCAL_ADVISORS or self.spec.startswith(
                ("teacher:", "replay:", "http://", "https://"))):
            raise ModulationError(f"unknown advisor {self.spec!r}: use {ADVISOR_KINDS}")
        if self.is_http:
            self.limits(len(self.urls()))  # each URL checked, and its concurrency (one-line errors)
        self.client_settings(base_url="http://127.0.0.1/v1")  # checks the limits (one-line LLMConfigError)
        self.failure_policy()

    def resolved_protocol(self, spec: str) -> str:
        """The protocol asked with advisor `spec`: `protocol`, or for 'auto' candidates for an LLM (smollm2, a URL)
        and episodes for a program (scripted, teacher, random, constant; a replay answers as recorded)."""
        if self.protocol != "auto":
            return self.protocol
        return "candidates" if spec == "smollm2" or spec.startswith(("http://", "https://")) else "episodes"

    @property
    def is_http(self) -> bool:
        return (self.spec or "").startswith(("http://", "https://"))

    def urls(self) -> list[str]:
        """An HTTP advisor's URLs (`spec`, split at commas; `jaxmod.llm.pool`). Raises `ModulationError` (one line)
        for one that is not an http(s) URL with a host."""
        from jaxmod.llm.endpoint import normalise_url
        from jaxmod.llm.pool import split_urls

        urls = split_urls(self.spec or "")
        for url in urls if len(urls) > 1 else ():  # a single URL is resolved (with the environment's) by the client
            try:
                normalise_url(url)
            except LLMConfigError as err:
                raise ModulationError(str(err)) from None
        return urls

    def limits(self, endpoints: int) -> tuple[int, ...]:
        """Each of `endpoints` URLs' concurrency: `concurrency` repeated (one value) or as given (one per URL).
        Raises `ModulationError` (one line) when the counts do not match."""
        if len(self.concurrency) == 1:
            return self.concurrency * endpoints
        if len(self.concurrency) != endpoints:
            raise ModulationError(f"--advisor-concurrency gives {len(self.concurrency)} values for {endpoints} advisor "
                                  "URL(s): give one value for all, or one per URL in --advisor's order")
        return self.concurrency

    def client_overrides(self) -> dict[str, Any]:
        """The `ClientSettings` fields this config sets (unset limits are left to the client's defaults)."""
        names = {"timeout_s": "timeout_s", "deadline_s": "deadline_s", "max_tokens": "max_tokens",
                 "temperature": "temperature", "max_response_bytes": "max_response_bytes", "retries": "max_retries"}
        return {dst: getattr(self, src) for src, dst in names.items() if getattr(self, src) is not None}

    def client_settings(self, **fields: Any):
        from jaxmod.llm import ClientSettings

        try:
            return ClientSettings(**{**fields, **self.client_overrides()})
        except LLMConfigError as err:
            raise ModulationError(str(err)) from None

    def failure_policy(self) -> FailurePolicy:
        try:
            return FailurePolicy(mode=self.failure, max_rounds_without_advice=self.failure_rounds)
        except LLMConfigError as err:
            raise ModulationError(str(err)) from None


@dataclass(frozen=True)
class ScheduleConfig:
    """How refinement is cut into chunks and when fresh advice is swapped in."""

    chunks: int = 10  # refinement chunks: advice refreshes and evaluation points
    sync_advice: bool = False  # wait for each advice round before the next chunk: reproducible (and replayable
    # with --advisor replay:<transcript>) at the cost of stalls; the default never waits
    swap_schedule: str | None = None  # a run's ultra.json: swap advice in at exactly the chunks that run did

    def __post_init__(self) -> None:
        check_fields(self)
        positive(self, ("chunks",))


@dataclass(frozen=True)
class BaselinesConfig:
    """The comparison methods' knobs (jaxmod.baselines)."""

    mask_steps: int = 100_000  # RICE / StateMask-R: env steps of mask-net training per seed
    mask_alpha: float = 0.01  # RICE / StateMask-R: the mask net's blinding bonus
    rice_p: float | None = None  # RICE restart probability (unset: RICE Table 3 for the task)
    rice_lambda: float | None = None  # RICE RND coefficient (unset: RICE Table 3 for the task)
    jsrl_steps: int = 0  # JSRL initial roll-in horizon (0: the agents' mean episode length)

    def __post_init__(self) -> None:
        check_fields(self)
        positive(self, ("mask_steps",))
        for name in ("jsrl_steps", "mask_alpha"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name):g}")
        if self.rice_p is not None and not 0.0 <= self.rice_p <= 1.0:
            raise ConfigError(f"rice_p must lie in [0, 1], got {self.rice_p:g}")
        if self.rice_lambda is not None and not self.rice_lambda >= 0:
            raise ConfigError(f"rice_lambda must be >= 0, got {self.rice_lambda:g}")


EVAL_STEPS_CAP = 1_000  # the longest evaluation by default, env steps per env


@dataclass(frozen=True)
class SizesConfig:
    """How many envs and steps collection (for the advisor and the baselines) and evaluation use, per seed."""

    collect_envs: int = 8  # envs per seed recording episodes for the advisor
    collect_steps: int = 256  # steps of each such recording
    eval_envs: int = 16  # envs per seed in each evaluation
    eval_steps: int | None = None  # steps of each evaluation; unset: the env's episode limit, up to 1,000 steps
    # (whole episodes: an evaluation counts only the episodes that end within it)

    def __post_init__(self) -> None:
        check_fields(self)
        positive(self, ("collect_envs", "collect_steps", "eval_envs"))
        if self.eval_steps is not None:
            positive(self, ("eval_steps",))

    def eval_steps_for(self, episode_limit: int) -> int:
        """Steps of each evaluation of an env whose episodes last up to `episode_limit` steps: `eval_steps`, or
        unset the limit itself up to `EVAL_STEPS_CAP` (jaxmod's choice: whole episodes of every gymnax, MinAtar,
        Pong and brax task but Freeway's 2,500-step ones)."""
        return self.eval_steps if self.eval_steps is not None else min(int(episode_limit), EVAL_STEPS_CAP)


@dataclass(frozen=True)
class UltraConfig:
    """One ULTRA experiment. Step counts are env steps per seed."""

    env_id: str = "CartPole-v1"  # env id: a gymnax id, brax/<name> or jaxmod/<name>
    seeds: int = 5  # seeds refined side by side in one program
    seed: int = 0  # base seed
    pretrain_steps: int = 60_000  # env steps of the sub-optimal agents' PPO (stopped early)
    refine_steps: int = 100_000  # env steps of refinement per method
    refine_lr: float = 1e-4  # learning rate of refinement (constant)
    variants: tuple[str, ...] = ("PPO", "A", "R", "RA")  # methods: ULTRA's A, R, RA, restart and the baselines
    # StateMask-R, RICE, JSRL, Random (on the command line PPO fine-tuning always runs)
    agents_dir: str | None = None  # save the pre-trained agents here and reuse them in later runs
    env_shards: int = 1  # devices that share each seed's training envs (data parallel, as jaxmod train's: the envs
    # and every minibatch split over them, gradients summed across them; must divide num_envs and the device
    # count, the seeds a multiple of devices / env_shards; evaluations and recordings run whole on each; 1: seeds
    # alone are spread over the devices when they split evenly; jaxmod.parallel)
    outcome_guard: bool = True  # after every chunk, compare each advised method (A, R, RA, restart) with PPO
    # fine-tuning from the same agents on guard episodes of their own; once its mean over seeds (the last two
    # chunks) falls below fine-tuning's by more than the paired t interval (1 - 0.05/chunks before the last chunk,
    # 95% at it; 5 or more seeds, whole-episode evaluations), switch its advisor off and make every seed's agent
    # fine-tuning's from there on, so advice never costs the agents (jaxmod.ultra.guard); needs PPO among the
    # variants (the command line always runs it)
    share_programs: str = "off"  # methods that share one compiled program (the union of their pieces, each
    # method's values as data: one compile instead of one per method; each method's numbers equal its own
    # program's up to floating-point rounding, and it also computes the pieces it switches off): off, methods
    # (every method but PPO fine-tuning, which keeps plain PPO's program) or all; evaluation and advisor recordings
    # share one program per run either way
    ppo: PPOConfig | None = None  # the learner; unset: the env family's preset (jaxmod.ppo.default_config)
    modulation: ModulationConfig = ModulationConfig()
    advisor: AdvisorConfig = AdvisorConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    sizes: SizesConfig = SizesConfig()

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "variants", tuple(self.variants))
        if self.ppo is None:
            object.__setattr__(self, "ppo", default_config(self.env_id))
        elif self.ppo.env_id != self.env_id:
            raise ConfigError(f"ppo.env_id {self.ppo.env_id!r} differs from env_id {self.env_id!r}: build ppo with "
                              f"jaxmod.ppo.default_config({self.env_id!r}, ...)")
        check_fields(self.ppo)
        positive(self, ("seeds", "env_shards"))
        if self.ppo.num_envs % self.env_shards:
            raise ConfigError(f"env_shards={self.env_shards} must divide num_envs={self.ppo.num_envs} (each device "
                              "steps num_envs / env_shards envs of every seed): change --num-envs or --env-shards")
        at_most(self, ("seeds",), MAX_SEEDS, "seeds run side by side in one program")
        at_most(self, ("pretrain_steps", "refine_steps"), MAX_STEPS, "the learner counts env steps in int32")
        check_seed(self)
        if not self.variants:
            raise ConfigError("variants is empty: name at least one method (e.g. PPO, RA)")
        for v in self.variants:
            method(v)  # raises a one-line MethodError listing the valid names
        twice = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if twice:
            raise ConfigError(f"variants name {', '.join(twice)} more than once: name each method once")
        if not self.refine_lr > 0:
            raise ConfigError(f"refine_lr must be > 0, got {self.refine_lr:g}")
        if self.agents_dir is not None and orbax_pattern_in(self.agents_dir):
            raise ConfigError("agents_dir must hold no folder name with [...] (orbax reads it as a pattern: checkpoints "
                              "saved there cannot be restored): choose a name without brackets")
        if self.share_programs not in SHARE_PROGRAMS:
            raise ConfigError(f"share_programs must be one of {', '.join(SHARE_PROGRAMS)}, not {self.share_programs!r}")
        for v in self.variants:  # before pretraining: a method that cannot join its group's program
            if len(self.program_group(v)) > 1:
                check_group(self.program_group(v))
        rollout = self.ppo.num_envs * self.ppo.num_steps
        for name in ("pretrain_steps", "refine_steps"):
            if getattr(self, name) < rollout:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be at least num_envs * num_steps ({rollout}) "
                                  "so that one update runs: raise it or lower --num-envs / --num-steps")

    # ------------------------------------------------------------------ building blocks of the run
    def ppo_config(self, total_steps: int, **changes: Any) -> PPOConfig:
        """The learner's config for `total_steps` env steps per seed, with `changes`."""
        return self.ppo.replace(total_timesteps=total_steps, **changes)

    def refine_config(self) -> PPOConfig:
        """The refinement learner's config: `ppo` with `refine_steps`, `refine_lr` and no annealing (the fields of
        `PRETRAIN_ONLY`)."""
        return self.ppo_config(self.refine_steps, lr=self.refine_lr, anneal_lr=False)

    def modulator(self, variant: str, guide_steps: int = 1):
        """`variant`'s modulator (`jaxmod.methods`), built from this config: with `share_programs`, as a member of
        `program_group(variant)` (`jaxmod.methods.shared_modulator`)."""
        from jaxmod.methods import shared_modulator

        b = self.baselines
        ctx = MethodContext(self.env_id, self.modulation, b.jsrl_steps or guide_steps, b.rice_p, b.rice_lambda)
        group = self.program_group(variant)
        return method(variant).build(ctx) if len(group) < 2 else shared_modulator(group, variant, ctx)

    def program_group(self, variant: str) -> tuple[str, ...]:
        """The methods whose refinement runs through `variant`'s compiled program: `share_programs` 'all': every
        method of the run; 'methods': all but PPO fine-tuning (which keeps plain PPO's program); 'off': `variant`
        alone."""
        if self.share_programs == "all":
            return self.variants
        if self.share_programs == "off" or variant == "PPO":
            return (variant,)
        return tuple(v for v in self.variants if v != "PPO")

    def round_collect_envs(self) -> int:
        """Envs per seed recording each advice round's episodes: `sizes.collect_envs`, or fewer where the round
        budget binds (`advisor.round_budget` < seeds x `episodes_per_round`): then a round records about
        `ROUND_POOL` times the budget's episodes over all seeds (each env ~ `episodes_per_round / collect_envs` of
        them; at least one env per seed), enough for deduplication to choose among, so the recording's cost, like
        the advisor's load, is set by the budget and not by the seeds (64 CartPole-v1 seeds recorded 512 episodes
        per round to ask 32; jaxmod's choice). The baselines' one-off collection keeps `sizes.collect_envs`."""
        a, envs = self.advisor, self.sizes.collect_envs
        if self.seeds * a.episodes_per_round <= a.round_budget:
            return envs
        wanted = math.ceil(ROUND_POOL * a.round_budget / self.seeds)  # episodes per seed
        return max(1, min(envs, math.ceil(envs * wanted / a.episodes_per_round)))

    @property
    def needs_advisor(self) -> bool:
        return any(method(v).critical == "advisor" for v in self.variants)

    def check_advisor_files(self) -> None:
        """Raise a one-line error unless the files the advisor reads are there: a teacher's checkpoint (a policy of
        this env) and a replayed transcript where an advised method runs, the advisor reference's checkpoint where
        one is set. Reads only the checkpoints' metadata; `UltraRun` and `jaxmod ultra` call it before anything is
        printed, written or run (the fields' own checks cannot: a config read back from a run's files is no run)."""
        from jaxmod.advice.teacher import check_teacher

        spec = self.advisor.spec or ""
        if spec.startswith("teacher:") and self.needs_advisor:
            check_teacher(spec.split(":", 1)[1], self.env_id)
        if self.advisor.reference is not None:
            check_teacher(self.advisor.reference, self.env_id, "advisor reference")
        if spec.startswith("replay:") and self.needs_advisor and not Path(spec.split(":", 1)[1]).is_file():
            raise ConfigError(f"no transcript to replay at {spec.split(':', 1)[1]}: pass a run's transcript.jsonl "
                              "(or replay the whole run with jaxmod ultra --replay RUN_DIR)")

    # ------------------------------------------------------------------ flat knobs, JSON, replay
    @classmethod
    def flags(cls):
        """The command line's flags: one per knob (`jaxmod.config.Flag`), PPO's fields apart."""
        return flags_of(cls, FLAG_NAMES, PER_VARIANT)

    @classmethod
    def knob_paths(cls) -> dict[str, tuple[str, ...]]:
        """Each flat knob name, a field's or its flag's (`latency_s`, `advisor_latency`), to the field's path in the
        config (`("advisor", "latency_s")`)."""
        paths = {}
        for fl in cls.flags():
            paths[fl.path[-1]] = paths[fl.dest] = fl.path
        return paths

    @classmethod
    def flat(cls, ppo_overrides: dict[str, Any] | tuple = (), **knobs: Any) -> UltraConfig:
        """A config from flat knob names, as on the command line (`capacity=16, chunks=3, noise=0.1`; a knob is
        named by its field or by its flag, e.g. `advisor_priority`), and PPO field overrides of the env's preset."""
        paths = cls.knob_paths()
        paths.update({old: paths[new] for old, new in LEGACY_NAMES.items()})
        unknown = sorted(set(knobs) - set(paths))
        if unknown:
            raise ConfigError(f"unknown knob(s) {unknown}; valid: {', '.join(sorted(paths))}")
        top: dict[str, Any] = {}
        for name, value in knobs.items():
            path = paths[name]
            (top.setdefault(path[0], {}) if len(path) > 1 else top)[path[-1]] = value
        for name, section in SECTIONS.items():
            if name in top:
                top[name] = section(**top[name])
        return cls(**top, ppo=default_config(top.get("env_id", cls.env_id), **dict(ppo_overrides)))

    def to_dict(self) -> dict[str, Any]:
        """The whole config as JSON-ready data (the advisor's URL without credentials)."""
        from jaxmod.llm import redact_url

        d = {"command": "ultra", **to_dict(self)}
        if self.advisor.spec is not None:
            d["advisor"]["spec"] = redact_url(self.advisor.spec)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UltraConfig:
        """The config `to_dict` wrote (a run's config.json, or ultra.json's "config")."""
        data = dict(data)
        advisor = data.get("advisor")
        if isinstance(advisor, dict) and isinstance(advisor.get("concurrency"), int):  # a config of an earlier version
            data["advisor"] = {**advisor, "concurrency": [advisor["concurrency"]]}
        command = data.pop("command", "ultra")
        if command != "ultra":
            raise ConfigError(f"this is the config of a `jaxmod {command}` run, not of `jaxmod ultra`")
        return from_dict(cls, data)

    @classmethod
    def replay_of(cls, run_dir: Path) -> UltraConfig:
        """A config that re-runs the finished run in `run_dir` exactly: its config, its transcript as the advisor
        (answers as recorded, noise included), and its advice swap schedule."""
        run_dir = Path(run_dir)
        summary_path = run_dir / "ultra.json"
        if not summary_path.exists():
            raise FileNotFoundError(f"no ultra.json in {run_dir}")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if "config" in summary:
            recorded = cls.from_dict(_as_recorded(summary["config"]))
        else:  # a run of an earlier version: flat settings
            flat = dict(summary["settings"])
            recorded = cls.flat(ppo_overrides=[tuple(kv) for kv in flat.pop("ppo_overrides", ())], **flat)
        advisor = dataclasses.replace(recorded.advisor, spec=f"replay:{run_dir / 'transcript.jsonl'}", noise=0.0)
        schedule = dataclasses.replace(recorded.schedule, swap_schedule=str(summary_path))
        return dataclasses.replace(recorded, advisor=advisor, schedule=schedule)


def _as_recorded(data: dict[str, Any]) -> dict[str, Any]:
    """A finished run's recorded config with the knobs its version did not have set as that version ran them: no
    outcome guard, no trust before evidence (runs before 2026-12-03)."""
    data = {**data, "outcome_guard": data.get("outcome_guard", False)}
    modulation = data.get("modulation")
    if isinstance(modulation, dict) and "trust_prior" not in modulation:
        data["modulation"] = {**modulation, "trust_prior": 0.0}
    return data


SECTIONS: dict[str, type] = {"modulation": ModulationConfig, "advisor": AdvisorConfig, "schedule": ScheduleConfig,
                             "baselines": BaselinesConfig, "sizes": SizesConfig}
LEGACY_NAMES = {"advisor_latency_s": "latency_s"}  # flat names of earlier versions


def UltraSettings(**knobs: Any) -> UltraConfig:  # the flat constructor of earlier versions
    """`UltraConfig.flat(**knobs)`: earlier versions' flat keyword names still build a config."""
    return UltraConfig.flat(**knobs)


UltraSettings.replay_of = UltraConfig.replay_of  # type: ignore[attr-defined]
