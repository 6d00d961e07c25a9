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


def _settings(tmp_path, output: str | None = None, **limits) -> ServeSettings:
    return ServeSettings(models=("tiny", "tiny-ti2v"), store=str(tmp_path / "jobs.db"),
                         output=output or str(tmp_path / "out"),
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

    from wan_dist.serve.stores import open_store

    root = str(tmp_path / "out")
    mine = f"batches/{key_id('k1')}"  # the view names it relative to the server's output
    default = _manifest_upload(client)
    assert default.status_code == 202, default.text
    assert default.json()["output"] == f"{mine}/{default.json()['id']}"
    named = _manifest_upload(client, output="campaign/7")
    assert named.status_code == 202 and named.json()["output"] == f"{mine}/campaign/7"
    with TestClient(client.app, headers={"Authorization": "Bearer k2"}) as other:
        theirs = _manifest_upload(other, output="campaign/7")  # the same name by another key: its own folder
    assert theirs.json()["output"] == f"batches/{key_id('k2')}/campaign/7"
    with open_store(str(tmp_path / "jobs.db")) as store:  # where the renderer writes them
        assert [store.get(r.json()["id"]).request["output"] for r in (default, named, theirs)] == [
            f"{root}/{mine}/{default.json()['id']}", f"{root}/{mine}/campaign/7",
            f"{root}/batches/{key_id('k2')}/campaign/7"]
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
            message = (f"OSError: cannot write {settings.output}/{failed_id}/clip.mp4 near /srv/models/x.bin "
                       f"(s3://operator-models/wan/a14b/x.bin, https://tenant.example/mine.png)\n"
                       f"Traceback (most recent call last):\n  File \"{tmp_path}/engine/render.py\", line 1")
            store.finish(failed_id, "w", status="failed", completed_at=1.0,
                         error={"code": "render_failed", "message": message})
        failed = client.get(f"/v1/jobs/{failed_id}").json()
    assert str(tmp_path) not in json.dumps(failed), failed
    assert failed["error"] == {"code": "render_failed",
                               "message": f"OSError: cannot write {failed_id}/clip.mp4 near …/x.bin "
                                          "(s3://…/x.bin, https://tenant.example/mine.png)"}
    assert str(tmp_path) not in json.dumps(view), view
    assert view["request"]["render"]["image"].startswith("_uploads/")
    assert view["result"] == {"seed": 1, "clip": f"{job_id}/clip.mp4", "sidecar": f"{job_id}/clip.json",
                              "clip_url": f"/v1/jobs/{job_id}/content", "renditions": []}



def _strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _run_batch_part(store, queue: str, *, results: list[dict] | None, status: str = "completed",
                    error: dict | None = None) -> None:
    """What a renderer's batch loop leaves behind (``serve/batch_worker.py``), its outputs written where the
    batch runner writes them: each row's clip and sidecar, the results table, the run's summary."""
    from wan_dist.batch.results import ResultsWriter, renditions_column, write_summary
    from wan_dist.serve.batch_parts import batch_output, settle_part
    from wan_dist.storage.objects import join, presigned_url, write_bytes_atomic

    job = store.claim(queue, worker="w", lease_s=60)
    output = batch_output(job, "unused: every record holds its resolved output")
    run_id = f"{job.id}-1"
    writer = ResultsWriter(output, run_id)
    for index, row in enumerate(results or ()):
        record = {"index": index, "model": "tiny", **row}
        if row["status"] == "completed":
            folder = join(output, row["id"])
            for name in ("clip.mp4", "clip.json", "renditions/tiktok.mp4", "renditions/tiktok.guides.mp4"):
                write_bytes_atomic(join(folder, name), f"{row['id']}/{name}".encode())
            record.update(clip_uri=join(folder, "clip.mp4"), sidecar_uri=join(folder, "clip.json"),
                          clip_url=presigned_url(join(folder, "clip.mp4")),
                          renditions=renditions_column({"tiktok": join(folder, "renditions/tiktok.mp4")},
                                                       {"tiktok": join(folder, "renditions/tiktok.guides.mp4")},
                                                       presigned_url))
        writer.add(record)
    writer.close()
    summary_uri = write_summary(output, run_id, {"manifest": job.request["manifest_uri"], "output": output})
    result = {"results_uri": f"{output}/_results", "summary_uri": summary_uri,
              "progress": {"completed": 1, "failed": 2, "skipped": 0, "clips_per_hour": 1.0, "eta_s": 0.0}}
    settle_part(store, store.finish(job.id, "w", status=status, result=result, error=error, completed_at=2.0))


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_batchs_views_and_results_name_no_server_path(tmp_path, request, storage):
    """Issue 20: a batch's view (one model, and mixed with a part's error), its listing and its results rows
    name the outputs relative to the server's output and link them through the API or presigned https, and
    errors built from exceptions quote no server path (a traceback, the output's files, another file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wan_dist.serve.batch_parts import batch_queue
    from wan_dist.serve.stores import open_store

    bucket = request.getfixturevalue("s3_server") if storage == "s3" else None
    settings = _settings(tmp_path, output=bucket.uri("out") if bucket else None)
    root = settings.output
    outside = str(tmp_path / "elsewhere" / "m.parquet")
    broken = (f"OSError: cannot write {root}/batches/x/clip.mp4 (from file://{outside})\n"
              f"Traceback (most recent call last):\n  File \"{tmp_path}/wan_dist/engine/render.py\", line 1")
    rows = [{"id": "kite", "status": "completed", "attempts": 1, "seed": 3},
            {"id": "boat", "status": "failed", "attempts": 3, "error": broken},
            {"id": "taken", "status": "failed", "error_column": "id",
             "error": f"a clip rendered from a different request is already published at {root}/batches/k/taken; "
                      f"give this row a new id"}]

    def manifest(models: list[str]) -> bytes:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{"id": f"r{i}", "prompt": "a kite", "model": model}
                                             for i, model in enumerate(models)]), sink)
        return sink.getvalue()

    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as client:
        ids = []
        for models, fields in ((["tiny"], {"output": "campaign/7"}), (["tiny", "tiny-ti2v"], {})):
            created = client.post("/v1/batches", data=fields,
                                  files={"manifest": ("m.parquet", manifest(models), "application/octet-stream")})
            assert created.status_code == 202, created.text
            ids.append(created.json()["id"])
        with open_store(settings.store) as store:
            _run_batch_part(store, batch_queue("tiny"), results=rows)  # the one-model batch
            _run_batch_part(store, batch_queue("tiny"), results=rows[:1])  # the mixed batch's parts
            _run_batch_part(store, batch_queue("tiny-ti2v"), results=None, status="failed",
                            error={"code": "batch_failed", "message": f"FileNotFoundError: [Errno 2] No such file: "
                                                                      f"'{root}/_uploads/m.parquet' or '{outside}'"})
        seen = {"list": client.get("/v1/batches").json()}
        for batch_id in ids:
            seen[batch_id] = client.get(f"/v1/batches/{batch_id}").json()
            seen[f"{batch_id} results"] = client.get(f"/v1/batches/{batch_id}/results").json()
        one, mixed = seen[ids[0]], seen[ids[1]]
        assert (one["status"], mixed["status"]) == ("completed", "failed"), (one, mixed)
        assert len(seen[f"{ids[0]} results"]["data"]) == 3 and len(mixed["parts"]) == 2
        for name, body in seen.items():
            for text in _strings(body):
                assert not text.startswith((root, "/", "file://", "s3://")), (name, text)
                assert root not in text and str(tmp_path) not in text, (name, text)

        # what they name instead: the batch's folder and files relative to the output, each downloadable
        folder = one["output"]
        assert folder.startswith("batches/") and folder.endswith("/campaign/7")
        assert one["manifest_uri"].startswith("_uploads/") and one["results_uri"] == f"{folder}/_results"
        assert one["summary_uri"].startswith(f"{folder}/_results/run-")
        assert [p["summary_uri"].startswith(f"{mixed['output']}/_results/") for p in mixed["parts"]] == [True, True]
        assert "'_uploads/m.parquet' or '…/m.parquet'" in mixed["error"]["message"]
        assert mixed["parts"][1]["error"]["message"].endswith("'_uploads/m.parquet' or '…/m.parquet'")
        kite, boat, taken = seen[f"{ids[0]} results"]["data"]
        assert not {"clip_uri", "sidecar_uri"} & set(kite)
        assert (kite["clip"], kite["sidecar"]) == (f"{folder}/kite/clip.mp4", f"{folder}/kite/clip.json")
        assert kite["renditions"][0]["file"] == f"{folder}/kite/renditions/tiktok.mp4"
        assert boat["error"] == "OSError: cannot write batches/x/clip.mp4 (from …/m.parquet)"
        assert boat["clip"] is None and boat["clip_url"] is None
        assert "published at batches/k/taken;" in taken["error"]
        links = [kite["clip_url"], kite["renditions"][0]["url"], kite["renditions"][0]["guides_url"]]
        if bucket:  # straight from the bucket, signed
            assert all(link.startswith(bucket.endpoint_url) for link in links), links
            import httpx

            bodies = [httpx.get(link, timeout=30, trust_env=False).content for link in links]
        else:  # the API's own routes, with the caller's key
            assert kite["clip_url"] == f"{client.base_url}/v1/batches/{ids[0]}/clips/kite"
            bodies = [client.get(link).content for link in links]
        assert bodies == [f"kite/{name}".encode() for name in ("clip.mp4", "renditions/tiktok.mp4",
                                                                "renditions/tiktok.guides.mp4")]
