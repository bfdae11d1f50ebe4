"""CLI: one-line errors for user mistakes, a real tiny run with its outputs, and exact resume."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert "invalid _int value" in proc.stderr


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
    for name in ("metrics.jsonl", "config.json", "curve.png", "checkpoint/meta.json"):
        assert (out / name).exists(), name
    data = read_metrics(out / "metrics.jsonl")
    assert data["episode_return"].shape == (6, 2)
    assert json.loads((out / "config.json").read_text())["num_envs"] == 4
    # refuses to overwrite, resumes cleanly (nothing left to do), and --resume needs matching seeds
    assert main(args) == 2
    assert main(args + ["--resume"]) == 0
    assert read_metrics(out / "metrics.jsonl")["episode_return"].shape == (6, 2)
    assert main(args[:4] + ["1"] + args[5:] + ["--resume"]) == 2


def test_resume_continues_exactly(tmp_path):
    total = str(4 * 16 * 6)
    base = ["train", "--seeds", "2", "--total-steps", total, "--chunks", "3", "--quiet", *TINY_FLAGS]
    assert main(base + ["--out", str(tmp_path / "straight")]) == 0
    # an interrupted run: stops after one chunk, then resumes from its checkpoint
    part = tmp_path / "part"
    assert main(base + ["--out", str(part), "--max-chunks", "1", "--checkpoint-every", "5"]) == 0
    assert read_metrics(part / "metrics.jsonl")["loss"].shape == (2, 2)
    assert main(base + ["--out", str(part), "--resume"]) == 0
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(part / "metrics.jsonl")
    assert (straight["loss"] == resumed["loss"]).all()


def test_ultra_replay_of_a_missing_run_is_one_line(tmp_path, capsys):
    code = main(["ultra", "--replay", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot replay" in err[0] and "ultra.json" in err[0]


def test_bad_ultra_knob_is_one_line(tmp_path, capsys):
    code = main(["ultra", "--restart-prob", "1.5", "--out", str(tmp_path / "k")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "restart_prob must lie in [0, 1]" in err[0]


@pytest.mark.parametrize("flag, value", [("--advisor-latency", "-1"), ("--advisor-concurrency", "0"),
                                         ("--noise", "1.5")])
def test_bad_advisor_knob_is_one_line(tmp_path, capsys, flag, value):
    code = main(["ultra", flag, value, "--out", str(tmp_path / "k")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "advisor" in err[0]


def test_advisor_priority_is_checked():
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.ultra.pipeline import UltraSettings

    with pytest.raises(ModulationError, match="advisor priority must be 'idle' or 'normal'"):
        UltraSettings(advisor_priority="high")
    assert UltraSettings(advisor_priority="normal").advisor_priority == "normal"


def test_missing_local_llm_is_one_line_before_any_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    code = main(["ultra", "--advisor", "smollm2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'jaxmod[local-llm]'" in err[0]
    assert not (tmp_path / "s").exists()
