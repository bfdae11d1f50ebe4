"""RICE (Cheng et al., ICML 2024) as a baseline: mixed restarts from the mask net's critical states (probability
p) plus the RND exploration bonus (lambda), per its Alg. 2; p and lambda from its Table 3."""

from __future__ import annotations

from jaxmod.advice.restarts import CriticalStates
from jaxmod.baselines.rnd import RNDBonus
from jaxmod.ppo.modulator import Modulator, chain

# RICE Table 3: mixed-restart probability p and RND coefficient lambda per MuJoCo task.
RICE_TABLE3 = {"hopper": (0.25, 0.001), "walker2d": (0.25, 0.01), "reacher": (0.5, 0.001),
               "halfcheetah": (0.5, 0.01)}
RICE_DEFAULT = (0.5, 0.01)  # tasks RICE did not tune: its most common values


def rice_values(env_id: str) -> tuple[float, float]:
    """(p, lambda) for `env_id`: RICE's Table 3 for its MuJoCo tasks, else its common values."""
    from jaxmod.envs.sparse import SPARSE_SUFFIX

    task = env_id.removeprefix("brax/").removesuffix(SPARSE_SUFFIX)
    return RICE_TABLE3.get(task, RICE_DEFAULT)


def modulator(env_id: str, p: float | None = None, lam: float | None = None, cut_prob: float | None = None
              ) -> Modulator:
    """RICE's refinement: `CriticalStates(p)` over the critical states it is given + `RNDBonus(lambda)`; either
    value defaults to `rice_values(env_id)`; `cut_prob`: `CriticalStates`' mid-episode cuts (None: the family's)."""
    table_p, table_lambda = rice_values(env_id)
    return chain(CriticalStates(restart_prob=table_p if p is None else p, cut_prob=cut_prob),
                 RNDBonus(coef=table_lambda if lam is None else lam))
