"""benchmarks/peers.py: the side-by-side table against PureJaxRL and rejax, without installing the peers.

jaxmod's worker runs for real (its own subprocess, a tiny CartPole budget); the peers' workers are replaced by fixed
answers, so the table, the ratios and the verdicts are checked on known numbers. The real peer install (a separate
venv) never runs in the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import peers

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(400)
def test_quick_table_with_mocked_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "ensure_peers_venv", lambda: pytest.fail("the peer venv must not be installed"))
    monkeypatch.setattr(peers, "ensure_anchors", lambda src: pytest.fail("PureJaxRL must not be copied"))
    calls = []

    def worker(peer, task_name, task, seeds, runs, timeout):
        calls.append((peer, task_name, task.total_steps, seeds))
        if peer == "jaxmod":
            return peers.run_worker(peer, task_name, task, seeds, runs, timeout)
        if peer == "rejax":
            return {"peer": peer, "seeds": seeds, "error": "rejax failed"}
        return {"peer": peer, "seeds": seeds, "compile_s": 1e4, "run_s": 1e4, "cpu_s": 1e4, "final_return": 500.0}

    args = peers.parse_args(["--quick", "--rows", "cartpole-1", "--out", str(tmp_path)])
    result = peers.benchmark(args, worker=worker)

    assert [c[0] for c in calls] == ["purejaxrl", "rejax", "jaxmod"]  # one alternation in --quick
    assert {c[2] for c in calls} == {peers.QUICK_STEPS["cartpole"]}
    by_peer = {s["peer"]: s for s in result["summary"]}
    j = by_peer["jaxmod"]
    assert j["repeats"] == 1 and not j["errors"], j
    assert 0 < j["run_s"] < 1e4 and 0 < j["compile_s"] < 1e4 and j["cpu_s"] > 0
    assert 8.0 <= j["final_return"] <= 500.0  # CartPole returns: a finished episode lasts at least 8 steps
    assert by_peer["rejax"]["repeats"] == 0 and by_peer["rejax"]["errors"] == ["rejax failed"]
    (v,) = result["verdicts"]
    assert v["run_ratio"] == pytest.approx(1e4 / j["run_s"])
    assert v["run_target"] == 1.3 and v["run_verdict"] == "met" and v["compile_verdict"] == "met"
    md = next(tmp_path.glob("peers_quick_*.md")).read_text()
    assert "| cartpole-1 |" in md and "met" in md and "errors: 1" in md
    saved = json.loads(next(tmp_path.glob("peers_quick_*.json")).read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert saved["info"]["jax"].count(".") == 2  # the version jaxmod's worker ran on


def test_verdicts_say_by_how_much_a_target_is_missed():
    def entry(row, peer, run_s, compile_s):
        return {"row": row, "peer": peer, "seeds": peers.ROWS[row][1], "run_s": run_s, "cpu_s": run_s,
                "compile_s": compile_s, "final_return": 500.0}

    summary = [entry("cartpole-1", "purejaxrl", 2.0, 7.0), {**entry("cartpole-1", "jaxmod", 2.0, 8.0), "cpu_s": 1.0},
               entry("cartpole-4", "purejaxrl", 7.0, 8.0), entry("cartpole-4", "jaxmod", 5.0, 6.0),
               entry("breakout-1", "purejaxrl", 3.0, 9.0), entry("breakout-1", "jaxmod", 2.0, 9.0)]
    v = {x["row"]: x for x in peers.verdicts(summary)}
    assert v["cartpole-1"]["run_ratio"] == pytest.approx(1.0)
    assert v["cartpole-1"]["run_verdict"] == "missed by 23%"  # 1.0 against 1.3
    assert v["cartpole-1"]["cpu_ratio"] == pytest.approx(2.0) and v["cartpole-1"]["cpu_verdict"] == "met"
    assert v["cartpole-1"]["compile_verdict"] == "missed by 14%"  # 8 s against 7 s
    assert v["cartpole-4"]["run_verdict"] == "met" and v["cartpole-4"]["compile_verdict"] == "met"
    assert v["breakout-1"]["run_target"] is None and "run_verdict" not in v["breakout-1"]  # no target: reported only
    assert v["breakout-1"]["run_ratio"] == pytest.approx(1.5)


@pytest.mark.timeout(60)
def test_bad_row_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "benchmarks/peers.py", "--rows", "cartpole-3"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cartpole-3" in proc.stderr and "cartpole-1" in proc.stderr


def test_render_pools_interrupted_runs(tmp_path, monkeypatch):
    """Two runs (one cut short, one of the row it did not reach) re-rendered into one table, samples pooled."""
    monkeypatch.setattr(peers, "ensure_peers_venv", lambda: None)
    monkeypatch.setattr(peers, "ensure_anchors", lambda src: None)
    speed = {"purejaxrl": 3.0, "rejax": 4.0, "jaxmod": 2.0}
    seen = []

    def worker(peer, task_name, task, seeds, runs, timeout):
        seen.append(task.total_steps)
        k = len(seen)  # every sample differs, so the median is checked
        return {"peer": peer, "seeds": seeds, "compile_s": 5.0 + k, "run_s": speed[peer] + 0.01 * k,
                "cpu_s": 2 * speed[peer], "final_return": 100.0 + k, "jax": "0.10.2"}

    a = peers.benchmark(peers.parse_args(["--rows", "cartpole-1", "--repeats", "2", "--out", str(tmp_path / "a")]),
                        worker=worker)
    b = peers.benchmark(peers.parse_args(["--rows", "cartpole-1,breakout-1", "--breakout-steps", "16384",
                                          "--repeats", "1", "--out", str(tmp_path / "b")]), worker=worker)
    assert 16384 in seen
    files = [str(next((tmp_path / d).glob("peers_*.json"))) for d in ("a", "b")]
    merged = peers.render(files, str(tmp_path / "merged" / "peers_x"))
    by = {(s["row"], s["peer"]): s for s in merged["summary"]}
    assert by[("cartpole-1", "jaxmod")]["repeats"] == 3 and by[("breakout-1", "jaxmod")]["repeats"] == 1
    pooled = sorted(a["samples"]["cartpole-1"]["jaxmod"] + b["samples"]["cartpole-1"]["jaxmod"],
                    key=lambda r: r["run_s"])
    assert by[("cartpole-1", "jaxmod")]["run_s"] == pooled[1]["run_s"]  # the median of the three
    assert merged["tasks"]["breakout"]["total_steps"] == 16384
    assert "Breakout-MinAtar (1.6e4 steps/seed)" in (tmp_path / "merged" / "peers_x.md").read_text()
    v = {x["row"]: x for x in merged["verdicts"]}
    assert v["cartpole-1"]["cpu_ratio"] == pytest.approx(1.5) and v["breakout-1"]["cpu_ratio"] == pytest.approx(1.5)


@pytest.mark.timeout(60)
def test_a_worker_past_its_timeout_is_an_error_row():
    res = peers.run_worker("jaxmod", "cartpole", peers.TASKS["cartpole"], 1, 1, timeout=0.2)
    assert res == {"peer": "jaxmod", "seeds": 1, "error": "timed out after 0.2 s"}


def test_bad_flags_are_one_line_and_exit_2_before_anything_runs(tmp_path, capsys):
    """--timeout, --profile-updates, --render files and --out are checked before a measurement; step counts may be
    written 5e5, as the help writes them."""
    afile, bad = tmp_path / "afile", tmp_path / "bad.json"
    afile.write_text("x")
    bad.write_text("{bad")
    for flags, words in ((["--timeout", "0"], "--timeout must be > 0"),
                         (["--profile", "--profile-updates", "0"], "--profile-updates >= 1"),
                         (["--render", str(tmp_path / "none.json")], "not the .json of a peers.py run"),
                         (["--render", str(bad)], "not the .json of a peers.py run"),
                         (["--out", str(afile)], "is a file"),
                         (["--cartpole-steps", "5.5"], "invalid whole number value")):
        with pytest.raises(SystemExit) as exit_:
            peers.parse_args(flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and words in err[-1], (flags, err)
    assert peers.parse_args(["--cartpole-steps", "5e5"]).cartpole_steps == 500_000


def test_a_run_whose_measurements_failed_says_so_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(peers, "run_worker", lambda peer, *a: {"peer": peer, "seeds": 1, "error": "timed out"})
    monkeypatch.setattr(sys, "argv", ["peers.py"])
    with pytest.raises(SystemExit) as exit_:
        peers.main(["--quick", "--peers", "jaxmod", "--rows", "cartpole-1", "--out", str(tmp_path)])
    assert exit_.value.code == 1 and "1 of 1 measurements failed" in capsys.readouterr().err
