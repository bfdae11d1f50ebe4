"""benchmarks/ultra_suite.py's report: IQM cells, RA's verdict against fine-tuning, failures shown, never averaged."""

import pytest

from benchmarks.ultra_suite import advisor_cells, answered_cell, cell_stats, markdown

pytestmark = pytest.mark.timeout(60)


def _record(ra_final):
    base = [100.0, 110.0, 120.0, 130.0, 140.0]
    return {"task": "CartPole-v1", "advisor": "teacher", "status": "ok",
            "methods": {"PPO": {"start": [50.0] * 5, "final": base, "refine_wall_s": 2.0},
                        "RA": {"start": [50.0] * 5, "final": ra_final, "refine_wall_s": 3.0}},
            "advice": [{"variant": "RA", "questions": 10, "valid": 9}]}


def test_gain_verdicts_and_failures():
    better = cell_stats(_record([150.0, 160.0, 171.0, 180.0, 190.0]))["RA"]
    assert better["verdict"] == "better" and better["gain"]["point"] == pytest.approx(50.0, abs=1.0)
    nan = cell_stats(_record([150.0, float("nan"), 170.0, 180.0, 190.0]))["RA"]
    assert nan == {"failed": "1 non-finite seed(s)"}
    table = markdown([_record([150.0, float("nan"), 170.0, 180.0, 190.0]),
                      {"task": "Pendulum-v1", "advisor": "random", "status": "failed", "error": "AdvisorFailure: x"}])
    assert "FAILED (1 non-finite seed(s))" in table and "FAILED: AdvisorFailure: x" in table
    assert "9/10" in table and "1.50x" in table and "| - |" in table


def test_answers_still_out_count_against_the_valid_share_and_paced_questions_are_named():
    advice = [{"variant": "A", "questions": 10, "valid": 9, "unanswered": 2, "paced": 30},
              {"variant": "RA", "questions": 4, "valid": 4, "unanswered": 0, "paced": 0}]
    assert answered_cell(advice) == "13/16 (30 not asked)"
    assert answered_cell([{"variant": "RA", "questions": 0, "valid": 0}]) == "-"
    assert "| 5 (x1) |" in markdown([_record([150.0, 160.0, 171.0, 180.0, 190.0])])


def test_advisors_apply_where_they_exist():
    assert advisor_cells("CartPole-v1", ("teacher", "scripted", "smollm2")) == ["teacher", "scripted", "smollm2"]
    assert advisor_cells("Asterix-MinAtar", ("teacher", "scripted", "smollm2")) == ["teacher"]


def test_paper_curves_and_ultra_gain_tables_report_iqm_intervals():
    """benchmarks/paper_curves.py: IQM [95% CI] per method and task, Pong as win rate; benchmarks/ultra_gain.py:
    IQM [95% CI] and the paired gain over continued PPO with its verdict."""
    import numpy as np

    from benchmarks import paper_curves, ultra_gain
    from jaxmod.reporting import gain_summary, seed_summary
    from jaxmod.ultra.pipeline import VariantResult

    pong = {"PPO": VariantResult("PPO", [0, 1], [[-1.0] * 4, [-1.0, 1.0, 1.0, -1.0]]),
            "RA": VariantResult("RA", [0, 1], [[-1.0] * 4, [1.0, 1.0, 1.0, -1.0]])}
    hopper = {"PPO": VariantResult("PPO", [0, 1], [[10.0] * 4, [100.0, 110.0, 120.0, 130.0]]),
              "RA": VariantResult("RA", [0, 1], [[10.0] * 4, [100.0, float("nan"), 120.0, 130.0]])}
    rows = paper_curves.summarise(paper_curves.PONG, pong) + paper_curves.summarise("brax/hopper", hopper)
    assert rows[0]["win_rate_iqm"] == pytest.approx(0.5) and rows[1]["win_rate_iqm"] == pytest.approx(1.0)
    assert rows[2]["final_iqm"] == pytest.approx(115.0) and rows[3]["final_iqm"] is None
    table = paper_curves.markdown(rows, "cpu")
    assert "IQM [95% bootstrap CI]" in table and "win rate" in table
    rate = seed_summary([0.0, 1.0, 1.0, 0.0]).iqm
    assert f"| PPO fine-tune | {rate.point:.2f} [{rate.low:.2f}, {rate.high:.2f}] | 115.0 [" in table
    assert "| ULTRA-RA | 1.00 [" in table and "NON-FINITE |" in table
    assert "| (agent before refinement, IQM) | 0.00 | 10.0 |" in table

    base, ra = np.array([100.0, 110.0, 120.0, 130.0, 140.0]), np.array([151.0, 160.0, 170.0, 180.0, 190.0])
    cells = [dict(env="CartPole-v1", noise=0.0, variant=v, start=50.0, final_cell=seed_summary(f).iqm_cell(),
                  gain_vs_ppo=None if v == "PPO" else gain_summary(f, base), wall_vs_ppo=1.0, advice_overhead_frac=0.0)
             for v, f in (("PPO", base), ("RA", ra))]
    table = ultra_gain.markdown(cells)
    assert "| ULTRA-RA | 50.0 | 170.0 [" in table and "| +50.0 [" in table and "better |" in table
    assert "| PPO fine-tune | 50.0 | 120.0 [" in table and "| - |" in table


