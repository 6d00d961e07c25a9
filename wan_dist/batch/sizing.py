"""Sizing a batch job for a cluster: how many render groups fit, and which layout one group gets.

Rows are independent, so a batch runs as many separate groups as the cluster holds (no collective between
groups; a dead GPU stops one group only), each with the planner's layout for one replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from wan_dist.config import BatchConfig, GroupSpec, ParallelConfig

__all__ = ["group_count", "planned_layout"]


def group_count(config: BatchConfig, resources: Mapping[str, float]) -> tuple[int, GroupSpec]:
    """(number of groups, ``config.group`` with use_gpus decided) for the cluster's ``resources``: as many
    groups as fit, at least one."""
    group = config.group.for_cluster(resources)
    if config.groups is not None:
        return config.groups, group
    if group.use_gpus:
        return max(1, int(resources.get("GPU", 0) // group.world_size)), group
    return max(1, int(resources.get("CPU", 1) // (group.world_size * group.cpus_per_rank))), group


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
