"""`jaxmod ultra` with its seeds spread over 4 emulated CPU devices (`jaxmod.parallel.SeedPrograms`), and with each
seed's envs split over 2 of them (`--env-shards 2`, data parallel), equals the same run on one device; the sharded
run repeats itself exactly.

One subprocess (4 devices): `jaxmod ultra` through the CLI (4 seeds, continued PPO and ULTRA-RA with the embedded
scripted advisor, synchronous advice), the same command again after dropping jax's in-memory caches (its programs
come from the persistent compile cache), the same with `--env-shards 2` (a 2 seeds x 2 envs mesh), and the same
config through `UltraRun` on a one-device mesh.

Tolerance (stated in the module doc of `jaxmod.parallel`): a seed's maths is the same on any device, but the
one-device program computes 4 seeds in one batch and each device of the mesh 1, so floating-point results may
differ by rounding. Required: the evaluations (every seed, every chunk), the critical-state table, the advisor's
valid answers and every count bit for bit; float metrics of a chunk row within ATOL + RTOL x |value|. Measured
(2026-12-01, this config): evaluations, tables, counts and all of continued PPO's rows bit for bit; of RA's 48
row numbers 2 (seeds over 4 devices) and 4 (--env-shards 2) differ, advice_trust and shaping by ~1e-7 relative,
at most 0.4% of the tolerance; the seeds-over-4-devices run repeated from the compile cache is bit for bit itself.

A second subprocess: RICE (its mask nets trained by their own PPOLearner) with `--env-shards 2` vs one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4  # float metrics of a chunk row (losses, fractions) one device vs four

FLAGS = ["--env", "CartPole-v1", "--variant", "RA", "--advisor", "scripted", "--seeds", "4", "--seed", "0",
         "--pretrain-steps", "2048", "--refine-steps", "3072", "--chunks", "3", "--num-envs", "4", "--num-steps",
         "128", "--collect-envs", "4", "--collect-steps", "96", "--eval-envs", "4", "--eval-steps", "128",
         "--episodes-per-round", "3", "--sync-advice"]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax
    from jax._src import monitoring
    import jaxmod.ultra.pipeline as P
    from jaxmod.cli import main
    from jaxmod.parallel import SeedPrograms, seed_mesh
    from jaxmod.ultra.config import UltraConfig

    assert jax.device_count() == 4, jax.devices()
    events = []
    monitoring.register_event_listener(lambda name, **_: events.append(name))
    runs = []  # the UltraRun each CLI run builds (a spy: the run itself is the CLI's)
    init = P.UltraRun.__init__
    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        runs.append(self)
    P.UltraRun.__init__ = spy
    root, flags = Path(sys.argv[1]), json.loads(sys.argv[2])

    def programs(run):  # devices of each compiled program's arguments; how often the recording program compiled
        out = {}
        for group, prog in run._programs.items():
            leaves = jax.tree.leaves(prog.run_fn.input_shardings) + jax.tree.leaves(prog.evaluate_fn.input_shardings)
            out["+".join(group)] = {"devices": sorted({len(s.device_set) for s in leaves}),
                                    "envs_split": any("envs" in str(getattr(s, "spec", "")) for s in leaves),
                                    "record_compiles": prog.record_fn._cache_size()}
        return out

    assert main(["ultra", *flags, "--out", str(root / "four")]) == 0
    four = programs(runs[-1])
    pre_hits = events.count("/jax/compilation_cache/cache_hits")
    jax.clear_caches()  # jax's in-memory caches: the next run's programs come from the persistent cache
    assert main(["ultra", *flags, "--quiet", "--out", str(root / "again")]) == 0
    hits = events.count("/jax/compilation_cache/cache_hits") - pre_hits
    assert main(["ultra", *flags, "--env-shards", "2", "--out", str(root / "dp")]) == 0
    dp = programs(runs[-1])
    config = UltraConfig.from_dict(json.loads((root / "four" / "config.json").read_text()))
    one = P.UltraRun(config, root / "one", mesh=seed_mesh(jax.devices()[:1]))
    one.run()
    print(json.dumps({"four": four, "dp": dp, "one": programs(one), "one_devices": one.layout.num_devices,
                      "again_hits": hits, "five_seeds": SeedPrograms(5).describe(),
                      "five_sharded": SeedPrograms(5).sharding is not None}))
""")


def _rows(table: str) -> list[list[str]]:
    """critical_states.md's data rows, as cells."""
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()[2:] if ln.startswith("|")]


