"""benchmarks/ultra_suite.py's report: IQM cells, RA's verdict against fine-tuning, failures shown, never averaged."""

import pytest

from benchmarks.ultra_suite import advisor_cells, cell_stats, markdown

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


def test_advisors_apply_where_they_exist():
    assert advisor_cells("CartPole-v1", ("teacher", "scripted", "smollm2")) == ["teacher", "scripted", "smollm2"]
    assert advisor_cells("Asterix-MinAtar", ("teacher", "scripted", "smollm2")) == ["teacher"]
