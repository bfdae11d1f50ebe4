"""Does advice help, on which task, with which advisor, and at what cost? Tasks x advisors x methods (fine-tuning,
ULTRA-A, R, RA), every cell from the same pre-trained agents, >= 5 seeds (10 on classic control), reported as the
IQM of the final evaluation return with a 95% bootstrap interval, and each method's paired gain over fine-tuning
(`jaxmod.stats`).

    python benchmarks/ultra_suite.py                                  # every task x advisor (CPU budget, hours)
    python benchmarks/ultra_suite.py --tasks CartPole-v1,Acrobot-v1 --advisors teacher,random
    python benchmarks/ultra_suite.py --accuracy CartPole-v1           # ULTRA's gain against advice accuracy
    python benchmarks/ultra_suite.py --tasks MountainCar-v0 --knobs verify_samples=0,match_radius=0.5 --out DIR
                                                                      # a diagnosis: knobs off jaxmod's defaults

Budgets (env steps per seed), seeds and every knob are per env family, the same for every task of a family; the
methods run with jaxmod's defaults. The teacher advisor is a longer PPO run of the same task (`--agents`, reused).
Advisors: `teacher`, `teacher30` (the teacher with 30% of its answers corrupted), `random`, `constant` (always the
same action: a degenerate LLM), `scripted` (the hand-written heuristics, where they exist), `smollm2` (the real
135M LLM, classic control only). Results go to `--out` (default benchmarks/results): ultra_suite.json (one record
per cell, re-runs skip cells already there unless --redo), ultra_suite.md (the table) and ultra_suite.png; with
--accuracy, ultra_accuracy.json / .png. A cell that fails (a non-finite seed, an advisor that stops the run) is
recorded as failed with its message, never averaged.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/ultra_suite.py` from anywhere
from benchmarks.paper_curves import strong_teacher  # noqa: E402
from jaxmod.llm.scripted import ScriptedBackend  # noqa: E402
from jaxmod.ppo.config import family_of  # noqa: E402
from jaxmod.stats import iqm_ci, iqm_difference_ci, verdict  # noqa: E402
from jaxmod.ultra.pipeline import UltraRun, UltraSettings  # noqa: E402

TASKS = ("CartPole-v1", "MountainCar-v0", "Pendulum-v1", "Asterix-MinAtar", "jaxmod/Pong-OnePoint", "brax/hopper")
ADVISORS = ("teacher", "teacher30", "random", "constant", "scripted", "smollm2")
METHODS = ("PPO", "A", "R", "RA")
NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)

# Per env family: seeds, budgets (env steps per seed) and run sizes. The teacher trains `teacher_x` times the
# agents' pretraining budget, then (the same rule as benchmarks/paper_curves.py's, for every task) doubles its steps
# until it scores `TEACHER_RATIO` times the agents' evaluation return, up to `TEACHER_GROWTH` times its start (a
# teacher no stronger than the agents has nothing to teach: MountainCar-v0's 5x teacher reached -197 against -200).
# brax's teacher trains once (`teacher_growth` 1: 4.8M steps, ~25 min on 2 cores); doubling it to 38.4M steps would
# take hours on a CPU, and hopper's longer-trained PPO scored lower from resets (245 after 4.8M steps against the
# agents' 981: it hops further and falls), so the cell records whether its teacher met the bar.
FAMILIES: dict[str, dict[str, Any]] = {
    "classic": dict(seeds=10, pretrain_steps=80_000, refine_steps=160_000, teacher_x=5, knobs={}),
    # evaluations hold whole episodes (eval_steps unset: the episode limit, up to 1,000), as the outcome guard needs
    # to act (cells before 2026-12-03 evaluated MinAtar 500 and Pong 400 steps), and 128 of them per seed: with 32,
    # one evaluation's noise (Asterix's same agents: up to 0.1-0.14 per seed, returns near 1.2) decided a 5-seed
    # verdict (its teacher's ULTRA-A -0.1 [-0.2, -0.1] "worse" at 32 episodes, -0.0 [-0.1, +0.1] at 128; the guard's
    # gaps within +-0.015 both times); Pong's verdicts were the same at 32 (128 for consistency)
    "minatar": dict(seeds=5, pretrain_steps=300_000, refine_steps=300_000, teacher_x=5,
                    knobs=dict(chunks=5, eval_envs=128)),
    "pong": dict(seeds=5, pretrain_steps=200_000, refine_steps=300_000, teacher_x=5,
                 knobs=dict(chunks=5, eval_envs=128)),
    "brax": dict(seeds=5, pretrain_steps=600_000, refine_steps=300_000, teacher_x=8,
                 teacher_growth=1, knobs=dict(chunks=5, eval_envs=32, eval_steps=1000, collect_envs=16,
                                              collect_steps=1000, ppo_overrides=(("num_envs", 256),))),
}


def advisor_cells(env_id: str, wanted: tuple[str, ...]) -> list[str]:
    """The advisors of `wanted` that apply to `env_id` (scripted where a heuristic exists, SmolLM2 on classic
    control: its 4096-token context)."""
    cells = []
    for a in wanted:
        if a == "scripted" and not ScriptedBackend().supports(env_id):
            continue
        if a == "smollm2" and family_of(env_id) != "classic":
            continue
        cells.append(a)
    return cells


TEACHER_GROWTH = 8  # the teacher's steps may double three times past `teacher_x` (40x the agents' on classic control),
# unless the family sets its own `teacher_growth`


def task_teacher(env_id: str, budget: dict[str, Any], agents: Path, log, run_knobs: dict[str, Any]
                 ) -> tuple[str, dict[str, Any]]:
    """The task's teacher advisor spec and its record (teacher and agents' evaluation returns, its steps, whether
    it met `paper_curves.TEACHER_RATIO`): `paper_curves.strong_teacher` on the cell's own agents (`run_knobs`: the
    cell's settings, whose saved agents it loads) and evaluation sizes. Trained once per task and saved in `agents`."""
    key = (env_id, budget["pretrain_steps"], str(agents))
    if key not in _TEACHERS:
        start = budget["pretrain_steps"] * budget["teacher_x"]
        with tempfile.TemporaryDirectory() as tmp:
            probe = UltraRun(UltraSettings(**{**run_knobs, "advisor": "random"}), Path(tmp), log=log)
            _TEACHERS[key] = strong_teacher(
                env_id, {"teacher_steps": start, "teacher_max_steps": start * budget.get("teacher_growth", TEACHER_GROWTH)},
                {"pretrain_steps": budget["pretrain_steps"], "ppo_overrides": budget["knobs"].get("ppo_overrides", ())},
                probe, agents, log)
    return _TEACHERS[key]


