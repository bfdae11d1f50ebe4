"""benchmarks/ultra_overhead.py and benchmarks/advisor_scale.py run end to end at toy sizes (CartPole-v1, a few
seeds, a few updates, the scripted advisor with no added latency), writing their JSON to a temporary folder: the
output's structure and sanity are checked (timings finite and positive, ratios as their parts say, the advised rows'
counts present and adding up), never the timings' values."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import advisor_scale, ultra_overhead  # noqa: E402

TOY_STEPS = ["--pretrain-steps", "1024", "--refine-steps", "2048", "--chunks", "2"]  # 2 and 4 updates of 4 x 128


@pytest.fixture(autouse=True)
def results_untouched():
    """The toy runs write only where --json says: benchmarks/results (the real numbers) is left as it was."""
    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in (ROOT / "benchmarks" / "results").rglob("*")}

    before = snapshot()
    yield
    assert snapshot() == before


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.timeout(300)
def test_ultra_overhead_runs_end_to_end_at_a_toy_size(tmp_path, monkeypatch, capsys):
    out = tmp_path / "overhead.json"
    monkeypatch.setattr(sys, "argv", ["ultra_overhead.py", "--envs", "CartPole-v1", "--seeds", "2", *TOY_STEPS,
                                      "--latency", "0", "--repeats", "1", "--json", str(out)])
    ultra_overhead.main()
    saved = json.loads(out.read_text())
    assert saved["advisor_priority"] == "normal" and saved["device"] and saved["jax"].count(".") == 2
    (row,) = saved["rows"]
    assert (row["env"], row["seeds"], row["pretrain_steps"], row["refine_steps"]) == ("CartPole-v1", 2, 1024, 2048)
    assert _positive(row["device_ppo_s"]) and _positive(row["device_ra_s"])
    assert row["device_ra_vs_ppo"] == pytest.approx(row["device_ra_s"] / row["device_ppo_s"])
    assert list(row["end_to_end"]) == ["0"]  # one entry per --latency value
    e = row["end_to_end"]["0"]
    assert _positive(e["ppo_s"]) and _positive(e["ra_s"]) and _positive(e["wall_vs_ppo"])
    assert len(e["wall_vs_ppo_runs"]) == 1 and e["wall_vs_ppo"] == pytest.approx(e["ra_s"] / e["ppo_s"])
    assert 0 <= e["stall_frac"] <= e["stall_frac_max"] <= 1
    assert 0 <= e["rounds_swapped"] <= 2  # at most one advice round per chunk
    assert math.isfinite(e["answer_latency_s"]) and e["answer_latency_s"] >= 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "| CartPole-v1 |" in printed and "| +0 s (" in printed


@pytest.mark.timeout(300)
def test_advisor_scale_runs_end_to_end_at_a_toy_size(tmp_path, monkeypatch, capsys):
    out = tmp_path / "scale.json"
    seeds, budget, per_round, chunks = 4, 2, 8, 2  # the budget binds: 4 seeds x 8 episodes per round > 2
    monkeypatch.setattr(sys, "argv", ["advisor_scale.py", "--seeds", str(seeds), *TOY_STEPS, "--latency", "0",
                                      "--budgets", f"{budget},0", "--sync-advice", "--json", str(out)])
    advisor_scale.main()
    saved = json.loads(out.read_text())
    assert (saved["env"], saved["seeds"], saved["chunks"], saved["sync_advice"]) == ("CartPole-v1", seeds, chunks, True)
    assert [(r["variant"], r["round_budget"]) for r in saved["rows"]] == [("PPO", None), ("RA", budget), ("RA", "none")]
    for r in saved["rows"]:
        assert _positive(r["wall_s"]) and _positive(r["cpu_s"]) and r["compile_s"] >= 0
        assert _positive(r["wall_vs_ppo"]) and _positive(r["cpu_vs_ppo"]) and math.isfinite(r["final_iqm"])
        assert r["wall_vs_ppo"] == pytest.approx(r["wall_s"] / saved["rows"][0]["wall_s"])
    ppo, capped, uncapped = saved["rows"]
    assert ppo["rounds_swapped"] == 0 and "questions" not in ppo
    counts = ("questions", "valid", "reused", "round_candidates", "round_asked", "round_deduplicated", "round_unasked",
              "answers_shared")
    for r in (capped, uncapped):
        assert all(isinstance(r[k], int) and r[k] >= 0 for k in counts), r
        assert r["rounds_swapped"] == chunks  # --sync-advice: every chunk waits for its round
        assert 0 < r["round_candidates"] <= chunks * seeds * per_round
        assert r["round_asked"] + r["round_deduplicated"] + r["round_unasked"] == r["round_candidates"]
        assert r["questions"] >= r["round_asked"] and r["valid"] <= r["questions"]
    assert chunks <= capped["round_asked"] <= chunks * budget  # at least one episode, at most the budget, per round
    assert capped["round_deduplicated"] + capped["round_unasked"] > 0
    assert uncapped["round_asked"] == uncapped["round_candidates"]  # no budget: every recorded episode asked
    assert uncapped["round_deduplicated"] == uncapped["round_unasked"] == uncapped["answers_shared"] == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"| RA | {budget} |" in printed and "| RA | none |" in printed
