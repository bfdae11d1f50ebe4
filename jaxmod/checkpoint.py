"""Save and restore a full training state (params, optimiser, env + normaliser, rng, step) with orbax.

A checkpoint folder is an `orbax.checkpoint.CheckpointManager` directory: one sub-folder per saved step (the train
state's update count), each holding two items, `state/` (`args.StandardSave`) and `meta/` (`args.JsonSave`: config,
number of seeds, free-form metadata), plus `digest.json` (jaxmod's choice: the SHA-256 of every file of the step, as
orbax checks none of them: a bit flipped in an array's data file restores silently to other numbers). The manager
writes each step atomically (into a temporary folder, renamed when complete); jaxmod keeps the newest `keep` steps,
deleting older ones only after the new step is complete and digested (a kill at any moment leaves a restorable step). Restoring rebuilds the exact pytree structure from the config, so a resumed
run continues bit-for-bit where the saved one stopped.

`load_checkpoint` takes the newest step whose files match their digests and restore; a damaged step (a file
truncated, changed or missing, the meta missing, the save cut before its digest was written) is skipped with one log
line naming the file, and when every step is damaged it raises `CheckpointError` naming the newest one's file.
An earlier jaxmod's single-checkpoint folder (`state/` + `meta.json`) still loads (read path only: the next save
into that folder writes the new layout and removes the old files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxmod.config import KEEP_CHECKPOINTS, parse_json
from jaxmod.ppo.config import PPOConfig
from jaxmod.ppo.modulator import Identity, Modulator
from jaxmod.ppo.train import PPOLearner, TrainState
from jaxmod.reporting import write_atomically

STATE_DIR = "state"  # the train state's item (and, in an earlier jaxmod's folder, its orbax folder)
META_ITEM = "meta"  # the JSON item: {"config", "num_seeds", "meta"}
META_FILE = "meta.json"  # an earlier jaxmod's single-checkpoint folder: its metadata file
DIGEST_FILE = "digest.json"  # {relative path: sha256} of every file of a step, written once the step is complete

log = logging.getLogger("jaxmod.checkpoint")


class CheckpointError(ValueError):
    """Every checkpoint in a folder is damaged; the message (one line) names the newest one's damaged file."""


class _Damaged(Exception):
    """One step cannot be restored; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: the state (with a leading seed axis if `num_seeds`), its config, metadata, and the
    step (update count) it was saved at (None for an earlier jaxmod's single-checkpoint folder)."""

    state: TrainState
    config: PPOConfig
    num_seeds: int | None
    meta: dict[str, Any]
    step: int | None = None


class _OrbaxRecords(logging.Filter):
    """orbax logs through absl's logger, also for what jaxmod handles itself (a read-only manager opened to load, a
    damaged `_CHECKPOINT_METADATA` it parses on opening a folder): printed, those lines break the CLI's one-line
    errors and warnings. jaxmod reports every checkpoint failure itself, in one line naming the file (the digest,
    `CheckpointError`), so orbax's records are routed to the `jaxmod.checkpoint.orbax` logger at DEBUG (shown only
    when logging is configured at DEBUG) instead of printed (jaxmod's choice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname.replace("\\", "/"):
            return True
        _orbax_log.debug("%s: %s", record.levelname, record.getMessage(), exc_info=record.exc_info)
        return False


_orbax_log = logging.getLogger("jaxmod.checkpoint.orbax")
logging.getLogger("absl").addFilter(_OrbaxRecords())


@contextlib.contextmanager
def _interrupts_after_the_save() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives during a save until the save is complete, then deliver it to the handler
    that was there (Python's: KeyboardInterrupt) (jaxmod's choice): orbax catches BaseException in places (its
    manager's `wait_until_finished` logs and drops it) and a save interrupted half-way leaves its threads writing, so
    an interrupt is honoured only between saves, with the step complete and digested. A second SIGINT during the same
    save raises KeyboardInterrupt at once; a save that fails instead raises its own error (which stops the run too),
    noting the interrupt. Outside the main thread (no signal handlers there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)
        if len(pending) > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    except BaseException as err:  # the save failed: its error stops the run, and says the interrupt was not lost
        if pending and not isinstance(err, KeyboardInterrupt):
            err.add_note("a Ctrl-C (SIGINT) arrived during this save; the run stops with the save's error")
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        signal.raise_signal(signal.SIGINT)  # the held interrupt, now that the save is complete


def _manager(directory: Path, keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    # a reading manager is given the read-only values orbax would otherwise warn that it sets itself
    alone, create = {}, not read_only
    if jax.process_count() > 1:  # a multi-host run: this process's manager alone (orbax then creates no folder)
        alone, create = {"multiprocessing_options": _this_process_only()}, False
        if not read_only:
            directory.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, enable_async_checkpointing=False,
                                           read_only=read_only, create=create,
                                           cleanup_tmp_directories=not read_only,
                                           save_interval_steps=0 if read_only else 1, **alone)
    return ocp.CheckpointManager(directory, options=options, item_names=(STATE_DIR, META_ITEM))


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    """Orbax's default syncs every process of a multi-host run at each save; jaxmod saves host arrays from process 0
    alone (`jaxmod.parallel.gather`) and every process reads alone, so each manager is its own process's."""
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})


