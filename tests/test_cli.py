"""CLI: one-line errors for user mistakes, a real tiny run with its outputs, and exact resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmod.cli import main
from jaxmod.reporting import read_metrics

pytestmark = pytest.mark.timeout(300)

TINY_FLAGS = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxmod.cli", *args], capture_output=True, text=True, timeout=200)


def test_unknown_env_is_one_line(tmp_path):
    proc = _run_cli("train", "--env", "CartPol-v1", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxmod: error: unknown env id 'CartPol-v1'")
    assert "Traceback" not in proc.stderr


def test_bad_flag_value_is_one_line(tmp_path):
    proc = _run_cli("train", "--num-envs", "three")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["jaxmod train: error: argument --num-envs: expected an integer, got 'three' "
                     "(see jaxmod train --help)"]


def test_bad_config_combination_is_one_line(tmp_path, capsys):
    code = main(["train", "--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "divisible by num_minibatches" in err[0]


def test_bad_env_option_is_one_line(tmp_path, capsys):
    code = main(["train", "--env-option", "max_steps=3", "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown option" in err and "max_steps_in_episode" in err


def test_train_writes_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--env", "CartPole-v1", "--seeds", "2", "--total-steps", str(4 * 16 * 6), "--out", str(out),
            "--chunks", "3", "--checkpoint-every", "1", "--quiet", *TINY_FLAGS]
    assert main(args) == 0
    for name in ("metrics.jsonl", "config.json", "curve.png", "checkpoint/6/digest.json"):
        assert (out / name).exists(), name
    data = read_metrics(out / "metrics.jsonl")
    assert data["episode_return"].shape == (6, 2)
    # TensorBoard shows the same curve: the event files hold every update's mean over seeds at its env steps
    from jaxmod.tracking import read_events

    events = read_events(out)
    assert [s for s, _ in events["charts/episode_return"]] == data["env_steps"][:, 0].astype(int).tolist()
    assert [v for _, v in events["charts/episode_return"]] == pytest.approx(data["episode_return"].mean(axis=1))
    assert {"losses/value_loss", "losses/actor_loss", "losses/entropy"} <= set(events)
    written = json.loads((out / "config.json").read_text())
    assert written["command"] == "train" and written["ppo"]["num_envs"] == 4 and written["seeds"] == 2
    # refuses to overwrite, resumes cleanly (nothing left to do), and --resume needs matching seeds
    assert main(args) == 2
    assert main(args + ["--resume"]) == 0
    assert read_metrics(out / "metrics.jsonl")["episode_return"].shape == (6, 2)
    assert main(args[:4] + ["1"] + args[5:] + ["--resume"]) == 2


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1",
                                    pytest.param("jaxmod/Pong-OnePoint", marks=pytest.mark.slow),
                                    pytest.param("Asterix-MinAtar", marks=pytest.mark.slow),
                                    pytest.param("brax/hopper", marks=[pytest.mark.slow, pytest.mark.timeout(900)])])
def test_resume_continues_exactly(tmp_path, env_id):
    """Kill after one chunk, resume: the metrics equal the uninterrupted run's, for one env of every family."""
    total = str(4 * 16 * 6)
    brax = ["--env-option", "backend=positional", "--env-option", "episode_length=32"] if env_id == "brax/hopper" else []
    base = ["train", "--env", env_id, "--seeds", "2", "--total-steps", total, "--chunks", "3", "--quiet", *TINY_FLAGS,
            *brax]
    assert main(base + ["--out", str(tmp_path / "straight")]) == 0
    # an interrupted run: stops after one chunk, then resumes from its checkpoint
    part = tmp_path / "part"
    assert main(base + ["--out", str(part), "--max-chunks", "1", "--checkpoint-every", "5"]) == 0
    assert read_metrics(part / "metrics.jsonl")["loss"].shape == (2, 2)
    assert main(base + ["--out", str(part), "--resume"]) == 0
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(part / "metrics.jsonl")
    assert sorted(straight) == sorted(resumed) and "episode_return" in straight
    for key in straight:  # every metric, not the loss alone
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def test_a_partial_config_file_takes_defaults_and_a_run_stopped_before_its_first_checkpoint_starts_again(
        tmp_path, capsys):
    """A config file may leave keys out (they take their defaults). A run killed before its first checkpoint was
    complete (config and metrics written, no checkpoint) is neither stuck nor silently half-resumed: `--resume`
    starts it again from update 0 with a note, and it ends equal to the uninterrupted run."""
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"seeds": 2, "chunks": 3, "ppo": {"num_envs": 4, "num_steps": 16,
                                                                     "num_minibatches": 2, "update_epochs": 2,
                                                                     "total_timesteps": 4 * 16 * 6}}))
    assert main(["train", "--config", str(partial), "--out", str(tmp_path / "straight"), "--quiet"]) == 0
    part = tmp_path / "part"
    assert main(["train", "--config", str(partial), "--out", str(part), "--quiet", "--max-chunks", "1"]) == 0
    shutil.rmtree(part / "checkpoint")  # as if killed while its first checkpoint was being written
    capsys.readouterr()
    assert main(["train", "--out", str(part), "--resume", "--quiet"]) == 0
    assert "starting it again from update 0" in capsys.readouterr().err
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(part / "metrics.jsonl")
    assert straight["loss"].shape == (6, 2) and (straight["loss"] == resumed["loss"]).all()  # [updates, seeds]


