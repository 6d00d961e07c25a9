"""Mixed batches over HTTP against a running Serve app on 127.0.0.1 (local Ray, two tiny models served, each on
its own renderer): the project's own example ``jobs/examples/mixed.parquet`` renders through ``POST /v1/batches``
as the batch job renders it, and a cancel stops every model's part.

The reference is the batch runner's entry that ``ray job submit`` runs (``wan_dist.batch.runner.run_batch``, as in
tests/test_serve_batches.py), on the same manifest into a local folder. Clips are compared decoded, per row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from frame_metrics import psnr
from serve_fixtures import WebhookReceiver, api_client, served_app, wait_for
from step_holds import HOOK
from wan_dist.batch.manifest import write_manifest
from wan_dist.config import GroupSpec
from wan_dist.serve.settings import (AuthSettings, BatchSettings, JobSettings, LimitSettings, RendererSettings,
                                     ServeSettings, WebhookSettings)
from wan_dist.serve.stores import open_store
from wan_dist.serve.webhooks import generate_secret

pytestmark = pytest.mark.slow

MIXED = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "mixed.parquet"
MODELS = ("tiny", "tiny-ti2v")
SECRET = generate_secret()
SLOW = {"height": 64, "width": 64, "num_frames": 5, "num_inference_steps": 6}


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-batches-mixed")
    # a local output folder: clip URLs are then the API's own (a presigned file:// would be of no use to a client)
    settings = ServeSettings(models=MODELS, store=str(root / "jobs.db"), output=str(root / "out"),
                             allow_private_urls=True, auth=AuthSettings(api_keys=("k1", "k2")),
                             limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             jobs=JobSettings(poll_after_ms=100, lease_s=3.0),
                             batches=BatchSettings(interactive_per_row=1, results_flush_rows=1),
                             webhooks=WebhookSettings(secret=SECRET, base_delay_s=0.05),
                             renderer=RendererSettings(group=GroupSpec(step_hook=HOOK, cpus_per_rank=0.5)))
    with served_app(settings, timeout_s=240) as served:
        yield served


@pytest.fixture
def api(app, holds):
    with api_client(app, holds) as client:
        yield client


def upload(client, data: bytes, **fields):
    files = {"manifest": ("m.parquet", data, "application/vnd.apache.parquet")}
    return client.post("/v1/batches", files=files, data=fields)


def batch(client, batch_id: str) -> dict:
    response = client.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return response.json()


def until_ended(client, batch_id: str, timeout_s: float = 300) -> dict:
    return wait_for(lambda: (b := batch(client, batch_id))["status"] in ("completed", "failed", "cancelled") and b,
                    timeout_s, interval_s=0.25, what=f"batch {batch_id} to end")


def results(client, batch_id: str) -> list[dict]:
    """Every results row, page by page (3 a page), in the order the API gives them."""
    rows, after = [], None
    while True:
        params = {"limit": 3, **({"after": after} if after is not None else {})}
        page = client.get(f"/v1/batches/{batch_id}/results", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        rows.extend(body["data"])
        if not body["has_more"]:
            return rows
        after = body["last_index"]


def relative_keys(uri: str) -> set[str]:
    from wan_dist.storage.objects import list_prefix

    base = uri.rstrip("/") + "/"
    return {u[len(base):] for u in list_prefix(uri) if "/_results/" not in "/" + u[len(base):]}


# ------------------------------------------------------------------------------------------------------------


def test_the_mixed_example_renders_as_the_batch_job_renders_it(api, app, tmp_path):
    from wan_dist.batch import read_manifest
    from wan_dist.batch.results import latest_results
    from wan_dist.batch.runner import run_batch
    from wan_dist.config import BatchConfig, OutputConfig
    from wan_dist.storage.objects import read_bytes
    from wan_dist.video.mp4 import decode_mp4

    manifest = read_manifest(str(MIXED), default_model="tiny")
    assert {row.model for row in manifest.rows} == set(MODELS) and manifest.invalid  # the example is mixed
    with WebhookReceiver(SECRET) as receiver:
        created = upload(api, MIXED.read_bytes(), webhook_url=receiver.url)
        assert created.status_code == 202, created.text
        body = created.json()
        assert body["model"] == "tiny,tiny-ti2v" and [p["model"] for p in body["parts"]] == list(MODELS)
        final = until_ended(api, body["id"])
        # one event for the batch, once every part ended (the receiver answers 500 to a first delivery)
        wait_for(lambda: [d for d in receiver.events(body["id"]) if d[1] == 200], 60, what="a batch.completed delivery")
        assert {event for _, _, event in receiver.events(body["id"])} == {"batch.completed"} and not receiver.errors
        delivered = [p for _, code, p in receiver.requests if code == 200 and p["data"]["id"] == body["id"]]
        assert delivered[0]["data"]["status"] == "completed" and delivered[0]["data"]["counts"]["remaining"] == 0
    assert final["status"] == "completed", final
    assert [p["status"] for p in final["parts"]] == ["completed", "completed"]
    total = len(manifest.rows) + len(manifest.invalid)
    assert final["counts"] == {"total": total, "done": len(manifest.rows), "failed": len(manifest.invalid),
                               "remaining": 0, "completed": len(manifest.rows), "skipped": 0}

    reference = str(tmp_path / "reference")
    summary = run_batch(BatchConfig(manifest=str(MIXED), groups=1), OutputConfig(uri=reference))
    assert (summary["completed"], summary["failed"]) == (len(manifest.rows), len(manifest.invalid))
    expected = latest_results(reference)

    rows = results(api, body["id"])
    order = sorted([(r.index, r.id) for r in manifest.rows] + [(e.index, e.id) for e in manifest.invalid])
    assert [r["id"] for r in rows] == [row_id for _, row_id in order]  # manifest order, every row once
    assert {r["id"]: r["status"] for r in rows} == {k: r["status"] for k, r in expected.items()}
    assert {r["id"]: r["error_column"] for r in rows} == {k: r["error_column"] for k, r in expected.items()}
    # the view names the folder relative to the server's output (issue 20)
    assert relative_keys(f"{app.settings.output.rstrip('/')}/{final['output']}") == relative_keys(reference)
    with open_store(app.settings.store) as store:  # each row rendered by its model's part (its run id)
        part_of = {part["model"]: part["id"] for part in store.get(body["id"]).request["parts"]}
    by_id = {r["id"]: r for r in rows}
    with app.client("k2") as other:
        for row in manifest.rows:
            ours, theirs = by_id[row.id], expected[row.id]
            assert ours["model"] == row.model and ours["run_id"].startswith(part_of[row.model] + "-"), ours
            assert ours["clip_url"].startswith(app.base_url + f"/v1/batches/{body['id']}/clips/"), ours["clip_url"]
            download = api.get(ours["clip_url"], follow_redirects=True)
            assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
            assert other.get(ours["clip_url"]).status_code == 404  # another key's batch
            frames, _ = decode_mp4(download.content)
            reference_frames, _ = decode_mp4(read_bytes(theirs["clip_uri"]))
            assert frames.shape == reference_frames.shape, row.id
            # the same render up to float rounding (see tests/test_serve_batches.py: >= 35 dB is the same clip)
            assert psnr(frames, reference_frames) >= 35.0, (row.id, psnr(frames, reference_frames))


def test_cancel_stops_every_part(api, app, holds, tmp_path):
    rows = [{"id": f"{model}-{i}", "model": model, "prompt": f"a lantern {i} drawn by {model}", "seed": i, **SLOW}
            for model in MODELS for i in range(4)]
    write_manifest(rows, str(tmp_path / "m.parquet"))
    held = [holds.plan(rows[i]["prompt"], 2, min_s=2.0) for i in (1, 5)]  # the second row of each model
    created = upload(api, (tmp_path / "m.parquet").read_bytes())
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    for prompt in held:
        holds.wait_reached(prompt, 240)  # both parts mid-run
    running = batch(api, batch_id)
    assert running["status"] == "running" and [p["status"] for p in running["parts"]] == ["running", "running"]
    cancelled = api.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("running", "cancelled")
    assert api.post(f"/v1/batches/{batch_id}/cancel").status_code == 200  # idempotent
    for prompt in held:
        holds.release(prompt)
    final = until_ended(api, batch_id)
    assert final["status"] == "cancelled", final
    assert [p["status"] for p in final["parts"]] == ["cancelled", "cancelled"]
    done = [r for r in results(api, batch_id) if r["status"] == "completed"]
    for model in MODELS:  # each part stopped after its row in flight: rows were left unrendered
        assert len([r for r in done if r["model"] == model]) < 4, done
    with open_store(app.settings.store) as store:
        assert store.get(batch_id).status == "cancelled"  # settled: its webhook would fire once


def test_a_tenant_manifest_row_naming_a_server_file_fails_alone_without_reading_it(api, tmp_path):
    """Issue 20 item 2: a manifest sent over HTTP is a tenant's: its rows' images are read under the renderer's
    fetch policy (http(s), the tenant's uploads, the operator's source_prefixes), so a row naming a file on the
    server fails alone, saying which rule, whether or not the file exists; the operator's batch job reads it."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from wan_dist.batch.runner import run_batch
    from wan_dist.config import BatchConfig, OutputConfig

    secret = tmp_path / "secret.png"  # outside the server's output: what a tenant must not make it read
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(secret)
    common = {"model": "tiny-ti2v", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
    rows = [{"id": "server-file", "prompt": "a grey square", "image": str(secret), **common},
            {"id": "missing-file", "prompt": "a grey square", "image": str(tmp_path / "nothing.png"), **common},
            {"id": "plain", "prompt": "a grey square", **common}]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    created = upload(api, sink.getvalue())
    assert created.status_code == 202, created.text
    final = until_ended(api, created.json()["id"])
    by_id = {r["id"]: r for r in results(api, final["id"])}
    assert by_id["plain"]["status"] == "completed", by_id["plain"]
    for row_id in ("server-file", "missing-file"):  # the same answer: nothing tells whether the file exists
        assert by_id[row_id]["status"] == "failed", by_id[row_id]
        assert "image: file: URLs are not allowed here" in by_id[row_id]["error"], by_id[row_id]
    path = tmp_path / "m.parquet"
    path.write_bytes(sink.getvalue())
    summary = run_batch(BatchConfig(manifest=str(path), groups=1), OutputConfig(uri=str(tmp_path / "operator")))
    assert (summary["completed"], summary["failed"]) == (2, 1)  # the operator's own run reads its files
