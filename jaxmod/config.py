"""Configs as nested frozen dataclasses: field documentation, type and number checks, JSON round trips, and the
command-line flags generated from the fields (one default per knob, the same in Python and on the command line).

- `field_docs(cls)`: each field's documentation, read from the comment on (and under) its line in the source;
- `check_fields(obj, error)`: every int field an int, every float field a finite number (raises `error`);
- `to_dict(obj)` / `from_dict(cls, data)`: JSON-ready dicts of nested configs, unknown or mistyped keys refused;
- `Flag` / `flags_of(cls)`: one command-line flag per leaf field of a nested config (flat names, `--kl-coef`);
  `add_flags(group, flags, defaults)` adds them to an argparse group, their help the field docs with the default;
- `TrainConfig`: what `jaxmod train` runs (the PPO config, seeds, chunks).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import json
import math
import re
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxmod.ppo.config import ConfigError, PPOConfig, default_config

CONFIG_FILE = "config.json"
KEEP_CHECKPOINTS = 2  # checkpoints kept per folder: the newest, and one to fall back to if it is damaged


def orbax_pattern_in(path: str | Path) -> bool:
    """Whether a folder name of `path` (resolved) holds `[...]`: orbax reads such a name as a glob pattern, and a
    checkpoint saved under it cannot be restored (measured: 'Error opening "zarr" driver'), so `--out` and
    `agents_dir` refuse it before anything runs."""
    return re.search(r"\[[^/]*\]", str(Path(path).resolve())) is not None


# --------------------------------------------------------------------------- field documentation
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """`{field: doc}` from the comments of `cls`'s source: the comment ending a field's line, continued by comment
    lines right under it (fields without one are left out). Empty when the source cannot be read."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    for i, line in enumerate(source.splitlines(), start=1):
        name = line.strip().split(":", 1)[0]
        if name not in names or name in docs or i not in comments:
            continue
        parts, j = [comments[i]], i + 1
        while j in comments and j not in code_lines:
            parts.append(comments[j])
            j += 1
        docs[name] = " ".join(parts)
    return docs


# --------------------------------------------------------------------------- types and checks
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def check_value(name: str, hint: Any, value: Any, error: type[Exception] = ConfigError) -> Any:
    """`value` checked against `hint` (int, float, bool, str, optional, tuples); lists become tuples. Raises
    `error` with a message that says what to pass."""
    inner, nullable = _optional(hint)
    if value is None:
        if nullable:
            return None
        raise error(f"{name} must be set (got None)")
    if inner is bool:
        if not isinstance(value, bool):
            raise error(f"{name} must be true or false, got {value!r}")
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{name} must be an integer, got {value!r}")
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise error(f"{name} must be a finite number, got {value!r}")
    elif inner is str:
        if not isinstance(value, str):
            raise error(f"{name} must be a string, got {value!r}")
    elif typing.get_origin(inner) is tuple:
        if not isinstance(value, (tuple, list)):
            raise error(f"{name} must be a list, got {value!r}")
        args = typing.get_args(inner)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        value = tuple(check_value(f"{name}[{i}]", item, v, error) for i, v in enumerate(value))
    return value


