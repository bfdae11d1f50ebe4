"""jaxmod.stats: IQM and bootstrap intervals as the suite reports them."""

import numpy as np
import pytest

from jaxmod.stats import iqm, iqm_ci, iqm_difference_ci, verdict

pytestmark = pytest.mark.timeout(60)


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -100.0])  # 8 runs: the 2 lowest and 2 highest are trimmed
    assert iqm(x) == pytest.approx(np.mean([2.0, 3.0, 4.0, 5.0]))


def test_interval_holds_the_point_and_is_reproducible():
    x = np.random.default_rng(1).normal(10.0, 3.0, size=10)
    ci = iqm_ci(x, seed=3)
    assert ci.low <= ci.point <= ci.high and ci.low < ci.high and ci.n == 10
    assert iqm_ci(x, seed=3) == ci


def test_constant_runs_give_a_zero_width_interval():
    ci = iqm_ci([500.0] * 5)
    assert (ci.point, ci.low, ci.high) == (500.0, 500.0, 500.0)


def test_paired_difference_and_verdict():
    base = np.random.default_rng(2).normal(0.0, 50.0, size=10)  # seed-to-seed spread, shared by both methods
    better = iqm_difference_ci(base + 5.0 + np.random.default_rng(3).normal(0, 0.5, 10), base)
    assert better.low > 0 and verdict(better) == "better"
    assert verdict(iqm_difference_ci(base - 5.0 + np.random.default_rng(4).normal(0, 0.5, 10), base)) == "worse"
    noisy = iqm_difference_ci(np.random.default_rng(5).normal(0, 50, 10), base)
    assert verdict(noisy) == "same" and noisy.low < 0 < noisy.high
    few = iqm_difference_ci(base[:4] + 5.0, base[:4])  # 4 paired runs: an interval of nothing much
    assert few.low > 0 and verdict(few) == "too few seeds"


def test_a_failed_run_is_never_averaged_away():
    with pytest.raises(ValueError, match=r"run\(s\) \[2\] are not finite"):
        iqm_ci([1.0, 2.0, float("nan"), 4.0])
    with pytest.raises(ValueError, match="differ in number"):
        iqm_difference_ci([1.0, 2.0], [1.0])


def test_a_curve_gets_an_iqm_and_a_band_at_every_point():
    from jaxmod.stats import iqm_ci_curve

    rng = np.random.default_rng(0)
    y = rng.normal(0.0, 1.0, size=(6, 5)) + np.arange(6)[:, None]
    y[2] = 7.0  # every seed agrees at point 2
    mid, low, high = iqm_ci_curve(y)
    assert mid == pytest.approx([iqm(row) for row in y]) and mid.shape == low.shape == high.shape == (6,)
    assert np.all(low <= mid) and np.all(mid <= high) and (low[2], high[2]) == (7.0, 7.0) and np.all(low[3:] < high[3:])
    again = iqm_ci_curve(y)
    assert all(np.array_equal(a, b) for a, b in zip(again, (mid, low, high), strict=True))
    one = iqm_ci_curve(y[:, :1])  # one seed: no interval to speak of
    assert np.array_equal(one[1], one[0]) and np.array_equal(one[2], one[0])
    with pytest.raises(ValueError, match="not finite"):
        iqm_ci_curve(np.array([[1.0, np.nan]]))


def _results(seeds: int = 5):
    from jaxmod.ultra.pipeline import VariantResult

    base = [0.0, -0.4, 0.2, 0.4, -0.2][:seeds]
    return {"PPO": VariantResult("PPO", [0, 10], [[-1.0] * seeds, base]),
            "RA": VariantResult("RA", [0, 10], [[-1.0] * seeds, [b + 0.5 for b in base]])}