def _digest(step_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(step_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != DIGEST_FILE}


def _is_legacy(directory: Path) -> bool:
    return (directory / META_FILE).is_file()


def _steps(directory: Path) -> list[int]:
    """The steps saved in `directory`, newest first (orbax's naming: a folder per step, named by the number)."""
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.is_dir() and _is_step_name(p.name)), reverse=True)


def _is_step_name(name: str) -> bool:
    """A step folder's name: ASCII digits only (str.isdigit also takes '²' or '٣', which int() refuses or reads as
    another name than orbax writes)."""
    return name.isascii() and name.isdigit()


def has_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` holds a jaxmod checkpoint (of either layout; damaged or not)."""
    directory = Path(directory)
    return _is_legacy(directory) or bool(_steps(directory))


def save_checkpoint(directory: str | Path, state: TrainState, config: PPOConfig, num_seeds: int | None = None,
                    meta: dict[str, Any] | None = None, keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write `state` (batched over `num_seeds` seeds, or a single run if None) to `directory` as the step of its
    update count, keeping the newest `keep` steps. A step already there at or after that count (a killed run's
    future, when a resumed run passes it again) is replaced. A refinement state (ULTRA or a baseline) is restored by
    passing its modulator to `load_checkpoint`. A Ctrl-C during the save is honoured once the save is complete
    (`_interrupts_after_the_save`)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    directory = Path(directory).absolute()
    host = jax.device_get(state)
    step = int(np.asarray(host.update_step).reshape(-1)[0])
    record = {"config": config.to_dict(), "num_seeds": num_seeds, "meta": meta or {}}
    with _interrupts_after_the_save():
        with _manager(directory) as manager:  # no automatic rotation: older steps go only once this one is digested
            for old in manager.all_steps():
                if old >= step:
                    manager.delete(old)
            manager.save(step, args=ocp.args.Composite(**{STATE_DIR: ocp.args.StandardSave(host),
                                                           META_ITEM: ocp.args.JsonSave(record)}))
            manager.wait_until_finished()
            step_dir = directory / str(step)
            write_atomically(step_dir / DIGEST_FILE, json.dumps(_digest(step_dir), indent=1, sort_keys=True))
            for old in sorted(manager.all_steps())[:-keep]:  # a kill before this line leaves one step too many, never 0
                manager.delete(old)
        if _is_legacy(directory):  # an earlier jaxmod's checkpoint, now superseded
            (directory / META_FILE).unlink()
            shutil.rmtree(directory / STATE_DIR, ignore_errors=True)
    return directory


def abstract_state(config: PPOConfig, num_seeds: int | None, modulator: Modulator | None = None) -> TrainState:
    """Shapes and dtypes of a train state for `config` (and `modulator`), without running anything."""
    learner = PPOLearner(config, modulator if modulator is not None else Identity())
    key = jax.random.PRNGKey(0)
    if num_seeds is None:
        return jax.eval_shape(learner.init, key)
    return jax.eval_shape(jax.vmap(learner.init), jax.random.split(key, num_seeds))


def _structure_error(directory: Path) -> ValueError:
    return ValueError(f"the checkpoint at {directory} holds a train state of another structure: load it with the "
                      "modulator it was trained with (or the jaxmod version that wrote it)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def _verify(step_dir: Path) -> None:
    """Raise `_Damaged` naming the first file of the step that is missing or differs from its digest."""
    digest_path = step_dir / DIGEST_FILE
    try:
        expected = parse_json(digest_path.read_text(encoding="utf-8"))
        assert isinstance(expected, dict)
    except FileNotFoundError:
        raise _Damaged(f"{digest_path} is missing (the save did not finish)") from None
    except (OSError, ValueError, AssertionError, UnicodeDecodeError):
        raise _Damaged(f"{digest_path} is damaged") from None
    for name, sha in sorted(expected.items()):
        path = step_dir / name
        if not path.is_file():
            raise _Damaged(f"{path} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            raise _Damaged(f"{path} is damaged (it differs from what was saved)")


def _read_record(directory: Path, step: int) -> dict[str, Any]:
    path = directory / str(step) / META_ITEM / "metadata"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        PPOConfig.from_dict(record["config"])
        return record
    except FileNotFoundError:
        raise _Damaged(f"{path} is missing") from None
    except Exception as err:  # noqa: BLE001  (a damaged file can fail to parse in many ways)
        raise _Damaged(f"{path} is damaged ({_first_line(err)})") from None


def _load_step(directory: Path, step: int, modulator: Modulator | None) -> Checkpoint:
    _verify(directory / str(step))
    record = _read_record(directory, step)
    config = PPOConfig.from_dict(record["config"])
    target = abstract_state(config, record["num_seeds"], modulator)
    try:
        with _manager(directory, read_only=True) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(**{STATE_DIR: ocp.args.StandardRestore(target)}))
    except ValueError as err:
        if "tree structures do not match" in str(err):
            raise _structure_error(directory) from None
        raise _Damaged(f"{directory / str(step) / STATE_DIR} is damaged ({_first_line(err)})") from None
    except Exception as err:  # noqa: BLE001  (orbax and tensorstore raise many kinds for a damaged file)
        raise _Damaged(f"{directory / str(step) / STATE_DIR} is damaged ({_first_line(err)})") from None
    return Checkpoint(state=restored[STATE_DIR], config=config, num_seeds=record["num_seeds"], meta=record["meta"],
                      step=step)


def _load_legacy(directory: Path, modulator: Modulator | None) -> Checkpoint:
    """An earlier jaxmod's single-checkpoint folder (`state/` + `meta.json`): no fallback, no digest."""
    try:
        record = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        config = PPOConfig.from_dict(record["config"])
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{directory / META_FILE} is damaged ({_first_line(err)})") from None
    target = abstract_state(config, record["num_seeds"], modulator)
    checkpointer = ocp.StandardCheckpointer()
    try:
        state = checkpointer.restore(directory / STATE_DIR, target)
    except ValueError as err:
        if "tree structures do not match" in str(err):
            raise _structure_error(directory) from None
        raise CheckpointError(f"{directory / STATE_DIR} is damaged ({_first_line(err)})") from None
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{directory / STATE_DIR} is damaged ({_first_line(err)})") from None
    finally:
        checkpointer.close()
    return Checkpoint(state=state, config=config, num_seeds=record["num_seeds"], meta=record["meta"])


def step_folder(path: str | Path) -> tuple[Path, int] | None:
    """(checkpoint folder, step) when `path` is one step of a checkpoint (`<run>/checkpoint/<update>`), else None."""
    path = Path(path)
    if _is_step_name(path.name) and int(path.name) in _steps(path.parent):
        return path.parent, int(path.name)
    return None


def load_checkpoint(directory: str | Path, modulator: Modulator | None = None,
                    warn: Callable[[str], None] | None = None, step: int | None = None) -> Checkpoint:
    """Restore the newest intact step `save_checkpoint` wrote (or an earlier jaxmod's single checkpoint); a refinement
    state needs the `modulator` it was trained with (its aux state's structure). Each damaged step skipped is one
    line to `warn` (default: this module's logger) naming its file. `step`: restore that step (an update count
    saved there) and no other. Raises FileNotFoundError with the path if there is no checkpoint (or no such step),
    `CheckpointError` (one line, the newest step's damaged file) if every step is damaged (or the step asked for
    is), ValueError if the saved state's structure differs from what `config` and `modulator` build."""
    directory = Path(directory).absolute()
    if step is not None:
        if step not in _steps(directory):
            raise FileNotFoundError(f"no step {step} in the jaxmod checkpoint at {directory} (saved: "
                                    f"{', '.join(map(str, sorted(_steps(directory)))) or 'none'})")
        try:
            return _load_step(directory, step, modulator)
        except _Damaged as err:
            raise CheckpointError(f"{err}: the checkpoint of update {step} cannot be restored") from None
    if _is_legacy(directory) and not _steps(directory):
        return _load_legacy(directory, modulator)
    steps = _steps(directory)
    if not steps:
        raise FileNotFoundError(f"no jaxmod checkpoint at {directory}")
    damaged: list[str] = []
    for step in steps:
        try:
            ckpt = _load_step(directory, step, modulator)
        except _Damaged as err:
            damaged.append(str(err))
            continue
        for text in damaged:
            (warn or log.warning)(f"{text}: restored the checkpoint of update {step} instead")
        return ckpt
    more = f" (and the {len(steps) - 1} earlier checkpoint(s) there are damaged too)" if len(steps) > 1 else ""
    raise CheckpointError(f"{damaged[0]}{more}: the checkpoint cannot be restored")


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The newest readable `{"config", "num_seeds", "meta"}` record in `directory` without restoring the state (a
    quick check of what a checkpoint holds); FileNotFoundError if there is none, `CheckpointError` if none is
    readable."""
    directory = Path(directory).absolute()
    if _is_legacy(directory) and not _steps(directory):
        try:
            return json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{directory / META_FILE} is damaged ({_first_line(err)})") from None
    steps = _steps(directory)
    if not steps:
        raise FileNotFoundError(f"no jaxmod checkpoint at {directory}")
    first: str | None = None
    for step in steps:
        try:
            return _read_record(directory, step)
        except _Damaged as err:
            first = first or str(err)
    raise CheckpointError(f"{first}: the checkpoint cannot be read")
