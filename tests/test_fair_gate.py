"""FairGate: the turns of interactive jobs and batch rows on one render group (no Ray, no threads racing)."""

from __future__ import annotations

import threading
import time

import pytest

from wan_dist.serve.batches import FairGate


def test_batch_rows_take_a_free_group_and_wait_for_a_held_one():
    gate = FairGate(2)
    assert gate.try_acquire()
    assert not gate.try_acquire()  # one holder at a time
    assert not gate.acquire_interactive(timeout_s=0.05)
    gate.release()
    assert gate.acquire_interactive(timeout_s=0.05)
    assert not gate.try_acquire()
    gate.release()


def test_interactive_goes_first_until_its_burst_then_a_waiting_batch_row():
    gate = FairGate(2)
    order = []
    for _ in range(2):
        assert gate.acquire_interactive(timeout_s=0.05)
        order.append("job")
        assert not gate.try_acquire()  # the batch asks while the job renders: now it is waiting
        gate.release()
    # two interactive turns in a row with a batch row waiting: the next interactive job must wait
    assert not gate.acquire_interactive(timeout_s=0.05)
    assert gate.try_acquire()
    order.append("row")
    gate.release()
    assert gate.acquire_interactive(timeout_s=0.05)  # and the streak starts again
    order.append("job")
    gate.release()
    assert order == ["job", "job", "row", "job"]


def test_a_waiting_interactive_job_is_ahead_of_the_next_batch_row():
    gate = FairGate(1)
    assert gate.try_acquire()  # a row in flight
    got = threading.Event()
    waiter = threading.Thread(target=lambda: gate.acquire_interactive(timeout_s=5) and got.set())
    waiter.start()
    try:
        deadline = time.monotonic() + 60
        while not gate._interactive_waiting:  # the job is queued behind the row (however slow the thread starts)
            assert time.monotonic() < deadline, "the waiting job never queued"
            threading.Event().wait(0.01)
        gate.release()
        assert not gate.try_acquire()  # the job goes next, not another row
    finally:
        waiter.join(5)
    assert got.is_set()
    gate.release()


def test_burst_must_be_positive():
    with pytest.raises(ValueError, match="interactive_per_batch_row"):
        FairGate(0)
