"""A render group's memory limit (GroupSpec.memory_limit_mb): a rank process that would pass it gets an allocation
error, and goes on; the limit is refused where it cannot work (GPU ranks). Run in a spawned process, so the limit
never lands on the test process."""

from __future__ import annotations

import multiprocessing

import pytest

from wan_dist.config import GroupSpec


def _rank_under_limit(limit_mb: int, queue) -> None:
    import torch

    from wan_dist.engine.group import RankWorker

    worker = RankWorker(0, 1)
    worker.setup("127.0.0.1", 0, backend="gloo", threads=1, timeout_s=10, memory_limit_mb=limit_mb)
    outcome = {}
    try:
        torch.ones(2 * limit_mb * 2**20 // 4)  # twice the limit: refused by the allocator
        outcome["big"] = "allocated"
    except RuntimeError as error:
        outcome["big"] = str(error)
    outcome["small"] = float(torch.ones(16 * 2**20 // 4).sum())  # the process goes on
    queue.put(outcome)


def test_a_rank_past_its_memory_limit_fails_the_allocation_and_goes_on():
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_rank_under_limit, args=(3000, queue))
    process.start()
    try:
        outcome = queue.get(timeout=120)
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    assert "can't allocate memory" in outcome["big"], outcome
    assert outcome["small"] == 16 * 2**20 // 4


def test_the_limit_is_for_cpu_ranks_and_not_negative():
    assert GroupSpec(memory_limit_mb=4096).memory_limit_mb == 4096
    with pytest.raises(ValueError, match="memory_limit_mb.*use_gpus"):
        GroupSpec(memory_limit_mb=4096, use_gpus=True)
    with pytest.raises(ValueError, match="memory_limit_mb"):
        GroupSpec(memory_limit_mb=-1)
    # decided when a group starts on a GPU cluster: refused then, naming the field
    with pytest.raises(ValueError, match="memory_limit_mb"):
        GroupSpec(memory_limit_mb=4096).for_cluster({"GPU": 8})
