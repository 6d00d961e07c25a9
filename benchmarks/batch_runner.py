"""CPU benchmark of the batch runner (Hydra-sweepable): group busy share and per-clip overhead.

    python benchmarks/batch_runner.py -m preset=tiny,small rows=60

Renders ``rows`` manifest rows with the runner on a local Ray (``groups`` render groups of one rank,
clips encoded and written by publisher tasks beside them) into a fresh local folder, and appends a
row to ``save_to`` (CSV; with the timestamp, machine and every setting: benchmarks/csv_rows.py):

* busy share: the groups' rendering time (rank 0's generate: text encode + denoise + decode) over
  the time from their first request to their last (1.0 = a group never waits for the driver);
* per-clip overhead: (first request submitted .. last clip published) / clips minus the mean render
  time, as a share of the render time: what the batch machinery adds per clip beyond rendering.

Both are ratios measured in the same run; the absolute times depend on the machine.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]


def _run(cfg: DictConfig) -> dict:
    import ray

    from wan_dist.batch.manifest import write_manifest
    from wan_dist.batch.results import read_results
    from wan_dist.batch.runner import run_batch
    from wan_dist.config import BatchConfig, OutputConfig

    out = Path(cfg.scratch) / f"{cfg.preset}-{cfg.rows}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = [{"id": f"row-{i:03d}", "model": cfg.preset, "prompt": f"benchmark scene {i}: waves on a shore",
             "height": cfg.height, "width": cfg.width, "num_frames": cfg.num_frames,
             "num_inference_steps": cfg.steps} for i in range(cfg.rows)]
    manifest = str(out / "manifest.parquet")
    write_manifest(rows, manifest)
    ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    try:
        summary = run_batch(BatchConfig(manifest=manifest, groups=cfg.groups, queue_depth=cfg.queue_depth,
                                        publishers=cfg.publishers, progress_interval_s=30),
                            OutputConfig(uri=str(out / "clips")))
    finally:
        ray.shutdown()
    records = [r for r in read_results(str(out / "clips")).to_pylist() if r["status"] == "completed"]
    if len(records) != cfg.rows:
        raise SystemExit(f"only {len(records)} of {cfg.rows} rows completed: see {out / 'clips'}/_results")
    render = sum(r["render_s"] for r in records) / len(records)
    publish = sum(r["publish_s"] for r in records) / len(records)
    per_clip = summary["active_s"] / len(records) * cfg.groups
    return {"preset": cfg.preset, "rows": cfg.rows, "completed": len(records), "groups": cfg.groups,
            "size": f"{cfg.width}x{cfg.height}x{cfg.num_frames}", "steps": cfg.steps,
            "queue_depth": cfg.queue_depth, "render_s_per_clip": round(render, 4),
            "publish_s_per_clip": round(publish, 4), "wall_s_per_clip": round(per_clip, 4),
            "busy_share": round(summary["group_busy_share"], 4),
            "overhead_share": round((per_clip - render) / render, 4)}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_batch", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report_row(_run(cfg), cfg, chart="batch")


if __name__ == "__main__":
    sys.exit(main())
