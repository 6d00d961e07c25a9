"""Batches over HTTP against a running Serve app on 127.0.0.1 (local Ray, tiny model, moto S3 on 127.0.0.1).

One Serve application for the module, its output in a moto bucket. The reference for "the same results as
`ray job submit`" is the batch runner's entry that job runs (``wan_dist.batch.runner.run_batch``, what
``python -m wan_dist.cli.batch`` calls), run in this process on the same manifest into a local folder:
outputs are compared by key relative to each run's output, status per row, and decoded frames per row.
"""

from __future__ import annotations

import json
import tempfile
import time

import numpy as np
import pytest

from frame_metrics import psnr
from serve_fixtures import WebhookReceiver, api_client, served_app, wait_for
from step_holds import HOOK
from wan_dist.batch.manifest import write_manifest
from wan_dist.config import GroupSpec
from wan_dist.serve.settings import (AuthSettings, BatchSettings, JobSettings, LimitSettings, RendererSettings,
                                     ServeSettings, WebhookSettings)
from wan_dist.serve.webhooks import generate_secret

pytestmark = pytest.mark.slow

KEYS = ("k1", "k2")
SECRET = generate_secret()
FAST = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
# rows that the tests below hold at a step (tests/step_holds.py) to act while a batch is mid-run
SLOW = {**FAST, "height": 64, "width": 64, "num_frames": 5, "num_inference_steps": 6}


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    from conftest_s3 import s3_bucket

    with pytest.MonkeyPatch.context() as patch, s3_bucket(s3_endpoint, patch) as bucket:
        yield bucket


