"""``python -m wan_dist.cli.batch manifest=<url> output=<url> ...`` (also ``wan-dist batch``): the batch job.

What ``ray job submit`` runs. Joins the cluster named by ``RAY_ADDRESS`` (set for job entrypoints) or
starts a local Ray. Exit status: 0 when the run went through the whole manifest (rows that failed are
in the results table with their reason: a bad row is an outcome, not a crashed job), 2 when it was
stopped before the end (rerun the same command to finish it).
"""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import DictConfig, OmegaConf

from wan_dist.cli.compose import run_hydra
from wan_dist.config import BatchConfig, OutputConfig, ParallelConfig, from_dict

log = logging.getLogger("wan_dist")


def _layout(cfg: DictConfig, batch: BatchConfig) -> tuple[ParallelConfig, BatchConfig]:
    parallel = from_dict(ParallelConfig, OmegaConf.to_container(cfg.parallel, resolve=True))
    if not cfg.plan.enabled:
        return parallel, batch
    import ray

    from wan_dist.batch.sizing import planned_layout

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) >= 1]
    if not nodes:
        raise SystemExit("plan.enabled: the cluster has no GPU node to plan for")
    gpus = int(min(n["Resources"]["GPU"] for n in nodes))
    parallel, per_node, text = planned_layout(batch.default_model, gpus=gpus, gpu_memory_gb=cfg.plan.gpu_memory_gb,
                                              resolution=cfg.plan.resolution, frames=cfg.plan.frames,
                                              objective=cfg.plan.objective)
    log.info("planner: %d group(s) per %d-GPU node\n%s", per_node, gpus, text)
    from dataclasses import replace

    return parallel, replace(batch, groups=batch.groups or per_node * len(nodes))


def batch_main(cfg: DictConfig) -> None:
    import ray

    from wan_dist.batch.runner import run_batch

    output = from_dict(OutputConfig, OmegaConf.to_container(cfg.output, resolve=True))
    settings = OmegaConf.to_container(cfg.batch, resolve=True)
    batch = from_dict(BatchConfig, {**settings, "manifest": cfg.manifest, "default_model": cfg.default_model,
                                    "layout": cfg.layout, "sources": dict(cfg.sources or {})})
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                 object_store_memory=int(cfg.ray.object_store_memory_mb) * 2**20)
    try:
        parallel, batch = _layout(cfg, batch)
        summary = run_batch(batch, output, parallel, install_signal_handlers=True)
    finally:
        ray.shutdown()
    log.info("run %s: %d completed, %d already published, %d failed; summary %s", summary["run_id"],
             summary["completed"], summary["skipped"], summary["failed"], summary["summary_uri"])
    print(summary["summary_uri"])
    if summary["stopped"]:
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """``python -m wan_dist.cli.batch [overrides]``: the same as ``wan-dist batch [overrides]``."""
    run_hydra("batch", batch_main, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