def check_fields(obj: Any, error: type[Exception] = ConfigError) -> None:
    """Every field of the dataclass `obj` of its declared kind: ints are ints (not 4.5, not True), floats finite
    numbers (not nan or inf), booleans booleans, strings strings. Nested configs are checked by their own."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        if not dataclasses.is_dataclass(_optional(hint)[0]):
            check_value(f.name, hint, getattr(obj, f.name), error)


def positive(obj: Any, names: tuple[str, ...], error: type[Exception] = ConfigError) -> None:
    """Raise `error` unless every field in `names` is >= 1."""
    for name in names:
        if getattr(obj, name) < 1:
            raise error(f"{name} must be >= 1, got {getattr(obj, name)}")


MAX_INT = 2**31 - 1  # any integer setting: JAX's default integers (sizes, counts, widths) are 32-bit
MAX_SEED = 2**31 - 10_001  # base seeds; runs derive keys at offsets up to +10_000 and jax keys take 32-bit seeds
MAX_SEEDS = 10_000  # seeds side by side in one program (each holds its own envs, networks and optimiser)
MAX_STEPS = 2**31 - 1  # env steps per seed: the learner counts updates and env steps in int32


def at_most(obj: Any, names: tuple[str, ...], bound: int, why: str, error: type[Exception] = ConfigError) -> None:
    """Raise `error` unless every field in `names` is <= `bound` (`why`: the reason, for the message)."""
    for name in names:
        if getattr(obj, name) > bound:
            raise error(f"{name} must be at most {bound:,} ({why}), got {getattr(obj, name):,}")


def check_seed(obj: Any, error: type[Exception] = ConfigError) -> None:
    """Raise `error` unless `obj.seed` is an integer in [0, MAX_SEED]."""
    if not 0 <= obj.seed <= MAX_SEED:
        raise error(f"seed must lie in [0, {MAX_SEED}], got {obj.seed}")


# --------------------------------------------------------------------------- JSON round trips
def to_dict(obj: Any) -> dict[str, Any]:
    """A nested config as a JSON-ready dict (configs with their own `to_dict`, such as `PPOConfig`, use it)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = value.to_dict() if hasattr(value, "to_dict") else to_dict(value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


def from_dict(cls: type, data: dict[str, Any], error: type[Exception] = ConfigError, where: str = "") -> Any:
    """The config of class `cls` in `data` (as `to_dict` wrote it; missing keys take their defaults). Unknown keys
    and values of the wrong kind raise `error` naming the key."""
    if not isinstance(data, dict):
        raise error(f"{_section(where) if where else cls.__name__} must be a JSON object, got {data!r}")
    check_known(cls, data, error, where)
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        inner, _ = _optional(hints[name])
        if dataclasses.is_dataclass(inner) and value is not None:
            if inner is PPOConfig:
                if not isinstance(value, dict):
                    raise error(f"{_section(f'{where}{name}.')} must be a JSON object, got {value!r}")
                check_known(PPOConfig, value, error, f"{where}{name}.")
                _check_env_options_and_layers(value, error, f"{where}{name}.")
                sub = {k: v for k, v in value.items() if k not in ("env_options", "hidden_sizes")}
                from_dict_checked(PPOConfig, sub, error, f"{where}{name}.")
                value = PPOConfig.from_dict(value)
            else:
                value = from_dict(inner, value, error, f"{where}{name}.")
        elif inner is not Any and name != "env_options":
            value = check_value(where + name, hints[name], value, error)
        kwargs[name] = value
    obj = cls(**kwargs)
    check_int_range(obj, error, where)
    return obj


def check_known(cls: type, data: dict[str, Any], error: type[Exception] = ConfigError, where: str = "") -> None:
    """Raise `error` for keys of `data` that are no fields of `cls`, naming the section they were found in (`where`:
    its path with a trailing dot, e.g. "ppo."; empty at the top level) and the section's fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                    f"{_section(where)}; its fields are: {', '.join(sorted(names))}")


def _section(where: str) -> str:
    """The config section at path `where` ("ppo.", "a.b."; "": the top level), in words."""
    return f"the config's \"{where.rstrip('.')}\" section" if where else "the config's top level"


def check_int_range(obj: Any, error: type[Exception] = ConfigError, where: str = "") -> None:
    """Every integer of the config `obj` (nested configs and integer lists included) within 32 bits: JAX computes
    sizes, counts and widths in 32-bit integers, so a larger one fails deep inside it (an OverflowError) after the
    run folder was written. Runs after the config's own checks, whose bounds (seeds, steps) say more."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_int_range(value, error, f"{where}{f.name}.")
            continue
        items = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for i, v in items:
            if isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT <= v <= MAX_INT:
                name = f"{where}{f.name}" + ("" if i is None else f"[{i}]")
                raise error(f"{name} must lie in [{-MAX_INT:,}, {MAX_INT:,}] (JAX computes sizes and counts in "
                            f"32-bit integers), got {v:,}")


def _check_env_options_and_layers(ppo: dict[str, Any], error: type[Exception], where: str) -> None:
    """A PPO config's `env_options` is a JSON object of scalar options, its `hidden_sizes` a list of integers."""
    options = ppo.get("env_options", {})
    if not isinstance(options, dict) or not all(
            isinstance(v, (str, int, float, bool)) or v is None for v in options.values()):
        raise error(f"{where}env_options must be a JSON object of option: value (e.g. {{\"backend\": \"spring\"}}), "
                    f"got {options!r}")
    for key, value in options.items():  # an env parameter of nan or inf trains on nonsense (issue 21)
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{where}env_options: {key} must be a finite number, got {value!r}")
    layers = ppo.get("hidden_sizes", [64])
    if not isinstance(layers, (list, tuple)) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in layers):
        raise error(f"{where}hidden_sizes must be a list of integer widths (e.g. [64, 64]), got {layers!r}")


