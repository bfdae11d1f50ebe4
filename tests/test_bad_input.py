"""Bad input to every command, as a table: each row exits 2 with exactly one line on stderr (no traceback), nothing on
stdout (the error comes first), and leaves the working folder byte for byte as it was (nothing written, no half
folder). Rows run `jaxmod.cli.main` in-process from inside the folder (so default run folders would land there);
nothing compiles before any of these errors."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from jaxmod.cli import main

pytestmark = pytest.mark.timeout(60)

Setup = Callable[[Path], None]


# --------------------------------------------------------------------------- setups (run inside the folder)
def _file(name: str, text: str = "x") -> Setup:
    def setup(w: Path) -> None:
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_text(text)
    return setup


def _files(*pairs: tuple[str, str]) -> Setup:
    def setup(w: Path) -> None:
        for name, text in pairs:
            _file(name, text)(w)
    return setup


def _changed(data: dict, changes: dict) -> str:
    """`data` as JSON with `changes` applied ("ppo.lr": value sets data["ppo"]["lr"])."""
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return json.dumps(data)


def _train_config(**changes) -> str:
    from jaxmod.config import TrainConfig

    return _changed(TrainConfig.for_env("CartPole-v1", {"num_envs": 4, "num_steps": 16, "num_minibatches": 2},
                                        seeds=2, chunks=3).to_dict(), changes)


def _ultra_config(**changes) -> str:
    from jaxmod.ultra.config import UltraConfig

    return _changed(UltraConfig().to_dict(), changes)


METRICS_ROW = '{"update": 1, "env_steps": [64, 64], "episode_return": [9.0, 11.0]}\n'
TRAIN_RUN = _files(("run/config.json", _train_config()), ("run/metrics.jsonl", ""))
ULTRA_RUN = _files(("run/config.json", json.dumps({"command": "ultra"})), ("run/ultra.json", "{}"))


def _unfinished_checkpoint(w: Path) -> None:
    """A checkpoint folder whose only step was cut before its digest was written."""
    (w / "ck" / "4" / "state").mkdir(parents=True)
    (w / "ck" / "4" / "state" / "_METADATA").write_text("{}")


# --------------------------------------------------------------------------- the table
ROWS: list[tuple[str, list[str], Setup | None, str]] = [
    # train: numbers
    ("lr-nan", ["train", "--lr", "nan"], None, "finite"),
    ("lr-inf", ["train", "--lr", "inf"], None, "finite"),
    ("ent-coef-minus-inf", ["train", "--ent-coef", "-inf"], None, "finite"),
    ("vf-coef-negative", ["train", "--vf-coef", "-1"], None, "vf_coef"),
    ("lr-negative", ["train", "--lr", "-0.1"], None, "lr"),
    ("gamma-above-1", ["train", "--gamma", "1.5"], None, "gamma"),
    ("clip-eps-negative", ["train", "--clip-eps", "-0.2"], None, "clip_eps"),
    ("num-envs-float", ["train", "--num-envs", "4.5"], None, "expected an integer"),
    ("num-steps-float", ["train", "--num-steps", "128.5"], None, "expected an integer"),
    ("num-envs-word", ["train", "--num-envs", "three"], None, "expected an integer"),
    ("num-envs-zero", ["train", "--num-envs", "0"], None, "num_envs"),
    ("num-envs-negative", ["train", "--num-envs", "-4"], None, "num_envs"),
    ("hidden-size-zero", ["train", "--hidden-sizes", "64,0"], None, "hidden_sizes"),
    ("seeds-zero", ["train", "--seeds", "0"], None, "seeds must be >= 1"),
    ("seeds-negative", ["train", "--seeds", "-2"], None, "seeds"),
    ("seeds-huge", ["train", "--seeds", "1e400"], None, "expected an integer"),
    ("seed-negative", ["train", "--seed", "-1"], None, "seed must lie in [0, "),
    ("seed-too-large", ["train", "--seed", "99999999999999999999"], None, "seed must lie in [0, "),
    ("total-steps-negative", ["train", "--total-steps", "-5"], None, "total"),
    ("total-steps-nan", ["train", "--total-steps", "nan"], None, "expected an integer"),
    ("total-steps-below-a-batch", ["train", "--total-steps", "10"], None, "total"),
    ("chunks-zero", ["train", "--chunks", "0"], None, "chunks must be >= 1"),
    ("checkpoint-every-zero", ["train", "--checkpoint-every", "0"], None, "checkpoint_every"),
    ("keep-checkpoints-zero", ["train", "--keep-checkpoints", "0"], None, "keep_checkpoints"),
    ("max-chunks-zero", ["train", "--max-chunks", "0"], None, "--max-chunks must be >= 1"),
    ("minibatches-not-dividing", ["train", "--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], None,
     "divisible by num_minibatches"),
    ("activation-unknown", ["train", "--activation", "nope"], None, "activation"),
    # train: env
    ("env-unknown", ["train", "--env", "CartPol-v1"], None, "unknown env id 'CartPol-v1'"),
    ("env-option-unknown", ["train", "--env-option", "max_steps=3"], None, "unknown option"),
    ("env-option-not-a-number", ["train", "--env-option", "max_steps_in_episode=abc"], None,
     "whole number of steps in [1, 2^31), got 'abc'"),
    ("env-option-without-value", ["train", "--env-option", "max_steps_in_episode"], None, "expected KEY=VALUE"),
    ("env-option-boolean-for-a-float", ["train", "--env-option", "gravity=true"], None,
     "option gravity takes a finite number (default 9.8), got True"),
    ("env-option-string-for-a-float", ["train", "--env-option", "masscart=heavy"], None,
     "option masscart takes a finite number"),
    # train: run folders
    ("abbreviated-config-flag", ["train", "--conf", "c.json"], _file("c.json", _train_config()),
     "unrecognized arguments: --conf"),
    ("config-layers-a-string", ["train", "--config", "c.json"], _file("c.json", _train_config(**{"ppo.hidden_sizes": "64"})),
     "hidden_sizes must be a list of integer widths"),
    ("config-layers-fractional", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.hidden_sizes": [64.5]})), "hidden_sizes must be a list of integer widths"),
    ("config-env-options-a-list", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.env_options": [1, 2]})), "env_options must be a JSON object"),
    ("config-env-options-a-string", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.env_options": "abc"})), "env_options must be a JSON object"),
    ("config-huge-total-steps", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.total_timesteps": 2**63})), "total_timesteps must be at most"),
    ("config-env-id-a-number", ["train", "--config", "c.json"], _file("c.json", json.dumps({"ppo": {"env_id": 5}})),
     "env_id must be an env id string"),
    ("total-steps-2-to-the-63", ["train", "--total-steps", str(2**63)], None, "total_timesteps must be at most"),
    ("seeds-2-to-the-63", ["train", "--seeds", str(2**63)], None, "seeds must be at most"),
    ("ultra-seeds-2-to-the-63", ["ultra", "--seeds", str(2**63)], None, "seeds must be at most"),
    ("ultra-refine-steps-2-to-the-63", ["ultra", "--refine-steps", str(2**63)], None, "refine_steps must be at most"),
    ("episode-length-negative", ["train", "--env-option", "max_steps_in_episode=-5"], None, "whole number of steps"),
    ("episode-length-boolean", ["train", "--env-option", "max_steps_in_episode=true"], None, "whole number of steps"),
    ("episode-length-fractional", ["train", "--env-option", "max_steps_in_episode=2.5"], None, "whole number"),
    ("episode-length-1e400", ["train", "--env-option", "max_steps_in_episode=1e400"], None,
     "max_steps_in_episode must be a finite number, got inf"),
    ("env-empty", ["train", "--env", ""], None, "--env is empty"),
    ("ultra-env-empty", ["ultra", "--env", ""], None, "--env is empty"),
    ("out-empty", ["train", "--out", ""], None, "--out is empty"),
    ("ultra-out-empty", ["ultra", "--out", ""], None, "--out is empty"),
    ("wandb-empty", ["train", "--wandb", ""], None, "--wandb is empty"),
    ("ultra-wandb-empty", ["ultra", "--wandb", ""], None, "--wandb is empty"),
    ("out-name-too-long", ["train", "--out", "a" * 300], None, "File name too long"),
    ("out-a-broken-link", ["train", "--out", "link"], lambda w: (w / "link").symlink_to("/nonexistent/x"),
     "is a link to nothing"),
    ("ultra-out-a-broken-link", ["ultra", "--out", "link"], lambda w: (w / "link").symlink_to("/nonexistent/x"),
     "is a link to nothing"),
    ("out-is-a-file", ["train", "--out", "afile"], _file("afile"), "is a file, not a folder"),
    ("out-under-a-file", ["train", "--out", "afile/run"], _file("afile"), "lies under the file"),
    ("out-not-writable", ["train", "--out", "/proc/jaxmod-run"], None, "cannot write in /proc"),
    ("out-holds-a-train-run", ["train", "--out", "run"], TRAIN_RUN, "already holds a run"),
    ("out-holds-an-ultra-run", ["train", "--out", "run"], ULTRA_RUN, "holds a `jaxmod ultra` run"),
    ("resume-without-a-run", ["train", "--out", "empty", "--resume"], lambda w: (w / "empty").mkdir(),
     "nothing to resume"),
    ("resume-without-out", ["train", "--resume"], None, "nothing to resume"),
    ("resume-of-an-ultra-run", ["train", "--out", "run", "--resume"], ULTRA_RUN, "holds a `jaxmod ultra` run"),
    ("resume-with-only-an-unfinished-save", ["train", "--out", "run", "--resume"],
     _files(("run/config.json", _train_config()), ("run/metrics.jsonl", ""), ("run/checkpoint/4/state/_METADATA", "{}")),
     "checkpoint"),
    ("resume-with-other-seeds", ["train", "--out", "run", "--resume", "--seeds", "3"], TRAIN_RUN,
     "--seeds 3 (the run has 2)"),
    ("resume-with-other-chunks", ["train", "--out", "run", "--resume", "--chunks", "7"], TRAIN_RUN,
     "--chunks 7 (the run has 3)"),
    ("resume-with-other-total-steps", ["train", "--out", "run", "--resume", "--total-steps", "1e6"], TRAIN_RUN,
     "--total-steps 1000000 (the run has 500000)"),
    ("resume-with-other-env", ["train", "--out", "run", "--resume", "--env", "Acrobot-v1"], TRAIN_RUN,
     "--env Acrobot-v1 (the run has CartPole-v1)"),
    ("resume-with-other-env-option", ["train", "--out", "run", "--resume", "--env-option", "max_steps_in_episode=50"],
     TRAIN_RUN, "--env-option max_steps_in_episode=50 (the run has (none))"),
    ("resume-with-config", ["train", "--out", "run", "--resume", "--config", "run/config.json"], TRAIN_RUN,
     "leave --config out"),
    ("resume-of-a-damaged-config", ["train", "--out", "run", "--resume"], _files(("run/config.json", "{not json")),
     "cannot resume"),
    # train: config files
    ("config-missing", ["train", "--config", "nothing.json"], None, "no config at nothing.json"),
    ("config-not-json", ["train", "--config", "c.json"], _file("c.json", "{oops"), "cannot read c.json"),
    ("config-a-list", ["train", "--config", "c.json"], _file("c.json", "[1, 2]"), "holds no config object"),
    ("config-of-ultra", ["train", "--config", "c.json"], _file("c.json", json.dumps({"command": "ultra"})),
     "use `jaxmod ultra --config c.json`"),
    ("config-unknown-key", ["train", "--config", "c.json"], _file("c.json", _train_config(frobnicate=1)),
     "c.json: unknown field 'frobnicate' in the config's top level; its fields are: checkpoint_every, chunks, "),
    ("config-unknown-ppo-field", ["train", "--config", "c.json"], _file("c.json", _train_config(**{"ppo.bogus": 1})),
     "c.json: unknown field 'bogus' in the config's \"ppo\" section; its fields are: activation, anneal_lr, "),
    ("config-float-size", ["train", "--config", "c.json"], _file("c.json", _train_config(**{"ppo.num_envs": 4.5})),
     "num_envs must be an integer"),
    ("config-float-steps", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.num_steps": 128.0})), "num_steps must be an integer"),
    ("config-command-a-number", ["train", "--config", "c.json"], _file("c.json", _train_config(command=5)),
     "c.json is not a jaxmod config"),
    ("config-env-option-not-a-number", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.env_options": {"max_steps_in_episode": "abc"}})),
     'env_options {"max_steps_in_episode": "abc"} in c.json: CartPole-v1: an episode must last a whole number'),
    ("resume-with-a-bad-env-option-in-the-run", ["train", "--out", "run", "--resume"],
     _files(("run/config.json", _train_config(**{"ppo.env_options": {"max_steps_in_episode": 0}})),
            ("run/metrics.jsonl", "")), "env_options {\"max_steps_in_episode\": 0} in run/config.json"),
    ("out-with-a-newline-resumed", ["train", "--out", "a\nb", "--resume"], None, "nothing to resume in 'a\\nb'"),
    ("out-with-a-newline-a-file", ["train", "--out", "a\nb"], _file("a\nb"), "--out 'a\\nb' is a file"),
    ("ultra-out-with-a-newline-holding-a-run", ["ultra", "--out", "a\nb"],
     _files(("a\nb/config.json", json.dumps({"command": "ultra"})), ("a\nb/ultra.json", "{}")),
     "'a\\nb' already holds an ULTRA run"),
    ("config-a-folder-without-one", ["train", "--config", "d"], lambda w: (w / "d").mkdir(), "no config at d"),
    # review of issue 21: deep JSON, 32-bit integers, non-finite env options, runs inside runs, resume's metrics
    ("config-nested-too-deeply", ["train", "--config", "c.json"], _file("c.json", "[" * 100_000 + "]" * 100_000),
     "cannot read c.json"),
    ("resume-of-a-config-nested-too-deeply", ["train", "--out", "run", "--resume"],
     _files(("run/config.json", "[" * 100_000 + "]" * 100_000), ("run/metrics.jsonl", "")), "cannot resume run"),
    ("plot-config-nested-too-deeply", ["plot", "run"],
     _files(("run/metrics.jsonl", METRICS_ROW), ("run/config.json", "{\"a\": " + "[" * 100_000 + "]" * 100_000 + "}")),
     "cannot read run/config.json"),
    ("hidden-size-beyond-32-bits", ["train", "--hidden-sizes", "64,1000000000000"], None,
     "ppo.hidden_sizes[1] must lie in [-2,147,483,647, 2,147,483,647]"),
    ("config-hidden-size-beyond-32-bits", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.hidden_sizes": [10**12]})), "hidden_sizes[0] must lie in"),
    ("update-epochs-beyond-32-bits", ["train", "--update-epochs", str(2**40)], None, "update_epochs must lie in"),
    ("ultra-collect-steps-beyond-32-bits", ["ultra", "--collect-steps", str(2**40)], None, "must lie in"),
    ("env-option-nan", ["train", "--env-option", "gravity=NaN"], None, "gravity must be a finite number, got nan"),
    ("ultra-env-option-infinity", ["ultra", "--env-option", "gravity=-Infinity"], None,
     "gravity must be a finite number, got -inf"),
    ("config-env-option-infinity", ["train", "--config", "c.json"],
     _file("c.json", _train_config(**{"ppo.env_options": {"gravity": float("inf")}})),
     "gravity must be a finite number, got inf"),
    ("out-inside-a-train-runs-checkpoint", ["train", "--out", "run/checkpoint/7"], TRAIN_RUN,
     "lies inside the `jaxmod train` run run"),
    ("out-inside-an-ultra-run", ["train", "--out", "run/sub"], ULTRA_RUN, "lies inside the `jaxmod ultra` run run"),
    ("ultra-out-inside-a-train-run", ["ultra", "--out", "run/sub"], TRAIN_RUN, "lies inside the `jaxmod train` run"),
    ("out-beside-a-checkpoint-folder", ["train", "--out", "run"], _file("run/checkpoint/2/x"), "already holds a run"),
    ("resume-with-a-checkpoint-file", ["train", "--out", "run", "--resume"],
     _files(("run/config.json", _train_config()), ("run/metrics.jsonl", ""), ("run/checkpoint", "x")),
     "run/checkpoint is a file, not a checkpoint folder"),
    ("resume-of-metrics-rows-not-objects", ["train", "--out", "run", "--resume"],
     _files(("run/config.json", _train_config()), ("run/metrics.jsonl", "[1]\n[2]\n")),
     "run/metrics.jsonl, line 1: not a metrics row"),
    ("resume-of-metrics-past-a-missing-checkpoint", ["train", "--out", "run", "--resume"],
     _files(("run/config.json", _train_config(chunks=3, checkpoint_every=1, **{"ppo.total_timesteps": 64 * 6})),
            ("run/metrics.jsonl", "".join(METRICS_ROW.replace('"update": 1', f'"update": {u}') for u in (1, 2, 3)))),
     "holds metrics up to update 3, but run/checkpoint holds no checkpoint (one was saved by update 2)"),
    # the command line itself
    ("no-command", [], None, "required"),
    ("unknown-command", ["trian"], None, "invalid choice"),
    ("unknown-flag", ["train", "--frobnicate", "1"], None, "unrecognized arguments"),
    # ultra
    ("ultra-seeds-zero", ["ultra", "--seeds", "0"], None, "seeds must be >= 1"),
    ("ultra-refine-steps-zero", ["ultra", "--refine-steps", "0"], None, "refine_steps (0)"),
    ("ultra-episodes-per-round-zero", ["ultra", "--episodes-per-round", "0"], None, "--episodes-per-round must be >= 1"),
    ("ultra-chunks-zero", ["ultra", "--chunks", "0"], None, "chunks must be >= 1"),
    ("ultra-capacity-zero", ["ultra", "--capacity", "0"], None, "capacity"),
    ("ultra-refine-lr-nan", ["ultra", "--refine-lr", "nan"], None, "refine_lr must be a finite number"),
    ("ultra-kl-coef-inf", ["ultra", "--kl-coef", "inf"], None, "kl_coef must be a finite number"),
    ("ultra-restart-prob-above-1", ["ultra", "--restart-prob", "2"], None, "restart"),
    ("ultra-noise-negative", ["ultra", "--noise", "-0.1"], None, "noise"),
    ("ultra-noise-above-1", ["ultra", "--noise", "1.5"], None, "noise"),
    ("ultra-variant-empty", ["ultra", "--variant", ""], None, "no variant given"),
    ("ultra-variant-unknown", ["ultra", "--variant", "Nope"], None, "Nope"),
    ("ultra-advisor-unknown", ["ultra", "--advisor", "oracle"], None, "oracle"),
    ("ultra-advisor-bad-url", ["ultra", "--advisor", "ftp://example.org/v1"], None, "ftp://example.org/v1"),
    ("ultra-advisor-dead-url", ["ultra", "--advisor", "http://127.0.0.1:1/v1"], None, "127.0.0.1:1"),
    ("ultra-advisor-replay-missing", ["ultra", "--advisor", "replay:/nonexistent.jsonl"], None,
     "no transcript to replay at /nonexistent.jsonl"),
    ("ultra-advisor-teacher-missing", ["ultra", "--advisor", "teacher:/nonexistent"], None, "no checkpoint there"),
    ("ultra-advisor-reference-missing", ["ultra", "--advisor-reference", "/nonexistent"], None, "no checkpoint there"),
    ("ultra-advisor-failure-unknown", ["ultra", "--advisor-failure", "maybe"], None,
     "advisor failure policy must be one of stop, continue"),
    ("ultra-advice-protocol-unknown", ["ultra", "--advice-protocol", "nope"], None, "nope"),
    ("ultra-advisor-priority-unknown", ["ultra", "--advisor-priority", "nope"], None, "nope"),
    ("ultra-env-unknown", ["ultra", "--env", "Nope-v0"], None, "unknown env id 'Nope-v0'"),
    ("ultra-replay-missing", ["ultra", "--replay", "nothing"], None, "cannot replay nothing"),
    ("ultra-out-holds-a-run", ["ultra", "--out", "run"], ULTRA_RUN, "pass --overwrite"),
    ("ultra-out-holds-a-train-run", ["ultra", "--out", "run"], TRAIN_RUN, "holds a `jaxmod train` run"),
    ("ultra-out-is-a-file", ["ultra", "--out", "afile"], _file("afile"), "is a file, not a folder"),
    ("ultra-config-nan", ["ultra", "--config", "c.json"], _file("c.json", _ultra_config(**{"modulation.kl_coef": "x"})),
     "kl_coef"),
    ("ultra-config-unknown-ppo-field", ["ultra", "--config", "c.json"], _file("c.json", json.dumps({"ppo": {"bogus": 1}})),
     "c.json: unknown field 'bogus' in the config's \"ppo\" section; its fields are: activation, anneal_lr, "),
    ("ultra-config-unknown-advisor-fields", ["ultra", "--config", "c.json"],
     _file("c.json", _ultra_config(**{"advisor.bogus": 1, "advisor.concurency": 4})),
     "c.json: unknown fields 'bogus', 'concurency' in the config's \"advisor\" section; its fields are: concurrency, "),
    ("ultra-config-unknown-top-level-field", ["ultra", "--config", "c.json"], _file("c.json", _ultra_config(bogus=1)),
     "c.json: unknown field 'bogus' in the config's top level; its fields are: advisor, agents_dir, "),
    ("ultra-config-section-not-an-object", ["ultra", "--config", "c.json"],
     _file("c.json", _ultra_config(schedule=[3])), "c.json: the config's \"schedule\" section must be a JSON object, "
                                                    "got [3]"),
    ("ultra-config-of-train", ["ultra", "--config", "c.json"], _file("c.json", _train_config()),
     "use `jaxmod train --config c.json`"),
    # serve-advisor
    ("serve-port-too-large", ["serve-advisor", "--port", "70000"], None, "--port"),
    ("serve-port-negative", ["serve-advisor", "--port", "-1"], None, "--port"),
    ("serve-port-word", ["serve-advisor", "--port", "http"], None, "expected an integer"),
    ("serve-host-unknown", ["serve-advisor", "--host", "no such host", "--port", "0"], None, "cannot listen"),
    ("serve-threads-zero", ["serve-advisor", "--threads", "0"], None, "--threads"),
    ("serve-threads-2-to-the-63", ["serve-advisor", "--threads", str(2**63)], None, "--threads must lie in [1, "),
    ("serve-backend-unknown", ["serve-advisor", "--backend", "gpt"], None, "invalid choice"),
    ("serve-host-empty", ["serve-advisor", "--host", "", "--port", "0"], None, "--host is empty"),
    ("serve-teacher-without-its-backend", ["serve-advisor", "--teacher", "run", "--port", "0"], None,
     "--teacher is the policy of --backend teacher, not of --backend scripted"),
    ("serve-model-empty", ["serve-advisor", "--model", "", "--port", "0"], None, "--model must be 1 to 256"),
    ("serve-model-with-a-space", ["serve-advisor", "--model", "Qwen 7B", "--port", "0"], None,
     "printable characters without spaces"),
    ("serve-model-with-a-newline", ["serve-advisor", "--model", "a\nb", "--port", "0"], None, "got 'a\\nb'"),
    ("serve-teacher-without-checkpoint", ["serve-advisor", "--backend", "teacher"], None, "needs --teacher"),
    ("serve-teacher-missing", ["serve-advisor", "--backend", "teacher", "--teacher", "nothing"], None,
     "no jaxmod checkpoint"),
    ("serve-teacher-unfinished", ["serve-advisor", "--backend", "teacher", "--teacher", "ck"], _unfinished_checkpoint,
     "digest.json is missing"),
    # plot
    ("plot-missing", ["plot", "nothing"], None, "no metrics.jsonl in nothing"),
    ("plot-a-file", ["plot", "afile"], _file("afile"), "afile"),
    ("plot-a-folder-without-a-run", ["plot", "d"], lambda w: (w / "d").mkdir(), "no metrics.jsonl in d"),
    ("plot-junk-metrics", ["plot", "run"], _file("run/metrics.jsonl", "not json\n{\n"), "not a JSON metrics row"),
    ("plot-empty-metrics", ["plot", "run"], _file("run/metrics.jsonl", ""), "holds no metrics"),
    ("plot-metrics-not-rows", ["plot", "run"], _file("run/metrics.jsonl", "[1, 2]\n"), "cannot plot run"),
    ("plot-junk-config", ["plot", "run"], _files(("run/metrics.jsonl", ""), ("run/config.json", "{oops")),
     "config.json"),
    ("plot-curve-a-folder", ["plot", "run"], _files(("run/metrics.jsonl", METRICS_ROW), ("run/curve.png/x", "")),
     "cannot write run/curve.png: Is a directory"),
    ("plot-rows-without-env-steps", ["plot", "run"],
     _file("run/metrics.jsonl", '{"update": 1, "episode_return": [1, 2]}\n'), "need env_steps and episode_return"),
    ("plot-scalar-env-steps", ["plot", "run"],
     _file("run/metrics.jsonl", '{"update": 1, "env_steps": 1, "episode_return": 1}\n'), "one value per seed"),
    ("plot-a-path-with-a-newline", ["plot", "a\nb"], None, "no metrics.jsonl in 'a\\nb'"),
    # eval
    ("eval-episodes-2-to-the-63", ["eval", "nothing", "--episodes", str(2**63)], None, "--episodes must lie in [1, "),
    ("eval-episodes-1e9", ["eval", "nothing", "--episodes", "1e9"], None, "--episodes must lie in [1, "),
    ("eval-missing", ["eval", "nothing"], None, "no checkpoint in nothing"),
    ("eval-a-file", ["eval", "afile"], _file("afile"), "no checkpoint in afile"),
    ("eval-episodes-zero", ["eval", "nothing", "--episodes", "0"], None, "--episodes must lie in [1, "),
    ("eval-seed-negative", ["eval", "nothing", "--seed", "-1"], None, "--seed"),
    ("eval-seed-too-large", ["eval", "nothing", "--seed", str(2**40)], None, "--seed"),
    ("eval-a-superscript-digit", ["eval", "\u00b2"], None, "no checkpoint in \u00b2"),
    ("eval-a-checkpoint-folder-with-a-superscript-digit", ["eval", "ck"], lambda w: (w / "ck" / "\u00b2").mkdir(parents=True),
     "no checkpoint in ck"),
    ("eval-unfinished-checkpoint", ["eval", "ck"], _unfinished_checkpoint, "digest.json is missing"),
]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name, argv, setup, words", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, argv, setup, words, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in ("ADVISOR_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    if setup is not None:
        setup(work)
    before = _snapshot(work)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert captured.out == "", captured.out  # the error comes before anything else is printed
    assert words in lines[0], lines[0]
    assert _snapshot(work) == before


def test_a_port_in_use_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve-advisor", "--port", str(taken.getsockname()[1])]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on 127.0.0.1" in lines[0] and "choose another --port" in lines[0]
    assert os.listdir(tmp_path) == []


def test_the_table_is_large():
    assert len(ROWS) >= 50
    commands = {r[1][0] for r in ROWS if r[1]}
    assert {"train", "ultra", "serve-advisor", "plot", "eval"} <= commands
