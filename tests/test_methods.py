"""The method registry and the README's "add a method in one file" example, run through the learner."""

from __future__ import annotations

import re
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxmod import methods
from jaxmod.advice import Advice
from jaxmod.ppo import PPOConfig, make_train
from tests.conftest import TOY_ID

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_method() -> dict:
    """Execute the README's example method (both of its files) and return its namespace."""
    block = re.search(r"```python\n(# jaxmod/baselines/alive.py\n.*?)```", README.read_text(encoding="utf-8"),
                      re.S).group(1)
    module, registry = block.split("# jaxmod/methods.py\n")
    ns: dict = {}
    exec(compile(module, "alive.py", "exec"), ns)  # noqa: S102 - the README's own code
    ns["alive"] = type("alive", (), {"modulator": staticmethod(ns["modulator"])})
    ns.update(register=methods.register, Method=methods.Method)
    return ns, registry


def test_readme_example_method_registers_and_refines(monkeypatch):
    ns, registry = _readme_method()
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the registry line, without leaking it
    exec(compile(registry, "methods.py", "exec"), ns)  # noqa: S102
    m = methods.method("Alive")
    assert m.critical == "advisor" and m.label == "Alive bonus"
    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 2, num_minibatches=2)
    mod = m.build(methods.MethodContext(TOY_ID))
    advice = Advice.empty(make_train(cfg).learner.env.core, 32)
    out = jax.jit(make_train(cfg, mod))(jax.random.PRNGKey(0), None, advice)
    chex.assert_tree_all_finite(out.state.params)
    plain = jax.jit(make_train(cfg, ns["CriticalStates"](restart_prob=0.5)))(jax.random.PRNGKey(0), None, advice)
    # the bonus changed the rewards, hence the value targets and the parameters
    assert not np.allclose(out.metrics["value_loss"], plain.metrics["value_loss"])


def test_registry_refuses_a_taken_name_and_lists_the_valid_ones():
    with pytest.raises(methods.MethodError, match="registered already"):
        methods.register(methods.METHODS["RICE"])
    with pytest.raises(methods.MethodError, match="choose from PPO, A, R, RA"):
        methods.method("SAC")
