"""Issue 20, the API process under hostile requests (no Ray: the app and its SQLite store, as the ingress runs them):
bounded bodies, typed numbers, bounded headers, one 404 for whatever a key may not see, deletes that delete,
refusals that cost rate and leave no uploads behind."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from wan_dist.serve.app import create_app
from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings, WebhookSettings

BODY = {"prompt": "a fox in the snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}


def _settings(tmp_path, **limits) -> ServeSettings:
    return ServeSettings(models=("tiny", "tiny-ti2v"), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                         auth=AuthSettings(api_keys=("k1", "k2")),
                         limits=LimitSettings(**{"rate_per_s": 1000.0, "burst": 1000, **limits}),
                         webhooks=WebhookSettings(secret="whsec_" + "A" * 43 + "="))


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(_settings(tmp_path, max_json_bytes=64 * 1024)),
                    headers={"Authorization": "Bearer k1"}) as c:
        yield c


def _png() -> bytes:
    sink = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(sink, format="PNG")
    return sink.getvalue()


def test_a_json_body_past_the_limit_is_refused_unread_declared_or_streamed(client):
    big = b'{"prompt": "' + b"x" * (128 * 1024) + b'"}'
    declared = client.post("/v1/models/tiny/jobs", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "body_too_large"
    streamed = client.post("/v1/models/tiny/jobs", content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                           headers={"content-type": "application/json"})  # chunked: no Content-Length to trust
    assert streamed.status_code == 413
    assert client.post("/v1/models/tiny/jobs", json=BODY).status_code == 202


@pytest.mark.parametrize(("field", "value"), [("num_inference_steps", True), ("num_inference_steps", "4"),
                                              ("num_frames", 5.5), ("guidance_scale", 1e308), ("shift", 1e9),
                                              ("guidance_scale", "3.5"), ("seed", False)])
def test_numbers_are_numbers_within_bounds(client, field, value):
    response = client.post("/v1/models/tiny/jobs", json={**BODY, field: value})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


def test_an_idempotency_key_is_bounded(client):
    for key in ("k" * 256, "caf\u00e9".encode("latin-1"), "a\tb"):  # httpx sends str headers as ASCII only
        response = client.post("/v1/models/tiny/jobs", json=BODY, headers={"Idempotency-Key": key})
        assert response.status_code == 422 and response.json()["error"]["param"] == "Idempotency-Key", key
    assert client.post("/v1/models/tiny/jobs", json=BODY, headers={"Idempotency-Key": "k" * 255}).status_code == 202


def test_another_keys_job_and_a_random_id_get_the_same_404(client):
    job = client.post("/v1/models/tiny/jobs", json=BODY).json()["id"]
    answers = []
    for job_id in (job, "job_" + "z" * 24):
        response = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer k2"})
        assert response.status_code == 404
        answers.append(re.sub(r"job_\w+", "ID", response.text))
    assert answers[0] == answers[1]


def test_deleting_a_video_deletes_its_clip_and_a_plain_job_is_not_a_video(client, tmp_path):
    job = client.post("/v1/models/tiny/jobs", json=BODY).json()["id"]
    assert client.delete(f"/v1/videos/{job}").status_code == 404
    assert client.get(f"/v1/jobs/{job}").status_code == 200  # still there
    video = client.post("/v1/videos", json={**BODY, "model": "tiny"}).json()["id"]
    folder = tmp_path / "out" / video
    folder.mkdir(parents=True)
    for name in ("clip.mp4", "clip.json", "preview.jpg"):  # what a finished render leaves in the video's folder
        (folder / name).write_bytes(b"rendered")
    deleted = client.delete(f"/v1/videos/{video}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert client.get(f"/v1/videos/{video}").status_code == 404
    assert not folder.exists() or not any(folder.iterdir())


def test_refused_requests_count_toward_the_rate_and_leave_no_upload(tmp_path):
    with TestClient(create_app(_settings(tmp_path, rate_per_s=0.001, burst=3)),
                    headers={"Authorization": "Bearer k1"}) as client:
        uploads = tmp_path / "out" / "_uploads"
        for _ in range(3):  # refused after its image was received: the upload goes with the refusal
            refused = client.post("/v1/models/tiny-ti2v/jobs", data={"prompt": "x", "num_frames": "6"},
                                  files={"image": ("a.png", _png(), "image/png")})
            assert refused.status_code == 422, refused.text
        assert not uploads.exists() or not any(uploads.iterdir())
        limited = client.post("/v1/models/tiny/jobs", json=BODY)  # the refusals spent the burst
        assert limited.status_code == 429, limited.text


def _manifest_upload(client, **fields):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"id": "a", "prompt": "a kite", "model": "tiny"}]), sink)
    return client.post("/v1/batches", files={"manifest": ("m.parquet", sink.getvalue(), "application/octet-stream")},
                       data=fields)


def test_a_batch_writes_under_its_keys_own_prefix_whatever_output_it_names(client, tmp_path):
    from wan_dist.serve.auth import key_id

    root = str(tmp_path / "out")
    mine = f"{root}/batches/{key_id('k1')}"
    default = _manifest_upload(client)
    assert default.status_code == 202, default.text
    assert default.json()["output"] == f"{mine}/{default.json()['id']}"
    named = _manifest_upload(client, output="campaign/7")
    assert named.status_code == 202 and named.json()["output"] == f"{mine}/campaign/7"
    with TestClient(client.app, headers={"Authorization": "Bearer k2"}) as other:
        theirs = _manifest_upload(other, output="campaign/7")  # the same name by another key: its own folder
    assert theirs.json()["output"] == f"{root}/batches/{key_id('k2')}/campaign/7"
    for bad in ("../" + key_id("k2"), f"{root}/batches/{key_id('k2')}/x", "s3://bucket/x", "a/../../b", ".hidden",
                "a b"):
        refused = _manifest_upload(client, output=bad)
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "output", (bad, refused.text)


def test_a_quiet_event_stream_sends_keep_alive_comments_and_ends_with_the_job(client, tmp_path, monkeypatch):
    """A queued job may wait long: its SSE stream sends a comment every SSE_HEARTBEAT_S seconds of silence."""
    import threading

    from wan_dist.serve.routes import jobs as job_routes
    from wan_dist.serve.stores import open_store

    monkeypatch.setattr(job_routes, "SSE_HEARTBEAT_S", 0.3)
    job = client.post("/v1/models/tiny/jobs", json=BODY).json()["id"]  # no renderer here: it stays queued
    lines, cancelled = [], threading.Event()

    def cancel():
        with open_store(str(tmp_path / "jobs.db")) as store:
            store.request_cancel(job)
        cancelled.set()

    with client.stream("GET", f"/v1/jobs/{job}/events", timeout=60) as response:
        for line in response.iter_lines():
            lines.append(line)
            if lines.count(": keep-alive") == 2 and not cancelled.is_set():
                threading.Thread(target=cancel).start()  # the stream then ends with the terminal status
    assert lines[0] == "event: status" and lines.count(": keep-alive") >= 2
    statuses = [json.loads(line[len("data: "):])["status"] for line in lines if line.startswith("data: ")]
    assert statuses[0] == "queued" and statuses[-1] == "cancelled"


def test_a_jobs_view_names_no_server_path(tmp_path):
    """An uploaded image and a finished clip appear relative to the server's output (the API's content URL for
    the clip where the store gives no presigned https URL): a tenant learns nothing of the server's files."""
    from wan_dist.serve.stores import open_store

    settings = _settings(tmp_path)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as client:
        created = client.post("/v1/models/tiny-ti2v/jobs", data={"prompt": "x", "num_frames": "5"},
                              files={"image": ("a.png", _png(), "image/png")})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        with open_store(settings.store) as store:
            job = store.claim("tiny-ti2v", worker="w", lease_s=60)
            folder = f"{settings.output}/{job.id}"
            store.finish(job.id, "w", status="completed", progress=100, completed_at=1.0,
                         result={"clip_uri": f"{folder}/clip.mp4", "sidecar_uri": f"{folder}/clip.json", "seed": 1})
        view = client.get(f"/v1/jobs/{job_id}").json()
        # a failure's message, built from a render's exception, quotes no server path either
        failed_id = client.post("/v1/models/tiny/jobs", json=BODY).json()["id"]
        with open_store(settings.store) as store:
            store.claim("tiny", worker="w", lease_s=60)
            message = (f"OSError: cannot write {settings.output}/{failed_id}/clip.mp4 near /srv/models/x.bin\n"
                       f"Traceback (most recent call last):\n  File \"{tmp_path}/engine/render.py\", line 1")
            store.finish(failed_id, "w", status="failed", completed_at=1.0,
                         error={"code": "render_failed", "message": message})
        failed = client.get(f"/v1/jobs/{failed_id}").json()
    assert str(tmp_path) not in json.dumps(failed), failed
    assert failed["error"] == {"code": "render_failed",
                               "message": f"OSError: cannot write {failed_id}/clip.mp4 near …/x.bin"}
    assert str(tmp_path) not in json.dumps(view), view
    assert view["request"]["render"]["image"].startswith("_uploads/")
    assert view["result"] == {"seed": 1, "clip": f"{job_id}/clip.mp4", "sidecar": f"{job_id}/clip.json",
                              "clip_url": f"/v1/jobs/{job_id}/content", "renditions": []}

