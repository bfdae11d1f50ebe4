"""`jaxmod ultra` over 2 processes on loopback (`--coordinator/--num-processes/--process-id`, JAX's distributed
runtime on the CPU, 1 emulated device each) equals the same run in one process with 2 devices: the same 2-device
mesh, one seed per device, process 0 asking the (embedded scripted) advisor and broadcasting its advice and swap
decisions (`jaxmod.ultra.multihost.SharedRounds`).

Required: the evaluations of every method, every seed and chunk, the critical-state table and the advisor's counts
bit for bit (the same per-device programs on the same inputs); float metrics of a chunk row within ATOL + RTOL x
|value| (the tolerance of tests/test_ultra_mesh.py). Process 1 gets its own --out, which must stay unwritten (on a
cluster every process names the same shared folder and process 0 alone writes it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jaxmod.cli import main

ROOT = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4

FLAGS = ["ultra", "--env", "CartPole-v1", "--variant", "RA", "--advisor", "scripted", "--seeds", "2", "--seed", "0",
         "--pretrain-steps", "1024", "--refine-steps", "1536", "--chunks", "3", "--num-envs", "4", "--num-steps",
         "64", "--collect-envs", "4", "--collect-steps", "96", "--eval-envs", "4", "--eval-steps", "128",
         "--episodes-per-round", "3", "--sync-advice"]


def _env(devices: int, cache: Path) -> dict[str, str]:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", JAXMOD_CACHE_DIR=str(cache), COLUMNS="300")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()[2:] if ln.startswith("|")]


@pytest.mark.multidevice
@pytest.mark.timeout(900)  # 3 tiny ultra runs, 2 of them waiting for each other; generous for a loaded CPU
def test_two_processes_equal_one_process_and_process_one_writes_nothing(tmp_path):
    cmd = [sys.executable, "-m", "jaxmod", *FLAGS]
    coord = f"127.0.0.1:{_free_port()}"
    outs = {0: tmp_path / "multi", 1: tmp_path / "process1"}
    procs = [subprocess.Popen([*cmd, "--out", str(outs[i]), "--coordinator", coord, "--num-processes", "2",
                               "--process-id", str(i)], env=_env(1, tmp_path / f"xla{i}"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    one = subprocess.run([*cmd, "--out", str(tmp_path / "single")], env=_env(2, tmp_path / "xla"), cwd=ROOT,
                         capture_output=True, text=True, timeout=800)
    results = []
    for p in procs:
        try:
            results.append(p.communicate(timeout=800))
        finally:
            p.kill()
    assert one.returncode == 0, one.stderr[-3000:]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "CartPole-v1: 2 seeds on 2 cpu devices of 2 processes" in results[0][0]  # one mesh over both
    assert "final IQM" in results[0][0]  # process 0 reports the results table
    silent = [ln for ln in results[1][0].splitlines() if ln.strip() and "[Gloo]" not in ln and "peer ranks" not in ln]
    assert not silent, results[1][0]  # process 1 prints nothing of its own
    assert not outs[1].exists()  # and writes nothing to its --out
    multi, single = (json.loads((tmp_path / d / "ultra.json").read_text()) for d in ("multi", "single"))
    for name in ("PPO", "RA"):
        assert multi[name]["eval_returns"] == single[name]["eval_returns"], name
        assert len(multi[name]["chunks"]) == len(single[name]["chunks"]) == 3
        for a, b in zip(multi[name]["chunks"], single[name]["chunks"], strict=True):
            assert set(a) == set(b), (a, b)
            for key, value in b.items():
                if key == "advisor_latency_s" or not isinstance(value, (int, float)):
                    continue
                if isinstance(value, (bool, int)):
                    assert a[key] == value, (name, key, a[key], value)
                else:
                    assert abs(a[key] - value) <= ATOL + RTOL * abs(value), (name, key, a[key], value)
    tables = [(tmp_path / d / "critical_states.md").read_text() for d in ("multi", "single")]
    assert tables[0] == tables[1]
    assert {row[1] for row in _rows(tables[0]) if row[0] == "RA"} == {"0", "1"}  # both processes' seeds asked about
    counts = ("valid", "invalid", "failed", "round_asked", "round_candidates")
    st = [{k: run["advisor"][0][k] for k in counts} for run in (multi, single)]
    assert st[0] == st[1] and st[0]["valid"] > 0, st
    # every swap happened at the same chunk in both runs
    assert [r["swapped_advice"] for r in multi["RA"]["chunks"]] == [r["swapped_advice"] for r in single["RA"]["chunks"]]


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234"], "missing --num-processes, --process-id"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must lie in [0, 1]"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1", "--join-timeout", "0"],
     "--join-timeout must be >= 1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1", "--render", "gifs"],
     "--render draws one process's agent"),
])
def test_bad_multi_process_flags_are_one_line_before_joining(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["ultra", "--env", "CartPole-v1", "--num-envs", "4", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing written


def test_seeds_that_do_not_split_over_the_processes_devices_are_one_line(tmp_path, monkeypatch):
    """Multi-process, `SeedPrograms` must spread the seeds over every process's devices: else every process would
    run the whole one-device program (the check `jaxmod ultra` meets after joining, before compiling)."""
    import jax

    from jaxmod.parallel import SeedPrograms, seed_mesh
    from jaxmod.ppo.config import ConfigError

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    mesh = seed_mesh([jax.devices()[0]] * 2)  # stands for one device on each of 2 processes
    with pytest.raises(ConfigError, match="--seeds must be a multiple of 2 \\(got 3\\)"):
        SeedPrograms(3, mesh)
    assert SeedPrograms(4, mesh).sharding is not None


def _two_processes(flags: list[str], tmp_path: Path) -> list[tuple[int, str, str]]:
    """`jaxmod <flags>` as 2 processes x 1 emulated device on loopback: (exit code, stdout, stderr) of each."""
    coord = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "jaxmod", *flags, "--out", str(tmp_path / f"out{i}"),
                               "--coordinator", coord, "--num-processes", "2", "--process-id", str(i)],
                              env=_env(1, tmp_path / f"xla{i}"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=800))
        finally:
            p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


@pytest.mark.multidevice
@pytest.mark.timeout(900)
def test_the_asynchronous_schedule_over_two_processes_swaps_the_same_advice_in_both(tmp_path):
    """Without --sync-advice, when answers are swapped in depends on the advisor's timing (here slowed down, so a
    round's answers arrive while chunks run): process 0 decides and the other process follows. JAX itself checks, at
    every chunk, that the advice every process feeds its devices is the same (a process with other advice fails);
    the run completes with advice swapped in."""
    flags = [f for f in FLAGS if f != "--sync-advice"] + ["--advisor-latency", "0.05", "--quiet"]
    (rc0, _, err0), (rc1, out1, err1) = _two_processes(flags, tmp_path)
    assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
    assert not (tmp_path / "out1").exists()
    ra = json.loads((tmp_path / "out0" / "ultra.json").read_text())["RA"]
    assert any(row["swapped_advice"] for row in ra["chunks"]) and max(row["advice_valid"] for row in ra["chunks"]) > 0


@pytest.mark.multidevice
@pytest.mark.timeout(600)
def test_a_dead_http_advisor_stops_every_process_in_one_line(tmp_path):
    """Only process 0 asks an HTTP advisor; when its preflight fails, the other process is told and stops too (it
    waited for process 0 at the first collective for good before)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once the socket closes
    flags = [f if f != "scripted" else dead for f in FLAGS]
    (rc0, out0, err0), (rc1, out1, err1) = _two_processes(flags, tmp_path)
    assert rc0 == 2 and "jaxmod: error: no server at" in err0, err0[-1500:]
    assert rc1 == 2 and "jaxmod: error: process 0 stopped the run before pretraining" in err1, err1[-1500:]
    for i in (0, 1):
        assert not (tmp_path / f"out{i}" / "ultra.json").exists()