def from_dict_checked(cls: type, data: dict[str, Any], error: type[Exception], where: str) -> None:
    """Check the plain fields in `data` against `cls`'s hints (before a foreign `from_dict` sees them)."""
    hints = _hints(cls)
    for name, value in data.items():
        if name in hints:
            check_value(where + name, hints[name], value, error)


def parse_json(text: str) -> Any:
    """`json.loads(text)`, with a document nested too deeply for Python's parser (a RecursionError, which is no
    ValueError) raised as `json.JSONDecodeError` like any other malformed JSON: every reader of a user's or a run's
    JSON file reports it as damaged in one line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", text[:80], 0) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in a run's config.json (raises ConfigError with what to pass instead)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config at {path}: pass a run's config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no config object")
    return data


# --------------------------------------------------------------------------- command-line flags
@dataclass(frozen=True)
class Flag:
    """One command-line flag of a config field: `--flag` sets `path` (field names from the top config down)."""

    flag: str
    path: tuple[str, ...]
    hint: Any
    doc: str

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def flags_of(cls: type, renames: dict[str, str] | None = None, skip: frozenset[str] = frozenset(),
             prefix: tuple[str, ...] = ()) -> list[Flag]:
    """One flag per leaf field of the nested config `cls`, named `--field-name` (or `renames[field]`), without
    the section prefix; `skip` names fields (or sections) left out. Two leaves with one name raise."""
    renames = renames or {}
    out: list[Flag] = []
    hints, docs = _hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        inner, _ = _optional(hints[f.name])
        if dataclasses.is_dataclass(inner) and inner is not PPOConfig:
            out.extend(flags_of(inner, renames, skip, prefix + (f.name,)))
        elif not dataclasses.is_dataclass(inner):
            out.append(Flag(renames.get(f.name, "--" + f.name.replace("_", "-")), prefix + (f.name,), hints[f.name],
                            docs.get(f.name, "")))
    seen: dict[str, Flag] = {}
    for fl in out:
        if fl.flag in seen:
            raise ConfigError(f"{fl.flag} would set both {'.'.join(seen[fl.flag].path)} and {'.'.join(fl.path)}")
        seen[fl.flag] = fl
    return out


def parse_int(text: str) -> int:
    """An integer flag value; scientific notation of whole numbers (5e5) is accepted."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not math.isfinite(value) or not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def parse_tuple(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(item(x.strip()) for x in text.split(",") if x.strip())
    return parse


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() in ("none", "") else parse(text)
    return parse_optional