_TEACHERS: dict[tuple, tuple[str, dict[str, Any]]] = {}


def advisor_knobs(advisor: str, teacher: str) -> dict[str, Any]:
    """The run's advisor spec, noise and reference for a suite advisor name: every advisor's answers are scored
    against the task's teacher (`teacher`, its advisor spec; `advisor.reference`: the agreement column and the
    accuracy curve's x axis)."""
    knobs: dict[str, Any] = dict(advisor=advisor, reference=teacher.split(":", 1)[1])
    if advisor in ("teacher", "teacher30") or advisor.startswith("teacher@"):
        noise = 0.3 if advisor == "teacher30" else float(advisor.split("@")[1]) if "@" in advisor else 0.0
        knobs.update(advisor=teacher, noise=noise)
    return knobs


@functools.cache
def code_version() -> str:
    """The commit this process started from (with '+changes' when the tree differed from it; read once, as the
    process imports the code once), or 'unknown' outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+changes" if dirty else "")) if rev else "unknown"


def run_cell(env_id: str, advisor: str, methods: tuple[str, ...], agents: Path, seeds: int | None, log,
             scale: float = 1.0, extra: dict[str, Any] | None = None) -> dict:
    """One (task, advisor) cell: every method from the same agents. Returns its record (failures included).
    `scale` multiplies the family's budgets (a quick look; the record says so); `extra`: knobs that differ from
    jaxmod's defaults (a diagnosis, `--knobs`; the record and the table name them)."""
    budget = dict(FAMILIES[family_of(env_id)])
    budget.update(pretrain_steps=int(budget["pretrain_steps"] * scale), refine_steps=int(budget["refine_steps"] * scale))
    record: dict[str, Any] = {"task": env_id, "advisor": advisor, "family": family_of(env_id), "scale": scale,
                              "commit": code_version(), **({"knobs": dict(extra)} if extra else {})}
    t0 = time.perf_counter()
    try:
        knobs = dict(env_id=env_id, variants=methods, agents_dir=str(agents), seeds=seeds or budget["seeds"],
                     pretrain_steps=budget["pretrain_steps"], refine_steps=budget["refine_steps"], **budget["knobs"])
        teacher, record["teacher"] = task_teacher(env_id, budget, agents, log, knobs)
        knobs.update(advisor_knobs(advisor, teacher), **(extra or {}))
        with tempfile.TemporaryDirectory() as tmp:
            run = UltraRun(UltraSettings(**knobs), Path(tmp), log=log)
            results = run.run()
            summary = json.loads((Path(tmp) / "ultra.json").read_text())
    except Exception as e:  # noqa: BLE001 - a failed cell is a result of the suite, reported with its reason
        record.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:300],
                      traceback=traceback.format_exc()[-2000:], wall_s=time.perf_counter() - t0)
        return record
    record.update(status="ok", wall_s=time.perf_counter() - t0, methods={})
    for name, r in results.items():
        record["methods"][name] = {"start": np.asarray(r.eval_returns[0], float).tolist(),
                                   "final": np.asarray(r.eval_returns[-1], float).tolist(), "refine_wall_s": r.wall_s,
                                   # the chunk after which the outcome guard made its agents fine-tuning's, or None
                                   "guard_chunk": (r.guard_restored or {}).get("chunk")}
    record["advice"] = [{k: a.get(k) for k in ("variant", "questions", "valid", "invalid", "failed",
                                               "unanswered", "paced", "over_budget", "advice_overhead_s", "wall_vs_ppo",
                                               "advice_overhead_frac", "initial_advice_s", "reference_agreement",
                                               "reference_judged")}
                        for a in summary.get("advisor", [])]
    return record


