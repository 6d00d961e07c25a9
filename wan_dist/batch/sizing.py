"""Sizing a batch job for a cluster: how many render groups fit, and which layout one group gets.

Rows are independent, so a batch runs as many separate groups as the cluster holds (no collective between
groups; a dead GPU stops one group only), each with the planner's layout for one replica.
"""

from __future__ import annotations

from dataclasses import replace

from wan_dist.config import BatchConfig, ParallelConfig

__all__ = ["group_count", "planned_layout"]


def group_count(config: BatchConfig, parallel: ParallelConfig, resources: dict[str, float]) -> tuple[int, bool]:
    """(number of groups, on GPUs?) for the cluster's ``resources``: as many groups as fit, at least one."""
    use_gpus = config.use_gpus if config.use_gpus is not None else resources.get("GPU", 0) >= 1
    if config.groups is not None:
        return config.groups, use_gpus
    if use_gpus:
        return max(1, int(resources.get("GPU", 0) // parallel.world_size)), True
    return max(1, int(resources.get("CPU", 1) // (parallel.world_size * config.cpus_per_rank))), False


def planned_layout(model: str, *, gpus: int, gpu_memory_gb: float, resolution: str = "720p",
                   frames: int | None = None, objective: str = "throughput") -> tuple[ParallelConfig, int, str]:
    """(layout of one group, groups per node, the planner's table) for nodes of ``gpus`` GPUs.

    The planner's data-parallel replicas become separate render groups: rows are independent, so a
    replica needs no collective with the others, and a dead GPU stops one group only.
    """
    from wan_dist.parallel.planner import plan

    chosen = plan(model, gpus=gpus, gpu_memory_gb=gpu_memory_gb, resolution=resolution, frames=frames,
                  objective=objective)
    return replace(chosen.parallel, data=1), chosen.parallel.data, chosen.table()