@pytest.fixture(scope="module")
def app(ray_local, s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-batches")
    settings = ServeSettings(models=("tiny",), store=str(root / "jobs.db"), output=s3.uri("serve"), env=s3.env,
                             allow_private_urls=True, auth=AuthSettings(api_keys=KEYS),
                             limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             jobs=JobSettings(poll_after_ms=100, lease_s=3.0),
                             batches=BatchSettings(interactive_per_row=1, results_flush_rows=1),
                             webhooks=WebhookSettings(secret=SECRET, base_delay_s=0.05),
                             renderer=RendererSettings(group=GroupSpec(step_hook=HOOK)))
    with served_app(settings) as served:
        yield served


@pytest.fixture
def api(app, holds):
    with api_client(app, holds) as client:
        yield client


def manifest_bytes(rows: list[dict], *, raw: bool = False) -> bytes:
    if raw:  # any columns, as a client might send them
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/m.parquet"
        write_manifest(rows, path)
        with open(path, "rb") as handle:
            return handle.read()


def upload(client, rows: list[dict], raw: bool = False, **fields):
    files = {"manifest": ("m.parquet", manifest_bytes(rows, raw=raw), "application/vnd.apache.parquet")}
    return client.post("/v1/batches", files=files, data={k: str(v) for k, v in fields.items()})


def batch(client, batch_id: str) -> dict:
    response = client.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return response.json()


def until(client, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 240) -> dict:
    return wait_for(lambda: (b := batch(client, batch_id))["status"] in statuses and b, timeout_s,
                    interval_s=0.25, what=f"batch {batch_id} in {statuses}")


def results(client, batch_id: str) -> dict[str, dict]:
    rows, after = {}, None
    while True:
        params = {"limit": 3, **({"after": after} if after is not None else {})}
        page = client.get(f"/v1/batches/{batch_id}/results", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        rows.update({r["id"]: r for r in body["data"]})
        if not body["has_more"]:
            return rows
        after = body["last_index"]


def rows_of(n: int, settings: dict, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i:02d}", "prompt": f"a paper boat number {i} ({prefix})", "seed": 100 + i, **settings}
            for i in range(n)]


def hold_row(holds, rows: list[dict], index: int, **options) -> str:
    """Hold the render of ``rows[index]`` at step 2 (the rows before it are done or in flight)."""
    return holds.plan(rows[index]["prompt"], 2, **options)


def on_server(app, name: str) -> str:
    """Where the server keeps ``name``, an output a view names relative to the server's output (issue 20)."""
    return f"{app.settings.output.rstrip('/')}/{name}"


def relative_keys(uri: str) -> set[str]:
    from wan_dist.storage.objects import list_prefix

    base = uri.rstrip("/") + "/"
    return {u[len(base):] for u in list_prefix(uri) if "/_results/" not in "/" + u[len(base):]}


# ------------------------------------------------------------------------------------------------------------


def test_bad_manifests_are_refused_naming_columns_and_rows(api):
    duplicate = rows_of(2, FAST, "dup") + [{"id": "dup-00", "prompt": "again", **FAST}]
    response = upload(api, duplicate, raw=True)
    assert response.status_code == 422 and "duplicate ids" in response.text and "dup-00" in response.text
    response = upload(api, [{"id": "a", "prompt": "x", "frames": 5}], raw=True)  # unknown column
    assert response.status_code == 422 and "frames" in response.json()["error"]["message"]
    response = api.post("/v1/batches", json={"manifest_uri": "file:///etc/passwd"})
    assert response.status_code == 422  # nothing is read
    response = api.post("/v1/batches", json={})
    assert response.status_code == 422 and response.json()["error"]["param"] == "manifest_uri"
    unauthenticated = api.post("/v1/batches", json={}, headers={"Authorization": "Bearer nope"})
    assert unauthenticated.status_code == 401
    assert api.get("/v1/batches/job_nonexistent").status_code == 404


def test_uploaded_manifest_matches_the_batch_job(api, app, s3, tmp_path):
    from wan_dist.batch.results import latest_results
    from wan_dist.batch.runner import run_batch
    from wan_dist.config import BatchConfig, OutputConfig
    from wan_dist.storage.objects import read_bytes
    from wan_dist.video.mp4 import decode_mp4

    valid = rows_of(8, FAST, "boat")
    valid[2]["output_prefix"] = "rivers"
    invalid = [{"id": "bad-frames", "prompt": "x", **{**FAST, "num_frames": 8}},
               {"id": "bad-solver", "prompt": "x", **{**FAST, "solver": "rk45"}}]
    rows = valid + invalid
    with WebhookReceiver(SECRET) as receiver:
        created = upload(api, rows, webhook_url=receiver.url, **{"metadata[team]": "docs"})
        assert created.status_code == 202, created.text
        body = created.json()
        final = until(api, body["id"], ("completed", "failed", "cancelled"))
        # signed like job events; the receiver answers 500 to a first delivery, so it is seen at least twice
        deliveries = wait_for(lambda: [d for d in receiver.events(body["id"]) if d[1] == 200], 60,
                              what="a batch.completed delivery")
        assert {event for _, _, event in receiver.events(body["id"])} == {"batch.completed"} and not receiver.errors
        wait_for(lambda: (batch(api, body["id"])["webhook"]["deliveries"].get("batch.completed") or {})
                 .get("status") == "delivered", 60, what="the delivery state on the batch")
    assert body["object"] == "batch" and body["counts"]["total"] == 10 and body["invalid_rows"] == 2
    assert body["metadata"] == {"team": "docs"} and body["status"] in ("queued", "running")
    assert final["status"] == "completed", final
    assert deliveries
    assert final["counts"]["done"] == 8 and final["counts"]["failed"] == 2 and final["counts"]["remaining"] == 0
    assert final["summary_uri"] and final["results_uri"]
    listed = api.get("/v1/batches").json()
    assert body["id"] in [b["id"] for b in listed["data"]]
    assert body["id"] not in [j["id"] for j in api.get("/v1/jobs", params={"limit": 100}).json()["data"]]
    assert app.client("k2").get(f"/v1/batches/{body['id']}").status_code == 404  # another key's batch
    for path in ("/v1/jobs/{}", "/v1/jobs/{}/content", "/v1/videos/{}", "/v1/videos/{}/content"):
        assert api.get(path.format(body["id"])).status_code == 404, path  # a batch is no job or video

    # the reference: the batch job's runner on the same manifest, into a local folder
    manifest = str(tmp_path / "m.parquet")
    write_manifest(rows, manifest)
    reference = str(tmp_path / "reference")
    summary = run_batch(BatchConfig(manifest=manifest, groups=1), OutputConfig(uri=reference))
    assert (summary["completed"], summary["failed"]) == (8, 2)

    http_rows = results(api, body["id"])
    ref_rows = latest_results(reference)
    assert {k: r["status"] for k, r in http_rows.items()} == {k: r["status"] for k, r in ref_rows.items()}
    assert {k: r["error_column"] for k, r in http_rows.items()} == {k: r["error_column"] for k, r in ref_rows.items()}
    assert relative_keys(on_server(app, final["output"])) == relative_keys(reference)
    for row in valid:
        ours, theirs = http_rows[row["id"]], ref_rows[row["id"]]
        assert ours["clip_url"].startswith(s3.endpoint_url)  # presigned on the bucket
        frames, _ = decode_mp4(read_bytes(on_server(app, ours["clip"])))
        expected, _ = decode_mp4(read_bytes(theirs["clip_uri"]))
        assert frames.shape == expected.shape == (5, 32, 32, 3), row["id"]
        # The same render up to float rounding. Usually bit-equal; now and then one row differs (seen: boat-06,
        # max 2 then 21 levels, mean 0.58), its source not found (not warm-renderer state, not a prefetch thread's
        # encoder, not MKL alignment: each checked equal). H.264's mode decisions turn a last-bit difference into
        # a few levels over a block, so a row counts as the same when its PSNR is >= 35 dB; another row of this
        # batch scores ~17-18 dB against it (measured), and 21 levels at mean 0.58 at least 37 dB.
        assert psnr(frames, expected) >= 35.0, (row["id"], psnr(frames, expected))
        assert json.loads(read_bytes(on_server(app, ours["sidecar"])))["settings"]["seed"] == row["seed"]


def test_cancel_stops_scheduling_and_keeps_published_clips(api, app, holds):
    from wan_dist.storage.objects import exists

    manifest = rows_of(8, SLOW, "cancel")
    # held long enough (2 s) for the runner's loop (a turn at most every 0.5 s) to read the cancel meanwhile
    held = hold_row(holds, manifest, 2, min_s=2.0)
    rows = manifest
    created = upload(api, rows)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    holds.wait_reached(held, 240)  # mid-run: rows 0 and 1 done or publishing, row 2 rendering
    running = batch(api, batch_id)
    cancel_at = time.time()
    cancelled = api.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200
    assert api.post(f"/v1/batches/{batch_id}/cancel").status_code == 200  # idempotent
    holds.release(held)
    final = until(api, batch_id, ("cancelled", "completed", "failed"))
    assert final["status"] == "cancelled", final
    rows = results(api, batch_id)
    completed = [r for r in rows.values() if r["status"] == "completed"]
    # no row was submitted to the group after the cancel (a row's wall_s runs from its submission to its
    # publication); the check runs every 0.1 s, the clock is this machine's
    submitted = sorted(r["finished_at"] - r["wall_s"] - cancel_at for r in completed)
    assert all(t < 0.5 for t in submitted) and len(completed) < 8, (submitted, running["counts"])
    for record in completed:
        assert exists(on_server(app, record["clip"])) and exists(on_server(app, record["sidecar"]))
    # the row in flight (held at step 2 of 6 when the cancel came) stopped between steps, as a job does
    assert manifest[2]["id"] not in {r["id"] for r in completed}, rows.get(manifest[2]["id"])
    assert final["counts"]["remaining"] > 0


def test_restart_mid_batch_renders_each_row_once(api, app, holds):
    from wan_dist.batch.results import read_results
    from wan_dist.storage.objects import read_bytes

    rows = rows_of(6, SLOW, "restart")
    held = hold_row(holds, rows, 2)  # the app stops while row 2 renders
    created = upload(api, rows)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    holds.wait_reached(held, 240)
    settings = app.settings
    app.stop()
    app.start(settings)
    with app.client("k1") as client:
        final = until(client, batch_id, ("completed", "failed", "cancelled"), timeout_s=300)
        assert final["status"] == "completed", final
        rows = results(client, batch_id)
    assert {r["status"] for r in rows.values()} == {"completed"} and len(rows) == 6
    records = read_results(on_server(app, final["output"])).to_pylist()
    rendered = {}
    for record in records:
        if record["status"] == "completed":
            rendered[record["id"]] = rendered.get(record["id"], 0) + 1
    assert rendered == {row_id: 1 for row_id in rows}  # every row rendered by exactly one run
    for record in rows.values():  # the sidecar of each clip is the one its single render wrote
        sidecar = json.loads(read_bytes(on_server(app, record["sidecar"])))
        assert sidecar["request"]["name"] == record["id"]


def test_interactive_job_waits_at_most_the_row_in_flight(api, app, holds):
    from wan_dist.batch.results import read_results

    rows = rows_of(8, SLOW, "fair")
    held = hold_row(holds, rows, 1)  # the jobs arrive while row 1 renders, with most of the batch still ahead
    created = upload(api, rows)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    holds.wait_reached(held, 240)
    job_body = {"prompt": "a fox", "num_frames": 5, "num_inference_steps": 2, "size": "64x64", "seed": 1}
    jobs = [api.post("/v1/models/tiny/jobs", json=job_body).json() for _ in range(3)]
    holds.release(held)
    done = [wait_for(lambda j=j: (r := api.get(f"/v1/jobs/{j['id']}").json())["status"] == "completed" and r, 240,
                     what="an interactive job") for j in jobs]
    final = until(api, batch_id, ("completed", "failed", "cancelled"))
    assert final["status"] == "completed" and final["counts"]["done"] == 8
    finished = sorted(r["finished_at"] for r in read_results(on_server(app, final["output"])).to_pylist()
                      if r["status"] == "completed")
    first = done[0]
    # measured in rows, not seconds: rows finished between the first job's arrival and its start
    ahead = [t for t in finished if first["created_at"] < t < first["started_at"]]
    assert len(ahead) <= 2, ahead  # the row in flight (and the publish of the one before it)
    # and the batch kept moving: with interactive_per_batch_row=1 a row ran between the queued jobs
    last = max(done, key=lambda j: j["completed_at"])
    between = [t for t in finished if first["completed_at"] < t < last["completed_at"]]
    assert len(between) >= 1, (finished, [(j["started_at"], j["completed_at"]) for j in done])
