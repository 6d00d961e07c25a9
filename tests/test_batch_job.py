"""End to end: `ray job submit` of the batch job to a Ray head this test starts, against a real S3 server
(moto on 127.0.0.1), with the tiny model on CPU render groups; then a job stopped midway and rerun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from serve_fixtures import wait_for
from wan_dist.batch.manifest import write_manifest
from wan_dist.batch.results import latest_results, read_results
from wan_dist.storage.objects import exists, list_prefix, read_bytes
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
FAST = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head of our own (own temp dir, free ports), stopped by PID at the end."""
    head_dir = tempfile.mkdtemp(prefix="wdh-", dir="/tmp")
    ports = {name: str(_free_port()) for name in ("RAY_HEAD_PORT", "RAY_DASHBOARD_PORT", "RAY_CLIENT_PORT",
                                                   "RAY_METRICS_PORT", "RAY_DASHBOARD_AGENT_PORT")}
    env = {**os.environ, **ports, "RAY_HEAD_DIR": head_dir, "RAY_HEAD_CPUS": "4", "RAY_AUTH_MODE": "disabled",
           "RAY_OBJECT_STORE_BYTES": str(300 * 2**20), "RAY_STOP_GRACE_S": "5", "RAY_USAGE_STATS_ENABLED": "0"}
    script = str(REPO / "cluster" / "ray-head.sh")
    try:
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr
        address = f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}"
        yield {"address": address, "env": env, "metrics": f"http://127.0.0.1:{ports['RAY_METRICS_PORT']}/metrics"}
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(head_dir, ignore_errors=True)


def _job_env(s3_server, cache: Path) -> dict:
    return {**s3_server.env, "HF_HUB_OFFLINE": "1", "WAN_DIST_CACHE": str(cache), "RAY_AUTH_MODE": "disabled"}


