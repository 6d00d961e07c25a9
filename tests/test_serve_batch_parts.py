"""Mixed batches in the store, without Ray: the API (FastAPI's TestClient, no renderers) creates a batch record
and one part per model; the parts are then claimed and ended through the store as a renderer's batch loop does
(``claim`` on the model's batch queue, ``finish``, then ``settle_part``), and the batch the API shows follows
them. Both store backends (SQLite and the object store on a local folder).

The renders themselves, and their equality with the batch job's, are in tests/test_serve_batches_mixed.py."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from wan_dist.batch import read_manifest
from wan_dist.config import BatchConfig
from wan_dist.serve.app import create_app
from wan_dist.serve.batch_parts import PART_KIND, batch_queue, settle_part
from wan_dist.serve.jobs import JobStatus
from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings, WebhookSettings

MIXED = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "mixed.parquet"
SECRET = "whsec_" + "A" * 43 + "="


@pytest.fixture(params=["sqlite", "objects"])
def served(request, tmp_path):
    """(TestClient with key k1, the API's store) for an API serving tiny and tiny-ti2v."""
    store = str(tmp_path / "jobs.db") if request.param == "sqlite" else (tmp_path / "store").as_uri()
    settings = ServeSettings(models=("tiny", "tiny-ti2v"), store=store, output=str(tmp_path / "out"),
                             auth=AuthSettings(api_keys=("k1", "k2")),
                             limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             webhooks=WebhookSettings(secret=SECRET))
    app = create_app(settings)
    try:
        with TestClient(app, headers={"Authorization": "Bearer k1"}) as client:
            yield client, app.state.get_state().store
    finally:
        app.state.get_state().close()


def upload(client, data: bytes, **headers):
    files = {"manifest": ("m.parquet", data, "application/vnd.apache.parquet")}
    return client.post("/v1/batches", files=files, headers=headers)


def without_model(model: str) -> bytes:
    table = pq.read_table(MIXED)
    keep = [i for i, value in enumerate(table.column("model").to_pylist()) if value != model]
    sink = io.BytesIO()
    pq.write_table(table.take(keep), sink)
    return sink.getvalue()


def run_part(store, model: str, *, status: str, completed: int, failed: int = 0, error: dict | None = None):
    """What a renderer's batch loop does with the part of ``model``: claim it, record its outcome, settle."""
    part = store.claim(batch_queue(model), worker=f"w-{model}", lease_s=60)
    assert part is not None and part.kind == PART_KIND
    result = {"results_uri": f"{part.request['output']}/_results", "summary_uri": f"{model}-summary.json",
              "progress": {"completed": completed, "failed": failed, "skipped": 0, "clips_per_hour": 10.0,
                           "eta_s": 0.0}}
    part = store.finish(part.id, f"w-{model}", status=status, result=result, error=error)
    settle_part(store, part)
    return part


def test_a_mixed_manifest_is_one_batch_of_one_part_per_model(served, tmp_path):
    client, store = served
    expected = read_manifest(str(MIXED), default_model="tiny")
    by_model = {m: sum(r.model == m for r in expected.rows) for m in ("tiny", "tiny-ti2v")}
    created = upload(client, MIXED.read_bytes())
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["model"] == "tiny,tiny-ti2v" and body["status"] == "queued" and body["counts"]["total"] == 8
    assert [(p["model"], p["status"]) for p in body["parts"]] == [("tiny", "queued"), ("tiny-ti2v", "queued")]
    invalid = len(expected.invalid)
    assert [p["rows"] for p in body["parts"]] == [by_model["tiny"] + invalid, by_model["tiny-ti2v"]]

    parts, _ = store.list(kind=PART_KIND, limit=10, order="asc")
    assert [p.model for p in parts] == [batch_queue("tiny"), batch_queue("tiny-ti2v")]
    assert {p.request["batch_id"] for p in parts} == {body["id"]} and {p.owner for p in parts} == {""}
    assert [p.request["only_models"] for p in parts] == [["tiny"], ["tiny-ti2v"]]
    assert [p.request["record_invalid_rows"] for p in parts] == [True, False]  # each invalid row recorded once
    # one folder, as one run's; the view names it relative to the server's output
    assert body["output"].startswith("batches/")
    assert {p.request["output"] for p in parts} == {f"{tmp_path / 'out'}/{body['output']}"}
    assert {p.request["default_model"] for p in parts} == {"tiny"}  # null-model rows are tiny's for every part
    # the API shows the batch alone: parts are not batches, jobs, nor another key's
    assert [b["id"] for b in client.get("/v1/batches").json()["data"]] == [body["id"]]
    assert client.get(f"/v1/batches/{parts[0].id}").status_code == 404
    assert client.get("/v1/jobs").json()["data"] == []
    assert client.get(f"/v1/batches/{body['id']}", headers={"Authorization": "Bearer k2"}).status_code == 404

    run_part(store, "tiny-ti2v", status=JobStatus.COMPLETED, completed=by_model["tiny-ti2v"])
    running = client.get(f"/v1/batches/{body['id']}").json()
    assert running["status"] == "running" and running["completed_at"] is None
    assert running["counts"]["completed"] == by_model["tiny-ti2v"] and running["counts"]["remaining"] > 0
    assert store.get(body["id"]).status == JobStatus.QUEUED  # not settled while a part is left

    run_part(store, "tiny", status=JobStatus.COMPLETED, completed=by_model["tiny"], failed=invalid)
    final = client.get(f"/v1/batches/{body['id']}").json()
    assert final["status"] == "completed" and final["completed_at"] is not None and final["error"] is None
    assert final["counts"] == {"total": 8, "done": 5, "failed": 3, "remaining": 0, "completed": 5, "skipped": 0}
    assert final["clips_per_hour"] == 20.0 and final["results_uri"] == f"{body['output']}/_results"
    assert [p["summary_uri"] for p in final["parts"]] == ["tiny-summary.json", "tiny-ti2v-summary.json"]
    assert store.get(body["id"]).status == JobStatus.COMPLETED  # settled: the notifier sees a terminal batch


def test_cancel_cancels_every_part_and_the_batch_ends_when_they_do(served):
    client, store = served
    batch_id = upload(client, MIXED.read_bytes()).json()["id"]
    running = store.claim(batch_queue("tiny"), worker="w", lease_s=60)  # one part rendering, one queued
    cancelled = client.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200
    assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 200  # idempotent
    body = cancelled.json()
    assert body["status"] == "running"  # the rows in flight finish first
    assert [p["status"] for p in body["parts"]] == ["running", "cancelled"]
    assert store.get(running.id).cancel_requested
    part = store.finish(running.id, "w", status=JobStatus.CANCELLED)  # the worker stops after its row
    settle_part(store, part)
    final = client.get(f"/v1/batches/{batch_id}").json()
    assert final["status"] == "cancelled" and store.get(batch_id).status == JobStatus.CANCELLED

    queued = upload(client, MIXED.read_bytes()).json()["id"]  # nothing started: cancelled at once
    assert client.post(f"/v1/batches/{queued}/cancel").json()["status"] == "cancelled"
    assert store.count(status=(JobStatus.QUEUED, JobStatus.IN_PROGRESS)) == 0


def test_a_failed_part_fails_the_batch_naming_its_model(served):
    client, store = served
    batch_id = upload(client, MIXED.read_bytes()).json()["id"]
    run_part(store, "tiny", status=JobStatus.COMPLETED, completed=3)
    run_part(store, "tiny-ti2v", status=JobStatus.FAILED, completed=0,
             error={"code": "batch_failed", "message": "OSError: the bucket went away"})
    final = client.get(f"/v1/batches/{batch_id}").json()
    assert final["status"] == "failed" and final["error"]["code"] == "batch_failed"
    assert "'tiny-ti2v'" in final["error"]["message"] and "bucket went away" in final["error"]["message"]


def test_a_replayed_create_makes_no_second_set_of_parts(served):
    client, store = served
    first = upload(client, MIXED.read_bytes(), **{"Idempotency-Key": "mixed-1"}).json()
    again = upload(client, MIXED.read_bytes(), **{"Idempotency-Key": "mixed-1"}).json()
    assert first["id"] == again["id"]
    assert store.count(status=JobStatus.QUEUED) == 3  # the batch and its two parts


def test_an_unserved_model_is_refused_naming_it(served):
    client, store = served
    table = pq.read_table(MIXED)
    models = ["toy" if m == "tiny-ti2v" else m for m in table.column("model").to_pylist()]  # valid toy rows
    sink = io.BytesIO()
    pq.write_table(table.set_column(table.column_names.index("model"), "model", [models]), sink)
    response = upload(client, sink.getvalue())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found" and "'toy'" in error["message"]
    assert store.count() == 0  # nothing was queued


def test_a_one_model_manifest_stays_one_record(served):
    client, store = served
    body = upload(client, without_model("tiny-ti2v")).json()
    assert body["model"] == "tiny" and "parts" not in body
    job = store.get(body["id"])
    assert job.model == batch_queue("tiny") and job.kind == "batch" and store.count() == 1


def test_only_models_is_validated():
    with pytest.raises(ValueError, match="only_models"):
        BatchConfig(manifest="m.parquet", only_models=("tiny", "tiny"))
    with pytest.raises(ValueError, match="only_models"):
        BatchConfig(manifest="m.parquet", only_models=["tiny"])
    with pytest.raises(ValueError, match="record_invalid_rows"):
        BatchConfig(manifest="m.parquet", record_invalid_rows="no")
    manifest = read_manifest(str(MIXED), default_model="tiny")
    with pytest.raises(ValueError, match="no-such-model"):
        manifest.of_models(["no-such-model"])
    ti2v = manifest.of_models(["tiny-ti2v"])
    assert {r.model for r in ti2v.rows} == {"tiny-ti2v"} and ti2v.invalid == manifest.invalid