def test_shared_rounds_carry_process_0s_advice_flags_and_stop_bit_for_bit(monkeypatch):
    """`SharedRounds.take` as the other processes see it: process 0's packed advice (every bit: -0.0 and NaN too),
    whether its round is still pending, and its stop (its advisor failed: process 0 raises its error, the others
    `AdvisorStopped`). The broadcast is replaced by a recorder of what process 0 sends."""
    import numpy as np

    import jaxmod.ultra.multihost as M

    empty = {"valid": np.zeros((2, 3), bool), "obs": np.zeros((2, 3, 4), np.float32), "step": np.zeros((2, 3), np.int32)}
    advice = {"valid": np.array([[True, False, True], [False, False, True]]),
              "obs": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "step": np.arange(6, dtype=np.int32).reshape(2, 3)}
    advice["obs"][0, 0, :2] = [-0.0, np.nan]
    sent: list = []

    class Rounds:  # process 0's advice rounds: one take with a round left pending, then a failing one
        pending, calls = None, 0

        def take(self, wait=True, only=None):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("the advisor stopped advising")
            self.pending = object()
            return advice, {"swapped_advice": True, "packed": 4}

    monkeypatch.setattr(M, "broadcast_from_primary", lambda data, name: sent.append(data.copy()) or data)
    primary = M.SharedRounds(Rounds(), empty)
    assert primary.take(wait=False)[1]["packed"] == 4  # process 0 keeps its own row facts
    with pytest.raises(RuntimeError, match="stopped advising"):
        primary.take()
    received = iter(sent)
    monkeypatch.setattr(M, "broadcast_from_primary", lambda data, name: next(received))
    other = M.SharedRounds(None, empty)
    got, facts = other.take()
    assert facts == {"swapped_advice": True} and other.pending is not None
    for key in advice:
        assert got[key].dtype == advice[key].dtype and got[key].tobytes() == advice[key].tobytes(), key
    with pytest.raises(M.AdvisorStopped, match="process 0 stopped the run"):
        other.take()
