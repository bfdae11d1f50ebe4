"""jaxmod PPO side by side with its peers, PureJaxRL's `ppo.py` and rejax 0.1.3's PPO, in one invocation.

The peers are not dependencies of jaxmod and are never imported by it: this script installs them into a separate,
git-ignored environment (`.peers/venv`, pinned in `PEER_PINS`: PureJaxRL and rejax need gymnax 0.0.9, whose `step`
returns five values; gymnax 1.0's six break both) and copies PureJaxRL's `ppo.py` and `wrappers.py` from a checkout
of its repository into `.anchors/purejaxrl/` (also git-ignored; its brax / navix imports are stubbed, CartPole and
MinAtar need neither). Each measurement runs in its own subprocess (the peers in `.peers/venv`, jaxmod in this
Python), alternating PureJaxRL, rejax and jaxmod (the order rotates every repeat), so every program sees the same
load. Per run: compile s (`lower().compile()`), run s (wall, `block_until_ready`, compile excluded; the fastest of
`--runs` calls in the process), the process's CPU s over that call (all threads, `time.process_time`) and the final
return. Medians over the repeats; the ratio is the peer's median run s / jaxmod's (> 1: jaxmod faster).

Configs (PureJaxRL's own): CartPole-v1, 4 envs x 128 steps, 4 epochs x 4 minibatches, lr 2.5e-4 annealed,
5e5 steps per seed, 1/4/16 seeds (vmapped in one program); Breakout-MinAtar, 64 envs x 128 steps, 4 x 8
minibatches, lr 5e-3, relu, 1 seed at a reduced step count (1e6 instead of 1e7). rejax runs the same sizes with
its own PPO (no lr annealing, element-wise gradient clipping, its one final evaluation of 128 episodes inside the
timed call); its final return is that evaluation's mean, the others' the mean over envs of the last finished
episode at the last update (gymnax's `LogWrapper` / jaxmod's `episode_return`).

    python benchmarks/peers.py                    # all rows, 3 alternations; writes benchmarks/results/peers_<date>.*
    python benchmarks/peers.py --quick            # a small smoke (tiny step counts, 1 repeat)
    python benchmarks/peers.py --rows cartpole-1,cartpole-4 --repeats 5
    python benchmarks/peers.py --profile          # where jaxmod's update spends its time (rollout / critic+GAE / SGD)

`--purejaxrl-src`: PureJaxRL's repository (a git directory or a checkout; default: $PUREJAXRL_SRC or the
mirror this project was measured with). Only the standard library is imported at the top: the worker processes
import their own jax.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / ".peers"
ANCHORS_DIR = ROOT / ".anchors" / "purejaxrl"
DEFAULT_PUREJAXRL_SRC = "/work/.mirror/luchris429+purejaxrl/repo"
# What the peers run on: the same jax / jaxlib (so the same XLA) as jaxmod's environment where they allow it.
PEER_PINS = ("jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8", "chex==0.1.92", "numpy==2.4.6",
             "gymnax==0.0.9", "gymnasium==1.4.0", "distrax==0.1.9", "tfp-nightly==0.26.0.dev20261027",
             "rejax==0.1.3")
PEERS = ("purejaxrl", "rejax", "jaxmod")
BASELINE = "purejaxrl"
# Targets of issue 23 (run time: PureJaxRL's / jaxmod's, at least): 1.3x at one seed, 1.15x at 4 and 16 seeds.
RUN_TARGET = {1: 1.3, 4: 1.15, 16: 1.15}


@dataclass(frozen=True)
class Task:
    """One env's PureJaxRL config (its names), shared by every peer."""

    env: str
    num_envs: int
    num_steps: int
    total_steps: int
    minibatches: int
    lr: float
    activation: str
    epochs: int = 4


TASKS = {
    "cartpole": Task("CartPole-v1", 4, 128, 500_000, 4, 2.5e-4, "tanh"),
    "breakout": Task("Breakout-MinAtar", 64, 128, 1_000_000, 8, 5e-3, "relu"),
}
ROWS = {"cartpole-1": ("cartpole", 1), "cartpole-4": ("cartpole", 4), "cartpole-16": ("cartpole", 16),
        "breakout-1": ("breakout", 1)}
QUICK_STEPS = {"cartpole": 4 * 128 * 8, "breakout": 64 * 128 * 2}