def _submit(ray_head, s3_server, cache: Path, manifest: str, output: str, *extra: str, wait: bool = True):
    command = [RAY, "job", "submit", "--address", ray_head["address"], "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps({"env_vars": _job_env(s3_server, cache)})]
    if not wait:
        command.append("--no-wait")
    command += ["--", sys.executable, "-m", "wan_dist.cli.batch", f"manifest={manifest}", f"output={output}",
                "batch.groups=2", "batch.group.cpus_per_rank=1", "batch.progress_interval_s=2", *extra]
    return subprocess.run(command, env=ray_head["env"], capture_output=True, text=True, timeout=600)


def _rows() -> tuple[list[dict], list[dict]]:
    valid = [{"id": f"clip-{i:02d}", "prompt": f"a paper boat number {i} on a river", **FAST} for i in range(7)]
    valid[3]["output_prefix"] = "rivers"
    invalid = [{"id": "bad-frames", "prompt": "x", **{**FAST, "num_frames": 8}},
               {"id": "bad-solver", "prompt": "x", **{**FAST, "solver": "rk45"}},
               {"id": "bad-reserved", "prompt": "x", **FAST, "camera": "orbit"}]
    return valid, invalid


def test_ray_job_submit_renders_a_manifest_from_s3_to_s3(ray_head, s3_server, tmp_path):
    valid, invalid = _rows()
    manifest = s3_server.uri("manifests", "boats.parquet")
    write_manifest(valid + invalid, manifest)
    output = s3_server.uri("renders")
    job = _submit(ray_head, s3_server, tmp_path / "cache", manifest, output)
    # every row has an outcome, but 3 failed: the job fails (batch.fail_on_row_errors), saying why and where
    assert job.returncode != 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "3 row(s) failed, so this exits 3" in job.stdout + job.stderr, job.stdout[-3000:]
    assert "done" in job.stdout and "clips/h" in job.stdout  # the progress bar is in the job log
    assert f"results: {output}/_results/run-" in job.stdout and "failed:  bad-solver [solver]: " in job.stdout

    results = latest_results(output)
    assert set(results) == {r["id"] for r in valid + invalid}
    for row in valid:
        record = results[row["id"]]
        assert record["status"] == "completed", record["error"]
        prefix = "/".join(p for p in (output, row.get("output_prefix"), row["id"]) if p)
        assert record["clip_uri"] == f"{prefix}/clip.mp4" and exists(f"{prefix}/clip.json")
        assert record["clip_url"].startswith(s3_server.endpoint_url)  # presigned
        frames, _ = decode_mp4(read_bytes(record["clip_uri"]))
        assert frames.shape == (5, 32, 32, 3)
        sidecar = json.loads(read_bytes(f"{prefix}/clip.json"))
        assert sidecar["request"]["name"] == row["id"] and sidecar["settings"]["num_inference_steps"] == 2
    for row, column in zip(invalid, ("num_frames", "solver", "camera")):
        record = results[row["id"]]
        assert record["status"] == "failed" and record["error_column"] == column, record
    summary_uri = [u for u in list_prefix(f"{output}/_results") if u.endswith("summary.json")]
    summary = json.loads(read_bytes(summary_uri[0]))
    assert (summary["completed"], summary["failed"], summary["skipped"]) == (7, 3, 0)
    # the row counters reached Ray's metrics (what the dashboard's Prometheus scrapes)
    counted = _scrape(ray_head["metrics"], "ray_wan_dist_batch_rows_total", summary["run_id"])
    assert counted == {"completed": 7.0, "failed": 3.0}, counted


def test_a_job_with_a_relative_local_output_is_refused_not_written_into_rays_copy(ray_head, s3_server, tmp_path):
    manifest = s3_server.uri("manifests", "refused.parquet")
    write_manifest([{"id": "clip-00", "prompt": "a kite", **FAST}], manifest)
    job = _submit(ray_head, s3_server, tmp_path / "cache", manifest, "outputs/relative")
    assert job.returncode != 0, job.stdout[-3000:]
    assert "output: 'outputs/relative' is a relative local path, and this runs inside Ray job raysubmit_" in job.stdout
    assert "Ray's temporary copy of --working-dir" in job.stdout and "s3://" in job.stdout
    assert not list(Path(ray_head["env"]["RAY_HEAD_DIR"]).rglob("outputs/relative"))  # nothing landed in the copy


def _scrape(url: str, name: str, run_id: str, timeout_s: float = 60) -> dict[str, float]:
    """{status: value} of counter ``name`` for ``run_id`` once the metrics agent exports it."""
    import re
    import urllib.request

    deadline, found = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{") and f'run_id="{run_id}"' in line:
                status = re.search(r'status="(\w+)"', line).group(1)
                found[status] = found.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
        if sum(found.values()) >= 10:
            return found
        time.sleep(2)
    return found


def test_a_stopped_job_reruns_without_rendering_twice_or_missing_a_clip(ray_head, s3_server, tmp_path, holds):
    from step_holds import HOOK

    rows = [{"id": f"clip-{i:02d}", "prompt": f"a kite number {i}", **{**FAST, "num_inference_steps": 6}}
            for i in range(16)]
    rows[3]["prompt"] = holds.plan("stopped job: a kite held when the job stops", 2)
    manifest = s3_server.uri("manifests", "kites.parquet")
    write_manifest(rows, manifest)
    output = s3_server.uri("kites")
    submitted = _submit(ray_head, s3_server, tmp_path / "cache", manifest, output, "batch.groups=1",
                        f"batch.group.step_hook={HOOK}", wait=False)
    assert submitted.returncode == 0, submitted.stderr
    job_id = next(line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line)
    holds.wait_reached(rows[3]["prompt"], 300)  # the job is mid-run: row 3 cannot be published before the stop
    wait_for(lambda: _sidecars(output), 300, what="a first clip published")
    stopped = subprocess.run([RAY, "job", "stop", "--address", ray_head["address"], job_id],
                             env=ray_head["env"], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    first = {key: json.loads(read_bytes(key))["created_at"] for key in _sidecars(output)}
    assert 1 <= len(first) < len(rows), "the stop came too late to test a rerun"

    rerun = _submit(ray_head, s3_server, tmp_path / "cache", manifest, output)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    second = {key: json.loads(read_bytes(key))["created_at"] for key in _sidecars(output)}
    assert len(second) == len(rows)  # none missing
    assert all(second[key] == first[key] for key in first)  # the first run's clips were not rendered again
    last_run = read_results(output).to_pylist()[-1]["run_id"]
    statuses = {r["id"]: r["status"] for r in read_results(output, run_id=last_run).to_pylist()}
    assert len(statuses) == len(rows) and list(statuses.values()).count("skipped") >= len(first)
    for key in second:  # every published clip is whole
        frames, _ = decode_mp4(read_bytes(key.replace("clip.json", "clip.mp4")))
        assert frames.shape[0] == 5


def _sidecars(output: str) -> list[str]:
    return [u for u in list_prefix(output) if u.endswith("/clip.json")]
