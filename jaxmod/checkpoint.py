"""Save and restore a full training state (params, optimiser, env + normaliser, rng, step) with orbax.

A checkpoint folder holds `state/` (orbax) and `meta.json` (config, number of seeds, free-form
metadata). Restoring rebuilds the exact pytree structure from the config, so a resumed run continues
bit-for-bit where the saved one stopped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxmod.ppo.config import PPOConfig
from jaxmod.ppo.modulator import Identity, Modulator
from jaxmod.ppo.train import PPOLearner, TrainState

META_FILE = "meta.json"
STATE_DIR = "state"


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: the state (with a leading seed axis if `num_seeds`), its config, metadata."""

    state: TrainState
    config: PPOConfig
    num_seeds: int | None
    meta: dict[str, Any]


def save_checkpoint(directory: str | Path, state: TrainState, config: PPOConfig,
                    num_seeds: int | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write `state` (batched over `num_seeds` seeds, or a single run if None) to `directory`, replacing it.
    A refinement state (ULTRA or a baseline) is restored by passing its modulator to `load_checkpoint`."""
    directory = Path(directory).absolute()
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / STATE_DIR, jax.device_get(state))
    checkpointer.wait_until_finished()
    checkpointer.close()
    (tmp / META_FILE).write_text(json.dumps(
        {"config": config.to_dict(), "num_seeds": num_seeds, "meta": meta or {}}, indent=2, sort_keys=True),
        encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)  # the old checkpoint is replaced only once the new one is complete
    return directory


def abstract_state(config: PPOConfig, num_seeds: int | None, modulator: Modulator | None = None) -> TrainState:
    """Shapes and dtypes of a train state for `config` (and `modulator`), without running anything."""
    learner = PPOLearner(config, modulator if modulator is not None else Identity())
    key = jax.random.PRNGKey(0)
    if num_seeds is None:
        return jax.eval_shape(learner.init, key)
    return jax.eval_shape(jax.vmap(learner.init), jax.random.split(key, num_seeds))


def load_checkpoint(directory: str | Path, modulator: Modulator | None = None) -> Checkpoint:
    """Restore what `save_checkpoint` wrote; a refinement state needs the `modulator` it was trained with (its
    aux state's structure). Raises FileNotFoundError with the path if there is none, ValueError if the saved
    state's structure differs from what `config` and `modulator` build."""
    directory = Path(directory).absolute()
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"no jaxmod checkpoint at {directory} (missing {META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    config = PPOConfig.from_dict(meta["config"])
    target = abstract_state(config, meta["num_seeds"], modulator)
    checkpointer = ocp.StandardCheckpointer()
    try:
        state = checkpointer.restore(directory / STATE_DIR, target)
    except ValueError as err:
        if "tree structures do not match" not in str(err):
            raise
        raise ValueError(f"the checkpoint at {directory} holds a train state of another structure: load it with the "
                         "modulator it was trained with (or the jaxmod version that wrote it)") from None
    finally:
        checkpointer.close()
    return Checkpoint(state=state, config=config, num_seeds=meta["num_seeds"], meta=meta["meta"])