def test_an_ultra_run_reports_iqm_intervals_gains_and_pongs_win_rate(tmp_path, monkeypatch):
    """ultra.json (its existing keys kept), the ultra.png curves and the CLI's table report IQM with 95% bootstrap
    intervals and the paired gain over fine-tuning; one-point Pong adds its win rate, and its plot shows it."""
    import json

    from rich.console import Console

    from jaxmod import reporting
    from jaxmod.cli import _print_ultra_results
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    plotted = []
    real_plot = reporting.plot_curves
    monkeypatch.setattr(reporting, "plot_curves", lambda series, path, **kw: plotted.append((list(series), kw))
                        or real_plot(series, path, **kw))
    config = UltraConfig.flat(env_id="jaxmod/Pong-OnePoint", seeds=5, variants=("PPO", "RA"))
    run = UltraRun(config, tmp_path / "run")
    run.write(_results())
    summary = json.loads((tmp_path / "run" / "ultra.json").read_text())
    final, ra = summary["PPO"]["final"], summary["RA"]
    assert {"mean", "std", "seeds", "non_finite_seeds", "iqm", "ci95"} <= set(final)
    assert final["iqm"] == pytest.approx(0.0) and final["ci95"][0] < 0.0 < final["ci95"][1]
    assert ra["gain_vs_ppo"]["iqm"] == pytest.approx(0.5) and ra["gain_vs_ppo"]["verdict"] == "better"
    assert ra["final_win_rate"]["iqm"] == pytest.approx(0.75) and "gain_vs_ppo" not in summary["PPO"]
    series, kw = plotted[-1]
    assert kw["ylabel"].startswith("evaluation win rate") and series[1][2][-1] == pytest.approx([0.75, 0.55, 0.85,
                                                                                                  0.95, 0.65])
    assert (tmp_path / "run" / "ultra.png").stat().st_size > 0

    console = Console(record=True, width=250)  # the CLI's table: Pong's in win rate, as its plot (2 decimals)
    _print_ultra_results(console, config, run, _results(), tmp_path)
    text = console.export_text()
    assert "evaluation win rate" in text and "final IQM [95% CI]" in text and "gain vs fine-tune" in text
    rate = ra["final_win_rate"]
    assert f"0.75 [{rate['ci95'][0]:.2f}, {rate['ci95'][1]:.2f}]" in text and "+0.25 [" in text
    assert "better" in text and "not meaningful" not in text
    narrow = Console(record=True, width=40)  # a narrow terminal: rows as lines, every number whole (none cut to "…")
    _print_ultra_results(narrow, config, run, _results(), tmp_path)
    lines = narrow.export_text()
    assert "…" not in lines and f"final IQM [95% CI]: 0.75 [{rate['ci95'][0]:.2f}, {rate['ci95'][1]:.2f}]" in lines
    assert "- method: ULTRA-RA" in lines and "gain vs fine-tune: +0.25 [" in lines
    for width in range(60, 130, 2):  # as a table or as lines: every cell whole, no column cropped at the edge
        console = Console(record=True, width=width)
        _print_ultra_results(console, config, run, _results(), tmp_path)
        text = console.export_text()
        assert "…" not in text and "answers" in text and "[+0.25," in text, width


def test_fewer_than_five_seeds_give_no_verdict_and_a_note_next_to_the_intervals(tmp_path):
    """ultra.json's verdict, the CLI's ultra table and its log line: with 2 seeds the bootstrap interval is just
    [min, max], so no verdict is given and a note says so."""
    import json

    from rich.console import Console

    from jaxmod.cli import _print_ultra_results
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    config = UltraConfig.flat(env_id="CartPole-v1", seeds=2, variants=("PPO", "RA"))
    run = UltraRun(config, tmp_path / "run")
    run.write(_results(2))
    assert json.loads((tmp_path / "run" / "ultra.json").read_text())["RA"]["gain_vs_ppo"]["verdict"] == "too few seeds"
    console = Console(record=True, width=250)
    _print_ultra_results(console, config, run, _results(2), tmp_path)
    text = console.export_text()
    assert "too few seeds" in text and "n=2 seeds: interval not meaningful (fewer than 5): no verdicts" in text
    assert "better" not in text and "worse" not in text


def test_plots_have_their_legend_outside_the_curves(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from jaxmod.reporting import plot_curves

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self) or real(self, *a, **k))
    y = np.random.default_rng(0).normal(size=(4, 3))
    plot_curves([("PPO", np.arange(4), y), ("ULTRA-RA", np.arange(4), y + 1)], tmp_path / "c.png", title="t")
    fig = saved[-1]
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes: it hides no curve
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["PPO (IQM of 3 seeds, 95% CI)",
                                                                    "ULTRA-RA (IQM of 3 seeds, 95% CI)"]


def test_ultra_gains_table_notes_fewer_than_five_seeds():
    from benchmarks.ultra_gain import markdown

    row = {"env": "CartPole-v1", "noise": 0.0, "variant": "RA", "start": 20.0, "final_cell": "30.0 [20.0, 40.0]",
           "gain_vs_ppo": {"iqm": 5.0, "ci95": [1.0, 9.0], "verdict": "too few seeds"}, "wall_vs_ppo": 1.0,
           "advice_overhead_frac": 0.0}
    assert "n=2 seeds: interval not meaningful (fewer than 5)." in markdown([{**row, "seeds": 2}])
    assert "not meaningful" not in markdown([{**row, "seeds": 5}])
