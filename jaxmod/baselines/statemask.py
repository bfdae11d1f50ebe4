"""StateMask-R (Cheng et al., NeurIPS 2023; RICE's Table 1 column) as a baseline: every reset restarts from one of
the mask net's critical states (restart probability 1), no exploration bonus."""

from __future__ import annotations

from jaxmod.advice.restarts import CriticalStates
from jaxmod.ppo.modulator import Modulator


def modulator(cut_prob: float | None = None) -> Modulator:
    """StateMask-R: every reset restarts from a critical state (`cut_prob`: `CriticalStates`' mid-episode cuts;
    None: the env family's)."""
    return CriticalStates(restart_prob=1.0, cut_prob=cut_prob)