def _parser_of(hint: Any) -> tuple[Callable[[str], Any] | None, str]:
    """(argparse `type`, metavar) for a field type; None for booleans."""
    inner, nullable = _optional(hint)
    if inner is bool:
        return None, ""
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0]
        parse, meta = parse_tuple(parse_int if item is int else str), "A,B"
    else:
        parse, meta = {int: (parse_int, "N"), float: (parse_float, "X")}.get(inner, (str, "TEXT"))
    return (_none_or(parse) if nullable else parse), meta


def show(value: Any) -> str:
    """A default as a user would type it."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return "unset" if value is None else str(value)


# other names a flag answers to (the names the LLM-serving world uses for the advisor's limits)
FLAG_ALIASES = {"--advisor-timeout": ("--llm-timeout",), "--advisor-deadline": ("--llm-deadline",),
                "--advisor-max-tokens": ("--max-tokens",), "--advisor-temperature": ("--temperature",)}


def add_flags(group: Any, flags: list[Flag], defaults: dict[str, Any]) -> None:
    """Add `flags` to an argparse group; values the user does not give stay absent from the namespace (so a
    config file's values can stand); help is the field's doc and `defaults[dest]`; `FLAG_ALIASES` add names."""
    for fl in flags:
        parse, meta = _parser_of(fl.hint)
        text = f"{fl.doc} (default: {show(defaults.get(fl.dest))})".lstrip().replace("%", "%%")
        names = (fl.flag, *FLAG_ALIASES.get(fl.flag, ()))
        if parse is None:
            group.add_argument(*names, dest=fl.dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            group.add_argument(*names, dest=fl.dest, type=parse, default=argparse.SUPPRESS, metavar=meta, help=text)


def given(args: argparse.Namespace, flags: list[Flag]) -> dict[tuple[str, ...], Any]:
    """The values the user gave on the command line, by field path."""
    return {fl.path: getattr(args, fl.dest) for fl in flags if hasattr(args, fl.dest)}


def leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in data.items():
        if isinstance(v, dict) and k not in ("env_options",):
            yield from leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        data = data.setdefault(k, {})
    data[path[-1]] = value


# --------------------------------------------------------------------------- jaxmod train
@dataclass(frozen=True)
class TrainConfig:
    """What `jaxmod train` runs: PPO on one env for many seeds in one jitted program."""

    ppo: PPOConfig = PPOConfig()  # the learner (default: the preset of the env's family)
    seeds: int = 1  # number of seeds trained in one program
    seed: int = 0  # base seed
    chunks: int = 20  # progress/checkpoint chunks
    checkpoint_every: int = 5  # save a checkpoint every N chunks (and at the end)
    keep_checkpoints: int = KEEP_CHECKPOINTS  # checkpoints kept in <out>/checkpoint: the newest and the ones a
    # damaged newest falls back to (jaxmod's choice)
    env_shards: int = 1  # devices that share each seed's envs (data parallel: the envs and every minibatch split
    # over them, gradients summed across them; must divide num_envs and the device count; jaxmod.parallel)

    def __post_init__(self) -> None:
        check_fields(self)
        check_fields(self.ppo)
        positive(self, ("seeds", "chunks", "checkpoint_every", "keep_checkpoints", "env_shards"))
        if self.ppo.num_envs % self.env_shards:
            raise ConfigError(f"env_shards={self.env_shards} must divide num_envs={self.ppo.num_envs} (each device "
                              "steps num_envs / env_shards envs of every seed): change --num-envs or --env-shards")
        at_most(self, ("seeds",), MAX_SEEDS, "seeds run side by side in one program")
        check_seed(self)

    @classmethod
    def for_env(cls, env_id: str, ppo_overrides: dict[str, Any] | None = None, **fields: Any) -> TrainConfig:
        """The config for `env_id`: its family's PPO preset with `ppo_overrides`, and `fields`."""
        return cls(ppo=default_config(env_id, **(ppo_overrides or {})), **fields)

    def to_dict(self) -> dict[str, Any]:
        return {"command": "train", **to_dict(self)}
