"""benchmarks/advice_value.py: Monte-Carlo value of a teacher's suggestion against the agent's own action at the
teacher's critical states. With common random numbers, advice that IS the agent's own (deterministic) choice
gives exactly the same return in both arms; bad flags exit 2 with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import advice_value  # noqa: E402
from jaxmod.advice.teacher import TeacherBackend  # noqa: E402
from jaxmod.checkpoint import save_checkpoint  # noqa: E402
from jaxmod.ppo import PPOConfig, PPOLearner  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _saved_policy(folder: Path, env_id: str, scale: float) -> Path:
    """An untrained CartPole agent whose actor's last layer is scaled by `scale` (1e4: its samples are its greedy
    actions), saved as `jaxmod train` saves one."""
    config = PPOConfig(env_id=env_id, num_envs=2, num_steps=8, total_timesteps=16, num_minibatches=2,
                       hidden_sizes=(32,))
    learner = PPOLearner(config)
    state = learner.init(jax.random.PRNGKey(3))
    dim = learner.env.action_space.dim
    actor = jax.tree.map(lambda x: x * scale if x.ndim == 2 and x.shape[-1] == dim else x, state.params["actor"])
    return save_checkpoint(folder, state.replace(params={**state.params, "actor": actor}), config)


def test_advice_equal_to_the_agents_own_choice_is_worth_exactly_nothing(tmp_path):
    folder = tmp_path / "agent"
    _saved_policy(folder, "CartPole-v1", 1e4)
    policy = TeacherBackend(folder)
    programs = advice_value.make_programs(policy, horizon=20, collect_steps=200)
    record = advice_value.advice_values(policy, policy, programs, episodes=3, critical=2, rollouts=8)
    assert record["task"] == "CartPole-v1" and record["states"] == len(record["per_state"]) > 0
    for state in record["per_state"]:
        assert state["gap"] == 0.0 and state["advised_return"] == state["own_return"] > 0
    assert record["mean_gap"] == 0.0 and record["advice_wins"] == 0.0


def test_the_command_line_writes_one_record_per_seed_and_refuses_bad_flags(tmp_path, monkeypatch, capsys):
    agent, teacher = tmp_path / "agent", tmp_path / "teacher"
    _saved_policy(agent, "CartPole-v1", 1.0)
    _saved_policy(teacher, "CartPole-v1", 1e4)
    out = tmp_path / "value.jsonl"
    monkeypatch.setattr(sys, "argv", ["advice_value.py", "--agent", str(agent), "--teacher", str(teacher),
                                      "--episodes", "2", "--horizon", "10", "--rollouts", "4", "--out", str(out)])
    advice_value.main()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1 and records[0]["states"] > 0 and records[0]["horizon"] == 10
    assert "CartPole-v1 seed 0: advice minus own action" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["advice_value.py", "--agent", str(agent), "--teacher", str(teacher),
                                      "--horizon", "0", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        advice_value.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "advice_value.py: --horizon must be >= 1"
    monkeypatch.setattr(sys, "argv", ["advice_value.py", "--agent", str(agent), "--teacher", str(teacher),
                                      "--seeds", "2", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        advice_value.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"advice_value.py: the checkpoint at {agent} holds 1 seed(s), not 2"
    assert len(out.read_text().splitlines()) == 1  # nothing more written