def cell_stats(record: dict) -> dict[str, dict[str, Any]]:
    """Per method: IQM [CI] of the final return, and the paired gain over fine-tuning with its verdict. A method
    with a non-finite seed is reported as failed."""
    out: dict[str, dict[str, Any]] = {}
    base = record["methods"].get("PPO")
    for name, m in record["methods"].items():
        final = np.asarray(m["final"], float)
        if not np.all(np.isfinite(final)):
            out[name] = {"failed": f"{int(np.sum(~np.isfinite(final)))} non-finite seed(s)"}
            continue
        row: dict[str, Any] = {"iqm": iqm_ci(final).as_dict()}
        if base is not None and name != "PPO" and np.all(np.isfinite(base["final"])):
            gain = iqm_difference_ci(final, base["final"])
            row.update(gain=gain.as_dict(), verdict=verdict(gain))
        out[name] = row
    return out


def _agreement(record: dict) -> float | None:
    """Share of the advisor's valid answers (all variants) that agree with the teacher's action, or None."""
    judged = [(a["reference_agreement"], a["reference_judged"]) for a in record.get("advice", [])
              if a.get("reference_judged")]
    total = sum(n for _, n in judged)
    return sum(p * n for p, n in judged) / total if total else None


def answered_cell(advice: list[dict]) -> str:
    """Valid answers over the questions asked, every variant together: answered (valid, invalid, failed) plus those
    still out when refinement ended (`unanswered`); questions the advisor's pacer did not send (their answers could
    not have arrived in time) are not questions, and are named after the cell."""
    asked = sum((a.get("questions") or 0) + (a.get("unanswered") or 0) for a in advice)
    if not asked:
        return "-"
    paced = sum(a.get("paced") or 0 for a in advice)
    return f"{sum(a['valid'] for a in advice)}/{asked}" + (f" ({paced} not asked)" if paced else "")


