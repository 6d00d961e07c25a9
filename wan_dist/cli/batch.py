"""``python -m wan_dist.cli.batch manifest=<url> output=<url> ...`` (also ``wan-dist batch``): the batch job.

What ``ray job submit`` runs. Joins the cluster named by ``RAY_ADDRESS`` (set for job entrypoints) or
starts a local Ray. Relative local paths (``output=outputs/x``, ``manifest=my.parquet``) are made absolute
against the working directory, and refused inside a Ray job, whose working directory is Ray's copy of
``--working-dir`` (wan_dist/cli/paths.py). Exit status: 0 when every row of the manifest has an outcome and
none failed; 3 when rows failed (each is in the results table with its reason; ``batch.fail_on_row_errors=false``
exits 0 then); 2 when the run was stopped before the end (rerun the same command to finish it); 1 when the
command itself failed (a refused setting, an unreadable manifest, ...).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf

from wan_dist.cli.compose import init_ray, run_hydra
from wan_dist.config import BatchConfig, GroupSpec, OutputConfig, ParallelConfig, from_dict

log = logging.getLogger("wan_dist")


def _planned(cfg: DictConfig, batch: BatchConfig) -> BatchConfig:
    """``batch`` with the planner's group layout and count when ``plan.enabled``."""
    if not cfg.plan.enabled:
        return batch
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
    return replace(batch, group=replace(batch.group, parallel=parallel), groups=batch.groups or per_node * len(nodes))


def _configs(cfg: DictConfig) -> tuple[BatchConfig, OutputConfig]:
    """The run's configs, with relative local paths resolved (wan_dist/cli/paths.py); ValueError names a field.
    The group layout is the top-level ``parallel`` (spelled as for ``wan-dist render``); the rest of the group's
    placement is ``batch.group``."""
    from wan_dist.cli.paths import ray_job, resolve_input, resolve_output

    job, cwd = ray_job(os.environ), os.getcwd()
    output = from_dict(OutputConfig, OmegaConf.to_container(cfg.output, resolve=True))
    output = replace(output, uri=resolve_output("output", output.uri, cwd=cwd, job=job))
    manifest = resolve_input("manifest", str(cfg.manifest), cwd=cwd, job=job)
    parallel = from_dict(ParallelConfig, OmegaConf.to_container(cfg.parallel, resolve=True), path="parallel")
    settings = OmegaConf.to_container(cfg.batch, resolve=True)
    group = from_dict(GroupSpec, {**(settings.pop("group", None) or {}), "parallel": parallel}, path="batch.group")
    batch = from_dict(BatchConfig, {**settings, "group": group, "manifest": manifest,
                                    "default_model": cfg.default_model, "layout": cfg.layout,
                                    "sources": dict(cfg.sources or {})})
    return batch, output


def _report(summary: dict, output: OutputConfig) -> None:
    """The end of the run as the user reads it: counts, where the clips and the results table are, failed rows."""
    from wan_dist.batch.results import results_prefix
    from wan_dist.storage.objects import join

    stopped = " (stopped before the end)" if summary["stopped"] else ""
    print(f"run {summary['run_id']}: {summary['completed']} completed, {summary['skipped']} already published, "
          f"{summary['failed']} failed, of {summary['rows']} rows{stopped}")
    print(f"clips:   {output.uri.rstrip('/')}/<output_prefix>/<id>/clip.mp4 (+ clip.json)")
    print(f"results: {join(results_prefix(output.uri), 'run-' + summary['run_id'])}/ "
          f"(Parquet parts; wan_dist.batch.results.latest_results({output.uri!r}) reads them)")
    print(f"summary: {summary['summary_uri']}")
    if summary.get("gallery_uri"):
        print(f"gallery: {summary['gallery_uri']}")
    for record in summary["failed_rows"]:
        column = f" [{record['error_column']}]" if record["error_column"] else ""
        print(f"failed:  {record['id']}{column}: {record['error']}")
    if summary["failed"] > len(summary["failed_rows"]):
        more = summary["failed"] - len(summary["failed_rows"])
        print(f"failed:  ... and {more} more (the results table has them all)")


def batch_main(cfg: DictConfig) -> None:
    import ray

    from wan_dist.batch.runner import run_batch

    try:
        batch, output = _configs(cfg)
    except ValueError as error:
        raise SystemExit(f"wan-dist batch: {error}") from None
    init_ray(cfg.ray)
    try:
        batch = _planned(cfg, batch)
        summary = run_batch(batch, output, install_signal_handlers=True)
    finally:
        ray.shutdown()
    _report(summary, output)
    if summary["stopped"]:
        sys.exit(2)
    if summary["failed"] and batch.fail_on_row_errors:
        print(f"wan-dist batch: {summary['failed']} row(s) failed, so this exits 3 "
              "(batch.fail_on_row_errors=false exits 0 when every row has an outcome)", file=sys.stderr)
        sys.exit(3)


def main(argv: list[str] | None = None) -> None:
    """``python -m wan_dist.cli.batch [overrides]``: the same as ``wan-dist batch [overrides]``."""
    run_hydra("batch", batch_main, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