@pytest.mark.multidevice
@pytest.mark.timeout(1500)  # 4 tiny ultra runs (the second from the compile cache); generous for a loaded CPU
def test_ultra_over_four_devices_equals_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), JAXMOD_CACHE_DIR=str(tmp_path / "xla"), COLUMNS="300")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(FLAGS)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the header says where the seeds run
    assert "CartPole-v1: 4 seeds on 4 cpu devices, variants" in proc.stdout
    assert "CartPole-v1: 4 seeds on 4 cpu devices (2 seed shard(s) x 2 env shards)" in proc.stdout
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    # every compiled refinement and evaluation program spans the 4 devices; the recording program compiled once
    # for all chunks (and methods)
    assert set(facts["four"]) == {"PPO", "RA"}, facts
    for prog in facts["four"].values():
        assert prog["devices"] == [4] and prog["record_compiles"] <= 1 and not prog["envs_split"], facts
    for prog in facts["dp"].values():  # data parallel: the chunk's train state split over "envs" too
        assert prog["devices"] == [4] and prog["record_compiles"] <= 1 and prog["envs_split"], facts
    assert facts["one_devices"] == 1 and all(p["devices"] == [1] for p in facts["one"].values()), facts
    assert facts["again_hits"] > 0, facts  # the sharded programs load from the persistent compile cache
    # seeds that do not split over the devices: one device's program, and the header says why
    assert not facts["five_sharded"] and "5 seeds do not split evenly over 4 devices" in facts["five_seeds"]

    four, again, dp, one = (json.loads((tmp_path / d / "ultra.json").read_text())
                            for d in ("four", "again", "dp", "one"))
    for name in ("PPO", "RA"):
        # the sharded run repeats itself bit for bit
        assert four[name]["eval_returns"] == again[name]["eval_returns"], name
        assert _timeless(four[name]["chunks"]) == _timeless(again[name]["chunks"]), name
        _same_run(four[name], one[name], name)
        _same_run(dp[name], one[name], f"{name} data parallel")
    # the advisor on the host saw every seed's episodes: the same critical states, asked about for all 4 seeds
    tables = [(tmp_path / d / "critical_states.md").read_text() for d in ("four", "dp", "one")]
    assert tables[0] == tables[1] == tables[2]
    assert {row[1] for row in _rows(tables[0]) if row[0] == "RA"} == {"0", "1", "2", "3"}
    st = {d: json.loads((tmp_path / d / "ultra.json").read_text())["advisor"][0] for d in ("four", "dp", "one")}
    assert st["four"]["valid"] == st["dp"]["valid"] == st["one"]["valid"] > 0


def _timeless(rows: list[dict]) -> list[dict]:
    """Chunk rows without the advisor's latency (wall time)."""
    return [{k: v for k, v in row.items() if k != "advisor_latency_s"} for row in rows]


def _same_run(a_run: dict, b_run: dict, name: str) -> None:
    """A method's results on several devices (`a_run`) vs one (`b_run`): the same evaluations (the pre-trained
    agents' first), chunk rows' counts exactly, float metrics within ATOL + RTOL |value|."""
    assert a_run["eval_returns"] == b_run["eval_returns"], (name, a_run["eval_returns"], b_run["eval_returns"])
    assert len(a_run["chunks"]) == len(b_run["chunks"]) == 3
    for a, b in zip(a_run["chunks"], b_run["chunks"], strict=True):
        assert set(a) == set(b), (a, b)
        for key, value in b.items():
            if key in ("advisor_latency_s",) or not isinstance(value, (int, float)) or value is None:
                continue
            if isinstance(value, bool) or isinstance(value, int):
                assert a[key] == value, (name, key, a[key], value)
            else:
                assert abs(a[key] - value) <= ATOL + RTOL * abs(value), (name, key, a[key], value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flags, message", [
    (["--env-shards", "3"], "env_shards=3 must divide num_envs=4"),
    (["--env-shards", "0"], "env_shards must be"),
    (["--env-shards", "2"], "env_shards=2 must divide the 1 device(s) available"),
])
def test_a_layout_that_does_not_fit_is_one_line_before_anything_runs(tmp_path, capsys, flags, message):
    from jaxmod.cli import main

    out = tmp_path / "run"
    assert main(["ultra", "--env", "CartPole-v1", "--num-envs", "4", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing written


RICE_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    from pathlib import Path
    import jax
    import jaxmod.ultra.pipeline as P
    from jaxmod.cli import main
    from jaxmod.parallel import seed_mesh
    from jaxmod.ultra.config import UltraConfig

    assert jax.device_count() == 4, jax.devices()
    root, flags = Path(sys.argv[1]), json.loads(sys.argv[2])
    assert main(["ultra", *flags, "--env-shards", "2", "--out", str(root / "dp")]) == 0
    config = UltraConfig.from_dict(json.loads((root / "dp" / "config.json").read_text()))
    P.UltraRun(dataclasses.replace(config, env_shards=1), root / "one", mesh=seed_mesh(jax.devices()[:1])).run()
""")

RICE_FLAGS = ["--env", "CartPole-v1", "--variant", "RICE", "--seeds", "2", "--seed", "0", "--pretrain-steps", "1024",
              "--refine-steps", "1536", "--chunks", "3", "--num-envs", "4", "--num-steps", "64", "--collect-envs", "4",
              "--collect-steps", "96", "--eval-envs", "4", "--eval-steps", "128", "--mask-steps", "512", "--quiet"]


@pytest.mark.multidevice
@pytest.mark.timeout(1200)  # 2 tiny ultra runs with mask-net training; generous for a loaded CPU
def test_rice_with_env_shards_equals_the_unsharded_run(tmp_path):
    """RICE's mask nets are trained by their own PPOLearner on the keep/blind env (not split over "envs": each runs
    whole on every device of its seed's row) while RICE's refinement splits each seed's envs over 2 devices
    (`--env-shards 2`: 2 seeds on a 2 seed shards x 2 env shards mesh of 4 devices): the same run as on one
    device, within this module's tolerance (`_same_run`)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), JAXMOD_CACHE_DIR=str(tmp_path / "xla"), COLUMNS="300")
    proc = subprocess.run([sys.executable, "-c", RICE_SCRIPT, str(tmp_path), json.dumps(RICE_FLAGS)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dp, one = (json.loads((tmp_path / d / "ultra.json").read_text()) for d in ("dp", "one"))
    assert dp["config"]["env_shards"] == 2 and one["config"]["env_shards"] == 1
    for name in ("PPO", "RICE"):
        _same_run(dp[name], one[name], f"{name} data parallel")
    assert sum(row.get("restarts", 0) for row in one["RICE"]["chunks"]) > 0  # RICE restarted from its mask's states
