"""Data parallel (one seed's envs and minibatches split over devices) and multi-host training, on emulated CPU
devices: what `jaxmod.parallel` states, tested as stated.

Tolerance: a data-parallel program is the one-device program partitioned by XLA; only the order of floating-point
sums changes (per-device partial sums of the loss and gradient, then an all-reduce), so every metric of every update
must agree within 1e-5 + 1e-4 x its value, and every parameter within 1e-5, on a tiny CartPole run (6 updates; over
long runs, as with any change of summation order, trajectories may drift apart)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxmod.cli import main

ROOT = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4  # the stated tolerance (module doc)


def _env(devices: int) -> dict[str, str]:
    # unbuffered: Python's lines reach the pipe whole as printed; gloo's C++ buffer, flushed at exit, can otherwise
    # land in the middle of Python's last block (it split process 0's "result" line once)
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


DATA_PARALLEL = textwrap.dedent("""
    import json, jax, numpy as np
    from jaxmod.parallel import MultiSeed, seed_keys, seed_mesh
    from jaxmod.ppo.config import ConfigError
    from tests.conftest import TINY
    assert jax.device_count() == 4, jax.devices()
    keys = seed_keys(0, 2)
    ref_state, ref = MultiSeed(TINY, 2, mesh=seed_mesh(jax.devices()[:1])).train(keys)
    out = {}
    for shards in (2, 4):
        dp = MultiSeed(TINY, 2, env_shards=shards)
        state = dp.init(keys)
        compiled = dp.runner(TINY.num_updates).lower(state).compile()
        hlo = compiled.as_text()
        state, m = compiled(state)
        excess = max(float(np.max(np.abs(np.asarray(m[k]) - np.asarray(ref[k]))
                                  - ATOL - RTOL * np.abs(np.asarray(ref[k])))) for k in ref)
        params = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)))
        out[shards] = {"mesh": dict(dp.sharding.mesh.shape), "block": list(state.obs.addressable_shards[0].data.shape),
                       "devices": len(state.obs.sharding.device_set), "excess": excess, "params": params,
                       "all_reduce": "all-reduce" in hlo, "same_keys": sorted(m) == sorted(ref)}
    errors = []
    for seeds, shards in ((3, 2), (2, 3)):
        try:
            MultiSeed(TINY, seeds, env_shards=shards)
        except ConfigError as err:
            errors.append(str(err))
    print(json.dumps({"runs": out, "errors": errors}))
