"""StateMask-R (Cheng et al., NeurIPS 2023; RICE's Table 1 column) as a baseline: every reset restarts from one of
the mask net's critical states (restart probability 1), no exploration bonus."""

from __future__ import annotations

from jaxmod.advice.restarts import CriticalStates
from jaxmod.ppo.modulator import Modulator


def modulator() -> Modulator:
    return CriticalStates(restart_prob=1.0)
