"""Platform renditions at the HTTP door without a renderer (the API process and its SQLite store, as the ingress
runs them): a completed job's view lists each rendition (and guides copy) with a URL that downloads it with the
caller's key and no one else's, never a server path; on S3 the URLs are presigned; a batch's results rows list
their rows' renditions the same way. The renders themselves are faked here (the outputs written where the engine
writes them); tests/test_renditions_e2e.py renders them for real."""

from __future__ import annotations

import io
import json

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from wan_dist.serve.app import create_app
from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings, WebhookSettings
from wan_dist.serve.stores import open_store

BODY = {"prompt": "a fox in the snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64",
        "renditions": ["youtube", "tiktok"], "overlays": {"guides": True}}


def _settings(tmp_path, output: str | None = None) -> ServeSettings:
    return ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=output or str(tmp_path / "out"),
                         auth=AuthSettings(api_keys=("k1", "k2")), limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                         webhooks=WebhookSettings(secret="whsec_" + "A" * 43 + "="))


def _complete(settings: ServeSettings, job_id: str, *, guides_of: tuple[str, ...]) -> dict[str, bytes]:
    """Finish queued job ``job_id`` as a renderer would, its clip and renditions written where the engine writes
    them (only the renditions in ``guides_of`` get a guides copy); returns each output's bytes by its URI."""
    from wan_dist.storage.objects import join, write_bytes_atomic

    written: dict[str, bytes] = {}

    def write(uri: str) -> str:
        written[uri] = f"bytes of {uri.rsplit('/', 2)[-2:]}".encode()
        write_bytes_atomic(uri, written[uri])
        return uri

    with open_store(settings.store) as store:
        job = store.claim("tiny", worker="w", lease_s=60)
        assert job.id == job_id
        folder = join(settings.output, job_id)
        renditions = []
        for profile in BODY["renditions"]:
            entry = {"profile": profile, "uri": write(join(folder, "renditions", f"{profile}.mp4"))}
            if profile in guides_of:
                entry["guides_uri"] = write(join(folder, "renditions", f"{profile}.guides.mp4"))
            renditions.append(entry)
        store.finish(job_id, "w", status="completed", progress=100, completed_at=1.0,
                     result={"clip_uri": write(join(folder, "clip.mp4")), "sidecar_uri": join(folder, "clip.json"),
                             "seed": 1, "renditions": renditions})
    return written


def test_a_jobs_view_lists_each_rendition_downloaded_through_the_api_with_the_callers_key(tmp_path):
    settings = _settings(tmp_path)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as client:
        created = client.post("/v1/models/tiny/jobs", json=BODY)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        early = client.get(f"/v1/jobs/{job_id}/renditions/youtube")
        assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready"
        written = _complete(settings, job_id, guides_of=("youtube",))
        view = client.get(f"/v1/jobs/{job_id}").json()
        assert str(tmp_path) not in json.dumps(view), view  # issue 20: no server path in a job's view
        base = f"/v1/jobs/{job_id}/renditions"
        assert view["result"]["renditions"] == [
            {"profile": "youtube", "file": f"{job_id}/renditions/youtube.mp4", "url": f"{base}/youtube",
             "guides_file": f"{job_id}/renditions/youtube.guides.mp4", "guides_url": f"{base}/youtube/guides"},
            {"profile": "tiktok", "file": f"{job_id}/renditions/tiktok.mp4", "url": f"{base}/tiktok"}]
        links = [(item[key], f"{settings.output}/{item[key.replace('url', 'file')]}")
                 for item in view["result"]["renditions"] for key in ("url", "guides_url") if key in item]
        assert len(links) == 3
        with TestClient(client.app) as anonymous:
            for url, uri in links:
                answer = client.get(url)
                assert answer.status_code == 200 and answer.content == written[uri], url
                assert answer.headers["content-type"] == "video/mp4"
                assert anonymous.get(url).status_code == 401
                assert client.get(url, headers={"Authorization": "Bearer k2"}).status_code == 404  # not k2's job
        missing = client.get(f"{base}/instagram_feed")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "profile"
        assert "youtube, tiktok" in missing.json()["error"]["message"]
        assert client.get(f"{base}/tiktok/guides").status_code == 404  # made without a guides copy

        # the OpenAI video object of the same job lists them under its own routes
        video = client.get(f"/v1/videos/{job_id}").json()
        assert [(r["profile"], r["url"]) for r in video["renditions"]] == [
            ("youtube", f"/v1/videos/{job_id}/renditions/youtube"), ("tiktok", f"/v1/videos/{job_id}/renditions/tiktok")]
        tiktok = client.get(video["renditions"][1]["url"])
        assert tiktok.status_code == 200 and tiktok.content == written[f"{settings.output}/{job_id}/renditions/tiktok.mp4"]
        assert client.get(video["renditions"][0]["guides_url"]).status_code == 200

        plain = client.post("/v1/models/tiny/jobs", json={k: v for k, v in BODY.items()
                                                          if k not in ("renditions", "overlays")}).json()["id"]
        assert client.get(f"/v1/jobs/{plain}").json()["result"] is None  # queued: nothing made yet
        assert client.get(f"/v1/videos/{plain}").json()["renditions"] == []