# ---------------------------------------------------------------------------------------------------- workers
def _time_calls(fn, args, runs: int):
    """Compile `fn` (a jitted function) for `args`, call it `runs` times; returns (compile s, fastest run s, CPU s of
    that run, the last output)."""
    import jax

    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    best = (float("inf"), 0.0)
    out = None
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = min(best, (wall, cpu))
    return compile_s, best[0], best[1], out


def _keys(seeds: int):
    import jax

    return jax.random.split(jax.random.PRNGKey(0), seeds) if seeds > 1 else jax.random.PRNGKey(0)


def _jit(train, seeds: int):
    import jax

    return jax.jit(jax.vmap(train)) if seeds > 1 else jax.jit(train)


def worker_jaxmod(task: Task, seeds: int, runs: int) -> dict:
    import numpy as np

    from jaxmod.ppo import default_config, make_train

    config = default_config(task.env, num_envs=task.num_envs, num_steps=task.num_steps, total_timesteps=task.total_steps,
                            update_epochs=task.epochs, num_minibatches=task.minibatches, lr=task.lr,
                            activation=task.activation)
    compile_s, run_s, cpu_s, out = _time_calls(_jit(make_train(config), seeds), (_keys(seeds),), runs)
    final = float(np.asarray(out.metrics["episode_return"])[..., -1].mean())
    return {"compile_s": compile_s, "run_s": run_s, "cpu_s": cpu_s, "final_return": final}


def _stub_purejaxrl_imports() -> None:
    """PureJaxRL's wrappers.py imports brax and navix at the top for its other envs; CartPole and MinAtar use
    neither, so empty modules stand in for them (nothing of theirs is called)."""
    import types

    class _Unused:
        def __init__(self, *a, **k):
            raise RuntimeError("brax / navix are stubbed in benchmarks/peers.py")

    for name in ("brax", "brax.envs", "brax.envs.wrappers", "brax.envs.wrappers.training", "navix"):
        mod = sys.modules.setdefault(name, types.ModuleType(name))
        mod.EpisodeWrapper = mod.AutoResetWrapper = _Unused


def worker_purejaxrl(task: Task, seeds: int, runs: int) -> dict:
    import numpy as np

    _stub_purejaxrl_imports()
    sys.path.insert(0, str(ANCHORS_DIR))
    import ppo  # PureJaxRL's purejaxrl/ppo.py, unmodified (copied by `ensure_anchors`)

    config = {"LR": task.lr, "NUM_ENVS": task.num_envs, "NUM_STEPS": task.num_steps,
              "TOTAL_TIMESTEPS": task.total_steps, "UPDATE_EPOCHS": task.epochs, "NUM_MINIBATCHES": task.minibatches,
              "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01, "VF_COEF": 0.5,
              "MAX_GRAD_NORM": 0.5, "ACTIVATION": task.activation, "ENV_NAME": task.env, "ANNEAL_LR": True,
              "DEBUG": False}
    compile_s, run_s, cpu_s, out = _time_calls(_jit(ppo.make_train(config), seeds), (_keys(seeds),), runs)
    returns = np.asarray(out["metrics"]["returned_episode_returns"])  # [(S,) updates, steps, envs]
    return {"compile_s": compile_s, "run_s": run_s, "cpu_s": cpu_s,
            "final_return": float(returns[..., -1, :, :].mean())}


def worker_rejax(task: Task, seeds: int, runs: int) -> dict:
    import numpy as np
    from rejax import get_algo

    algo = get_algo("ppo").create(
        env=task.env, num_envs=task.num_envs, num_steps=task.num_steps, num_epochs=task.epochs,
        num_minibatches=task.minibatches, learning_rate=task.lr, max_grad_norm=0.5, total_timesteps=task.total_steps,
        eval_freq=task.total_steps, skip_initial_evaluation=True, gamma=0.99, gae_lambda=0.95, clip_eps=0.2,
        ent_coef=0.01, vf_coef=0.5, agent_kwargs={"activation": task.activation})
    compile_s, run_s, cpu_s, out = _time_calls(_jit(algo.train, seeds), (_keys(seeds),), runs)
    _, (_, returns) = out  # the evaluation: [(S,) evals, episodes]
    return {"compile_s": compile_s, "run_s": run_s, "cpu_s": cpu_s, "final_return": float(np.asarray(returns).mean())}


