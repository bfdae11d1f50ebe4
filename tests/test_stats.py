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


def test_a_failed_run_is_never_averaged_away():
    with pytest.raises(ValueError, match=r"run\(s\) \[2\] are not finite"):
        iqm_ci([1.0, 2.0, float("nan"), 4.0])
    with pytest.raises(ValueError, match="differ in number"):
        iqm_difference_ci([1.0, 2.0], [1.0])
