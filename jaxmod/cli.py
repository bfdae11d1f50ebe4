"""`jaxmod` command line: the only module that prints for people.

    jaxmod train --env CartPole-v1 --seeds 8 --total-steps 5e5 --out runs/NAME [--<any PPO field>]
    jaxmod ultra --env CartPole-v1 --seeds 5 --variant A,R,RA --out runs/NAME [--<any knob>] [--<any PPO field>]
    jaxmod train|ultra --config runs/NAME/config.json --out runs/OTHER   # re-run a run (flags override it)
    jaxmod plot runs/NAME

Every flag of `train` and `ultra` is generated from the fields of their configs (`jaxmod.config.TrainConfig`,
`jaxmod.ultra.config.UltraConfig`, and `jaxmod.ppo.PPOConfig` for both), with the field's comment as its help and
the default shown (the PPO defaults are the preset of --env's family). Both commands write the whole config they
ran to config.json in their --out folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxmod.config import (
    CONFIG_FILE,
    Flag,
    TrainConfig,
    add_flags,
    flags_of,
    from_dict,
    given,
    orbax_pattern_in,
    parse_int,
    parse_json,
    read_config_file,
    set_path,
    show,
)

PPO_SKIP = frozenset({"env_id", "env_options", "total_timesteps"})  # given as --env, --env-option, --total-steps
DEFAULT_ENV = "CartPole-v1"


class CLIError(Exception):
    """A user mistake on the command line; printed as one line."""


def _print_table(console: Any, table: Any, note: str | None) -> None:
    """A rich table, then its note (few runs: no interval) as a line of its own: a caption would wrap at the
    table's width, mid-sentence, in a log. No cell is ever cut to "…" (a number lost): on a console too narrow for
    rich to show every cell whole, each row is printed as lines of "header: value" instead (a row begins "- ")."""
    if _cuts_cells(console, table):
        if table.title:
            console.print(table.title, soft_wrap=True, markup=False)
        headers = [str(c.header) for c in table.columns]
        for row in zip(*(list(c.cells) for c in table.columns), strict=False):  # as rich: rows every column has
            for i, (h, v) in enumerate(zip(headers, row, strict=True)):
                console.print(f"{'- ' if i == 0 else '  '}{h}: {v}", soft_wrap=True, markup=False)
    else:
        console.print(table)
    if note:
        console.print(note, soft_wrap=True, markup=False)


def _cuts_cells(console: Any, table: Any) -> bool:
    """Whether rich cuts a cell or header of `table` to "…" at `console`'s width (rendered once, on a probe console
    of that width: rich may cut words even where the longest words would fit side by side)."""
    import io

    from rich.console import Console

    probe = Console(width=console.width, file=io.StringIO(), color_system=None)
    probe.print(table)
    return "…" in probe.file.getvalue()


def _escape(text: str) -> str:
    """`text` shown as it is inside a rich-markup line (a path or an env id holding `[...]`)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _p(path: Any) -> str:
    """A path for a one-line message: as it is, or quoted (repr) when it holds a newline or another unprintable
    character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _one_line(text: str) -> str:
    """`text` with every unprintable character (a newline in a path, ...) escaped: an error message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _jaxmod_warnings_one_line() -> None:
    """Warnings jaxmod raises for the user (a generic describer for an env without one) print as one
    `jaxmod: warning:` line on stderr, not Python's two lines with a jaxmod source line; others as before."""
    import warnings

    from jaxmod.envs.describers import GenericDescriberWarning

    shown = warnings.showwarning
    if getattr(shown, "jaxmod_one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, GenericDescriberWarning):
            print(f"jaxmod: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.jaxmod_one_line = True
    warnings.showwarning = show


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (what is wrong, and where the help is), and no abbreviated flags
    (`--conf` taken for `--config` would be parsed but never read: flags are peeked at before parsing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- flags from the configs
def _env_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = parse_json(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value



def _ppo_flags() -> list[Flag]:
    from jaxmod.ppo.config import PPOConfig

    return [dataclasses.replace(fl, path=("ppo", *fl.path)) for fl in flags_of(PPOConfig, skip=PPO_SKIP)]


def _train_flags() -> list[Flag]:
    return flags_of(TrainConfig, skip=frozenset({"ppo"}))


def _ultra_flags() -> list[Flag]:
    from jaxmod.ultra.config import UltraConfig

    return UltraConfig.flags()


def _defaults(data: dict[str, Any], flags: list[Flag]) -> dict[str, Any]:
    """Each flag's default (by dest) in the nested config dict `data`."""
    out = {}
    for fl in flags:
        node: Any = data
        for k in fl.path:
            node = node.get(k) if isinstance(node, dict) else None
        out[fl.dest] = tuple(node) if isinstance(node, list) else node
    return out


def _peek(argv: Sequence[str], flag: str) -> str | None:
    """The value of `flag` in `argv` (before argparse runs: defaults depend on --env and --config)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _base(command: str, argv: Sequence[str]) -> dict[str, Any]:
    """The config a command starts from, as a nested dict: --config's file if given, else the defaults; with the
    PPO preset of --env's family when --env names another env than the file."""
    from jaxmod.ppo.config import default_config

    if "" in (_peek(argv, "--env"), _peek(argv, "--env-id")):
        raise CLIError("--env is empty: name an env id or leave the flag out")
    _check_aliases(argv)
    if path := _peek(argv, "--config"):
        data = read_config_file(path)
        if data.get("command", command) not in ("train", "ultra"):
            raise CLIError(f"{_p(path)} is not a jaxmod config (its \"command\" is {data['command']!r}, not train or "
                           "ultra)")
        if data.get("command", command) != command:
            raise CLIError(f"{_p(path)} is the config of a `jaxmod {data['command']}` run; use "
                           f"`jaxmod {data['command']} --config {_p(path)}`")
        if "ppo" not in data and command == "train" and "num_envs" in data:  # a train run of an earlier version
            data = {"ppo": data}
        data = {**data, "ppo": data.get("ppo", {})}  # a hand-written file may leave the PPO section out
        if not isinstance(data["ppo"], dict):
            raise CLIError(f"{_p(path)}: its \"ppo\" section must be an object of PPO fields (e.g. {{\"lr\": 3e-4}}), "
                           f"got {type(data['ppo']).__name__}")
        data = _with_defaults(command, data, path)
    else:
        from jaxmod.ultra.config import UltraConfig

        data = UltraConfig().to_dict() if command == "ultra" else TrainConfig().to_dict()
        data["ppo"]["env_id"] = None
    env = (_peek(argv, "--env") or _peek(argv, "--env-id") or data.get("env_id") or data["ppo"]["env_id"]
           or DEFAULT_ENV)
    if data["ppo"]["env_id"] != env:
        data["ppo"] = default_config(env).to_dict()
    data["ppo"]["env_id"] = env
    if command == "ultra":
        data["env_id"] = env
    data.pop("command", None)
    return data


def _check_aliases(argv: Sequence[str]) -> None:
    """A flag and its alias (--env / --env-id, --total-steps / --total-timesteps) given with different values are
    refused (argparse would keep the last one silently)."""
    for flag, alias, value_of in (("--env", "--env-id", str), ("--total-steps", "--total-timesteps", parse_int)):
        a, b = _peek(argv, flag), _peek(argv, alias)
        if a is None or b is None:
            continue
        try:
            same = value_of(a) == value_of(b)
        except (argparse.ArgumentTypeError, ValueError):
            same = a == b
        if not same:
            raise CLIError(f"{flag} {a} and its alias {alias} {b} disagree: give one of them")


def _with_defaults(command: str, data: dict[str, Any], path: str) -> dict[str, Any]:
    """A config file's settings over the defaults (a file may leave any key out), its types checked at once."""
    from jaxmod.config import from_dict
    from jaxmod.ppo.config import ConfigError, default_config
    from jaxmod.ultra.config import UltraConfig

    cls = UltraConfig if command == "ultra" else TrainConfig
    env = data.get("env_id") or data["ppo"].get("env_id") or DEFAULT_ENV
    if not isinstance(env, str):
        raise CLIError(f"{_p(path)}: env_id must be an env id string, got {env!r}")
    try:
        ppo = {**default_config(env).to_dict(), **data["ppo"]}
    except Exception as err:  # noqa: BLE001 (an unknown env id: its own one-line message)
        raise CLIError(f"{_p(path)}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    merged = {**cls().to_dict(), **data, "ppo": ppo}
    if command == "ultra":
        merged["env_id"] = env
    else:  # a train config names its env in "ppo"; a top-level env_id (as an ultra config has) went there above
        merged.pop("env_id", None)
    try:
        from_dict(cls, {k: v for k, v in merged.items() if k != "command"})
    except (ConfigError, ValueError, TypeError) as err:
        raise CLIError(f"{_p(path)}: {err}") from None
    return merged


def _add_config_flags(parser: argparse.ArgumentParser, base: dict[str, Any], own: list[Flag], title: str,
                      with_total_steps: bool, phase_notes: dict[str, str] | None = None) -> None:
    """`own` flags under `title`, then the env and PPO flags; `phase_notes` (PPO field -> note): which phase a PPO
    field affects where the command runs more than one (`ultra`), added to its help."""
    env = base["ppo"]["env_id"]
    add_flags(parser.add_argument_group(title), own, _defaults(base, own))
    phases = "; on ultra for pretraining and refinement unless a flag says otherwise" if phase_notes else ""
    env_group = parser.add_argument_group(f"env and PPO config (defaults: the preset for {env}; --env changes "
                                          f"them{phases})")
    env_group.add_argument("--env", "--env-id", dest="env", default=argparse.SUPPRESS,
                           help=f"env id: a gymnax id, brax/<name> or jaxmod/<name> (default: {env})")
    if with_total_steps:
        env_group.add_argument("--total-steps", "--total-timesteps", dest="total_timesteps", type=parse_int,
                               default=argparse.SUPPRESS, metavar="N", help="env steps per seed, e.g. 5e5 (default: "
                                                 f"{show(base['ppo']['total_timesteps'])})")
    env_group.add_argument("--env-option", action="append", type=_env_option, default=argparse.SUPPRESS,
                           metavar="KEY=VALUE", help="backend option, e.g. backend=spring or max_steps_in_episode=200 "
                                                     "(repeatable; default: "
                                                     f"{show(tuple(f'{k}={v}' for k, v in base['ppo']['env_options'].items()))})")
    notes = phase_notes or {}
    ppo_flags = [dataclasses.replace(fl, doc=f"{fl.doc}; {notes[fl.path[-1]]}") if fl.path[-1] in notes else fl
                 for fl in _ppo_flags()]
    add_flags(env_group, ppo_flags, _defaults(base, ppo_flags))


def _run_parser(sub: Any, command: str, text: str, default_out: str) -> argparse.ArgumentParser:
    """A run command's parser with the flags `train` and `ultra` share: `--config` and `--out`."""
    parser = sub.add_parser(command, help=text)
    parser.add_argument("--config", default=None, metavar="CONFIG_JSON",
                        help="start from a run's config.json (re-run it); other flags override it (default: none)")
    parser.add_argument("--out", default=None, help=f"run folder (default: {default_out})")
    parser.add_argument("--wandb", default=None, metavar="PROJECT",
                        help="also log to this Weights & Biases project (needs the `tracking` extra); TensorBoard "
                             "event files are always written to <out>/tb (default: off)")
    return parser


def _check_wandb(args: argparse.Namespace) -> None:
    """--wandb needs the optional wandb package: say so before anything runs."""
    from jaxmod.tracking import TrackingError, check_wandb

    if getattr(args, "wandb", None) == "":  # names no project: refused, not read as 'off' (as --out '')
        raise CLIError("--wandb is empty: name a Weights & Biases project or leave the flag out")
    try:
        check_wandb(getattr(args, "wandb", None))
    except TrackingError as err:
        raise CLIError(f"{err}, or leave --wandb out (TensorBoard event files are written to <out>/tb either "
                       "way)") from None


def _add_train(sub: Any, argv: Sequence[str]) -> None:
    base = _base("train", argv) if _command(argv) == "train" else _base_default("train")
    train = _run_parser(sub, "train", "train PPO on one env for many seeds in one jitted program", "runs/<env>-<time>")
    train.add_argument("--resume", action="store_true", help=f"{RESUME_HELP} (default: off)")
    train.add_argument("--max-chunks", type=parse_int, default=None, metavar="N",
                       help="stop (with a checkpoint) after N chunks in this invocation; continue with --resume "
                            "(default: all chunks)")
    train.add_argument("--quiet", action="store_true",
                       help="print only warnings, errors and the final table: no header, progress bar or paths "
                            "(default: off)")
    _add_distributed_flags(train)
    _add_config_flags(train, base, _train_flags(), "run", with_total_steps=True)


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Multi-host: the three settings of `jax.distributed.initialize` (`jaxmod.parallel.init_distributed`)."""
    group = parser.add_argument_group("multi-host (JAX's distributed runtime; give all three, or none)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0 and a free port, the same for every process (default: one process)")
    group.add_argument("--num-processes", type=parse_int, default=None, metavar="N",
                       help="processes in the run, one per host (default: one process)")
    group.add_argument("--process-id", type=parse_int, default=None, metavar="I",
                       help="this process's index in [0, N); process 0 writes the run's files (default: one process)")
    group.add_argument("--join-timeout", type=parse_int, default=300, metavar="SECONDS",
                       help="how long a process waits for the others at the coordinator (default: 300)")


def _add_ultra(sub: Any, argv: Sequence[str]) -> None:
    base = _base("ultra", argv) if _command(argv) == "ultra" else _base_default("ultra")
    ultra = _run_parser(sub, "ultra", "ULTRA: pretrain, ask the advisor, refine with A/R/RA vs continued PPO",
                        "runs/ultra-<env>-<time>")
    ultra.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (never appended to) (default: off)")
    ultra.add_argument("--replay", default=None, metavar="RUN_DIR",
                       help="re-run a finished run exactly: its config, its transcript as the advisor and its "
                            "advice swap schedule (other flags except --out, --overwrite, --quiet and --render are "
                            "ignored) (default: none)")
    ultra.add_argument("--llm-url", default=None, help="same as --advisor <url> (default: none)")
    ultra.add_argument("--quiet", action="store_true",
                       help="print only warnings, errors and the final table (default: off)")
    ultra.add_argument("--render", default=None, metavar="DIR",
                       help="write one episode of seed 0 as GIFs to DIR: pretrained.gif before refinement and "
                            "<method>.gif after each method (default: none)")
    _add_distributed_flags(ultra)
    flags = [fl for fl in _ultra_flags() if fl.flag != "--env"]
    from jaxmod.ultra.config import PRETRAIN_ONLY

    _add_config_flags(ultra, base, flags, "ULTRA config (jaxmod.ultra.UltraConfig)", with_total_steps=False,
                      phase_notes=PRETRAIN_ONLY)


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _base_default(command: str) -> dict[str, Any]:
    return _base(command, [])


def version() -> str:
    """The installed package's version (its metadata), else `jaxmod.__version__` (a source tree on the path)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("jaxmod")
    except PackageNotFoundError:
        import jaxmod

        return jaxmod.__version__


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; `argv` sets the defaults shown (the PPO preset of its --env, its --config)."""
    parser = Parser(prog="jaxmod", description="JAX-native LLM-guided RL (ULTRA) on a jitted PPO.")
    parser.add_argument("--version", action="version", version=f"jaxmod {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub, argv)

    serve = sub.add_parser("serve-advisor", help="serve an advisor behind a local OpenAI-compatible API")
    serve.add_argument("--backend", choices=("scripted", "smollm2", "teacher"), default="scripted",
                       help="scripted heuristics (not an LLM), the SmolLM2-135M LLM, or a teacher checkpoint "
                            "(default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=parse_int, default=8080, help="port to listen on (default: %(default)s)")
    serve.add_argument("--threads", type=parse_int, default=1,
                       help="CPU threads for the local LLM, at most this machine's cores (default: %(default)s)")
    serve.add_argument("--teacher", default=None,
                       help="the teacher policy (--backend teacher): a `jaxmod train --out` folder or its checkpoint/ "
                            "folder (default: none)")
    serve.add_argument("--model", default=None, metavar="NAME",
                       help="the model id the server reports in /v1/models and answers with, e.g. to stand in for "
                            "an LLM a command line names (default: the backend's: jaxmod-scripted, "
                            "SmolLM2-135M-Instruct or jaxmod-teacher)")

    _add_ultra(sub, argv)
    plot = sub.add_parser("plot", help="redraw the learning curve of a run folder")
    plot.add_argument("run", help="run folder with metrics.jsonl")
    ev = sub.add_parser("eval", help="evaluate a saved policy with plain resets: per seed, and IQM with a 95%% CI")
    ev.add_argument("run", help="a run folder with checkpoint/ (jaxmod train --out), or a checkpoint folder (its "
                                "newest update), or one update's folder in it (RUN/checkpoint/<update>)")
    ev.add_argument("--episodes", type=parse_int, default=32, metavar="N",
                    help=f"episodes per seed, at most {MAX_EPISODES:,} (default: %(default)s)")
    ev.add_argument("--deterministic", action="store_true",
                    help="the policy's mode action instead of samples (default: off)")
    ev.add_argument("--seed", type=parse_int, default=0, metavar="N", help="evaluation seed (default: %(default)s)")
    ev.add_argument("--render", default=None, metavar="OUT_GIF",
                    help="also write one episode of seed 0's policy (a plain reset; --deterministic applies) as an "
                         "animated GIF (default: none)")
    return parser


# --------------------------------------------------------------------------- configs from the flags
def _nested(args: argparse.Namespace, base: dict[str, Any], flags: list[Flag]) -> dict[str, Any]:
    """`base` (a nested config dict) with every value the user gave set at its field's path."""
    data = json.loads(json.dumps(base))  # a deep copy
    for path, value in given(args, flags + _ppo_flags()).items():
        set_path(data, path, list(value) if isinstance(value, tuple) else value)
    if hasattr(args, "env_option"):
        data["ppo"]["env_options"] = {**data["ppo"]["env_options"], **dict(args.env_option)}
    if hasattr(args, "total_timesteps"):
        data["ppo"]["total_timesteps"] = args.total_timesteps
    return data


def _make_env(ppo: Any, args: argparse.Namespace | None = None, config_file: Any = None) -> Any:
    """Build the env once: unknown ids and bad options fail here, before any compile, as one line naming where each
    option came from (--env-option, or the env_options of `config_file`: --config's, or the run's on --resume)."""
    from jaxmod.envs import EnvError, make_core
    from jaxmod.envs.core import EnvOptionError

    try:
        return make_core(ppo.env_id, **ppo.env_kwargs)
    except EnvOptionError as err:
        raise CLIError(f"{_options_source(ppo, args, config_file)}: {err}") from None
    except EnvError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise CLIError(f"{ppo.env_id} rejects {_options_source(ppo, args, config_file)}: {err} (give numbers as "
                       "numbers)") from None


def _options_source(ppo: Any, args: argparse.Namespace | None, config_file: Any) -> str:
    """The env options of `ppo` as the user gave them: `--env-option k=v` for flags, `env_options {...} in FILE` for
    those of a config file."""
    flagged = dict(getattr(args, "env_option", None) or [])
    opts = dict(ppo.env_options)
    parts = [f"--env-option {k}={v!r}" for k, v in opts.items() if k in flagged]
    rest = {k: v for k, v in opts.items() if k not in flagged}
    if rest:
        parts.append(f"env_options {json.dumps(rest)} in {_p(config_file)}" if config_file is not None else
                     ", ".join(f"--env-option {k}={v!r}" for k, v in rest.items()))
    return " and ".join(parts) or "its default options"


def _check_named(args: argparse.Namespace) -> None:
    """`--out ''` names nothing: refused, not read as 'the default' (`--env ''` is refused by `_base`)."""
    if args.out == "":
        raise CLIError("--out is empty: name a run folder or leave the flag out")


def _check_out(out: Path) -> None:
    """Refuse an --out that is empty, a file, a broken link, lies under a file, or cannot be written (before anything
    is compiled)."""
    try:
        if out.is_symlink() and not out.exists():
            raise CLIError(f"--out {str(out)!r} is a link to nothing ({os.readlink(out)!r}): choose a folder")
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {str(out)!r} is a file, not a folder: choose a folder")
        parent = out
        while not parent.exists():
            parent = parent.parent
    except OSError as err:  # a name too long for the file system, ...
        raise CLIError(f"--out {str(out)[:80]!r}...: {err.strerror}: choose a shorter or other folder name") from None
    if not parent.is_dir():
        raise CLIError(f"--out {str(out)!r} lies under the file {str(parent)!r}: choose a folder")
    if orbax_pattern_in(out):
        raise CLIError(f"--out {_p(out)}: a checkpoint saved under a path with [...] in a folder name cannot be "
                       "restored (orbax reads it as a pattern): choose a name without brackets")
    _refuse_inside_a_run(out)
    try:  # os.access says yes to root everywhere: try it (read-only file systems, /proc)
        tempfile.TemporaryDirectory(dir=parent, prefix=".jaxmod-probe-").cleanup()
    except OSError as err:
        raise CLIError(f"--out {_p(out)}: cannot write in {_p(parent)} ({err.strerror}): choose a folder you can write "
                       "to") from None


def _run_kind(folder: Path) -> str | None:
    """"train" or "ultra" when `folder` holds a jaxmod run (its config.json's command, or the files each writes)."""
    try:
        if (folder / CONFIG_FILE).is_file():
            recorded = parse_json((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            if isinstance(recorded, dict) and recorded.get("command") in ("train", "ultra"):
                return recorded["command"]
        if (folder / "metrics.jsonl").is_file():
            return "train"
        if (folder / "ultra.json").is_file():
            return "ultra"
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def _refuse_inside_a_run(out: Path) -> None:
    """A run folder never lies inside another run's folder: its files would mix with the other run's (a folder named
    by a number in `<run>/checkpoint` is taken for one of its checkpoints, and replaced or deleted by its saves)."""
    given = [p for p in out.parents if p != Path(".")]  # named as the user wrote them, then the absolute rest
    top = given[-1] if given else out
    for folder in [*given, *Path(os.path.abspath(top)).parents]:
        kind = _run_kind(folder)
        if kind is not None:
            raise CLIError(f"--out {_p(out)} lies inside the `jaxmod {kind}` run {_p(folder)}: choose a folder "
                           "outside it")


def _refuse_other_run(out: Path, command: str) -> None:
    """`train` and `ultra` never write into each other's run folders."""
    marks = {"train": ("metrics.jsonl", "checkpoint"), "ultra": ("ultra.json", "transcript.jsonl")}
    other = "ultra" if command == "train" else "train"
    recorded = None
    if (out / CONFIG_FILE).is_file():
        try:
            recorded = parse_json((out / CONFIG_FILE).read_text(encoding="utf-8")).get("command")
        except (ValueError, AttributeError, OSError):
            recorded = None
    if recorded == other or any((out / m).exists() for m in marks[other]):
        raise CLIError(f"{_p(out)} holds a `jaxmod {other}` run; choose another --out")


def _enable_compile_cache() -> None:
    """The persistent compile cache ($JAXMOD_CACHE_DIR, default ~/.cache/jaxmod/xla); entries that fail to load
    are replaced (`jaxmod.compile_cache`). A folder that cannot hold it (a file, under a file, not writable) is one
    warning line naming it, and the run goes on without the cache (it only saves compile time)."""
    from jaxmod import compile_cache

    given = os.environ.get("JAXMOD_CACHE_DIR")
    compile_cache.enable(given or str(Path.home() / ".cache" / "jaxmod" / "xla"),
                         name="JAXMOD_CACHE_DIR" if given else "the compile cache folder",
                         warn=lambda text: print(f"jaxmod: warning: {_one_line(text)}", file=sys.stderr, flush=True))


# --------------------------------------------------------------------------- jaxmod train
def _train_config(args: argparse.Namespace, argv: Sequence[str]) -> TrainConfig:
    return from_dict(TrainConfig, _nested(args, _base("train", argv), _train_flags()))


@dataclasses.dataclass
class _TrainRun:
    """What the training loop of `jaxmod train` reads and updates."""

    config: TrainConfig
    out: Path
    runner: Any  # the MultiSeed learner (built once, outside any trace: some envs build with concrete arrays)
    state: Any
    done: int
    compile_s: float = 0.0
    run_s: float = 0.0
    steps_run: int = 0


def _train_setup(args: argparse.Namespace, argv: Sequence[str]) -> _TrainRun:
    """Check everything, then resume or start: the config, the run folder and the initial state."""
    from jaxmod.parallel import (
        MultiSeed,
        check_distributed,
        check_layout,
        gather,
        init_distributed,
        is_primary,
        seed_keys,
        settings_digest,
    )
    from jaxmod.reporting import METRICS_FILE

    config = _train_config(args, argv)
    _check_wandb(args)
    check_distributed(args.coordinator, args.num_processes, args.process_id)  # one line, before waiting for peers
    if args.join_timeout < 1:
        raise CLIError(f"--join-timeout must be >= 1 seconds, got {args.join_timeout}")
    if args.max_chunks is not None and args.max_chunks < 1:
        raise CLIError("--max-chunks must be >= 1 (leave it out to run to the end)")
    _check_named(args)
    out = Path(args.out or f"runs/{config.ppo.env_id.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out(out)
    _refuse_other_run(out, "train")
    if (out / "checkpoint").exists() and not (out / "checkpoint").is_dir():
        raise CLIError(f"{_p(out / 'checkpoint')} is a file, not a checkpoint folder: move it away or choose another "
                       "--out")
    if args.resume:
        config = _resume_config(args, out)
    elif (out / METRICS_FILE).exists() or (out / "checkpoint").exists():
        raise CLIError(f"{_p(out)} already holds a run; pass --resume to continue it or choose another --out")
    init_distributed(args.coordinator, args.num_processes, args.process_id, args.join_timeout,  # before any device use
                     settings=settings_digest(config.to_dict()))
    import jax

    check_layout(config.seeds, config.ppo.num_envs, config.env_shards, jax.device_count())
    _make_env(config.ppo, args, out / CONFIG_FILE if args.resume else args.config)
    _enable_compile_cache()
    ckpt, rows = _resume_point(out, config) if args.resume else (None, None)
    runner = MultiSeed(config.ppo, config.seeds, env_shards=config.env_shards)  # built before anything is written
    state = runner.place(ckpt.state) if ckpt is not None else runner.init(seed_keys(config.seed, config.seeds))
    import numpy as np

    done = int(np.asarray(gather(state.update_step)).reshape(-1)[0])
    if is_primary():  # process 0 writes the run's files (every process of a multi-host run computes)
        out.mkdir(parents=True, exist_ok=True)
        from jaxmod.reporting import write_atomically

        write_atomically(out / CONFIG_FILE, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")  # resume
        if rows or (out / METRICS_FILE).exists():  # drop metrics written after the checkpoint was taken
            write_atomically(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows or []))
    return _TrainRun(config, out, runner, state, done)


def _resume_point(out: Path, config: TrainConfig) -> tuple[Any, list[dict[str, Any]] | None]:
    """--resume: the newest intact checkpoint of the run in `out` (None: it stopped before its first one) and the
    metrics rows it keeps (`_resumed_metrics`), both checked before anything is written; a note says where it
    resumes."""
    import numpy as np

    from jaxmod.parallel import is_primary
    from jaxmod.reporting import METRICS_FILE

    ckpt = _restore(out / "checkpoint", None)
    saved = 0 if ckpt is None else int(np.asarray(ckpt.state.update_step).reshape(-1)[0])
    rows = _resumed_metrics(out / METRICS_FILE, saved, config) if is_primary() else None  # process 0's files
    if ckpt is None:  # stopped before its first checkpoint was complete: nothing to lose
        print(f"note: {_p(out)} stopped before its first checkpoint was complete: starting it again from update 0 with "
              f"every setting from its {CONFIG_FILE}", file=sys.stderr)
        return None, rows
    if ckpt.num_seeds != config.seeds or ckpt.config != config.ppo:
        raise CLIError(f"the checkpoint in {_p(out / 'checkpoint')} is not of the run in {_p(out / CONFIG_FILE)} "
                       f"({ckpt.num_seeds} seed(s) of {ckpt.config.env_id}): resume the folder it came from")
    print(f"note: resuming {_p(out)} from update {saved} with every setting from its {CONFIG_FILE}", file=sys.stderr)
    return ckpt, rows


def _progress_columns() -> list:
    """The train command's progress bar: description, bar, updates done of all, elapsed and remaining time."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("updates"), TimeElapsedColumn(), TimeRemainingColumn()]


def _save_train_checkpoint(run: _TrainRun, primary: bool) -> None:
    """Checkpoint the run's state (gathered from every process of a multi-host run; process 0 writes)."""
    from jaxmod.checkpoint import save_checkpoint
    from jaxmod.parallel import gather

    host = gather(run.state)
    if primary:
        cfg = run.config
        save_checkpoint(run.out / "checkpoint", host, cfg.ppo, num_seeds=cfg.seeds, meta={"updates_done": run.done},
                        keep=cfg.keep_checkpoints)


def _train_loop(run: _TrainRun, args: argparse.Namespace, console: Any) -> None:
    """Train in chunks with a progress bar, appending metrics and saving checkpoints; stops (`NonFiniteError`) at the
    first chunk with a non-finite loss, return or parameter."""
    import jax
    import numpy as np
    from rich.progress import Progress

    from jaxmod.parallel import barrier, is_primary
    from jaxmod.reporting import METRICS_FILE, PARAMS_FINITE, append_metrics, check_finite
    from jaxmod.tracking import Tracker

    cfg, ppo = run.config, run.config.ppo
    runner, total = run.runner, ppo.num_updates
    chunk = max(1, math.ceil(total / cfg.chunks))
    steps_per_update = ppo.batch_size * cfg.seeds
    compiled: dict[int, Any] = {}
    chunks_done = 0
    primary = is_primary()
    with Progress(*_progress_columns(), console=console, disable=args.quiet, transient=False) as progress, \
            (Tracker(run.out, cfg.to_dict(), args.wandb, fresh=not args.resume,
                     purge_step=(run.done + 1) * ppo.batch_size if args.resume else None, quiet=args.quiet)
             if primary else contextlib.nullcontext()) as tracker:
        task = progress.add_task("compiling", total=total, completed=run.done)
        if primary:
            tracker.start()  # --wandb that cannot start: one line now, before compiling
        while run.done < total and (args.max_chunks is None or chunks_done < args.max_chunks):
            n = min(chunk, total - run.done)
            if n not in compiled:
                progress.update(task, description=f"compiling ({n}-update chunk)")
                t0 = time.perf_counter()
                compiled[n] = runner.runner(n).lower(run.state).compile()
                barrier("chunk")  # a multi-host run: every process has compiled it (parallel.run_synced)
                run.compile_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            run.state, metrics = compiled[n](run.state)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            check_finite({**metrics, PARAMS_FINITE: runner.params_finite(run.state)}, "PPO training",
                         f"chunk {chunks_done + 1} (updates {run.done + 1}-{run.done + n} of {total})",
                         f"the run stops before writing this chunk (a checkpoint saved before it is finite); a smaller --lr "
                         f"(now {ppo.lr:g}) may help")
            run.run_s += dt
            if primary:  # process 0 writes (the metrics are replicated on every process)
                append_metrics(run.out / METRICS_FILE, metrics, run.done)
                tracker.ppo_metrics(metrics, np.asarray(metrics["env_steps"])[0])
            run.done += n
            run.steps_run += n * steps_per_update
            chunks_done += 1
            progress.update(task, advance=n, description=(
                f"return {float(np.mean(metrics['episode_return'][:, -1])):8.2f} | "
                f"{n * steps_per_update / dt / 1e3:9.1f}k steps/s"))
            if chunks_done % cfg.checkpoint_every == 0 or run.done >= total or chunks_done == args.max_chunks:
                _save_train_checkpoint(run, primary)


def _warn_unfinished_episodes(data: dict[str, Any], ppo: Any) -> None:
    """A warning line where the training return is not a score: an env whose episodes never ended counts 0 (the
    return of its last completed episode, none). `data`: `read_metrics` arrays ([updates, seeds])."""
    if "episodes" not in data:
        return
    ended = data["episodes"].sum(axis=0)  # [seeds] episodes that ended, over the updates in the metrics
    if (ended == 0).all():
        print(f"jaxmod: warning: no episode ended in {ppo.num_updates * ppo.batch_size:,} steps per seed ({ppo.num_envs} envs): "
              f"the training return 0 is no score; {ppo.env_id}'s episodes outlast the run, give more "
              "--total-timesteps (or fewer --num-envs)", file=sys.stderr)
    elif (ended < ppo.num_envs).any():
        print(f"jaxmod: warning: fewer episodes ended than there are envs ({int(ended.min())} in a seed, "
              f"{ppo.num_envs} envs): envs whose episodes never ended count 0 in the training return; give more "
              "--total-timesteps for a score", file=sys.stderr)


def cmd_train(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from rich.console import Console
    from rich.table import Table

    from jaxmod.parallel import is_primary
    from jaxmod.reporting import METRICS_FILE, metrics_rows, plot_curves, read_metrics, seed_summary
    from jaxmod.stats import few_runs_note

    run = _train_setup(args, argv)
    ppo, seeds, out = run.config.ppo, run.config.seeds, run.out
    console = Console(stderr=False, quiet=not is_primary())  # a multi-host run: process 0 reports
    if not args.quiet:
        ran = ppo.num_updates * ppo.batch_size  # whole updates: the steps that run
        asked = f" (of {ppo.total_timesteps:,} asked: whole updates)" if ran != ppo.total_timesteps else ""
        console.print(f"[bold]jaxmod train[/] {_escape(ppo.env_id)}: {seeds} seed(s) x {ran:,} steps{asked} "
                      f"({ppo.num_updates} updates of {ppo.num_envs} envs x {ppo.num_steps} steps) on "
                      f"{run.runner.describe()} -> {_escape(_p(out))}", soft_wrap=True)
    _train_loop(run, args, console)
    if not is_primary():
        return 0
    if not (out / METRICS_FILE).is_file() or not metrics_rows(out / METRICS_FILE)[0]:  # a resume with all lost
        print(f"note: {_p(out / METRICS_FILE)} holds no metrics (lost before the resume): no curve or table",
              file=sys.stderr)
        return 0
    data = read_metrics(out / METRICS_FILE)
    png = plot_curves([(ppo.env_id, data["env_steps"][:, 0], data["episode_return"])], out / "curve.png",
                      title=f"PPO on {ppo.env_id}")
    final = seed_summary(data["episode_return"][-1])  # each seed's training return at the last update
    _warn_unfinished_episodes(data, ppo)
    table = Table(title=f"result: PPO on {ppo.env_id}, training return at the last update over {seeds} seed"
                        f"{'s' if seeds > 1 else ''}")
    for col in ("final return IQM [95% CI]", "mean (std)", "compile s", "run s", "env steps/s"):
        table.add_column(col)
    sps = f"{run.steps_run / run.run_s:,.0f}" if run.run_s > 0 else "-"
    mean, std = final.cell(".2f")
    table.add_row(final.iqm_cell(".2f"), mean if final.mean is None else f"{mean} ({std})",
                  f"{run.compile_s:.1f}", f"{run.run_s:.1f}", sps)
    _print_table(console, table, few_runs_note(seeds))
    if not args.quiet:
        console.print(f"metrics: {_p(out / METRICS_FILE)}\ncheckpoint: {_p(out / 'checkpoint')}\ncurve: {png}\n"
                      f"config: {_p(out / CONFIG_FILE)}", soft_wrap=True, markup=False)
    return 0


def _restore(where: Path, missing_hint: str | None, step: int | None = None):
    """`load_checkpoint(where)` (`step`: that update's only), its failures as one line: a missing checkpoint (with
    `missing_hint`; None: return None instead), or a damaged one (naming the file); a damaged newest checkpoint
    falling back to an earlier one is a warning line."""
    from jaxmod.checkpoint import CheckpointError, load_checkpoint
    from jaxmod.envs import EnvError

    try:
        return load_checkpoint(where, warn=lambda text: print(f"jaxmod: warning: {_one_line(text)}", file=sys.stderr),
                               step=step)
    except EnvError:  # the run's env cannot be made here (e.g. its module:EnvId module is not on the path): not damage
        raise
    except FileNotFoundError as err:
        if missing_hint is None:
            return None
        raise CLIError(f"{err}: {missing_hint}") from None
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    except Exception as err:  # noqa: BLE001
        raise CLIError(f"the checkpoint in {_p(where)} is damaged and cannot be restored "
                       f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})") from None


def _resumed_metrics(path: Path, updates_done: int, config: TrainConfig) -> list[dict[str, Any]] | None:
    """The metrics rows a resumed run keeps: those up to the checkpoint's update (a killed run may have written more,
    or cut its last line mid-write: repaired, with a note); None when there is neither a metrics file nor a
    checkpoint. A damaged file, or rows past the first checkpoint with no checkpoint left (the folder deleted or
    moved: starting again from update 0 would drop them), are one-line errors; updates missing before the
    checkpoint's (the file deleted or cut) are a note (the curve has a gap there)."""
    from jaxmod.reporting import metrics_rows

    if not path.exists() and updates_done == 0:
        return None
    try:
        rows, cut = metrics_rows(path) if path.exists() else ([], False)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or isinstance(r.get("update"), bool)
                    or not isinstance(r.get("update"), int)), None)
        if bad is not None:
            raise ValueError(f"{_p(path)}, line {bad + 1}: not a metrics row (a JSON object with an integer "
                             "\"update\")")
    except (OSError, ValueError) as err:
        raise CLIError(f"{err}; move it away to resume without the earlier metrics") from None
    last = max((r["update"] for r in rows), default=0)
    chunk = max(1, math.ceil(config.ppo.num_updates / config.chunks))
    first_save = min(config.ppo.num_updates, chunk * config.checkpoint_every)
    if updates_done == 0 and last > first_save:
        raise CLIError(f"{_p(path)} holds metrics up to update {last}, but {_p(path.parent / 'checkpoint')} holds no "
                       f"checkpoint (one was saved by update {first_save}): put the checkpoint folder back, or start "
                       "a new run with another --out")
    if cut:
        _cut_note(path)
    kept = [r for r in rows if r["update"] <= updates_done]
    missing = sorted(set(range(1, updates_done + 1)) - {r["update"] for r in kept})
    if missing:
        print(f"note: {_p(path)} lacks the metrics of {len(missing)} update(s) up to the checkpoint's (first missing: "
              f"{missing[0]}, last: {missing[-1]}): the curve has a gap there", file=sys.stderr)
    return kept


def _cut_note(path: Path) -> None:
    print(f"note: {_p(path)}'s last line was cut mid-write (the run was killed while writing it); dropped",
          file=sys.stderr)


RESUME_HELP = ("continue the run in --out from its newest intact checkpoint, with every setting from its "
               "config.json: flags that shape the run (--seeds, --seed, --chunks, --total-steps, --env, --env-option, "
               "any PPO flag, ...) may be left out, and one given with another value than the run's is refused "
               "(only --max-chunks, --quiet and --wandb may change)")


def _resume_config(args: argparse.Namespace, out: Path) -> TrainConfig:
    """The config `--resume` continues with: the run's own config.json. A flag given with another value than the
    run's is refused in one line naming the flag and both values (`RESUME_HELP`)."""
    from jaxmod.checkpoint import CheckpointError, read_meta
    from jaxmod.config import ConfigError

    if args.config:
        raise CLIError(f"--resume takes every setting from {_p(out / CONFIG_FILE)}; leave --config out")
    if not (out / CONFIG_FILE).is_file():
        raise CLIError(f"nothing to resume in {_p(out)} (no {CONFIG_FILE}): start the run without --resume")
    try:
        data = read_config_file(out / CONFIG_FILE)
        data.pop("command", None)
        if "ppo" not in data and "num_envs" in data:  # a train run of an earlier version: seeds in its checkpoint
            data = {"ppo": data, "seeds": read_meta(out / "checkpoint")["num_seeds"] or 1}
        saved = from_dict(TrainConfig, data)
    except (ConfigError, CheckpointError, FileNotFoundError, KeyError, TypeError) as err:
        raise CLIError(f"cannot resume {_p(out)}: {err}") from None
    saved_dict = saved.to_dict()
    asked = _nested(args, saved_dict, _train_flags())
    changed = []
    if asked.get("env_shards") != saved_dict.get("env_shards"):  # a layout, not a setting: the same learning up to
        saved = dataclasses.replace(saved, env_shards=asked["env_shards"])  # float rounding (resume on other devices)
        saved_dict = saved.to_dict()
    for fl in _train_flags() + _ppo_flags():
        if hasattr(args, fl.dest):
            was, now = _at(saved_dict, fl.path), _at(asked, fl.path)
            if was != now:
                changed.append(f"{fl.flag} {_text(now)} (the run has {_text(was)})")
    for flag, key, value in (("--env", "env_id", getattr(args, "env", None)),
                             ("--total-steps", "total_timesteps", getattr(args, "total_timesteps", None)),
                             ("--env-option", "env_options", asked["ppo"]["env_options"])):
        if value is not None and value != saved_dict["ppo"][key]:
            changed.append(f"{flag} {_text(value)} (the run has {_text(saved_dict['ppo'][key])})")
    if changed:
        raise CLIError(f"--resume continues {_p(out)} as it was configured, but {'; '.join(changed)}: drop those flags "
                       "(the run's values are used), or start a new run with another --out")
    return saved


def _at(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        data = data.get(k) if isinstance(data, dict) else None
    return data


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    return show(tuple(value) if isinstance(value, list) else value)


def cmd_plot(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from jaxmod.reporting import METRICS_FILE, plot_curves

    run = Path(args.run)
    if not (run / METRICS_FILE).is_file():
        if (run / "ultra.json").is_file():
            raise CLIError(f"{_p(run)} is a `jaxmod ultra` run: its plot is {_p(run / 'ultra.png')} (drawn by the run "
                           f"from {_p(run / 'ultra.json')}); `jaxmod plot` redraws a `jaxmod train` run's curve")
        raise CLIError(f"no {METRICS_FILE} in {_p(run)}: pass a `jaxmod train --out` folder")
    config: Any = {}
    if (run / CONFIG_FILE).exists():
        try:
            config = parse_json((run / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise CLIError(f"cannot read {_p(run / CONFIG_FILE)}: {err}") from None
    node = config.get("ppo", config) if isinstance(config, dict) else {}  # nested since TrainConfig, flat before
    env_id = node.get("env_id", run.name) if isinstance(node, dict) else run.name
    steps, returns = _curve(run / METRICS_FILE)
    try:
        png = plot_curves([(env_id, steps, returns)], run / "curve.png", title=f"PPO on {env_id}")
    except OSError as err:  # curve.png a folder, the run folder read-only, ...
        raise CLIError(f"cannot write {_p(run / 'curve.png')}: {err.strerror or type(err).__name__}") from None
    print(_p(png))
    return 0


def _curve(path: Path) -> tuple[Any, Any]:
    """A metrics file's curve: env steps [T] (seed 0's) and episode returns [T, S]; a last line cut mid-write is
    dropped with the note --resume gives; any other damage is one line."""
    from jaxmod.reporting import metrics_rows, read_metrics

    try:
        _, cut = metrics_rows(path)
        data = read_metrics(path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CLIError(f"cannot plot {_p(path.parent)}: {err}") from None
    if cut:
        _cut_note(path)
    steps, returns = data.get("env_steps"), data.get("episode_return")
    if steps is None or returns is None or steps.ndim != 2 or returns.ndim != 2 or not steps.shape[1]:
        raise CLIError(f"cannot plot {_p(path.parent)}: the rows of {_p(path)} need env_steps and episode_return "
                       "as lists of one value per seed (the rows `jaxmod train` writes)")
    return steps[:, 0], returns


# --------------------------------------------------------------------------- jaxmod ultra
def _ultra_config(args: argparse.Namespace, argv: Sequence[str]):
    """The run's `UltraConfig`: --replay's, or --config's / the defaults with the flags given; the advisor
    resolved (--llm-url, --advisor, ADVISOR_BASE_URL / OPENAI_BASE_URL, else scripted)."""
    from jaxmod.llm import advisor_spec
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import BASELINE

    if args.replay:
        try:
            return UltraConfig.replay_of(Path(args.replay))
        except (FileNotFoundError, KeyError, TypeError, ValueError, RecursionError) as err:
            raise CLIError(f"cannot replay {_p(args.replay)}: {err}; pass the folder of a finished `jaxmod ultra --out "
                           "DIR` run") from None
    data = _nested(args, _base("ultra", argv), _ultra_flags())
    if hasattr(args, "variant") and not args.variant:
        raise CLIError("--variant is empty: no variant given; name the methods to run, e.g. --variant A,R,RA (PPO "
                       "fine-tuning always runs as the reference)")
    if hasattr(args, "variant"):  # continued PPO always runs first, as the reference
        data["variants"] = [BASELINE, *(v for v in args.variant if v != BASELINE)]
    data["advisor"]["spec"] = advisor_spec(getattr(args, "advisor", None) or data["advisor"]["spec"], args.llm_url)
    return UltraConfig.from_dict(data)


def _check_advisor(config, quiet: bool = False):
    """Fail before pretraining when the advisor cannot work: the local LLM missing, no scripted heuristic for the
    env, or an HTTP advisor that is not there, rejects the key or does not serve the model (preflight). Returns
    the config with the model the server will be asked for."""
    from jaxmod.methods import METHODS

    spec = config.advisor.spec
    if not config.needs_advisor:
        return config
    if spec == "smollm2":
        from jaxmod.llm.server import require_smollm2

        require_smollm2()  # BackendUnavailable: one line with the install command
    if spec == "scripted":
        from jaxmod.llm.scripted import ScriptedBackend

        if not ScriptedBackend().supports(config.env_id):
            advised = ", ".join(v for v in config.variants if METHODS[v].critical == "advisor")
            raise CLIError(f"the scripted advisor has no heuristic for {config.env_id} (needed by {advised}); use "
                           "--advisor teacher:<run> (a `jaxmod train --out` folder or its checkpoint/), an LLM URL, "
                           "or only baselines (--variant RICE,JSRL,...)")
    if config.advisor.is_http:
        config = _preflight_http(config, quiet)
    return config


def _preflight_http(config, quiet: bool):
    """Preflight every advisor URL. One that fails among several is a warning, and the run leaves it out (its
    questions go to the others: the returned config's `--advisor` and `--advisor-concurrency` list the usable ones
    only); when the only one fails, its one-line `AdvisorUnavailable` stops the run, and when all of several fail,
    one line naming each. Returns the config with the usable URLs and the model the servers serve (unset where
    they serve different ones: each finds its own)."""
    from jaxmod.llm import AdvisorUnavailable, preflight

    advisor = config.advisor
    urls, live, down = advisor.urls(), [], []
    limits = advisor.limits(len(urls))
    for i, url in enumerate(urls):
        settings = advisor.client_settings(base_url=url, model=advisor.model)
        try:
            live.append((i, preflight(settings, timeout_s=min(20.0, settings.timeout_s))))
        except AdvisorUnavailable as err:
            if len(urls) == 1:
                raise
            down.append((i, err))
    if not live:
        raise AdvisorUnavailable(f"none of the {len(urls)} advisor endpoints is usable: "
                                 + "; ".join(f"endpoint {i + 1}: {err}" for i, err in down))
    for i, err in down:
        print(f"jaxmod: warning: advisor endpoint {i + 1} of {len(urls)} is unusable ({err}); this run leaves it "
              "out and asks the others", file=sys.stderr, flush=True)
    if not quiet:
        for _, result in live:
            print(result.describe(), flush=True)
    models = {result.model for _, result in live}
    model = next(iter(models)) if len(models) == 1 else advisor.model
    kept = {"spec": ",".join(urls[i] for i, _ in live)} if down else {}
    if down and len(advisor.concurrency) > 1:
        kept["concurrency"] = tuple(limits[i] for i, _ in live)
    return dataclasses.replace(config, advisor=dataclasses.replace(advisor, model=model, **kept))


def _ultra_out(args: argparse.Namespace, config) -> Path:
    """The run folder: checked, and refused when it holds a run (unless --overwrite) or a `train` run."""
    _check_named(args)
    out = Path(args.out or f"runs/ultra-{config.env_id.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out(out)
    _refuse_other_run(out, "ultra")
    if not args.overwrite and any((out / m).exists() for m in ("ultra.json", "transcript.jsonl", CONFIG_FILE)):
        raise CLIError(f"{_p(out)} already holds an ULTRA run (a new run never appends to one); choose another --out "
                       "or pass --overwrite")
    if args.replay and Path(args.replay).resolve() == out.resolve():
        raise CLIError("--out must differ from the --replay run folder (its transcript is the advisor)")
    return out


def _ultra_layout(config) -> str:
    """Where the run's seeds go (`jaxmod.parallel.SeedPrograms`), in words for the header; a layout that does not
    fit the devices (--env-shards) is one line (`ConfigError`) before anything runs."""
    import jax

    from jaxmod.parallel import SeedPrograms, check_layout

    check_layout(config.seeds, config.ppo.num_envs, config.env_shards, jax.device_count())
    return SeedPrograms(config.seeds, env_shards=config.env_shards, num_envs=config.ppo.num_envs).describe()


def cmd_ultra(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from jaxmod.llm import redact_url
    from jaxmod.methods import METHODS

    config, out, layout, primary = _ultra_setup(args, argv)
    from jaxmod.ultra.pipeline import UltraRun

    _enable_compile_cache()
    a = config.advisor
    console = Console(quiet=not primary)  # a multi-process run: process 0 reports
    if not args.quiet:
        console.print(f"[bold]jaxmod ultra[/] {_escape(config.env_id)}: {config.seeds} seeds on {layout}, variants "
                      f"{', '.join(config.variants)}, advisor {_escape(str(redact_url(a.spec)))}"
                      f"{f' with {a.noise:.0%} noise' if a.noise else ''} -> {_escape(_p(out))}", soft_wrap=True)
    from jaxmod.tracking import Tracker

    quiet = args.quiet or not primary
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("updates"),
                  TimeElapsedColumn(), console=console, disable=quiet) as progress, \
            (Tracker(out, config.to_dict(), getattr(args, "wandb", None), quiet=args.quiet) if primary
             else contextlib.nullcontext()) as tracker:
        tasks: dict[str, Any] = {}

        def on_progress(variant: str, done: int, total: int) -> None:
            if variant not in tasks:
                tasks[variant] = progress.add_task(f"refine {METHODS[variant].label:16s}", total=total)
            progress.update(tasks[variant], completed=done)

        def say(msg: str) -> None:
            progress.console.print(msg, markup=False, soft_wrap=True)

        def warn(msg: str) -> None:
            if not primary:
                return
            if args.quiet:
                print(f"jaxmod: warning: {_one_line(msg)}", file=sys.stderr, flush=True)
            else:
                say(msg)

        run = UltraRun(config, out, log=(lambda _: None) if quiet else say, progress=on_progress,
                       overwrite=args.overwrite, tracker=tracker, warn=warn,
                       render_dir=Path(args.render) if args.render else None)
        if tracker is not None:
            tracker.start()  # --wandb that cannot start: one line now, before pretraining
        results = run.run()
    if primary:
        _print_ultra_results(console, config, run, results, out, args.quiet)
    return 0


def _ultra_setup(args: argparse.Namespace, argv: Sequence[str]) -> tuple[Any, Path, str, bool]:
    """Check everything before anything runs (one line each): the config, the run folder, the multi-process flags
    (then joins the other processes), the layout, the env, --render and the advisor. Returns the config (the
    advisor's model resolved), the run folder, where the seeds run (in words) and whether this process writes the
    run's files."""
    from jaxmod.methods import METHODS

    config = _ultra_config(args, argv)
    _check_wandb(args)
    out = _ultra_out(args, config)
    primary = _ultra_distributed(args, config)  # joins the other processes (a multi-process run) before any device use
    layout = _ultra_layout(config)
    if args.render:
        from jaxmod.render import headless_gl

        headless_gl()  # before brax imports mujoco
    # an unknown env id is named as such, before the advisor is asked whether it knows it
    core = _make_env(config.ppo, args, args.config or (Path(args.replay) / CONFIG_FILE if args.replay else None))
    config.check_advisor_files()  # a teacher checkpoint or transcript that is not there: one line before the banner
    if args.render:
        from jaxmod.render import check_render, check_render_dir

        check_render(core, check_render_dir(args.render, args.overwrite, list(METHODS)) / "pretrained.gif")
    failure = None
    if primary or not config.advisor.is_http:  # process 0 alone asks an HTTP advisor
        try:
            config = _check_advisor(config, quiet=args.quiet)
        except Exception as err:  # noqa: BLE001 (raised below, after the other processes are told)
            failure = err
    _agree_to_start(failure is not None, primary)
    if failure is not None:
        from jaxmod.llm import AdvisorUnavailable

        var = _url_variable(args)
        if isinstance(failure, AdvisorUnavailable) and var:
            raise AdvisorUnavailable(f"{failure} (the URL is ${var}'s: fix or unset it, or pass --advisor)") from None
        raise failure
    return config, out, layout, primary


def _url_variable(args: argparse.Namespace) -> str | None:
    """The environment variable the advisor's URL came from (ADVISOR_BASE_URL, OPENAI_BASE_URL, ...), None where a
    flag or --config named the advisor."""
    from jaxmod.llm.endpoint import URL_VARS

    if getattr(args, "advisor", None) or getattr(args, "llm_url", None) or getattr(args, "config", None):
        return None
    return next((v for v in URL_VARS if os.environ.get(v, "").strip()), None)


def _agree_to_start(stop: bool, primary: bool) -> None:
    """A multi-process run: every process learns whether process 0's checks (its advisor's preflight) stopped the
    run, so none waits for it at the first collective for good; the others then stop with one line (exit 2).
    Nothing in one process."""
    import jax

    if jax.process_count() == 1:
        return
    import numpy as np

    from jaxmod.parallel import broadcast_from_primary

    verdict = broadcast_from_primary(np.array([int(stop)], np.uint8), name="ultra-setup")
    if verdict[0] and not primary and not stop:
        raise CLIError("process 0 stopped the run before pretraining (its advisor check failed: process 0's output "
                       "says why)")


def _ultra_distributed(args: argparse.Namespace, config) -> bool:
    """A multi-process `jaxmod ultra` (--coordinator/--num-processes/--process-id, as `train`'s): the flags and their
    combination checked (one line), then joined (`jaxmod.parallel.init_distributed`). Returns whether this process
    writes the run's files (process 0; always, in one process)."""
    from jaxmod.parallel import check_distributed, init_distributed, is_primary, settings_digest

    if not check_distributed(args.coordinator, args.num_processes, args.process_id):
        return True
    if args.join_timeout < 1:
        raise CLIError(f"--join-timeout must be >= 1 seconds, got {args.join_timeout}")
    if args.render:
        raise CLIError("--render draws one process's agent: leave it out of a multi-process run (render a "
                       "single-process run of the same config)")
    init_distributed(args.coordinator, args.num_processes, args.process_id, args.join_timeout,
                     settings=settings_digest(config.to_dict()))
    return is_primary()


def _advice_mark(valid: int | None, seeds: int) -> str:
    """The results table's advice column: '-' for methods without an advisor; variants that ran on no advice, or on
    less than one valid answer per seed, are marked so."""
    if valid is None:
        return "-"
    if valid == 0:
        return "0 (NO ADVICE)"
    return f"{valid} (little advice)" if valid < seeds else str(valid)


def _print_ultra_results(console: Any, config: Any, run: Any, results: dict[str, Any], out: Path,
                         quiet: bool = False) -> None:
    from rich.table import Table

    from jaxmod.methods import METHODS
    from jaxmod.reporting import WIN_RATE_ENVS, gain_summary, seed_summary, win_rate
    from jaxmod.stats import few_runs_note

    rate = config.env_id in WIN_RATE_ENVS  # one-point games: the win rate, as ultra.png's axis (2 decimals)
    unit, fmt = ("win rate, (return + 1) / 2", ".2f") if rate else ("return", ".1f")
    refine = config.refine_config()
    ran = refine.num_updates * refine.batch_size  # whole updates: the steps that ran
    table = Table(title=f"evaluation {unit} after {ran:,} refinement steps per seed: IQM [95% "
                        f"bootstrap CI] over {config.seeds} seeds; gain: paired, over fine-tuning the same agents")
    caption = few_runs_note(config.seeds) and f"{few_runs_note(config.seeds)}: no verdicts; run 5 or more --seeds"
    for col in ("method", "start IQM", "final IQM [95% CI]", "final mean (std)", "gain vs fine-tune", "wall s",
                "valid answers"):
        table.add_column(col, justify="right")
    valid = {st["variant"]: st["valid"] for st in run.advice_stats}
    finals = {name: win_rate(r.eval_returns[-1]) if rate else r.eval_returns[-1] for name, r in results.items()}
    for name, r in results.items():  # a seed with a non-finite return is named, never averaged
        start = seed_summary(win_rate(r.eval_returns[0]) if rate else r.eval_returns[0])
        final = seed_summary(finals[name])
        mean, std = final.cell(fmt)
        gain = gain_summary(finals[name], finals["PPO"]) if "PPO" in finals and name != "PPO" else None
        gain_cell = "-" if gain is None else \
            f"{gain['iqm']:+{fmt}} [{gain['ci95'][0]:+{fmt}}, {gain['ci95'][1]:+{fmt}}] {gain['verdict']}"
        table.add_row(METHODS[name].label, start.iqm_cell(fmt).split(" [")[0], final.iqm_cell(fmt),
                      mean if final.mean is None else f"{mean} ({std})", gain_cell, f"{r.wall_s:.1f}",
                      _advice_mark(valid.get(name), config.seeds))
    _print_table(console, table, caption)
    for name, r in results.items():  # the agents a guarded method ends with are fine-tuning's: said next to the table
        g = r.guard_restored
        if g:
            console.print(f"outcome guard ({METHODS[name].label}): below fine-tuning after chunk {g['chunk']}/"
                          f"{len(r.chunk_metrics)} (guard evaluation mean gap {g['gap']:+.1f}, {g['level']:.1%} CI "
                          f"[{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}]): advisor off, its agents are fine-tuning's from "
                          "there on",
                          soft_wrap=True, markup=False)
    if quiet:
        return
    for st in run.advice_stats:
        console.print(f"advisor ({st['variant']}): {st['valid']} valid, {st['invalid']} invalid, {st['failed']} failed "
                      f"answers, {st.get('unanswered', 0)} still unanswered when refinement ended, {st.get('paced', 0)} "
                      f"not asked (answers could not arrive in time: pacing) ({st['reused']} "
                      f"reused from an earlier variant, {st['over_budget']} over the context budget); waited for "
                      f"advice {st['advice_overhead_s']:.{2 if st['advice_overhead_s'] < 10 else 1}f} s ({st['advice_overhead_frac']:.1%} of refinement wall "
                      f"time, every wait included); first advice before chunk {st['first_advice_chunk'] or 'none'}"
                      + (f"; refinement took {st['wall_vs_ppo']:.2f}x continued PPO's wall time (waits and the "
                         "advisor's share of the machine)" if st.get("wall_vs_ppo") else ""), soft_wrap=True,
                      markup=False)
    console.print(f"outputs: {_p(out / 'ultra.png')}, {_p(out / 'ultra.json')}, {_p(out / 'critical_states.md')}, "
                  f"{_p(out / 'transcript.jsonl')}, {_p(out / CONFIG_FILE)}", soft_wrap=True, markup=False)


def cmd_serve_advisor(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from jaxmod.llm.server import BackendUnavailable, make_server

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must lie in [0, 65535] (0: any free port), got {args.port}")
    cores = os.cpu_count() or 1
    if not 1 <= args.threads <= cores:
        raise CLIError(f"--threads must lie in [1, {cores}] (this machine's CPU cores), got {args.threads}")
    if not args.host.strip():  # socket's "" is every interface: never chosen by leaving the value empty
        raise CLIError("--host is empty: name an address (127.0.0.1, the default, or 0.0.0.0 for every interface)")
    if args.model is not None and (not args.model or len(args.model) > 256
                                   or not all(c.isprintable() and not c.isspace() for c in args.model)):
        raise CLIError(f"--model must be 1 to 256 printable characters without spaces (a model id such as "
                       f"Qwen2.5-7B-Instruct), got {args.model!r}")
    if args.teacher is not None and args.backend != "teacher":
        raise CLIError(f"--teacher is the policy of --backend teacher, not of --backend {args.backend}: add "
                       "--backend teacher or leave --teacher out")
    answer_fn = None
    if args.backend == "teacher":
        if not args.teacher:
            raise CLIError("--backend teacher needs --teacher RUN_DIR (a `jaxmod train --out` folder or its "
                           "checkpoint/ folder)")
        from jaxmod.advice.teacher import TeacherBackend
        from jaxmod.checkpoint import CheckpointError

        run = Path(args.teacher)  # a `jaxmod train --out` folder, as eval takes, or its checkpoint/ folder
        try:
            teacher = TeacherBackend(run)
        except CheckpointError as err:
            raise CLIError(f"--teacher {_p(args.teacher)}: {err}") from None
        if not teacher.describer.invertible:
            raise CLIError(f"over HTTP the teacher sees only the prompt text, from which {teacher.env_id}'s observations "
                           f"cannot be rebuilt; use it in-process: jaxmod ultra --advisor teacher:{_p(args.teacher)}")

        def answer_fn(messages, schema, params):
            return teacher.answer(messages), {}
    try:
        server = make_server(args.backend, host=args.host, port=args.port, threads=args.threads, answer_fn=answer_fn,
                             model=args.model)
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


def _negative_values(argv: list[str]) -> list[str]:
    """`--flag -inf` as `--flag=-inf` (argparse would read -inf, -nan or -1e-3 as an option of their own)."""
    out: list[str] = []
    for a in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and a.startswith("-") and _is_number(a):
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _eval_checkpoint(run: Path) -> tuple[Any, Path]:
    """`jaxmod eval`'s checkpoint: the newest update of a run folder or checkpoint folder, or the update of a
    `RUN/checkpoint/<update>` folder; returns it and where it was read."""
    from jaxmod.checkpoint import has_checkpoint, step_folder

    where = run / "checkpoint" if has_checkpoint(run / "checkpoint") else run
    one_step = step_folder(run)  # RUN/checkpoint/<update>: that update's policy
    if one_step is not None:
        where = one_step[0]
    elif not has_checkpoint(where):
        if (run / "ultra.json").is_file():  # an ULTRA run keeps evaluations, not agents
            raise CLIError(f"{_p(run)} is a `jaxmod ultra` run, which saves no agents: its methods' evaluation returns "
                           "are in ultra.json (ultra.png), `jaxmod ultra --render DIR` draws each method's agent, and "
                           "`jaxmod ultra --agents-dir DIR` saves the pre-trained agents, which jaxmod eval DIR/<tag> "
                           "evaluates")
        raise CLIError(f"no checkpoint in {_p(run)} (nor in {_p(run / 'checkpoint')}): pass a `jaxmod train --out` "
                       "folder, its checkpoint/ folder (the newest update) or one update's folder in it (checkpoint/<update>)")
    return _restore(where, "pass a `jaxmod train --out` folder", None if one_step is None else one_step[1]), where


def _print_eval(ckpt: Any, per_seed: Any, args: argparse.Namespace) -> Any:
    """Print `jaxmod eval`'s table (per seed: mean return, IQM [95% CI] over episodes; per_seed [S, episodes]) and
    the IQM over seeds; returns the console."""
    from rich.console import Console
    from rich.table import Table

    from jaxmod.reporting import WIN_RATE_ENVS, win_rate
    from jaxmod.stats import few_runs_note, iqm_ci

    update = f" (update {ckpt.step})" if getattr(ckpt, "step", None) is not None else ""
    table = Table(title=f"{ckpt.config.env_id}{update}: {args.episodes} episodes per seed"
                        f"{' (deterministic)' if args.deterministic else ''}")
    for col in ("seed", "mean return", "IQM [95% CI] over episodes"):
        table.add_column(col)
    for i, r in enumerate(per_seed):
        table.add_row(str(i), f"{r.mean():.2f}", str(iqm_ci(r)))
    console = Console()
    _print_table(console, table, few_runs_note(args.episodes, "episodes"))
    overall = iqm_ci(per_seed.mean(axis=1)) if len(per_seed) > 1 else iqm_ci(per_seed[0])
    over = "seeds' means" if len(per_seed) > 1 else "episodes"
    note = few_runs_note(overall.n, "seeds" if len(per_seed) > 1 else "episodes")
    console.print(f"IQM {overall} (95% bootstrap CI over {over}{f'; {note}' if note else ''}); mean "
                  f"{per_seed.mean():.2f}", soft_wrap=True)
    if ckpt.config.env_id in WIN_RATE_ENVS:  # one-point games: return +1 a win, -1 a loss (as ultra's tables)
        rates = win_rate(per_seed)
        rate = iqm_ci(rates.mean(axis=1)) if len(per_seed) > 1 else iqm_ci(rates[0])
        console.print(f"win rate IQM {rate} (95% bootstrap CI over {over}); mean {rates.mean():.2f}", soft_wrap=True)
    return console


def cmd_eval(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Evaluate every seed of a checkpoint on `--episodes` fresh episodes (each env's first episode: none favoured
    for being short); print per-seed means and the IQM with a 95% bootstrap interval (over seeds when there are
    several, else over episodes)."""
    import jax
    import numpy as np

    from jaxmod.config import MAX_SEED
    from jaxmod.ppo.acting import make_episode_evaluator
    from jaxmod.ppo.train import PPOLearner

    if not 1 <= args.episodes <= MAX_EPISODES:
        raise CLIError(f"--episodes must lie in [1, {MAX_EPISODES:,}], got {args.episodes} (every episode runs as its "
                       "own env at once: memory grows with it)")
    if not 0 <= args.seed <= MAX_SEED:
        raise CLIError(f"--seed must lie in [0, {MAX_SEED}], got {args.seed}")
    if args.render:
        from jaxmod.render import headless_gl

        headless_gl()  # before brax imports mujoco
    ckpt, where = _eval_checkpoint(Path(args.run))
    learner = PPOLearner(ckpt.config)
    if args.render:
        from jaxmod.render import check_render

        check_render(learner.env.core, args.render)  # no drawer, no OpenGL, a bad path: one line, before compiling
    returns = make_episode_evaluator(learner.env.replace_num_envs(args.episodes), learner.net, args.deterministic)
    state, key = ckpt.state, jax.random.PRNGKey(args.seed)
    if ckpt.num_seeds is None:
        per_seed = np.asarray(returns(state.params, state.env_state.obs_rms, key))[None]
    else:
        keys = jax.random.split(key, ckpt.num_seeds)
        per_seed = np.asarray(jax.jit(jax.vmap(returns))(state.params, state.env_state.obs_rms, keys))
    if not np.all(np.isfinite(per_seed)):
        raise CLIError(f"the policy in {_p(where)} produced non-finite returns: the checkpoint is not usable")
    console = _print_eval(ckpt, per_seed, args)
    if args.render:
        from jaxmod.render import render_episode

        first = state if ckpt.num_seeds is None else jax.tree.map(lambda x: x[0], state)
        r = render_episode(learner.env, learner.net, first.params, args.render, first.env_state.obs_rms, key,
                           args.deterministic)
        console.print(f"episode of seed 0 (return {r.episode_return:.2f}, {r.steps} steps, {r.frames} frames) -> "
                      f"{r.path}", soft_wrap=True, markup=False)
    return 0


MAX_EPISODES = 10_000  # eval's --episodes bound: all episodes of a seed run at once, one env each (jaxmod's choice)
EXIT_NON_FINITE = 3  # exit status of a run stopped by a non-finite loss, parameter or return (2: bad input)
COMMANDS = {"train": cmd_train, "plot": cmd_plot, "eval": cmd_eval, "serve-advisor": cmd_serve_advisor, "ultra": cmd_ultra}


def _unrecognized(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> str:
    """One line for arguments `command` does not take: each unknown flag with the nearest of the command's own
    flags (a typo), and the command's help."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    known = [opt for action in sub._actions for opt in action.option_strings if opt.startswith("--")]
    hints = []
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--"):
            near = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            if near:
                hints.append(f"{flag}: did you mean {near[0]}?")
        elif not flag.startswith("-") and arg is extra[0] and "--env" in known:  # `jaxmod train CartPole-v1`
            hints.append(f"did you mean --env {arg}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"unrecognized arguments: {' '.join(extra)}{hint}; see jaxmod {command} --help"


def _flag_named(message: str, argv: Sequence[str]) -> str:
    """A config error (`lr must be > 0, got -1`) led by the flag that set the value, where a flag did
    (`--lr -1: lr must be > 0, got -1`); errors from --config's file or the defaults stay as they are."""
    import re

    named = re.match(r"([a-z][a-z0-9_]*) must ", message)  # "<field> must ...": the validators' form
    if named is None:
        return message
    flag = "--" + named.group(1).replace("_", "-")
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return f"{flag} {argv[i + 1]}: {message}"
        if arg.startswith(flag + "="):
            return f"{arg.replace('=', ' ', 1)}: {message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user mistakes become one-line errors (set JAXMOD_DEBUG=1 for tracebacks)."""
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.envs import EnvError
    from jaxmod.llm.server import BackendUnavailable
    from jaxmod.methods import MethodError
    from jaxmod.parallel import DistributedError
    from jaxmod.ppo.config import ConfigError
    from jaxmod.reporting import NonFiniteError
    from jaxmod.tracking import TrackingError

    argv = _negative_values(list(sys.argv[1:] if argv is None else argv))
    _jaxmod_warnings_one_line()
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise CLIError(_unrecognized(parser, args.command, extra))
        return COMMANDS[args.command](args, argv)
    except (ConfigError, ModulationError) as err:
        if os.environ.get("JAXMOD_DEBUG"):
            raise
        print(f"jaxmod: error: {_one_line(_flag_named(str(err), argv))}", file=sys.stderr)
        return 2
    except (CLIError, BackendUnavailable, EnvError, MethodError, TrackingError, FileNotFoundError) as err:
        if os.environ.get("JAXMOD_DEBUG"):
            raise
        print(f"jaxmod: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except NonFiniteError as err:  # a run that went NaN / inf: one line (which method, seed, chunk and value)
        if os.environ.get("JAXMOD_DEBUG"):
            raise
        print(f"jaxmod: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_NON_FINITE
    except DistributedError as err:  # the processes of a multi-host run never met: one line, what to check
        if os.environ.get("JAXMOD_DEBUG"):
            raise
        print(f"jaxmod: error: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxmod: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