WORKERS = {"jaxmod": worker_jaxmod, "purejaxrl": worker_purejaxrl, "rejax": worker_rejax}


def worker_main(peer: str, task: Task, seeds: int, runs: int) -> None:
    import jax

    result = WORKERS[peer](task, seeds, runs)
    d = jax.devices()[0]
    result.update(peer=peer, seeds=seeds, jax=jax.__version__, device=f"{d.platform}:{getattr(d, 'device_kind', d)}")
    print("PEERS_RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ environment
def peers_python() -> Path:
    return PEERS_DIR / "venv" / "bin" / "python"


def ensure_peers_venv() -> Path:
    """`.peers/venv` with `PEER_PINS` installed (created with this Python's `venv`; reinstalled when the pins change)."""
    stamp = PEERS_DIR / "pins.txt"
    py = peers_python()
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(PEER_PINS):
        return py
    PEERS_DIR.mkdir(exist_ok=True)
    if not py.exists():
        print(f"peers.py: creating {PEERS_DIR / 'venv'}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_DIR / "venv")], check=True)
    print(f"peers.py: installing {' '.join(PEER_PINS)}", flush=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    stamp.write_text("\n".join(PEER_PINS))
    return py


def ensure_anchors(src: str) -> None:
    """Copy PureJaxRL's `purejaxrl/ppo.py` and `wrappers.py` from `src` (a git directory: its HEAD; or a checkout)."""
    ANCHORS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(src)
    for name in ("ppo.py", "wrappers.py"):
        if (path / "purejaxrl" / name).exists():
            text = (path / "purejaxrl" / name).read_text()
        else:
            proc = subprocess.run(["git", f"--git-dir={path}", "show", f"HEAD:purejaxrl/{name}"],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"peers.py: error: no purejaxrl/{name} in {src}; pass --purejaxrl-src with a checkout or a "
                         "git directory of github.com/luchris429/purejaxrl")
            text = proc.stdout
        (ANCHORS_DIR / name).write_text(text)
    if (path / "HEAD").exists() or (path / ".git").exists():
        git_dir = path if (path / "HEAD").exists() else path / ".git"
        rev = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True)
        (ANCHORS_DIR / "COMMIT").write_text(rev.stdout.strip())


def anchor_commit() -> str | None:
    f = ANCHORS_DIR / "COMMIT"
    return f.read_text().strip() if f.exists() else None


# PureJaxRL's `jax.vmap(train)` batches its orthogonal initialiser's QR, and jaxlib 0.10.2's CPU LAPACK kernel then
# runs the batch on XLA's thread pool (`ParallelBatchMap`) and waits for it from a task of that same pool: on this
# 2-core VM the 4- and 16-seed programs hang for good, every thread asleep (gdb, 2026-12-01; 20k steps finish, 5e5 do
# not). XLA's concurrency-optimised thunk scheduler off, they finish. Every peer of a multi-seed row runs with the
# same flag (it costs jaxmod ~15% of a one-seed run: 6.7 s against 4.9-5.7 s, so one-seed rows run without it).
MULTI_SEED_XLA_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def worker_env(peer: str, seeds: int) -> dict[str, str]:
    """A worker's environment: no compilation cache; `MULTI_SEED_XLA_FLAGS` added to XLA_FLAGS for > 1 seed; the
    peers see no jaxmod, jaxmod sees this checkout."""
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    if seeds > 1:
        env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), MULTI_SEED_XLA_FLAGS]))
    if peer == "jaxmod":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    else:
        env.pop("PYTHONPATH", None)
    return env