def test_resume_takes_the_runs_settings_and_falls_back_from_a_damaged_newest_checkpoint(tmp_path, capsys):
    """Killed after two chunks with a checkpoint after each, the newest one then damaged (a bit flipped in its array
    data): `train --out X --resume` with no other flag takes every setting from the run, says which checkpoint file
    is damaged, continues from the previous checkpoint and ends equal to the uninterrupted run."""
    base = ["train", "--env", "CartPole-v1", "--seeds", "2", "--total-steps", str(4 * 16 * 6), "--chunks", "3",
            "--quiet", *TINY_FLAGS]
    assert main(base + ["--out", str(tmp_path / "straight")]) == 0
    part = tmp_path / "part"
    assert main(base + ["--out", str(part), "--max-chunks", "2", "--checkpoint-every", "1"]) == 0
    assert sorted(p.name for p in (part / "checkpoint").iterdir()) == ["2", "4"]
    data = max((p for p in (part / "checkpoint" / "4" / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["train", "--out", str(part), "--resume", "--chunks", "3"]) == 0  # a flag with the run's value is fine
    err = capsys.readouterr().err
    assert f"jaxmod: warning: {data} is damaged" in err and "restored the checkpoint of update 2 instead" in err
    assert "with every setting from its config.json" in err
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(part / "metrics.jsonl")
    assert resumed["update"].tolist() == list(range(1, 7))
    assert (straight["loss"] == resumed["loss"]).all() and (straight["episode_return"] == resumed["episode_return"]).all()


def test_ultra_replay_of_a_missing_run_is_one_line(tmp_path, capsys):
    code = main(["ultra", "--replay", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot replay" in err[0] and "ultra.json" in err[0]


def test_bad_ultra_knob_is_one_line(tmp_path, capsys):
    code = main(["ultra", "--restart-prob", "1.5", "--out", str(tmp_path / "k")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["jaxmod: error: --restart-prob 1.5: restart_prob must lie in [0, 1], got 1.5"]
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("argv, line", [
    (["train", "--lr", "-1"], "--lr -1: lr must be > 0, got -1"),
    (["train", "--clip-eps=0"], "--clip-eps 0: clip_eps must be > 0, got 0"),
    (["ultra", "--refine-lr", "-0.5"], "--refine-lr -0.5: refine_lr must be > 0, got -0.5"),
    (["ultra", "--kl-coef", "-1"], "--kl-coef -1: kl_coef must be >= 0 (0: off), got -1"),
    (["ultra", "--verify-control", "1"], "--verify-control 1: verify_control must lie in [0, 1), got 1"),
])
def test_a_bad_value_names_its_flag_and_value(argv, line, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"jaxmod: error: {line}"]
    assert not (tmp_path / "r").exists()


def test_a_bad_value_from_a_config_file_names_the_file_not_a_flag(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"command": "train", "ppo": {"lr": -1.0}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr must be > 0, got -1" in err[0] and "--lr" not in err[0], err


@pytest.mark.parametrize("argv, hint", [
    (["ultra", "--restart-probb", "0.3"], "(--restart-probb: did you mean --restart-prob?); see jaxmod ultra --help"),
    (["train", "--lrr", "1"], "(--lrr: did you mean --lr?); see jaxmod train --help"),
    (["train", "CartPole-v1"], "(did you mean --env CartPole-v1?); see jaxmod train --help"),
    (["eval", "runs/x", "--bogus"], "unrecognized arguments: --bogus; see jaxmod eval --help"),
])
def test_an_unknown_argument_names_the_nearest_flag_and_the_commands_help(argv, hint, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxmod: error: unrecognized arguments: ") and err[0].endswith(hint), err


@pytest.mark.parametrize("flag, value, words", [
    ("--advisor-latency", "-1", "--advisor-latency (seconds added to every advisor answer) must be >= 0, got -1"),
    ("--advisor-concurrency", "0", "--advisor-concurrency must be >= 1 (advisor questions in flight at once, per URL), "
                                   "got 0: give 1 or more"),
    ("--advisor-concurrency", "2,0", "--advisor-concurrency must be >= 1 (advisor questions in flight at once, per "
                                     "URL), got 2,0"),
    ("--advisor-concurrency", "", "--advisor-concurrency is empty: give the advisor questions in flight at once"),
    ("--noise", "1.5", "--noise (the share of advisor answers corrupted) must lie in [0, 1], got 1.5: give a fraction"),
    ("--noise", "-0.1", "--noise (the share of advisor answers corrupted) must lie in [0, 1], got -0.1"),
    ("--advisor-concurrency", "1,2,3", "--advisor-concurrency gives 3 values for 2 advisor URL(s)")])
def test_bad_advisor_knob_is_one_line_naming_its_flag(tmp_path, capsys, flag, value, words):
    urls = ["--advisor", "http://127.0.0.1:9/v1,http://127.0.0.2:9/v1"] if value == "1,2,3" else []
    code = main(["ultra", flag, value, *urls, "--out", str(tmp_path / "k")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "k").exists()


def test_advisor_priority_is_checked():
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.ultra.config import AdvisorConfig, UltraConfig

    with pytest.raises(ModulationError, match="advisor priority must be 'idle' or 'normal'"):
        AdvisorConfig(priority="high")
    assert UltraConfig.flat(advisor_priority="idle").advisor.priority == "idle"


def test_missing_local_llm_is_one_line_before_any_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    code = main(["ultra", "--advisor", "smollm2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install -e '.[local-llm]'" in err[0] and "make local-llm" in err[0]
    assert not (tmp_path / "s").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flags, error", [
    (["--advisor", "teacher:/nonexistent"], "no saved policy for the teacher at /nonexistent (no checkpoint there): "
                                            "pass the folder of a `jaxmod train --out DIR` run, or its checkpoint/ "
                                            "folder"),
    (["--advisor-reference", "/nonexistent"], "no saved policy for the advisor reference at /nonexistent (no "
                                              "checkpoint there): pass the folder of a `jaxmod train --out DIR` run, "
                                              "or its checkpoint/ folder"),
    (["--advisor", "replay:/nonexistent.jsonl"], "no transcript to replay at /nonexistent.jsonl: pass a run's "
                                                 "transcript.jsonl (or replay the whole run with jaxmod ultra --replay "
                                                 "RUN_DIR)")])
def test_a_missing_advisor_file_is_the_only_output_and_nothing_is_written(tmp_path, flags, error):
    """The error comes before the run's banner ("... advisor teacher:... -> OUT") and before --out is created."""
    out = tmp_path / "run"
    proc = _run_cli("ultra", *flags, "--out", str(out))
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.splitlines() == [f"jaxmod: error: {error}"], proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- issue 21
@pytest.mark.parametrize("argv, words", [
    (["train", "--lr", "nan"], "ppo.lr must be a finite number"),
    (["train", "--ent-coef", "nan"], "ppo.ent_coef must be a finite number"),
    (["ultra", "--refine-lr", "nan"], "refine_lr must be a finite number"),
    (["ultra", "--vf-coef", "-inf"], "ppo.vf_coef must be a finite number"),
    (["ultra", "--kl-coef", "inf"], "kl_coef must be a finite number"),
    (["ultra", "--seeds", "0"], "seeds must be >= 1"),
    (["train", "--max-chunks", "0"], "--max-chunks must be >= 1"),
    (["ultra", "--refine-steps", "0"], "refine_steps (0) must be at least num_envs * num_steps"),
    (["ultra", "--episodes-per-round", "0"], "--episodes-per-round must be >= 1"),
    (["ultra", "--chunks", "0"], "chunks must be >= 1"),
    (["ultra", "--advisor-failure", "maybe"], "advisor failure policy must be one of stop, continue"),
    (["train", "--env-option", "max_steps_in_episode=abc"], "whole number of steps in [1, 2^31), got 'abc'"),
    (["train", "--seed", "99999999999999999999"], "seed must lie in [0, "),
    (["ultra", "--seed", "-1"], "seed must lie in [0, "),
    (["ultra", "--advisor", "replay:/nonexistent.jsonl"], "no transcript to replay at /nonexistent.jsonl"),
    (["ultra", "--env", "Nope-v0"], "unknown env id 'Nope-v0'"),
])
def test_bad_numbers_are_one_line_before_anything_is_written(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [(["--num-envs", "4.5"], "expected an integer, got '4.5'"),
                                         (["--seeds", "1e400"], "expected an integer")])
def test_float_sizes_are_refused_by_the_parser(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exc:
        main(["ultra", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and words in err[0]


def test_a_config_file_with_float_sizes_or_nan_is_refused(tmp_path, capsys):
    from jaxmod.ultra.config import UltraConfig

    data = UltraConfig().to_dict()
    for path, value, words in [(("ppo", "num_envs"), 4.5, "ppo.num_envs must be an integer"),
                               (("modulation", "kl_coef"), float("nan"), "modulation.kl_coef must be a finite"),
                               (("sizes", "eval_envs"), "8", "sizes.eval_envs must be an integer")]:
        bad = json.loads(json.dumps(data))
        bad[path[0]][path[1]] = value
        (tmp_path / "config.json").write_text(json.dumps(bad))
        code = main(["ultra", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out, words in [(afile, "is a file, not a folder"), (afile / "run", "lies under the file"),
                       (tmp_path / "run[lr=0.1]", "with [...] in a folder name cannot be restored")]:
        for command in ("train", "ultra"):
            assert main([command, "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0]


def test_train_and_ultra_refuse_each_others_run_folders(tmp_path, capsys):
    train_run, ultra_run = tmp_path / "t", tmp_path / "u"
    train_run.mkdir()
    (train_run / "metrics.jsonl").write_text("")
    ultra_run.mkdir()
    (ultra_run / "config.json").write_text(json.dumps({"command": "ultra"}))
    assert main(["ultra", "--out", str(train_run)]) == 2
    assert "holds a `jaxmod train` run" in capsys.readouterr().err
    assert main(["train", "--out", str(ultra_run)]) == 2
    assert "holds a `jaxmod ultra` run" in capsys.readouterr().err
    # a new ULTRA run never appends to an earlier one
    assert main(["ultra", "--out", str(ultra_run)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # and a config of the other command is named as such
    assert main(["train", "--config", str(ultra_run / "config.json"), "--out", str(tmp_path / "x")]) == 2
    assert "use `jaxmod ultra --config" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- one config
def test_ultra_flags_come_from_the_config_fields_with_one_default_each():
    from jaxmod.advice.modulation import ModulationConfig
    from jaxmod.cli import build_parser
    from jaxmod.ultra.config import UltraConfig

    assert UltraConfig().modulation == ModulationConfig() and ModulationConfig().capacity == 32
    assert ModulationConfig().kl_coef == 1.0
    text = build_parser(["ultra", "--env", "brax/hopper"])._subparsers._group_actions[0].choices["ultra"].format_help()
    assert "--capacity N          K advice slots per seed (default: 32)" in text
    for flag in ("--num-envs", "--env-option", "--advisor-timeout", "--advisor-failure", "--kl-coef", "--mask-steps",
                 "--eval-envs", "--sync-advice", "--overwrite", "--config", "--llm-url", "--replay"):
        assert flag in text, flag
    assert "the preset for brax/hopper" in text


def test_ultra_config_from_flags_and_from_its_file(tmp_path, monkeypatch):
    from jaxmod.cli import _ultra_config, build_parser
    from jaxmod.ppo import default_config
    from jaxmod.ultra.config import UltraConfig

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ADVISOR_BASE_URL", raising=False)
    argv = ["ultra", "--env", "brax/hopper", "--num-envs", "256", "--variant", "RA,RICE", "--capacity", "8",
            "--env-option", "backend=spring", "--advisor-timeout", "5", "--chunks", "3"]
    config = _ultra_config(build_parser(argv).parse_args(argv), argv)
    assert config.ppo == default_config("brax/hopper", num_envs=256, env_options=(("backend", "spring"),))
    assert config.variants == ("PPO", "RA", "RICE") and config.modulation.capacity == 8
    assert config.advisor.spec == "scripted" and config.advisor.client_overrides() == {"timeout_s": 5.0}
    assert config.schedule.chunks == 3
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    again = ["ultra", "--config", str(tmp_path / "config.json"), "--seeds", "2"]
    rerun = _ultra_config(build_parser(again).parse_args(again), again)
    assert rerun == UltraConfig.from_dict({**config.to_dict(), "seeds": 2})



def test_a_hand_written_config_file_may_leave_out_any_section(tmp_path, monkeypatch, capsys):
    """A user's own config file with a few keys (no "ppo" section) runs on the defaults of its env's family; a
    "ppo" that is not an object is one line and exit 2."""
    from jaxmod.cli import _train_config, _ultra_config, build_parser
    from jaxmod.ppo import default_config

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ADVISOR_BASE_URL", raising=False)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"command": "ultra", "env_id": "Acrobot-v1", "seeds": 3,
                                "modulation": {"kl_coef": 0.5}}))
    argv = ["ultra", "--config", str(mine)]
    config = _ultra_config(build_parser(argv).parse_args(argv), argv)
    assert config.ppo == default_config("Acrobot-v1") and config.seeds == 3 and config.modulation.kl_coef == 0.5
    mine.write_text(json.dumps({"command": "train", "env_id": "Acrobot-v1", "seeds": 2}))  # env_id where ultra has it
    argv = ["train", "--config", str(mine)]
    train = _train_config(build_parser(argv).parse_args(argv), argv)
    assert train.ppo == default_config("Acrobot-v1") and train.seeds == 2
    mine.write_text(json.dumps({"command": "ultra", "ppo": [1, 2]}))
    assert main(["ultra", "--config", str(mine), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '"ppo" section must be an object' in err[0] and not (tmp_path / "run").exists()

def test_train_reruns_from_its_config_file(tmp_path):
    first = tmp_path / "first"
    assert main(["train", "--total-steps", str(4 * 16 * 2), "--chunks", "1", "--quiet", "--out", str(first),
                 *TINY_FLAGS]) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--quiet", "--out", str(again)]) == 0
    assert json.loads((again / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    assert (read_metrics(first / "metrics.jsonl")["loss"] == read_metrics(again / "metrics.jsonl")["loss"]).all()


# ---------------------------------------------------------------------------------------------- the advisor
def _timed_cli(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    import os
    import time

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jaxmod.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return proc, time.monotonic() - t0


def test_a_dead_unauthorised_or_misaddressed_advisor_stops_before_pretraining(tmp_path):
    import socket

    from tests.fault_server import FaultServer, echo_auth

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    canary = "sk-canary-dead-4c1d"
    with FaultServer([echo_auth(401)], models_action=echo_auth(401)) as unauthorised, FaultServer([]) as served:
        cases = [(closed, "connection refused"), (unauthorised.url, "key rejected"),
                 (served.root, "did you mean")]  # 404: the URL lacks /v1
        for url, words in cases:
            out = tmp_path / "run"
            proc, _ = _timed_cli("ultra", "--advisor", url, "--out", str(out), env={"OPENAI_API_KEY": canary})
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
            # stopped before pretraining: nothing written, no agent trained (no timing: CI machines vary)
            assert not out.exists() and "pretrained" not in proc.stdout + proc.stderr
            assert canary not in proc.stdout + proc.stderr


def test_plot_redraws_a_run_and_refuses_a_folder_without_one(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--env", "CartPole-v1", "--total-steps", str(4 * 16 * 2), "--out", str(out), "--chunks", "1",
            "--quiet", *TINY_FLAGS]
    assert main(args) == 0
    (out / "curve.png").unlink()
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0
    assert (out / "curve.png").stat().st_size > 1000 and str(out / "curve.png") in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text(encoding="utf-8")[:-25], encoding="utf-8")  # a last line cut mid-write
    assert main(["plot", str(out)]) == 0
    assert "last line was cut mid-write" in capsys.readouterr().err  # the note --resume gives


def test_serve_advisor_serves_until_interrupted():
    """`jaxmod serve-advisor` as a user starts it: it prints its URL, answers /v1/models with its model, and ends
    cleanly on Ctrl-C (SIGINT)."""
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jaxmod.cli", "serve-advisor", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line and "scripted" in line
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]]
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    err = proc.stderr.read()
    assert rc in (0, 130) and "Traceback" not in err, err


def test_results_table_marks_variants_that_ran_on_little_or_no_advice():
    from jaxmod.cli import _advice_mark

    assert _advice_mark(None, 4) == "-"  # continued PPO and the baselines ask no advisor
    assert _advice_mark(0, 4) == "0 (NO ADVICE)"
    assert _advice_mark(3, 4) == "3 (little advice)"
    assert _advice_mark(40, 4) == "40"


def test_llm_limit_flags_answer_to_their_serving_names_too(monkeypatch):
    from jaxmod.cli import _ultra_config, build_parser

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ADVISOR_BASE_URL", raising=False)
    argv = ["ultra", "--llm-timeout", "7", "--llm-deadline", "30", "--max-tokens", "96", "--temperature", "0.2"]
    config = _ultra_config(build_parser(argv).parse_args(argv), argv)
    assert config.advisor.client_overrides() == {"timeout_s": 7.0, "deadline_s": 30.0, "max_tokens": 96,
                                                 "temperature": 0.2}


def test_wandb_without_the_package_is_one_line(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert main(["train", "--wandb", "proj", "--out", str(tmp_path / "w"), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'.[tracking]'" in err[0] and not (tmp_path / "w").exists()


def test_resume_repairs_a_cut_metrics_line_and_refuses_changed_flags_or_damaged_checkpoints(tmp_path, capsys,
                                                                                           monkeypatch):
    """A run killed mid-write: the cut last metrics line is dropped with a note and the run resumes (a kill during
    that rewrite leaves the file as it was); --resume with a changed setting, or a damaged checkpoint, is one line
    and exit 2."""
    out = tmp_path / "run"
    base = ["train", "--seeds", "1", "--total-steps", str(4 * 16 * 4), "--chunks", "2", "--quiet", *TINY_FLAGS,
            "--out", str(out)]
    assert main(base + ["--max-chunks", "1"]) == 0
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-25])  # the last row cut mid-write
    capsys.readouterr()
    assert main(base + ["--resume", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr 0.01 (the run has 0.00025)" in err[0]
    cut, config = metrics.read_bytes(), (out / "config.json").read_bytes()
    real_replace = os.replace

    def killed_before_the_rename(src, dst):  # a kill while the resume rewrites metrics.jsonl
        if Path(dst).name == "metrics.jsonl":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_rename)
    assert main(base + ["--resume"]) == 130
    monkeypatch.setattr(os, "replace", real_replace)
    assert metrics.read_bytes() == cut and (out / "config.json").read_bytes() == config  # rewrites are atomic
    capsys.readouterr()
    assert main(base + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "last line was cut mid-write" in err
    assert "lacks the metrics of 1 update(s) up to the checkpoint's (first missing: 2, last: 2)" in err  # said, not hid
    rows = read_metrics(metrics)["update"].tolist()
    assert rows == [1, 3, 4]  # update 2's row was the cut one; the resumed chunk's rows follow
    metrics.unlink()  # every metric lost: said on resume, and the finished run ends without a curve, not a traceback
    assert main(base + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "lacks the metrics of 4 update(s)" in err and "holds no metrics (lost before the resume)" in err
    assert not metrics.exists()
    for f in (out / "checkpoint").rglob("*"):
        if f.is_file() and f.name != "meta.json":
            f.write_text("garbage")
    assert main(base + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0]


def test_eval_reports_each_seed_and_the_iqm(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--seeds", "2", "--total-steps", str(4 * 16 * 2), "--quiet", *TINY_FLAGS,
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "6"]) == 0
    text = capsys.readouterr().out
    assert "6 episodes per seed" in text and "IQM" in text and "over seeds' means" in text
    assert main(["eval", str(tmp_path / "none")]) == 2
    assert main(["eval", str(out), "--episodes", "0"]) == 2
    # serve-advisor's teacher takes the same run folder as eval (or its checkpoint/ folder)
    import jaxmod.llm.server as server

    served = []

    class Served:  # the server, up to the point where it would serve
        model, url = "teacher", "http://127.0.0.1:0/v1"
        httpd = type("HTTPD", (), {"server_close": lambda self: None})()

        def serve_forever(self):
            raise KeyboardInterrupt  # Ctrl-C

    def make_server(backend, **kw):
        served.append((backend, kw["answer_fn"]))
        return Served()

    monkeypatch.setattr(server, "make_server", make_server)
    capsys.readouterr()
    for folder in (out, out / "checkpoint"):
        assert main(["serve-advisor", "--backend", "teacher", "--teacher", str(folder), "--port", "0"]) == 130
        assert "serving the teacher advisor" in capsys.readouterr().out
    assert [b for b, fn in served] == ["teacher", "teacher"] and all(callable(fn) for _, fn in served)


def test_episode_evaluator_returns_each_envs_first_episode():
    """The evaluator's [N] returns equal the first episode's summed reward per env in a recording of the same
    policy, keys and envs (an independent count)."""
    import jax
    import numpy as np

    from jaxmod.ppo import PPOLearner, default_config
    from jaxmod.ppo.acting import make_collector, make_episode_evaluator

    learner = PPOLearner(default_config("CartPole-v1", num_envs=5))
    state = learner.init(jax.random.PRNGKey(0))
    env, key = learner.env, jax.random.PRNGKey(7)
    got = np.asarray(make_episode_evaluator(env, learner.net)(state.params, state.env_state.obs_rms, key))
    rec = make_collector(env, learner.net, env.core.max_steps)(state.params, state.env_state.obs_rms, key)
    done = np.asarray(rec.terminated | rec.truncated)
    first = done.argmax(axis=0)
    expected = [np.asarray(rec.reward)[: first[i] + 1, i].sum() for i in range(5)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.fixture
def ctrl_c_delivered():
    """Python's own SIGINT handler for the test (a process started in the background by a non-interactive shell
    inherits SIGINT ignored, and then no Ctrl-C reaches it at all), put back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_delivered")
def test_ctrl_c_during_a_save_that_fails_stops_with_the_saves_error_noting_the_interrupt(tmp_path, monkeypatch):
    """A Ctrl-C held during a save that then raises is not dropped: the save's error stops the run and says so,
    and no interrupt is left pending for later."""
    import orbax.checkpoint as ocp

    def failing_save(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    argv = ["train", "--seeds", "1", "--total-steps", str(4 * 16 * 2), "--chunks", "1", "--quiet", *TINY_FLAGS,
            "--out", str(tmp_path / "run")]
    with pytest.raises(OSError, match="No space left") as info:
        main(argv)
    assert any("Ctrl-C (SIGINT) arrived during this save" in n for n in info.value.__notes__)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("ctrl_c_delivered")
def test_ctrl_c_during_a_checkpoint_save_is_honoured_after_it_and_orbax_prints_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C (SIGINT) while a checkpoint is being saved: the save completes (digested), then the run stops with
    exit 130 (orbax swallows an interrupt in places and an interrupted save leaves its threads writing). A
    damaged `_CHECKPOINT_METADATA`, which orbax parses (and logs about) on opening the folder, is then one line."""
    import orbax.checkpoint as ocp

    out = tmp_path / "run"
    base = ["train", "--seeds", "1", "--total-steps", str(4 * 16 * 4), "--chunks", "2", "--checkpoint-every", "1",
            "--quiet", *TINY_FLAGS, "--out", str(out)]
    real_save = ocp.CheckpointManager.save

    def save_with_ctrl_c(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the save runs
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_with_ctrl_c)
    capsys.readouterr()
    assert main(base) == 130
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert capsys.readouterr().err.strip() == "jaxmod: interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    step = out / "checkpoint" / "2"
    assert (step / "digest.json").is_file() and read_metrics(out / "metrics.jsonl")["update"].tolist() == [1, 2]
    (step / "_CHECKPOINT_METADATA").write_text("junk{", encoding="utf-8")
    assert main(base + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "_CHECKPOINT_METADATA is damaged" in err[0], err


def test_train_warns_when_no_episode_ended_and_prints_the_steps_that_ran(tmp_path, capsys):
    """MountainCar's episodes last 200 steps: a 24-step run ends none, and its training return 0 is no score. 100
    steps asked of 4 envs x 8 steps run 3 whole updates: 96 steps."""
    out = tmp_path / "r"
    assert main(["train", "--env", "MountainCar-v0", "--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2",
                 "--update-epochs", "1", "--total-timesteps", "100", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "jaxmod train MountainCar-v0: 1 seed(s) x 96 steps (of 100 asked: whole updates) (3 updates" in \
        " ".join(captured.out.split())
    warning = [line for line in captured.err.splitlines() if "no episode ended" in line]
    assert warning == ["jaxmod: warning: no episode ended in 96 steps per seed (4 envs): the training return 0 is no "
                       "score; MountainCar-v0's episodes outlast the run, give more --total-timesteps (or fewer "
                       "--num-envs)"], captured.err


def test_log_lines_are_not_wrapped_at_the_consoles_width(tmp_path):
    """Piped to a file (rich's console is 80 columns there), a header or a path longer than the width stays on one
    line, so a log can be grepped and a path copied (tables keep their layout)."""
    out = tmp_path / ("a-rather-long-folder-name-for-the-run-" * 3) / "run[lr=0.1" / "b]"  # brackets: no rich markup
    proc = _run_cli("train", "--env", "CartPole-v1", "--total-steps", str(4 * 16 * 2), "--out", str(out), *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("jaxmod train CartPole-v1:") and line.endswith(str(out)) for line in lines), proc.stdout
    assert f"config: {out / 'config.json'}" in lines, proc.stdout
    assert "n=1 seeds: interval not meaningful (fewer than 5)" in lines, proc.stdout  # the table's note, whole
    proc = _run_cli("eval", str(out), "--episodes", "4")
    assert proc.returncode == 0, proc.stderr
    assert "n=4 episodes: interval not meaningful (fewer than 5)" in proc.stdout.splitlines(), proc.stdout


def test_agents_dir_with_brackets_is_one_line_before_anything_runs(tmp_path, capsys):
    """orbax cannot restore a checkpoint saved under a folder named like run[x] (measured: 'Error opening "zarr"
    driver'), so the saved agents' folder is refused as --out is, before anything trains or is written."""
    code = main(["ultra", "--agents-dir", str(tmp_path / "agents[v1]"), "--out", str(tmp_path / "u")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot be restored" in err[0] and "--agents-dir" in err[0], err
    assert not (tmp_path / "u").exists() and not (tmp_path / "agents[v1]").exists()
