"""jaxmod.tracking: a resumed run's event files show each step once (a killed run's later points are purged)."""

import time

import pytest

from jaxmod.tracking import Tracker, read_events

pytestmark = pytest.mark.timeout(60)


def test_a_resumed_run_purges_the_killed_runs_later_points(tmp_path):
    with Tracker(tmp_path) as first:  # ran to step 6, checkpointed at step 3, then killed
        for step in range(1, 7):
            first.scalars({"charts/episode_return": float(step)}, step)
    time.sleep(1.1)  # event file names carry the second they were opened
    with Tracker(tmp_path, fresh=False, purge_step=4) as resumed:
        for step in range(4, 7):
            resumed.scalars({"charts/episode_return": 10.0 * step}, step)
    assert read_events(tmp_path)["charts/episode_return"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0),
                                                              (6, 60.0)]
    with Tracker(tmp_path) as fresh:  # a new run in the folder replaces the old event files
        fresh.scalars({"charts/episode_return": 7.0}, 1)
    assert read_events(tmp_path) == {"charts/episode_return": [(1, 7.0)]}


def test_nothing_is_created_before_the_first_scalar(tmp_path):
    with Tracker(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists()
