"""A render group's memory limit (GroupSpec.memory_limit_mb): a CPU rank process that would pass it gets an allocation
error, and goes on; a GPU rank (nccl: RLIMIT_DATA would refuse the CUDA driver's mappings) is ended by a watch of its
resident memory. Run in spawned processes, so no limit lands on the test process."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading

import pytest

from wan_dist.config import GroupSpec
from wan_dist.engine.memory_watch import EXIT_CODE, resident_private_mb, watch_memory


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


# A GPU rank's setup on this CPU machine: world size 1, so nccl is named and never initialised; then 300 MiB past
# the limit is allocated and touched (resident), and the rank waits (a minute at most) for the watch to end it.
_GPU_RANK = """
import threading, torch
from wan_dist.engine.group import RankWorker
from wan_dist.engine.memory_watch import resident_private_mb
limit = int(resident_private_mb()) + 300
RankWorker(0, 1).setup("127.0.0.1", 0, backend="nccl", threads=1, timeout_s=10, memory_limit_mb=limit)
print("watching", flush=True)
held = torch.ones(600 * 2**20 // 4)
threading.Event().wait(60)
print("still alive", flush=True)
"""


def test_a_gpu_rank_past_its_memory_limit_is_ended_by_the_watch():
    process = subprocess.Popen([sys.executable, "-c", _GPU_RANK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == EXIT_CODE, (process.returncode, out, err[-2000:])
    assert "watching" in out and "still alive" not in out  # under the limit until the allocation
    assert "memory_limit_mb=" in err and "ending this rank" in err


def test_the_watch_calls_back_past_the_limit_and_refuses_no_limit():
    seen, crossed = [], threading.Event()
    stop = watch_memory(max(1, int(resident_private_mb()) - 1), interval_s=0.01,
                        on_exceed=lambda used, limit: (seen.append((used, limit)), crossed.set()))
    assert crossed.wait(30), "the watch never saw this process past a limit below its own memory"
    stop.set()
    assert len(seen) == 1 and seen[0][0] > seen[0][1]
    with pytest.raises(ValueError, match="limit_mb"):
        watch_memory(0)


def test_the_limit_is_for_every_rank_and_not_negative():
    assert GroupSpec(memory_limit_mb=4096).memory_limit_mb == 4096
    assert GroupSpec(memory_limit_mb=4096, use_gpus=True).memory_limit_mb == 4096
    assert GroupSpec(memory_limit_mb=4096).for_cluster({"GPU": 8}).use_gpus
    with pytest.raises(ValueError, match="memory_limit_mb"):
        GroupSpec(memory_limit_mb=-1)