def test_the_suite_figures_keep_their_legends_outside_the_axes(tmp_path, monkeypatch):
    """benchmarks/ultra_suite.py's gain and accuracy figures: each legend lies right of its axes (it covered
    error bars before), and the saved image holds it."""
    import matplotlib.figure
    from PIL import Image

    from benchmarks import ultra_suite

    seen = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kw):
        fig.canvas.draw()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                seen.append((legend.get_window_extent().x0, ax.get_window_extent().x1))
        return save(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    records = [_record([150.0, 160.0, 171.0, 180.0, 190.0]),
               {**_record([90.0, 100.0, 110.0, 120.0, 130.0]), "advisor": "random", "noise": 0.5}]
    for rec in records:
        rec.setdefault("noise", 0.0)
        rec["methods"]["A"] = rec["methods"]["R"] = rec["methods"]["RA"]
    ultra_suite.figure(records, tmp_path / "gain.png")
    ultra_suite.accuracy_figure(records, tmp_path / "accuracy.png")
    assert len(seen) == 2 and all(legend_x0 >= axes_x1 for legend_x0, axes_x1 in seen), seen
    for name in ("gain.png", "accuracy.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 0


def test_knobs_are_checked_before_anything_runs_and_named_in_the_table(monkeypatch, capsys, tmp_path):
    """`--knobs` (a diagnosis: knobs that differ from jaxmod's defaults): values read as the flags read them, names
    by field or flag; a malformed pair, an unknown knob, one named twice, one the suite sets per cell, one at its
    default, or a value the cell's config refuses: one line on stderr, exit 2, before any agent trains or any file
    is written. The table names the knobs beside the advisor."""
    from benchmarks import ultra_suite

    assert ultra_suite.parse_knobs("verify_samples=0, match_radius=.5,advisor_pacing=False,advisor_latency=1e0") == {
        "verify_samples": 0, "match_radius": 0.5, "pacing": False, "latency_s": 1}
    for bad, says in (("verify_sample=0", "unknown knob 'verify_sample'"), ("match_radius=-1", "match_radius must be >= 0"),
                      ("verify_samples", "is not name=value"), ("=0", "is not name=value"),
                      ("latency_s=1,advisor_latency=2", "advisor_latency is named twice"),
                      ("env=Acrobot-v1", "set by the suite per cell"), ("advisor=scripted", "set by the suite"),
                      ("variants=RA", "set by the suite"), ("agents_dir=/x", "set by the suite"),
                      ("ppo_overrides={}", "unknown knob"), ("lr=0.1", "unknown knob"),
                      ("verify_samples=4", "is jaxmod's default already"), ("match_radius=nan", "finite"),
                      ("advisor_reference=/nonexistent", "set by the suite"), ("verify_samples=1e400", "integer")):
        monkeypatch.setattr("sys.argv", ["ultra_suite.py", "--tasks", "CartPole-v1", "--knobs", bad,
                                         "--out", str(tmp_path / "out"), "--agents", str(tmp_path / "agents")])
        with pytest.raises(SystemExit) as exit_:
            ultra_suite.main()
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and says in err[0], (bad, err)
        assert not (tmp_path / "agents").exists() and not (tmp_path / "out").exists()
    rec = {**_record([150.0, 160.0, 171.0, 180.0, 190.0]), "knobs": {"verify_samples": 0, "match_radius": 0.5}}
    assert "| teacher (verify_samples=0, match_radius=0.5) |" in markdown([rec])
    # --report of a folder without cells: one line, nothing written
    monkeypatch.setattr("sys.argv", ["ultra_suite.py", "--report", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        ultra_suite.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "no cells in" in err[0] and not (tmp_path / "out").exists()


def test_outcome_gap_reads_a_run_chunk_by_chunk(tmp_path, capsys, monkeypatch):
    """benchmarks/outcome_gap.py: per evaluation, the method's per-seed return minus fine-tuning's and the paired
    verdict; a folder without ultra.json or a method the run lacks is one line, exit 2."""
    from benchmarks import outcome_gap

    ppo = [[10.0] * 5, [20.0, 21.0, 22.0, 23.0, 24.0]]
    ra = [[10.0] * 5, [40.0, 41.0, 43.0, 44.0, 46.0]]
    summary = {"PPO": {"eval_returns": ppo}, "RA": {"eval_returns": ra}}
    rows = outcome_gap.chunk_gaps(summary, "RA")
    assert [r["verdict"] for r in rows] == ["same", "better"] and rows[0]["diffs"] == [0.0] * 5
    assert rows[1]["diffs"] == [20.0, 20.0, 21.0, 21.0, 22.0] and rows[1]["mean"] == pytest.approx(20.8)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ultra.json").write_text(__import__("json").dumps(summary))
    for argv, says in ((["outcome_gap.py", str(tmp_path)], "no ultra.json"),
                       (["outcome_gap.py", str(tmp_path / "run"), "--method", "A"], "--method must be one of")):
        monkeypatch.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as exit_:
            outcome_gap.main()
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and says in err[0]
    monkeypatch.setattr("sys.argv", ["outcome_gap.py", str(tmp_path / "run")])
    outcome_gap.main()
    assert "better" in capsys.readouterr().out