def test_on_s3_each_rendition_url_is_presigned(tmp_path, s3_server):
    settings = _settings(tmp_path, output=s3_server.uri("out"))
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as client:
        job_id = client.post("/v1/models/tiny/jobs", json=BODY).json()["id"]
        written = _complete(settings, job_id, guides_of=("tiktok",))
        view = client.get(f"/v1/jobs/{job_id}").json()
    renditions = view["result"]["renditions"]
    assert [r["profile"] for r in renditions] == ["youtube", "tiktok"] and "guides_url" in renditions[1]
    for item in renditions:
        for key in ("url", "guides_url"):
            if key in item:
                assert item[key].startswith(s3_server.endpoint_url), item  # straight from the bucket, signed
                answer = httpx.get(item[key], timeout=30, trust_env=False)
                assert answer.status_code == 200
                assert answer.content == written[f"{settings.output}/{item[key.replace('url', 'file')]}"]


def test_a_batchs_results_rows_link_their_renditions_through_the_api(tmp_path):
    from wan_dist.batch.results import ResultsWriter, renditions_column
    from wan_dist.serve.batch_parts import batch_output
    from wan_dist.storage.objects import join, write_bytes_atomic

    settings = _settings(tmp_path)
    rows = [{"id": "titled", "prompt": "a kite", "model": "tiny", "renditions": json.dumps(["instagram_feed"]),
             "overlays": json.dumps({"guides": True})},
            {"id": "plain", "prompt": "a boat", "model": "tiny"}]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as client:
        created = client.post("/v1/batches", files={"manifest": ("m.parquet", sink.getvalue(), "application/octet-stream")})
        assert created.status_code == 202, created.text
        batch_id = created.json()["id"]
        with open_store(settings.store) as store:
            output = batch_output(store.get(batch_id), settings.output)
        # what the batch runner records for the two rows
        made = {"instagram_feed": join(output, "titled", "renditions", "instagram_feed.mp4")}
        guides = {"instagram_feed": join(output, "titled", "renditions", "instagram_feed.guides.mp4")}
        for uri, data in ((made["instagram_feed"], b"feed"), (guides["instagram_feed"], b"feed guides")):
            write_bytes_atomic(uri, data)
        writer = ResultsWriter(output, "run1")
        for row_id, renditions in (("titled", renditions_column(made, guides, lambda uri: "file://" + uri)),
                                   ("plain", None)):
            writer.add({"id": row_id, "index": 0 if row_id == "titled" else 1, "model": "tiny", "status": "completed",
                        "clip_uri": join(output, row_id, "clip.mp4"), "renditions": renditions})
        writer.close()

        results = client.get(f"/v1/batches/{batch_id}/results").json()["data"]
        assert [r["id"] for r in results] == ["titled", "plain"]
        base = f"{client.base_url}/v1/batches/{batch_id}/clips/titled/renditions/instagram_feed"
        folder = created.json()["output"]  # the batch's folder, relative to the server's output
        assert output == f"{settings.output}/{folder}"
        assert results[0]["renditions"] == [
            {"profile": "instagram_feed", "file": f"{folder}/titled/renditions/instagram_feed.mp4", "url": base,
             "guides_file": f"{folder}/titled/renditions/instagram_feed.guides.mp4", "guides_url": f"{base}/guides"}]
        assert results[0]["clip"] == f"{folder}/titled/clip.mp4" and "clip_uri" not in results[0]
        assert results[1]["renditions"] == []
        assert client.get(base).content == b"feed" and client.get(f"{base}/guides").content == b"feed guides"
        assert client.get(base, headers={"Authorization": "Bearer k2"}).status_code == 404  # another key's batch
        for other in (f"/v1/batches/{batch_id}/clips/titled/renditions/youtube",
                      f"/v1/batches/{batch_id}/clips/plain/renditions/instagram_feed"):
            answer = client.get(other)
            assert answer.status_code == 404 and answer.json()["error"]["param"] == "profile", other


def test_results_parts_written_before_the_renditions_column_still_read(tmp_path):
    """An output holding parts of an older writer (no renditions column) reads as one table, nulls there."""
    from wan_dist.batch.results import RESULTS_SCHEMA, ResultsWriter, read_results

    output = str(tmp_path / "out")
    older = pa.schema([field for field in RESULTS_SCHEMA if field.name != "renditions"])
    folder = tmp_path / "out" / "_results" / "run-old"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"id": "a", "index": 0, "status": "completed", "finished_at": 1.0}],
                                        schema=older), folder / "part-00000.parquet")
    writer = ResultsWriter(output, "new")
    writer.add({"id": "b", "index": 1, "status": "completed",
                "renditions": [{"profile": "tiktok", "uri": "x/tiktok.mp4", "url": None, "guides_uri": None,
                                "guides_url": None}]})
    writer.close()
    records = {r["id"]: r for r in read_results(output).to_pylist()}
    assert records["a"]["renditions"] is None
    assert records["b"]["renditions"][0]["profile"] == "tiktok"