""").replace("ATOL", repr(ATOL)).replace("RTOL", repr(RTOL))


@pytest.mark.timeout(1000)  # ~50 CPU s (6 small compiles); generous for a loaded machine
def test_data_parallel_equals_one_device_within_rounding():
    proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL], env=_env(4), cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    two, four = result["runs"]["2"], result["runs"]["4"]
    # 2 seeds x 2 env shards: each device holds 1 seed's 2 of 4 envs; 1 seed row x 4 env shards: 2 seeds' 1 env
    assert two["mesh"] == {"seeds": 2, "envs": 2} and two["block"] == [1, 2, 4] and two["devices"] == 4, two
    assert four["mesh"] == {"seeds": 1, "envs": 4} and four["block"] == [2, 1, 4] and four["devices"] == 4, four
    for run in (two, four):
        assert run["same_keys"] and run["all_reduce"], run  # the gradient (and loss) sums cross devices
        assert run["excess"] <= 0.0, run  # every metric of every update within ATOL + RTOL |value|
        assert run["params"] <= ATOL, run
    assert len(result["errors"]) == 2, result
    assert "seeds=3 must be a multiple of the 2 seed shard(s)" in result["errors"][0]
    assert "env_shards=3 must divide num_envs=4" in result["errors"][1]


TRAIN = ["train", "--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "16", "--total-steps", "192",
         "--update-epochs", "2", "--num-minibatches", "2", "--chunks", "1", "--seeds", "2", "--env-shards", "2",
         "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multidevice  # `make test-multidevice` (CI runs it after `make test`): two processes, ~30 s
@pytest.mark.timeout(1000)  # ~50 CPU s; generous for a loaded machine (the subprocesses wait for each other)
def test_two_processes_on_loopback_equal_one_process(tmp_path):
    """2 processes x 2 devices (`--coordinator/--num-processes/--process-id`) = 1 process x 4 devices: the same
    2 x 2 mesh spans both processes; process 0 alone writes the metrics and the checkpoint."""
    from jaxmod.checkpoint import load_checkpoint
    from jaxmod.reporting import read_metrics

    cmd = [sys.executable, "-m", "jaxmod"]
    multi, single = tmp_path / "multi", tmp_path / "single"
    coord = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([*cmd, *TRAIN, "--out", str(multi), "--coordinator", coord, "--num-processes", "2",
                               "--process-id", str(i)], env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    one = subprocess.run([*cmd, *TRAIN, "--out", str(single)], env=_env(4), cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900))
        finally:
            p.kill()
    assert one.returncode == 0, one.stderr[-3000:]
    for p, (_, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    # gloo's own connection lines (its threads' lines may run into each other)
    silent = [ln for ln in outs[1][0].splitlines() if ln.strip() and "[Gloo]" not in ln and "peer ranks" not in ln]
    assert "result" in outs[0][0] and not silent, outs  # process 0 reports, process 1 prints nothing of its own
    a, b = read_metrics(multi / "metrics.jsonl"), read_metrics(single / "metrics.jsonl")
    assert len(a["update"]) == 3 and list(a["update"]) == list(b["update"])  # written once, not once per process
    for key in b:
        assert np.all(np.abs(a[key] - b[key]) <= ATOL + RTOL * np.abs(b[key])), (key, a[key], b[key])
    pa, pb = load_checkpoint(multi / "checkpoint").state.params, load_checkpoint(single / "checkpoint").state.params
    import jax

    assert max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True)) <= ATOL


def _two_processes(flags: list[str]) -> list[tuple[int, str, str]]:
    """Run `jaxmod <flags>` as 2 processes x 2 emulated devices on loopback; returns (exit code, stdout, stderr)."""
    coord = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "jaxmod", *flags, "--coordinator", coord, "--num-processes", "2",
                               "--process-id", str(i)], env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = []
    for p in procs:
        try:
            outs.append((*p.communicate(timeout=900),))
        finally:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


@pytest.mark.multidevice  # `make test-multidevice`: two processes twice, ~35 s
@pytest.mark.timeout(1500)  # ~100 CPU s
def test_a_multi_host_run_stopped_and_resumed_equals_one_uninterrupted_process(tmp_path):
    """2 processes run the first of 2 chunks (--max-chunks 1), then both resume from process 0's checkpoint: the
    metrics equal one process's uninterrupted run on the same 2 x 2 mesh (within the data-parallel tolerance)."""
    from jaxmod.reporting import read_metrics

    run = ["train", "--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "16", "--total-steps", "384",
           "--update-epochs", "2", "--num-minibatches", "2", "--chunks", "2", "--seeds", "2", "--env-shards", "2",
           "--quiet"]  # TRAIN's run, twice as long, in 2 chunks of 3 updates
    multi, single = tmp_path / "multi", tmp_path / "single"
    for rc, _, err in _two_processes([*run, "--out", str(multi), "--max-chunks", "1"]):
        assert rc == 0, err[-3000:]
    assert len(read_metrics(multi / "metrics.jsonl")["update"]) == 3
    for rc, _, err in _two_processes([*run, "--out", str(multi), "--resume"]):
        assert rc == 0, err[-3000:]
    one = subprocess.run([sys.executable, "-m", "jaxmod", *run, "--out", str(single)], env=_env(4), cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = read_metrics(multi / "metrics.jsonl"), read_metrics(single / "metrics.jsonl")
    assert len(a["update"]) == 6 and list(a["update"]) == list(b["update"])
    for key in b:
        assert np.all(np.abs(a[key] - b[key]) <= ATOL + RTOL * np.abs(b[key])), (key, a[key], b[key])


@pytest.mark.parametrize("flags, message", [
    (["--env-shards", "3"], "env_shards=3 must divide num_envs=4"),
    (["--env-shards", "2"], "env_shards=2 must divide the 1 device(s) available"),
    (["--coordinator", "127.0.0.1:1234"], "missing --num-processes, --process-id"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "--coordinator must be HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must lie in [0, 1]"),
    (["--coordinator", "127.0.0.1:²", "--num-processes", "2", "--process-id", "1"], "--coordinator must be HOST:PORT"),
    (["--coordinator", "no-such-host.invalid:1234", "--num-processes", "2", "--process-id", "1"],
     "the host 'no-such-host.invalid' does not resolve here"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1", "--join-timeout", "0"],
     "--join-timeout must be >= 1"),
])
def test_bad_layout_and_multihost_flags_one_line_before_compiling(tmp_path, capsys, flags, message):
    argv = ["train", "--env", "CartPole-v1", "--num-envs", "4", "--out", str(tmp_path / "run"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.timeout(120)
def test_a_coordinator_nobody_serves_is_one_line_after_the_join_timeout(tmp_path):
    """Process 1 waiting for a process 0 that never starts: after --join-timeout, one line that says what to check
    (JAX itself aborts the process with a stack trace after 300 s), exit 1, nothing written."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jaxmod", "train", "--env", "CartPole-v1", "--num-envs", "4",
                           "--out", str(out), "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                           "--process-id", "1", "--join-timeout", "3"], env=_env(1), cwd=ROOT, capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("jaxmod:")]
    assert len(lines) == 1 and "could not reach the coordinator at 127.0.0.1:" in lines[0], proc.stderr[-2000:]
    assert "within 3 s" in lines[0] and "--join-timeout" in lines[0]
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.timeout(120)
def test_process_0_whose_peers_never_come_is_one_line_after_the_join_timeout(tmp_path):
    """Process 0 waiting for a process 1 that never starts: one line naming the missing process, exit 1 (JAX's own
    join aborted with a fatal log and a stack trace)."""
    proc = subprocess.run([sys.executable, "-m", "jaxmod", *TRAIN, "--out", str(tmp_path / "run"), "--coordinator",
                           f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "0",
                           "--join-timeout", "3"], env=_env(2), cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "process 0 waited 3 s for process(es) 1 of 2 to join" in lines[0], lines


@pytest.mark.timeout(300)
def test_processes_started_with_different_settings_both_stop_in_one_line(tmp_path):
    """Process 1 with another --seeds (or --num-processes) than process 0: both refuse before JAX's runtime starts
    (it aborted both with a collective mismatch), one line each."""
    for other, words in ((["--seeds", "4"], "was started with other run settings than process 0"),
                         (["--num-processes", "3"], "was started with --num-processes 3, process 0 with 2")):
        coord = f"127.0.0.1:{_free_port()}"
        flags = [[*TRAIN, "--coordinator", coord, "--num-processes", "2", "--process-id", "0"],
                 [*TRAIN, "--coordinator", coord, "--num-processes", "2", "--process-id", "1", *other]]
        procs = [subprocess.Popen([sys.executable, "-m", "jaxmod", *f, "--out", str(tmp_path / f"o{i}"),
                                   "--join-timeout", "60"], env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i, f in enumerate(flags)]
        for p in procs:
            try:
                _, err = p.communicate(timeout=120)
            finally:
                p.kill()
            lines = err.strip().splitlines()
            assert p.returncode == 1 and len(lines) == 1 and words in lines[0], (other, lines)


@pytest.mark.timeout(300)
def test_train_seeds_that_do_not_split_over_the_processes_are_one_line_on_each(tmp_path):
    """`jaxmod train` on 2 processes x 2 devices with 3 seeds: refused as `jaxmod ultra` refuses it (each process
    used to run all 3 seeds on its own device)."""
    for (rc, _out, err), i in zip(_two_processes([*TRAIN, "--seeds", "3", "--env-shards", "1", "--join-timeout", "60",
                                                 "--out", str(tmp_path / "run")]), (0, 1), strict=True):
        lines = err.strip().splitlines()
        assert rc == 2 and "--seeds must be a multiple of 4 (got 3)" in lines[-1], (i, lines)


@pytest.mark.multidevice  # `make test-multidevice`: 3 subprocess runs, ~40 s
@pytest.mark.timeout(600)
def test_a_data_parallel_run_resumes_on_one_device_with_another_env_shards(tmp_path):
    """--env-shards is a layout, not a setting: a run of 2 env shards on 4 devices, stopped after 2 of 4 chunks,
    resumes on one device with --env-shards 1 and ends as an uninterrupted one-device run, within rounding (it was
    refused both ways: the 2 shards do not fit one device, and --resume refused the changed flag)."""
    from jaxmod.reporting import read_metrics

    flags = ["train", "--env", "CartPole-v1", "--total-steps", "4096", "--num-envs", "4", "--chunks", "4", "--seeds",
             "2", "--quiet"]

    def jaxmod(*args: str, devices: int) -> None:
        proc = subprocess.run([sys.executable, "-m", "jaxmod", *args], env=_env(devices), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    run, one = tmp_path / "run", tmp_path / "one"
    jaxmod(*flags, "--env-shards", "2", "--max-chunks", "2", "--out", str(run), devices=4)
    jaxmod("train", "--resume", "--env-shards", "1", "--quiet", "--out", str(run), devices=1)
    jaxmod(*flags, "--out", str(one), devices=1)
    a, b = read_metrics(run / "metrics.jsonl"), read_metrics(one / "metrics.jsonl")
    assert list(a["update"]) == list(b["update"]) and len(b["update"]) == 8
    for key in b:
        assert np.all(np.abs(a[key] - b[key]) <= 1e-6 + 1e-3 * np.abs(b[key])), (key, a[key], b[key])