# what the suite itself sets per cell (task, advisor, budgets, methods, agents, the teacher as reference): a
# diagnosis changes how ULTRA acts, never which cell it is
SUITE_OWNED = {("env_id",), ("seeds",), ("seed",), ("pretrain_steps",), ("refine_steps",), ("variants",),
               ("agents_dir",), ("advisor", "spec"), ("advisor", "noise"), ("advisor", "reference")}


def _knob_value(text: str) -> Any:
    """A knob's value as `jaxmod ultra`'s flags read it: true/false, a number (`.5`, `1e3`; an integral float is an
    int), else the text (quotes stripped)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
        return int(number)
    return number  # nan, inf: refused by the config's own checks


def parse_knobs(text: str, tasks: tuple[str, ...] = ()) -> dict[str, Any]:
    """`--knobs`: comma-separated `name=value` pairs of `jaxmod ultra`'s knobs (`verify_samples=0,match_radius=0.5`),
    named by field or flag (`advisor_latency` = `latency_s`), keyed by field name. Raises ValueError (one line) on a
    malformed pair, an unknown knob, a knob named twice, one the suite sets itself (task, advisor, budgets, methods,
    agents, PPO's family settings), one at jaxmod's default already, or a bad value: each task's cell config is
    built with its family's settings and these knobs, its advisor files checked, before anything trains."""
    from jaxmod.ultra.config import UltraConfig

    paths, defaults = UltraConfig.knob_paths(), UltraConfig()
    knobs: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = (part.strip() for part in pair.partition("="))
        if not eq or not name:
            raise ValueError(f"{pair!r} is not name=value (e.g. --knobs verify_samples=0,match_radius=0.5)")
        if name == "ppo_overrides" or name not in paths:
            raise ValueError(f"unknown knob {name!r}: name one of jaxmod ultra's ULTRA knobs, e.g. verify_samples "
                             "(PPO's settings are the env family's)")
        path = paths[name]
        if path in SUITE_OWNED:
            raise ValueError(f"{name} is set by the suite per cell (task, advisor, budgets, methods, agents): use "
                             "--tasks, --advisors, --methods, --seeds, --scale or --agents")
        if path[-1] in knobs:
            raise ValueError(f"{name} is named twice")
        default = defaults
        for part in path:
            default = getattr(default, part)
        parsed = _knob_value(value)
        if parsed == default and isinstance(parsed, bool) == isinstance(default, bool):
            raise ValueError(f"{name}={value} is jaxmod's default already: leave it out")
        knobs[path[-1]] = parsed
    try:
        UltraConfig.flat(**knobs)
        for task in tasks:  # each cell's own config: the family's settings with these knobs
            budget = FAMILIES[family_of(task)]
            family = {k: v for k, v in budget["knobs"].items() if k != "ppo_overrides"}
            UltraConfig.flat(ppo_overrides=budget["knobs"].get("ppo_overrides", ()), env_id=task,
                             **{**family, **knobs}).check_advisor_files()
    except Exception as e:  # noqa: BLE001 - any refusal of the config is the user's one line
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return knobs


def cell_name(rec: dict) -> str:
    """The advisor column: the advisor, with the knobs the cell changed from jaxmod's defaults."""
    knobs = rec.get("knobs") or {}
    return rec["advisor"] + (f" ({', '.join(f'{k}={v}' for k, v in knobs.items())})" if knobs else "")


def markdown(records: list[dict]) -> str:
    lines = ["| task | advisor | seeds (budget) | start | fine-tune | ULTRA-A | ULTRA-R | ULTRA-RA | RA vs fine-tune | "
             "valid answers | agrees with teacher | wall (RA / fine-tune) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        if rec["status"] != "ok":
            lines.append(f"| {rec['task']} | {cell_name(rec)} | - | FAILED: {rec['error']} |" + " |" * 8)
            continue
        seeds = len(next(iter(rec["methods"].values()))["final"])
        st = cell_stats(rec)
        start = iqm_ci(rec["methods"]["PPO"]["start"]) if "PPO" in rec["methods"] else None

        def fmt(name: str, st: dict = st) -> str:
            s = st.get(name)
            if s is None:
                return "-"
            if "failed" in s:
                return f"FAILED ({s['failed']})"
            i = s["iqm"]
            return f"{i['point']:.1f} [{i['low']:.1f}, {i['high']:.1f}]"

        ra = st.get("RA", {})
        gain = f"{ra['gain']['point']:+.1f} [{ra['gain']['low']:+.1f}, {ra['gain']['high']:+.1f}] **{ra['verdict']}**" \
            if "gain" in ra else "-"
        guarded = rec["methods"].get("RA", {}).get("guard_chunk")
        gain += f" (guard: fine-tuning's from chunk {guarded})" if guarded else ""
        valid = answered_cell(rec.get("advice", []))
        agreement = _agreement(rec)
        agrees = "-" if agreement is None else f"{agreement:.0%}"
        walls = {n: m["refine_wall_s"] for n, m in rec["methods"].items()}
        wall = f"{walls['RA'] / walls['PPO']:.2f}x" if "RA" in walls and walls.get("PPO") else "-"
        lines.append(f"| {rec['task']} | {cell_name(rec)} | {seeds} (x{rec.get('scale', 1.0):g}) | "
                     f"{start.point if start else float('nan'):.1f} | "
                     f"{fmt('PPO')} | {fmt('A')} | {fmt('R')} | {fmt('RA')} | {gain} | {valid} | {agrees} | {wall} |")
    teachers = {r["task"]: r["teacher"] for r in records if r.get("teacher")}
    if teachers:
        lines += ["", "Teachers (evaluation return on the cells' evaluation keys, beside the agents'): " + "; ".join(
            f"{task} {t['teacher_return']:.1f} after {t['teacher_steps']:,} steps (agents {t['agents_return']:.1f}"
            + ("" if t["teacher_ratio_met"] else ", below the teacher bar") + ")" for task, t in teachers.items()) + "."]
    return "\n".join(lines)


# legends right of the axes, as jaxmod.reporting's curves: they never hide a point or an interval
LEGEND_OUTSIDE = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def figure(records: list[dict], path: Path) -> None:
    """One panel per task: each advisor's gain of A / R / RA over fine-tuning (IQM difference, 95% CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        cells = [r for r in records if r["task"] == task and r["status"] == "ok"]
        for j, name in enumerate(("A", "R", "RA")):
            xs, ys, lo, hi = [], [], [], []
            for i, rec in enumerate(cells):
                s = cell_stats(rec).get(name, {})
                if "gain" in s:
                    xs.append(i + (j - 1) * 0.25)
                    ys.append(s["gain"]["point"])
                    lo.append(s["gain"]["point"] - s["gain"]["low"])
                    hi.append(s["gain"]["high"] - s["gain"]["point"])
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=f"ULTRA-{name}")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(cells)), [cell_name(r) for r in cells], rotation=30, ha="right")
        ax.set_title(task, fontsize=10)
    axes[0][0].set_ylabel("final return minus fine-tuning's (IQM, 95% CI)")
    axes[0][-1].legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def accuracy_figure(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for task in dict.fromkeys(r["task"] for r in records):
        pts = []
        for rec in (r for r in records if r["task"] == task and r["status"] == "ok"):
            s = cell_stats(rec).get("RA", {})
            measured = _agreement(rec)
            if "gain" in s:
                pts.append((1.0 - rec["noise"] if measured is None else measured, s["gain"]))
        pts.sort(key=lambda p: p[0])
        ax.errorbar([p[0] for p in pts], [p[1]["point"] for p in pts],
                    yerr=[[p[1]["point"] - p[1]["low"] for p in pts], [p[1]["high"] - p[1]["point"] for p in pts]],
                    marker="o", capsize=3, label=task)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("advice accuracy: answers agreeing with the teacher's action")
    ax.set_ylabel("ULTRA-RA minus fine-tuning (IQM, 95% CI)")
    ax.legend(**LEGEND_OUTSIDE)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"] if path.exists() else []


def save(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cells": records}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma list of env ids (default: %(default)s)")
    ap.add_argument("--advisors", default=",".join(ADVISORS),
                    help=f"comma list of {', '.join(ADVISORS)}; each runs where it applies (default: all)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=None, help="override the family's seeds (a quick look)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the family's budgets (a quick look)")
    ap.add_argument("--accuracy", default=None, metavar="TASKS",
                    help=f"instead: sweep the teacher's corruption over {NOISE_LEVELS} on these tasks")
    ap.add_argument("--agents", default="runs/agents", help="saved pre-trained agents and teachers (reused)")
    ap.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    ap.add_argument("--knobs", default="", metavar="K=V,...",
                    help="knobs that differ from jaxmod's defaults, for a diagnosis (verify_samples=0,match_radius=0.5): "
                         "recorded with each cell and named in the table; keep such cells in their own --out")
    ap.add_argument("--redo", action="store_true", help="re-run cells already in the results")
    ap.add_argument("--report", action="store_true", help="run nothing: redraw the table and figure from --out's json")
    args = ap.parse_args()
    tasks = tuple((args.accuracy or args.tasks).split(","))
    try:
        extra = parse_knobs(args.knobs, () if args.report else tasks)
    except ValueError as e:
        print(f"ultra_suite.py: error: --knobs: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    code_version()  # the code this process runs, before the tree can change under it
    from jaxmod.cli import _enable_compile_cache

    _enable_compile_cache()
    out, agents = Path(args.out), Path(args.agents)
    name = "ultra_accuracy" if args.accuracy else "ultra_suite"
    if args.report and not load(out / f"{name}.json"):
        print(f"ultra_suite.py: error: --report: no cells in {out / f'{name}.json'}: run the suite with --out "
              f"{out} first", file=sys.stderr)
        raise SystemExit(2)
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(args.methods.split(","))
    if args.accuracy:
        tasks = args.accuracy.split(",")
        cells = [(t, f"teacher@{n:g}") for t in tasks for n in NOISE_LEVELS]
    else:
        tasks = args.tasks.split(",")
        cells = [(t, a) for t in tasks for a in advisor_cells(t, tuple(args.advisors.split(",")))]
    path = out / f"{name}.json"
    records = load(path)
    ran = False
    for task, advisor in [] if args.report else cells:
        def same(r: dict, task: str = task, advisor: str = advisor) -> bool:
            return (r["task"], r["advisor"], r.get("knobs") or {}) == (task, advisor, extra)

        if not args.redo and any(same(r) for r in records):
            continue
        print(f"== {task} x {advisor}", flush=True)
        rec = run_cell(task, advisor, methods, agents, args.seeds, lambda m: print("  " + m, flush=True),
                       args.scale, extra)
        if "@" in advisor:
            rec["noise"] = float(advisor.split("@")[1])
        records = [r for r in records if not same(r)] + [rec]
        save(path, records)
        ran = True
        print(f"   {rec['status']} in {rec['wall_s']:.0f}s" + (f": {rec['error']}" if rec["status"] != "ok" else ""))
    if args.accuracy:
        records = [r for r in records if (r["task"], r["advisor"]) in set(cells) and (r.get("knobs") or {}) == extra]
        accuracy_figure(records, out / f"{name}.png")
    else:  # every cell run so far, by task and advisor
        order = {t: i for i, t in enumerate(TASKS)}
        records.sort(key=lambda r: (order.get(r["task"], len(order)), r["task"],
                                    ADVISORS.index(r["advisor"]) if r["advisor"] in ADVISORS else len(ADVISORS)))
        table = markdown(records)
        (out / f"{name}.md").write_text(table + "\n")
        figure(records, out / f"{name}.png")
        print(table)
    written = ([path] if ran else []) + ([] if args.accuracy else [out / f"{name}.md"]) + [out / f"{name}.png"]
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
