"""The order-status lane gives way to urgent lanes (fills, trades), boundedly (etl/gate.py)."""

from __future__ import annotations

import threading

from conftest import wait_for

from etl.gate import Gate


def test_no_urgent_lane_means_no_wait() -> None:
    gate = Gate(max_wait_s=60)
    gate.give_way()
    assert (gate.waits, gate.waiting) == (0, 0)


def test_bulk_lane_waits_until_the_urgent_lane_is_done() -> None:
    gate = Gate(max_wait_s=3600)
    done = threading.Event()

    def bulk() -> None:
        gate.give_way()
        done.set()

    with gate.urgent():
        t = threading.Thread(target=bulk)
        t.start()
        wait_for(lambda: gate.waiting == 1)
        assert not done.is_set()  # still waiting: the urgent block has not ended
    assert done.wait(30)
    t.join()
    assert gate.waits == 1
    assert gate.waited_s < 30  # released by the urgent block's end, not by its hour-long limit


def test_a_busy_urgent_lane_never_stops_the_bulk_lane() -> None:
    gate = Gate(max_wait_s=0.05)
    with gate.urgent():
        for _ in range(3):
            gate.give_way()  # returns after max_wait_s although urgent work continues
    assert gate.waits == 3
    assert gate.waited_s >= 3 * 0.05 * 0.9  # each call waited (about) its whole limit


def test_nested_urgent_blocks_release_once_all_end() -> None:
    gate = Gate(max_wait_s=60)
    done = threading.Event()
    outer, inner = gate.urgent(), gate.urgent()
    outer.__enter__()
    inner.__enter__()
    t = threading.Thread(target=lambda: (gate.give_way(), done.set()))
    t.start()
    wait_for(lambda: gate.waiting == 1)
    inner.__exit__(None, None, None)
    assert not done.is_set()  # one urgent lane is still busy
    outer.__exit__(None, None, None)
    assert done.wait(30)
    t.join()


def test_the_checkpoints_of_one_unit_wait_its_budget_in_all() -> None:
    """The byte scan of one unit calls its budget between slices (etl/bytescan.py): while urgent
    work goes on, the first call waits the whole budget and the others none."""
    gate = Gate(max_wait_s=0.05)
    assert gate.budget() is None  # no lane may be urgent: the scan runs without checkpoints
    gate.urgent_lanes = 1  # a fills lane's, as `Lane` registers it
    budget = gate.budget()
    assert budget is not None
    with gate.urgent():
        for _ in range(10):
            budget()
    assert gate.waits == 1 and budget.left <= 0
    fresh = gate.budget()
    assert fresh is not None
    fresh()  # no urgent work now: no wait, the budget untouched
    assert gate.waits == 1 and fresh.left == 0.05
