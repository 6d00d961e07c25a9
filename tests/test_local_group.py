"""The local gloo group runner that parallel tests and CPU benchmarks are built on."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from wan_dist.parallel.local import RankFailed, run_local_group


def _sum_of_ranks(rank: int, world_size: int, offset: float) -> tuple[int, float]:
    value = torch.tensor([rank + offset])
    dist.all_reduce(value)
    return dist.get_rank(), value.item()


def _rank_one_raises(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("rank one refuses")
    return rank


def test_results_come_back_in_rank_order():
    assert run_local_group(_sum_of_ranks, 4, 10.0) == [(r, 46.0) for r in range(4)]


def test_a_failing_rank_fails_the_call_with_its_traceback():
    with pytest.raises(RankFailed, match=r"(?s)rank 1 of 2 failed.*rank one refuses"):
        run_local_group(_rank_one_raises, 2)
