"""``wan-dist serve`` as a user starts it: a real process with its own local Ray (never an existing cluster),
the Hydra config of conf/serve.yaml with overrides, a job rendered over HTTP on 127.0.0.1, and SIGTERM stopping
everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from serve_fixtures import free_port, wait_for
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow


def test_wan_dist_serve_renders_a_job_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WAN_DIST_API_KEYS": "k-env"})
    process = subprocess.Popen(
        [sys.executable, "-m", "wan_dist.cli.main", "serve", f"serve.port={port}", "serve.app.auth.api_keys=[k-conf]",
         f"serve.app.store=sqlite:///{tmp_path / 'jobs.db'}", f"serve.app.output={tmp_path / 'out'}",
         "serve.app.renderer.group.cpus_per_rank=0.5", "serve.app.previews.every_s=0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            return httpx.get(f"{base}/readyz", timeout=5, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 180, interval_s=0.5, what="wan-dist serve to be ready")
        for key in ("k-conf", "k-env"):  # keys from the config and from WAN_DIST_API_KEYS
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                              trust_env=False) as client:
                created = client.post("/v1/models/toy/jobs", json={"prompt": "a lantern", "num_frames": 5,
                                                                    "size": "64x64", "num_inference_steps": 2})
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]
                done = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] in
                                ("completed", "failed") and j, 120, what="the job")
                assert done["status"] == "completed", done
                video, _ = decode_mp4(client.get(f"/v1/jobs/{job_id}/content").content)
                assert video.shape == (5, 64, 64, 3)
        assert httpx.get(f"{base}/v1/jobs", timeout=5, trust_env=False).status_code == 401
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"wan-dist serve did not stop within 120 s of SIGTERM:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    with pytest.raises(httpx.HTTPError):  # nothing listens any more
        httpx.get(f"{base}/healthz", timeout=2, trust_env=False)
