"""The batch runner on a local Ray with the tiny model: every valid row published once, bad rows recorded,
reruns skip what is published, a killed rank costs a retry and nothing else."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_dist.batch.manifest import ManifestError, write_manifest
from wan_dist.batch.results import latest_results, read_results
from wan_dist.batch.runner import BatchRunner, published_rows
from wan_dist.batch.sizing import group_count, planned_layout
from wan_dist.config import BatchConfig, GroupSpec, OutputConfig, ParallelConfig
from wan_dist.video.mp4 import decode_mp4, encode_mp4

pytestmark = pytest.mark.slow

FAST = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}


def _rows(count: int, **extra) -> list[dict]:
    return [{"id": f"row-{i:02d}", "prompt": f"scene number {i}: a boat on a lake", **FAST, **extra}
            for i in range(count)]


def _run(manifest: str, out: Path, *, crf: int = 18, **config):
    config = {"groups": 2, "group": GroupSpec(cpus_per_rank=0.5), "progress_interval_s": 0.5, "retry_backoff_s": 0.1,
              **config}
    runner = BatchRunner(BatchConfig(manifest=manifest, **config), OutputConfig(uri=str(out), crf=crf))
    return runner, runner.run()


def _sidecar(out: Path, row_id: str) -> dict:
    return json.loads((out / row_id / "clip.json").read_text())


def test_valid_rows_are_published_bad_rows_fail_alone_and_reruns_skip_published_rows(ray_local, tmp_path):
    rows = _rows(5)
    rows[1]["output_prefix"] = "lake/evening"
    bad = [{"id": "bad-frames", "prompt": "x", **{**FAST, "num_frames": 6}},
           {"id": "bad-model", "prompt": "x", "model": "no-such-model"},
           {"id": "bad-steps", "prompt": "x", **{**FAST, "num_inference_steps": -1}}]
    write_manifest(rows + bad, str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    runner, summary = _run(str(tmp_path / "m.parquet"), out, crf=0)  # lossless: frames compare exactly

    assert (summary["completed"], summary["failed"], summary["skipped"]) == (5, 3, 0)
    results = latest_results(str(out))
    assert set(results) == {r["id"] for r in rows + bad}
    for row in rows:
        record = results[row["id"]]
        assert record["status"] == "completed", record["error"]
        folder = out / row.get("output_prefix", "") / row["id"]
        assert record["clip_uri"] == str(folder / "clip.mp4") and record["render_s"] > 0
        frames, fps = decode_mp4((folder / "clip.mp4").read_bytes())
        assert frames.shape == (5, 32, 32, 3)
        sidecar = json.loads((folder / "clip.json").read_text())
        assert sidecar["request"]["prompt"] == row["prompt"] and sidecar["settings"]["num_frames"] == 5
    for row, column in zip(bad, ("num_frames", "model", "num_inference_steps")):
        record = results[row["id"]]
        assert record["status"] == "failed" and record["error_column"] == column and record["error"]
        assert not (out / row["id"]).exists()
    # the rows render as the single-process pipeline would (same seed, same settings)
    from wan_dist import load_pipeline
    from wan_dist.engine.render import RenderRequest, generate_for

    pipe = load_pipeline("tiny", dtype=torch.float32)
    expected = generate_for(pipe, RenderRequest.from_sidecar(_sidecar(out, "row-00")))
    assert expected.settings.to_dict() == _sidecar(out, "row-00")["settings"]
    got, _ = decode_mp4((out / "row-00" / "clip.mp4").read_bytes())
    # the same frames through the same encoder (4:2:0 chroma loses detail even at crf 0)
    reference, _ = decode_mp4(encode_mp4(expected.frames[0], 16, crf=0))
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 2

    # a rerun skips what is published and renders what is missing (as if the run had stopped before row-02)
    before = {r["id"]: _sidecar(out / r.get("output_prefix", ""), r["id"])["created_at"] for r in rows}
    (out / "row-02" / "clip.json").unlink()
    _, second = _run(str(tmp_path / "m.parquet"), out, crf=0)
    assert (second["completed"], second["skipped"], second["failed"]) == (1, 4, 3)
    after = {r["id"]: _sidecar(out / r.get("output_prefix", ""), r["id"])["created_at"] for r in rows}
    assert {i for i in before if after[i] != before[i]} == {"row-02"}
    runs = read_results(str(out)).to_pylist()
    assert len({r["run_id"] for r in runs}) == 2 and len(runs) == 16
    assert published_rows(str(out)) == {"row-00", "lake/evening/row-01", "row-02", "row-03", "row-04"}

    # a new request under a used id is neither skipped (the old clip kept silently) nor rendered over it
    changed = [dict(r) for r in rows]
    changed[3]["prompt"] = "another scene under an id already used"
    write_manifest(changed + bad, str(tmp_path / "m.parquet"))
    _, third = _run(str(tmp_path / "m.parquet"), out, crf=0)
    assert (third["completed"], third["skipped"], third["failed"]) == (0, 4, 4)
    record = latest_results(str(out))["row-03"]
    assert (record["status"], record["error_column"]) == ("failed", "id")
    assert "different request" in record["error"] and str(out / "row-03") in record["error"]
    assert _sidecar(out, "row-03")["request"]["prompt"] == rows[3]["prompt"]  # the old clip is still there


def test_duplicate_ids_stop_the_run_before_anything_renders(ray_local, tmp_path):
    write_manifest(_rows(2) + _rows(1), str(tmp_path / "m.parquet"))
    with pytest.raises(ManifestError, match="row-00"):
        _run(str(tmp_path / "m.parquet"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_killed_rank_costs_a_retry_and_every_row_is_published_once(ray_local, tmp_path, holds):
    import ray

    from step_holds import HOOK

    rows = _rows(6, num_inference_steps=8)
    rows[2]["prompt"] = holds.plan("killed rank: a boat whose group breaks mid-render", 2)  # mid-run
    write_manifest(rows, str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    group = GroupSpec(parallel=ParallelConfig(ring=2), cpus_per_rank=0.5, step_hook=HOOK)
    runner = BatchRunner(BatchConfig(manifest=str(tmp_path / "m.parquet"), groups=1, group=group,
                                     retry_backoff_s=0.1, progress_interval_s=1),
                         OutputConfig(uri=str(out)))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(runner.run()))
    thread.start()
    try:
        holds.wait_reached(rows[2]["prompt"])  # row 2 waits at step 2 on rank 0 (the result rank)
        victim = runner.slots[0].group.workers[-1]
        ray.kill(victim, no_restart=True)
    finally:
        holds.release(rows[2]["prompt"])  # rank 0 goes on into a collective with the dead rank: the group fails
        thread.join(timeout=300)
    assert not thread.is_alive()
    assert outcome["completed"] == 6 and outcome["failed"] == 0
    records = read_results(str(out)).to_pylist()
    completed = [r["id"] for r in records if r["status"] == "completed"]
    assert sorted(completed) == sorted(r["id"] for r in rows)  # each exactly once
    assert max(r["attempts"] for r in records) >= 2  # the row on the killed group was rendered again
    assert runner.slots[0].group.generation == 2


def test_group_count_and_planned_layout():
    def count(resources, groups=None, **group):
        config = BatchConfig(manifest="m.parquet", groups=groups, group=GroupSpec(**group))
        number, placed = group_count(config, resources)
        return number, placed.use_gpus

    assert count({"GPU": 16, "CPU": 64}, parallel=ParallelConfig(ulysses=4)) == (4, True)
    assert count({"GPU": 16, "CPU": 64}, parallel=ParallelConfig(ulysses=4), use_gpus=False) == (16, False)
    assert count({"CPU": 7}, parallel=ParallelConfig(ulysses=2)) == (3, False)
    assert count({"CPU": 7}, parallel=ParallelConfig(ulysses=2), cpus_per_rank=0.5) == (7, False)
    assert count({"CPU": 2}, groups=5) == (5, False)
    parallel, per_node, table = planned_layout("t2v-a14b", gpus=8, gpu_memory_gb=80)
    assert parallel.data == 1 and per_node * parallel.world_size <= 8 and "clips/h" in table


def test_fail_on_row_errors_is_a_validated_switch_that_defaults_to_failing():
    assert BatchConfig(manifest="m.parquet").fail_on_row_errors is True
    assert BatchConfig(manifest="m.parquet", fail_on_row_errors=False).fail_on_row_errors is False
    with pytest.raises(ValueError, match=r"^BatchConfig.fail_on_row_errors: must be true or false, got 'no'"):
        BatchConfig(manifest="m.parquet", fail_on_row_errors="no")


def test_a_mixed_manifest_renders_each_model_on_a_group_that_loaded_it(ray_local, tmp_path):
    rows = _rows(2) + [{**row, "id": f"ti2v-{i}", "model": "tiny-ti2v"} for i, row in enumerate(_rows(2))]
    write_manifest(rows, str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    _, summary = _run(str(tmp_path / "m.parquet"), out, groups=1)  # one group: it reloads for the second model
    assert (summary["completed"], summary["failed"]) == (4, 0)
    for row in rows:
        assert _sidecar(out, row["id"])["model"]["variant"] == row["model"]
