"""`jaxmod` command line: the only module that prints for people.

    jaxmod train --env CartPole-v1 --seeds 8 --total-steps 5e5 --out runs/NAME [--<any config field>]
    jaxmod plot runs/NAME
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SKIP_FIELDS = {"env_id", "env_options", "total_timesteps"}  # given as --env, --env-option, --total-steps


class CLIError(Exception):
    """A user mistake on the command line; printed as one line."""


# --------------------------------------------------------------------------- flag parsing helpers
def _int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _env_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from jaxmod.ppo.config import PPOConfig

    hints = typing.get_type_hints(PPOConfig)
    group = parser.add_argument_group("PPO config (default: the preset of the env's family)")
    for f in dataclasses.fields(PPOConfig):
        if f.name in SKIP_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif hint is int:
            group.add_argument(flag, dest=f.name, type=_int, default=None, metavar="N")
        elif hint is float:
            group.add_argument(flag, dest=f.name, type=float, default=None, metavar="X")
        elif hint is str:
            group.add_argument(flag, dest=f.name, type=str, default=None)
        else:
            group.add_argument(flag, dest=f.name, type=_int_tuple, default=None, metavar="A,B")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmod", description="JAX-native LLM-guided RL (ULTRA) on a jitted PPO.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train PPO on one env for many seeds in one jitted program")
    train.add_argument("--env", default="CartPole-v1", help="env id: a gymnax id or brax/<name> (default CartPole-v1)")
    train.add_argument("--env-option", action="append", type=_env_option, default=[], metavar="KEY=VALUE",
                       help="backend option, e.g. backend=spring (repeatable)")
    train.add_argument("--seeds", type=_int, default=1, help="number of seeds trained in one program")
    train.add_argument("--seed", type=_int, default=0, help="base seed")
    train.add_argument("--total-steps", type=_int, default=None, help="env steps per seed (e.g. 5e5)")
    train.add_argument("--out", default=None, help="run folder (default runs/<env>-<time>)")
    train.add_argument("--chunks", type=_int, default=20, help="progress/checkpoint chunks (default 20)")
    train.add_argument("--checkpoint-every", type=_int, default=5, help="save every N chunks (and at the end)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--max-chunks", type=_int, default=None,
                       help="stop (with a checkpoint) after N chunks in this invocation; continue with --resume")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(train)

    serve = sub.add_parser("serve-advisor", help="serve an advisor behind a local OpenAI-compatible API")
    serve.add_argument("--backend", choices=("scripted", "smollm2", "teacher"), default="scripted",
                       help="scripted heuristics (not an LLM), the SmolLM2-135M LLM, or a teacher checkpoint")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_int, default=8080)
    serve.add_argument("--threads", type=_int, default=1, help="CPU threads for the local LLM (default 1)")
    serve.add_argument("--teacher", default=None, help="checkpoint folder of the teacher policy (--backend teacher)")

    ultra = sub.add_parser("ultra", help="ULTRA: pretrain, ask the advisor, refine with A/R/RA vs continued PPO")
    ultra.add_argument("--env", default="CartPole-v1")
    ultra.add_argument("--variant", default="A,R,RA",
                       help="comma list of methods: ULTRA's A, R, RA, restart and the baselines StateMask-R, RICE, "
                            "JSRL, Random (PPO fine-tuning always runs)")
    ultra.add_argument("--advisor", default="scripted",
                       help="scripted | smollm2 | teacher:<checkpoint dir> | an OpenAI-compatible URL (.../v1)")
    ultra.add_argument("--llm-url", default=None, help="same as --advisor <url>")
    ultra.add_argument("--model", default="default", help="model name for an HTTP advisor")
    ultra.add_argument("--noise", type=float, default=0.0, help="fraction of advisor answers corrupted (robustness)")
    ultra.add_argument("--advisor-concurrency", type=_int, default=16, metavar="N",
                       help="questions in flight at once for an HTTP advisor (match the server's parallel slots)")
    ultra.add_argument("--advisor-latency", type=float, default=0.0, metavar="SECONDS",
                       help="add this latency to every advisor answer (a stand-in for a slow remote LLM)")
    ultra.add_argument("--advisor-priority", choices=("normal", "idle"), default="normal",
                       help="CPU priority of the host-side advisor work: normal, or idle (Linux: only CPU time training "
                            "leaves; on a CPU-only machine training is not slowed, but advice arrives later)")
    ultra.add_argument("--seeds", type=_int, default=5)
    ultra.add_argument("--seed", type=_int, default=0)
    ultra.add_argument("--pretrain-steps", type=_int, default=60_000)
    ultra.add_argument("--refine-steps", type=_int, default=100_000)
    ultra.add_argument("--refine-lr", type=float, default=1e-4)
    ultra.add_argument("--chunks", type=_int, default=10)
    ultra.add_argument("--capacity", type=_int, default=32, help="advice slots K")
    ultra.add_argument("--restart-prob", type=float, default=0.5)
    ultra.add_argument("--reward-scale", type=float, default=1.0)
    ultra.add_argument("--kl-coef", type=float, default=1.0)
    ultra.add_argument("--match-radius", type=float, default=0.0,
                       help="also treat live states within this distance of an advice state as critical (in units of "
                            "the observation std, or of the advice states' spread for raw observations; 0: off)")
    ultra.add_argument("--kl-filter", action="store_true",
                       help="apply the KL pull only where the advised step's advantage is positive (bad advice)")
    ultra.add_argument("--verify-samples", type=_int, default=4,
                       help="verify advice on device: a slot whose suggestion does significantly worse than the "
                            "policy's own actions (>= this many samples per group) is switched off (0: off)")
    ultra.add_argument("--consensus-radius", type=float, default=2.0,
                       help="advice consensus: a slot whose suggestion most advice within this many spreads of its "
                            "state contradicts is switched off (0: off)")
    ultra.add_argument("--episodes-per-round", type=_int, default=8)
    ultra.add_argument("--replay", default=None, metavar="RUN_DIR",
                       help="re-run a finished run exactly: its settings, its transcript as the advisor and its "
                            "advice swap schedule (other flags except --out are ignored)")
    ultra.add_argument("--sync-advice", action="store_true",
                       help="wait for each advice round (reproducible, replayable with --advisor replay:<transcript>)")
    ultra.add_argument("--mask-steps", type=_int, default=100_000, help="RICE/StateMask-R: mask-net training steps")
    ultra.add_argument("--rice-p", type=float, default=None, help="RICE restart probability (default: RICE Table 3)")
    ultra.add_argument("--rice-lambda", type=float, default=None, help="RICE RND coefficient (default: Table 3)")
    ultra.add_argument("--jsrl-steps", type=_int, default=0,
                       help="JSRL initial roll-in horizon (0: the agents' mean episode length)")
    ultra.add_argument("--out", default=None, help="run folder (default runs/ultra-<env>-<time>)")

    plot = sub.add_parser("plot", help="redraw the learning curve of a run folder")
    plot.add_argument("run", help="run folder with metrics.jsonl")
    return parser


# --------------------------------------------------------------------------- commands
def _config_from_args(args: argparse.Namespace):
    from jaxmod.ppo.config import PPOConfig, default_config

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)
                 if f.name not in SKIP_FIELDS and getattr(args, f.name) is not None}
    if args.total_steps is not None:
        overrides["total_timesteps"] = args.total_steps
    if args.env_option:
        overrides["env_options"] = tuple(args.env_option)
    return default_config(args.env, **overrides)


def _enable_compile_cache() -> None:
    import jax

    cache = os.environ.get("JAXMOD_CACHE_DIR", str(Path.home() / ".cache" / "jaxmod" / "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def cmd_train(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from jaxmod.checkpoint import load_checkpoint, save_checkpoint
    from jaxmod.envs import make_core
    from jaxmod.parallel import MultiSeed, seed_keys
    from jaxmod.reporting import METRICS_FILE, append_metrics, plot_curves, read_metrics

    console = Console(stderr=False, quiet=False)
    if args.seeds < 1:
        raise CLIError("--seeds must be >= 1")
    out = Path(args.out or f"runs/{args.env.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = _config_from_args(args)
    make_core(config.env_id, **config.env_kwargs)  # unknown ids and bad options fail here, before any compile

    _enable_compile_cache()
    ckpt_dir = out / "checkpoint"
    metrics_path = out / METRICS_FILE
    if args.resume:
        ckpt = load_checkpoint(ckpt_dir)
        if ckpt.num_seeds != args.seeds:
            raise CLIError(f"checkpoint in {ckpt_dir} has {ckpt.num_seeds} seeds, not --seeds {args.seeds}")
        config = ckpt.config
    elif metrics_path.exists():
        raise CLIError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())

    runner = MultiSeed(config, args.seeds)
    state = ckpt.state if args.resume else runner.init(seed_keys(args.seed, args.seeds))
    done = int(np.asarray(state.update_step).reshape(-1)[0])
    total = config.num_updates
    if args.resume:  # drop metrics written after the checkpoint was taken
        _truncate_metrics(metrics_path, done)
    chunk = max(1, math.ceil(total / max(1, args.chunks)))
    steps_per_update = config.batch_size * args.seeds

    console.print(f"[bold]jaxmod train[/] {config.env_id}: {args.seeds} seed(s) x {config.total_timesteps:,} steps "
                  f"({total} updates of {config.num_envs} envs x {config.num_steps} steps) on "
                  f"{jax.device_count()} {jax.devices()[0].platform} device(s) -> {out}")
    compiled: dict[int, Any] = {}
    compile_s = 0.0
    run_s = 0.0
    steps_run = 0
    chunks_done = 0
    last_return = float("nan")
    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("updates"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=args.quiet, transient=False) as progress:
        task = progress.add_task("compiling", total=total, completed=done)
        while done < total and (args.max_chunks is None or chunks_done < args.max_chunks):
            n = min(chunk, total - done)
            if n not in compiled:
                progress.update(task, description=f"compiling ({n}-update chunk)")
                t0 = time.perf_counter()
                compiled[n] = runner.runner(n).lower(state).compile()
                compile_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            state, metrics = compiled[n](state)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            run_s += dt
            append_metrics(metrics_path, metrics, done)
            done += n
            steps_run += n * steps_per_update
            chunks_done += 1
            last_return = float(np.mean(metrics["episode_return"][:, -1]))
            progress.update(task, advance=n, description=(
                f"return {last_return:8.2f} | {n * steps_per_update / dt / 1e3:9.1f}k steps/s"))
            stopping = done >= total or chunks_done == args.max_chunks
            if chunks_done % max(1, args.checkpoint_every) == 0 or stopping:
                save_checkpoint(ckpt_dir, state, config, num_seeds=args.seeds, meta={"updates_done": done})

    data = read_metrics(metrics_path)
    png = plot_curves([(config.env_id, data["env_steps"][:, 0], data["episode_return"])], out / "curve.png",
                      title=f"PPO on {config.env_id}")
    final = data["episode_return"][-1]
    table = Table(title="result")
    for col in ("env", "seeds", "final return (mean +- std)", "compile s", "run s", "env steps/s"):
        table.add_column(col)
    sps = f"{steps_run / run_s:,.0f}" if run_s > 0 else "-"
    table.add_row(config.env_id, str(args.seeds), f"{final.mean():.2f} +- {final.std():.2f}",
                  f"{compile_s:.1f}", f"{run_s:.1f}", sps)
    console.print(table)
    console.print(f"metrics: {metrics_path}\ncheckpoint: {ckpt_dir}\ncurve: {png}")
    return 0


def _truncate_metrics(path: Path, updates_done: int) -> None:
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["update"] <= updates_done]
    path.write_text("".join(ln + "\n" for ln in lines))


def cmd_plot(args: argparse.Namespace) -> int:
    from jaxmod.reporting import METRICS_FILE, plot_curves, read_metrics

    run = Path(args.run)
    if not (run / METRICS_FILE).exists():
        raise CLIError(f"no {METRICS_FILE} in {run}")
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    data = read_metrics(run / METRICS_FILE)
    png = plot_curves([(config.get("env_id", "run"), data["env_steps"][:, 0], data["episode_return"])],
                      run / "curve.png", title=f"PPO on {config.get('env_id', run.name)}")
    print(png)
    return 0


def cmd_ultra(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from jaxmod.envs import make_core
    from jaxmod.methods import METHODS
    from jaxmod.ultra.pipeline import BASELINE, UltraRun, UltraSettings

    variants = [v.strip() for v in args.variant.split(",") if v.strip() and v.strip() != BASELINE]
    for v in variants:
        if v not in METHODS:
            raise CLIError(f"unknown variant {v!r}; choose from {', '.join(m for m in METHODS if m != BASELINE)}")
    advisor = args.llm_url or args.advisor
    if not (advisor in ("scripted", "smollm2") or advisor.startswith(("teacher:", "replay:", "http://", "https://"))):
        raise CLIError(f"unknown advisor {advisor!r}: use scripted, smollm2, teacher:<checkpoint>, "
                       "replay:<transcript.jsonl> or an http(s) URL")
    make_core(args.env)
    if advisor == "smollm2":  # before pretraining, not when the advisor starts
        from jaxmod.llm.server import BackendUnavailable, require_smollm2

        try:
            require_smollm2()
        except BackendUnavailable as err:
            raise CLIError(str(err)) from None
    if advisor == "scripted" and any(METHODS[v].critical == "advisor" for v in variants):
        from jaxmod.llm.scripted import ScriptedBackend

        if not ScriptedBackend().supports(args.env):
            raise CLIError(f"the scripted advisor has no heuristic for {args.env}; use --advisor teacher:<ckpt> or an LLM")
    settings = UltraSettings(
        env_id=args.env, seeds=args.seeds, seed=args.seed, pretrain_steps=args.pretrain_steps,
        refine_steps=args.refine_steps, refine_lr=args.refine_lr, chunks=args.chunks,
        variants=(BASELINE, *variants), advisor=advisor, model=args.model, noise=args.noise,
        advisor_latency_s=args.advisor_latency, advisor_concurrency=args.advisor_concurrency,
        advisor_priority=args.advisor_priority,
        episodes_per_round=args.episodes_per_round, capacity=args.capacity, restart_prob=args.restart_prob,
        reward_scale=args.reward_scale, kl_coef=args.kl_coef, match_radius=args.match_radius,
        kl_filter=args.kl_filter, verify_samples=args.verify_samples, sync_advice=args.sync_advice,
        consensus_radius=args.consensus_radius,
        mask_steps=int(args.mask_steps), rice_p=args.rice_p, rice_lambda=args.rice_lambda, jsrl_steps=args.jsrl_steps)
    settings.modulation()  # validates the ULTRA knobs, built the way the refinement builds them
    _enable_compile_cache()
    if args.replay:
        try:
            settings = UltraSettings.replay_of(Path(args.replay))
        except (FileNotFoundError, KeyError, TypeError, ValueError) as err:
            raise CLIError(f"cannot replay {args.replay}: {err}") from None
        advisor, args.noise, args.env, args.seeds = settings.advisor, 0.0, settings.env_id, settings.seeds
    out = Path(args.out or f"runs/ultra-{args.env.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "ultra.json").exists():
        raise CLIError(f"{out} already holds an ULTRA run; choose another --out")
    console = Console()
    console.print(f"[bold]jaxmod ultra[/] {args.env}: {args.seeds} seeds, variants {', '.join(settings.variants)}, "
                  f"advisor {advisor}{f' with {args.noise:.0%} noise' if args.noise else ''} -> {out}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("updates"),
                  TimeElapsedColumn(), console=console) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(variant: str, done: int, total: int) -> None:
            if variant not in tasks:
                tasks[variant] = progress.add_task(f"refine {METHODS[variant].label:16s}", total=total)
            progress.update(tasks[variant], completed=done)

        run = UltraRun(settings, out, log=lambda msg: progress.console.print(msg), progress=on_progress)
        results = run.run()
    table = Table(title=f"evaluation return after {settings.refine_steps:,} refinement steps per seed")
    for col in ("method", "start", "final mean", "final std", "wall s"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        final = np.array(r.eval_returns[-1])
        table.add_row(METHODS[name].label, f"{np.mean(r.eval_returns[0]):.1f}",
                      f"{final.mean():.1f}", f"{final.std():.1f}", f"{r.wall_s:.1f}")
    console.print(table)
    for st in run.advice_stats:
        console.print(f"advisor ({st['variant']}): {st['valid']} valid, {st['invalid']} invalid, {st['failed']} failed "
                      f"answers; advice overhead {st['advice_overhead_frac']:.1%} of refinement wall time")
    console.print(f"outputs: {out}/ultra.png, {out}/ultra.json, {out}/critical_states.md, {out}/transcript.jsonl")
    return 0


def cmd_serve_advisor(args: argparse.Namespace) -> int:
    from jaxmod.llm.server import BackendUnavailable, make_server

    answer_fn = None
    if args.backend == "teacher":
        if not args.teacher:
            raise CLIError("--backend teacher needs --teacher CHECKPOINT_DIR (a run's checkpoint/ folder)")
        from jaxmod.advice.teacher import TeacherBackend

        teacher = TeacherBackend(args.teacher)
        if not teacher.describer.invertible:
            raise CLIError(f"over HTTP the teacher sees only the prompt text, from which {teacher.env_id}'s observations "
                           f"cannot be rebuilt; use it in-process: jaxmod ultra --advisor teacher:{args.teacher}")

        def answer_fn(messages, schema, params):
            return teacher.answer(messages), {}
    try:
        server = make_server(args.backend, host=args.host, port=args.port, threads=args.threads, answer_fn=answer_fn)
    except BackendUnavailable as err:
        raise CLIError(str(err)) from None
    except OSError as err:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {err.strerror}; choose another --port") from None
    print(f"serving the {args.backend} advisor (model {server.model}) at {server.url} -- Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0


COMMANDS = {"train": cmd_train, "plot": cmd_plot, "serve-advisor": cmd_serve_advisor, "ultra": cmd_ultra}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user mistakes become one-line errors (set JAXMOD_DEBUG=1 for tracebacks)."""
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.envs import EnvError
    from jaxmod.llm.server import BackendUnavailable
    from jaxmod.ppo.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CLIError, BackendUnavailable, ConfigError, EnvError, ModulationError, FileNotFoundError) as err:
        if os.environ.get("JAXMOD_DEBUG"):
            raise
        print(f"jaxmod: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxmod: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
