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
    with pytest.raises(ValueError, match="interactive_per_row"):
        FairGate(0)


def test_an_interactive_job_between_two_asks_still_goes_before_the_next_row():
    """Its worker's ask timed out while a row held the group; until it asks again (one poll later) the group
    must not go to the next row: the job would wait a whole extra row."""
    now = [100.0]
    gate = FairGate(2, clock=lambda: now[0])
    assert gate.try_acquire()  # a row in flight
    assert not gate.acquire_interactive(timeout_s=0.01)  # the job's ask timed out behind it
    gate.release()  # the row is done, the job's worker sleeps a poll before asking again
    assert not gate.try_acquire()  # the next row may not slip into that gap
    assert gate.acquire_interactive(timeout_s=0.01)  # the job asks again and goes next
    gate.release()
    now[0] += 0.5
    assert gate.try_acquire()  # it got its turn: the batch goes on
    gate.release()


def test_a_job_that_stopped_asking_no_longer_holds_the_batch_back():
    now = [100.0]
    gate = FairGate(2, clock=lambda: now[0])
    assert gate.try_acquire()
    assert not gate.acquire_interactive(timeout_s=0.01)
    gate.release()
    now[0] += 1.5  # no ask for longer than the grace: nobody is waiting any more
    assert gate.try_acquire()