def run_worker(peer: str, task_name: str, task: Task, seeds: int, runs: int, timeout: float) -> dict:
    """One measurement in a fresh subprocess: the peers in `.peers/venv`, jaxmod in this Python."""
    env = worker_env(peer, seeds)
    py = sys.executable if peer == "jaxmod" else str(peers_python())
    cmd = [py, str(Path(__file__).resolve()), "--worker", peer, "--task", task_name, "--seeds", str(seeds),
           "--runs", str(runs), "--total-steps", str(task.total_steps)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:  # recorded, and the alternation goes on
        return {"peer": peer, "seeds": seeds, "error": f"timed out after {timeout:g} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("PEERS_RESULT "):
            return json.loads(line[len("PEERS_RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"peer": peer, "seeds": seeds, "error": " | ".join(tail) or f"exit {proc.returncode}"}


# ------------------------------------------------------------------------------------------------- the table
def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(samples: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Per row and peer: medians of compile / run / CPU s and final return over the repeats that succeeded."""
    rows = []
    for row, by_peer in samples.items():
        for peer, runs in by_peer.items():
            ok = [r for r in runs if "error" not in r]
            entry = {"row": row, "peer": peer, "seeds": ROWS[row][1], "repeats": len(ok),
                     "errors": [r["error"] for r in runs if "error" in r]}
            for key in ("compile_s", "run_s", "cpu_s", "final_return"):
                entry[key] = median([r[key] for r in ok])
                entry[key + "_all"] = [round(r[key], 3) for r in ok]
            rows.append(entry)
    return rows


def verdicts(summary: list[dict], baseline: str = BASELINE) -> list[dict]:
    """jaxmod against `baseline` per row: run-time ratio (baseline / jaxmod), compile ratio, final returns, and
    whether each target of issue 23 is met (or by how much it misses)."""
    by = {(s["row"], s["peer"]): s for s in summary}
    out = []
    for row, (_, seeds) in ROWS.items():
        j, b = by.get((row, "jaxmod")), by.get((row, baseline))
        if not j or not b or j["run_s"] is None or b["run_s"] is None:
            continue
        ratio = b["run_s"] / j["run_s"]
        cpu_ratio = b["cpu_s"] / j["cpu_s"] if j["cpu_s"] else None
        target = RUN_TARGET.get(seeds) if row.startswith("cartpole") else None
        v = {"row": row, "seeds": seeds, "run_ratio": ratio, "cpu_ratio": cpu_ratio, "run_target": target,
             "compile_ratio": b["compile_s"] / j["compile_s"], "jaxmod_return": j["final_return"],
             "baseline_return": b["final_return"]}
        if target is not None:
            v["run_verdict"] = "met" if ratio >= target else f"missed by {100 * (1 - ratio / target):.0f}%"
            if cpu_ratio is not None:  # the verdict to read when the machine was loaded (wall time waits for it)
                v["cpu_verdict"] = "met" if cpu_ratio >= target else f"missed by {100 * (1 - cpu_ratio / target):.0f}%"
        v["compile_verdict"] = ("met" if j["compile_s"] <= b["compile_s"]
                                else f"missed by {100 * (j['compile_s'] / b['compile_s'] - 1):.0f}%")
        out.append(v)
    return out


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(info: dict, summary: list[dict], verdict: list[dict], tasks: dict[str, dict]) -> str:
    lines = [f"# jaxmod vs its peers ({info['date']}, {info['device']}, jax {info['jax']}, "
             f"{info['cpu_count']} CPUs, load average {info['load_start']} at the start, {info['load_end']} at the end; "
             f"{info['progress']})",
             "",
             f"`{info['command']}`: {info['repeats']} alternation(s), medians; run s = wall of the fastest of "
             f"{info['runs']} call(s) per process; CPU s = that call's process CPU time (all threads). Peers: "
             f"{info['peer_versions']}; PureJaxRL at commit {info.get('purejaxrl_commit')}. Rows of more than one "
             f"seed run every peer with XLA_FLAGS={MULTI_SEED_XLA_FLAGS} (PureJaxRL's vmapped QR hangs without it).",
             "",
             "| task | seeds | peer | compile s | run s | CPU s | final return | repeats |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        task = tasks[ROWS[s["row"]][0]]
        name = f"{task['env']} ({task['total_steps']:.1e} steps/seed)".replace("e+0", "e")
        err = f" (errors: {len(s['errors'])})" if s["errors"] else ""
        lines.append(f"| {name} | {s['seeds']} | {s['peer']} | {_fmt(s['compile_s'], 1)} | {_fmt(s['run_s'])} | "
                     f"{_fmt(s['cpu_s'])} | {_fmt(s['final_return'], 1)} | {s['repeats']}{err} |")
    if max(info["load_start"], info["load_end"]) > info["cpu_count"]:
        lines += ["", f"**The machine was loaded** (load average above its {info['cpu_count']} CPUs): wall times "
                  "include waiting for the CPU, so compare the CPU s and the CPU time ratio, not run s or compile s."]
    lines += ["", f"jaxmod against {BASELINE} (ratio > 1: jaxmod faster):", "",
              "| row | run time ratio | target | verdict | CPU time ratio | verdict on CPU time | compile ratio | "
              "compile verdict | final return jaxmod / PureJaxRL |", "|---|---|---|---|---|---|---|---|---|"]
    for v in verdict:
        lines.append(f"| {v['row']} | {v['run_ratio']:.2f}x | {_fmt(v['run_target'])} | {v.get('run_verdict', '-')} | "
                     f"{_fmt(v['cpu_ratio'])}x | {v.get('cpu_verdict', '-')} | {v['compile_ratio']:.2f}x | "
                     f"{v['compile_verdict']} | "
                     f"{_fmt(v['jaxmod_return'], 1)} / {_fmt(v['baseline_return'], 1)} |")
    return "\n".join(lines) + "\n"


def device_info(command: str, repeats: int, runs: int, peer_versions: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": cpu or "CPU",
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "command": command,
            "repeats": repeats, "runs": runs, "peer_versions": peer_versions,
            "load_start": round(os.getloadavg()[0], 2), "purejaxrl_commit": anchor_commit()}


# ---------------------------------------------------------------------------------------------------- profile
def profile(task: Task, seeds: int, updates: int, runs: int) -> dict:
    """Where jaxmod's PPO update spends its time: the rollout, the critic + GAE, and the SGD epochs, each a separate
    program that scans its piece `updates` times (vmapped over `seeds`), beside the whole update scanned as often.
    Each piece carries its own state from one iteration to the next, so XLA can hoist nothing out of the loop.
    Returns {piece: {"compile_s", "run_s", "cpu_s"}} (fastest of `runs` calls)."""
    import jax

    from jaxmod.ppo import default_config
    from jaxmod.ppo.losses import Batch, gae
    from jaxmod.ppo.rollout import collect
    from jaxmod.ppo.train import PPOLearner, optimise

    c = default_config(task.env, num_envs=task.num_envs, num_steps=task.num_steps, total_timesteps=task.total_steps,
                       update_epochs=task.epochs, num_minibatches=task.minibatches, lr=task.lr,
                       activation=task.activation)
    learner = PPOLearner(c)
    net, env = learner.net, learner.env

    def program(piece: str):
        def run(key):
            st = learner.init(key)
            hp = st.hparams
            keys = jax.random.split(key, updates)
            _, _, traj = collect(net, env, st.params, st.env_state, st.obs, key, c.num_steps, c.unroll)
            if piece == "rollout":
                def body(carry, k):
                    es, obs, acc = carry
                    es, obs, tr = collect(net, env, st.params, es, obs, k, c.num_steps, c.unroll)
                    return (es, obs, acc + tr.reward.sum() + tr.log_prob.sum() + tr.final_obs.sum()), None
                return jax.lax.scan(body, (st.env_state, st.obs, 0.0), keys)[0][2]
            if piece == "critic+gae":
                def body(params, _):
                    v, nv = net.value(params, traj.obs), net.value(params, traj.final_obs)
                    adv = gae(traj.reward, v, nv, traj.terminated, traj.episode_done, hp.gamma, hp.gae_lambda)
                    return jax.tree.map(lambda p: p + 1e-9 * adv.mean(), params), None  # carried: not hoisted
                return jax.lax.scan(body, st.params, None, length=updates)[0]
            if piece == "sgd":
                v, nv = net.value(st.params, traj.obs), net.value(st.params, traj.final_obs)
                adv = gae(traj.reward, v, nv, traj.terminated, traj.episode_done, hp.gamma, hp.gae_lambda)
                batch = Batch(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=v, advantage=adv,
                              target=adv + v)
                batch = jax.tree.map(lambda x: x.reshape((c.batch_size,) + x.shape[2:]), batch)

                def body(carry, k):
                    params, opt = optimise(c, net, hp, *carry, batch, k)[:2]
                    return (params, opt), None
                return jax.lax.scan(body, (st.params, st.opt_state), keys)[0]
            if piece == "update":
                return jax.lax.scan(lambda s, _: learner.update(s), st, None, length=updates)
            return st  # "init": subtracted from the others
        return run

    out = {}
    for piece in ("init", "rollout", "critic+gae", "sgd", "update"):
        compile_s, run_s, cpu_s, _ = _time_calls(_jit(program(piece), seeds), (_keys(seeds),), runs)
        out[piece] = {"compile_s": round(compile_s, 2), "run_s": round(run_s, 4), "cpu_s": round(cpu_s, 4)}
        print(json.dumps({"seeds": seeds, "piece": piece, **out[piece]}), flush=True)
    return out


# ------------------------------------------------------------------------------------------------------- main
def _count(text: str) -> int:
    """A whole number of steps, also written as 5e5 (as the help writes it); ValueError otherwise."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


_count.__name__ = "whole number"  # argparse's message: "invalid whole number value: '5.5'"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of rows: {', '.join(ROWS)}")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of: purejaxrl, rejax, jaxmod")
    ap.add_argument("--repeats", type=int, default=3, help="alternations (medians over them)")
    ap.add_argument("--runs", type=int, default=2, help="timed calls per process (the fastest counts)")
    ap.add_argument("--quick", action="store_true", help="a small smoke: tiny step counts, 1 repeat, 1 call")
    ap.add_argument("--breakout-steps", type=_count, default=TASKS["breakout"].total_steps,
                    help="Breakout-MinAtar's env steps per seed (PureJaxRL's config runs 1e7)")
    ap.add_argument("--cartpole-steps", type=_count, default=TASKS["cartpole"].total_steps,
                    help="CartPole-v1's env steps per seed (PureJaxRL's config: 5e5, the targets' budget)")
    ap.add_argument("--purejaxrl-src", default=os.environ.get("PUREJAXRL_SRC", DEFAULT_PUREJAXRL_SRC))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for peers_<date>.{md,json}")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per worker process")
    ap.add_argument("--profile", action="store_true", help="profile jaxmod's update (CartPole, 1 and 4 seeds)")
    ap.add_argument("--profile-updates", type=int, default=250)
    ap.add_argument("--render", nargs="+", metavar="JSON", help="re-render (and pool) earlier runs' .json into "
                    "the table at --out (a file stem here, e.g. benchmarks/results/peers_DATE); runs nothing")
    # internal: one measurement in this process
    ap.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--task", choices=sorted(TASKS), help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--total-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rows, peers = args.rows.split(","), args.peers.split(",")
    bad = [r for r in rows if r not in ROWS] + [p for p in peers if p not in PEERS]
    if bad:
        ap.exit(2, f"peers.py: error: unknown row or peer {bad}; rows: {', '.join(ROWS)}; peers: {', '.join(PEERS)}\n")
    if args.repeats < 1 or args.runs < 1 or args.breakout_steps < 64 * 128 or args.cartpole_steps < 4 * 128:
        ap.exit(2, "peers.py: error: --repeats and --runs must be >= 1, --breakout-steps >= 8192 and --cartpole-steps "
                ">= 512 (one update)\n")
    if args.timeout <= 0 or args.profile_updates < 1:
        ap.exit(2, "peers.py: error: --timeout must be > 0 seconds and --profile-updates >= 1\n")
    for f in args.render or ():
        try:
            json.loads(Path(f).read_text())["samples"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            ap.exit(2, f"peers.py: error: --render {f}: not the .json of a peers.py run ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})\n")
    if not args.render and Path(args.out).exists() and not Path(args.out).is_dir():
        ap.exit(2, f"peers.py: error: --out {args.out} is a file: give a folder for peers_<date>.{{md,json}}\n")
    args.row_list, args.peer_list = rows, peers
    return args


def benchmark(args: argparse.Namespace, worker=run_worker) -> dict:
    """Every row x peer, alternating (the peer order rotates each repeat); writes peers_<date>.{md,json} under
    `args.out` and returns {"info", "summary", "verdicts"}."""
    steps = dict(QUICK_STEPS) if args.quick else {"cartpole": args.cartpole_steps, "breakout": args.breakout_steps}
    tasks = {name: Task(**{**t.__dict__, "total_steps": steps[name]}) for name, t in TASKS.items()}
    repeats, runs = (1, 1) if args.quick else (args.repeats, args.runs)
    peer_versions = "jaxmod only"
    if set(args.peer_list) - {"jaxmod"}:
        if worker is run_worker:
            ensure_peers_venv()
            ensure_anchors(args.purejaxrl_src)
        peer_versions = ", ".join(p for p in PEER_PINS if p.split("==")[0] in ("jax", "gymnax", "rejax", "distrax"))
    info = device_info("python benchmarks/peers.py " + " ".join(sys.argv[1:]), repeats, runs, peer_versions)
    samples: dict[str, dict[str, list[dict]]] = {r: {p: [] for p in args.peer_list} for r in args.row_list}
    for rep in range(repeats):
        for row in args.row_list:
            task_name, seeds = ROWS[row]
            order = args.peer_list[rep % len(args.peer_list):] + args.peer_list[:rep % len(args.peer_list)]
            for peer in order:
                res = worker(peer, task_name, tasks[task_name], seeds, runs, args.timeout)
                samples[row][peer].append(res)
                print(json.dumps({"repeat": rep, "row": row, **res}), flush=True)
                if peer == "jaxmod" and "jax" in res:
                    info.setdefault("jax", res["jax"])
                # written after every measurement: an interrupted run keeps what it measured
                result = _write(args, info, tasks, samples, done=f"repeat {rep + 1} of {repeats} in progress")
    result = _write(args, info, tasks, samples, done="complete")
    print(result["markdown"])
    print(f"wrote {result['stem']}.md and .json")
    failed = [r for by_peer in samples.values() for rs in by_peer.values() for r in rs if "error" in r]
    if failed:
        print(f"peers.py: {len(failed)} of {sum(len(rs) for bp in samples.values() for rs in bp.values())} "
              f"measurements failed (their rows say why): {failed[0]['error']}", file=sys.stderr)
    result["failed"] = len(failed)
    return result


def _write(args: argparse.Namespace, info: dict, tasks: dict, samples: dict, done: str) -> dict:
    info = {**info, "load_end": round(os.getloadavg()[0], 2), "progress": done}
    info.setdefault("jax", "?")
    task_dicts = {k: dict(t.__dict__) for k, t in tasks.items()}
    stem = Path(args.out) / ("peers_" + ("quick_" if args.quick else "") + info["date"][:10])
    return _render(info, task_dicts, samples, stem)


def _render(info: dict, tasks: dict[str, dict], samples: dict, stem: Path) -> dict:
    summary = summarise(samples)
    verdict = verdicts(summary)
    text = markdown(info, summary, verdict, tasks)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(text)
    result = {"info": info, "tasks": tasks, "summary": summary, "verdicts": verdict, "samples": samples}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return {**result, "markdown": text, "stem": str(stem)}


def render(files: list[str], out: str) -> dict:
    """Re-render one table from the `.json` of earlier runs (e.g. an interrupted run and a run of the rows it did not
    reach): their samples are pooled per row and peer; a row's task (step count) must agree across the files."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    samples: dict[str, dict[str, list[dict]]] = {}
    tasks: dict[str, dict] = {}
    for run in runs:
        for row, by_peer in run["samples"].items():
            task = ROWS[row][0]
            if task in tasks and any(by_peer.values()) and tasks[task] != run["tasks"][task]:
                sys.exit(f"peers.py: error: {row} ran with different configs in {files}; render them apart")
            if any(by_peer.values()):
                tasks[task] = run["tasks"][task]
            for peer, rs in by_peer.items():
                samples.setdefault(row, {}).setdefault(peer, []).extend(rs)
    for name, run_task in runs[0]["tasks"].items():
        tasks.setdefault(name, run_task)
    first = runs[0]["info"]
    info = {**first, "command": " ; ".join(r["info"]["command"] for r in runs),
            "load_start": max(r["info"]["load_start"] for r in runs),
            "load_end": max(r["info"]["load_end"] for r in runs),
            "progress": " ; ".join(r["info"].get("progress", "?") for r in runs),
            "repeats": max(r["info"]["repeats"] for r in runs)}
    order = {row: i for i, row in enumerate(ROWS)}
    samples = dict(sorted(samples.items(), key=lambda kv: order[kv[0]]))
    return _render(info, tasks, samples, Path(out))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        task = TASKS[args.task]
        if args.total_steps:
            task = Task(**{**task.__dict__, "total_steps": args.total_steps})
        worker_main(args.worker, task, args.seeds, args.runs)
    elif args.render:
        print(render(args.render, args.out)["markdown"])
    elif args.profile:
        task = TASKS["cartpole"]
        result = {str(s): profile(task, s, args.profile_updates, args.runs) for s in (1, 4)}
        print(json.dumps(result, indent=2))
    elif benchmark(args, worker=run_worker)["failed"]:
        sys.exit(1)  # the table is written, but a measurement failed: not a clean run


if __name__ == "__main__":
    main()
