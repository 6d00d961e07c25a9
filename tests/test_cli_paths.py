"""Relative local paths of the batch command: absolute against the working directory, refused inside a Ray job.

Inside a job is what Ray's job supervisor tells its driver: ``RAY_JOB_CONFIG_JSON_ENV_VAR`` holding the job's
runtime env and metadata as JSON (ray/dashboard/modules/job/job_supervisor.py, ``_get_driver_env_vars``). The
environments below carry it in that shape; tests/test_batch_job.py submits a real job with a relative output.
"""

from __future__ import annotations

import json
import os

import pytest

from wan_dist.cli.paths import RAY_JOB_CONFIG_ENV, RayJob, ray_job, resolve_input, resolve_output


def job_environment(working_dir: str | None = "gcs://_ray_pkg_4f2a9c1e0b7d3a65.zip") -> dict[str, str]:
    """The environment Ray 2.60 gives a job's driver (the parts this reads), as ``ray job submit`` leaves it."""
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1"}}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    config = {"runtime_env": runtime_env,
              "metadata": {"job_submission_id": "raysubmit_Xk3b", "job_name": "raysubmit_Xk3b"}}
    return {"PATH": "/usr/bin", "RAY_ADDRESS": "127.0.0.1:6379", RAY_JOB_CONFIG_ENV: json.dumps(config)}


def test_a_job_driver_is_told_apart_from_a_plain_process():
    assert ray_job({"PATH": "/usr/bin", "RAY_ADDRESS": "http://127.0.0.1:8265"}) is None  # a user's shell
    assert ray_job(job_environment()) == RayJob(submission_id="raysubmit_Xk3b",
                                                working_dir="gcs://_ray_pkg_4f2a9c1e0b7d3a65.zip")
    assert ray_job(job_environment(working_dir=None)).working_dir is None


def test_outside_a_job_relative_paths_become_absolute_against_the_working_directory(tmp_path):
    cwd = str(tmp_path)
    assert resolve_output("output", "outputs/x", cwd=cwd, job=None) == os.path.join(cwd, "outputs", "x")
    assert resolve_output("output", "./a/../b/", cwd=cwd, job=None) == os.path.join(cwd, "b")
    assert resolve_output("output", "~/clips", cwd=cwd, job=None) == os.path.expanduser("~/clips")
    assert resolve_output("output", "s3://bucket/clips", cwd=cwd, job=None) == "s3://bucket/clips"
    assert resolve_input("manifest", "m.parquet", cwd=cwd, job=None) == os.path.join(cwd, "m.parquet")


@pytest.mark.parametrize("working_dir", ["gcs://_ray_pkg_4f2a9c1e0b7d3a65.zip", None])
def test_inside_a_job_a_relative_output_is_refused_with_the_fix(tmp_path, working_dir):
    job = ray_job(job_environment(working_dir))
    with pytest.raises(ValueError) as refused:
        resolve_output("output", "outputs/x", cwd=str(tmp_path), job=job)
    message = str(refused.value)
    assert message.startswith("output: 'outputs/x' is a relative local path")
    assert "raysubmit_Xk3b" in message and str(tmp_path) in message
    assert "absolute path" in message and "s3://" in message
    assert not (tmp_path / "outputs").exists()


def test_inside_a_job_absolute_paths_and_urls_pass(tmp_path):
    job = ray_job(job_environment())
    assert resolve_output("output", "/data/clips/", cwd=str(tmp_path), job=job) == "/data/clips"
    assert resolve_output("output", "s3://bucket/clips", cwd=str(tmp_path), job=job) == "s3://bucket/clips"
    assert resolve_input("manifest", "memory://m.parquet", cwd=str(tmp_path), job=job) == "memory://m.parquet"


def test_inside_a_job_a_relative_manifest_is_read_from_the_working_dir_copy_only_when_it_travelled(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "m.parquet").write_bytes(b"PAR1")
    copy = ray_job(job_environment())
    travelled = resolve_input("manifest", "jobs/m.parquet", cwd=str(tmp_path), job=copy)
    assert travelled == str(tmp_path / "jobs" / "m.parquet")
    with pytest.raises(ValueError, match=r"^manifest: 'outputs/m.parquet' is a relative local path.*absolute path"):
        resolve_input("manifest", "outputs/m.parquet", cwd=str(tmp_path), job=copy)  # e.g. .gitignore'd: not copied
    with pytest.raises(ValueError, match=r"^manifest: .*not the folder `ray job submit` ran in"):
        resolve_input("manifest", "jobs/m.parquet", cwd=str(tmp_path), job=ray_job(job_environment(None)))
