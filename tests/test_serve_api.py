"""The HTTP API against a running Serve app on 127.0.0.1 (local Ray, the tiny model on the CPU).

One Serve application per module (``serve_app``); the restart tests tear it down (or kill its renderer)
and bring it back on the same store and output. Renders are tiny (64x64, 5 frames, 2 steps: well under a
second). A test that must act while a job renders (cancel it, kill its renderer, read its progress, queue
others behind it) holds the render at a step (tests/step_holds.py) and releases it once it has acted, so
no test depends on how fast the machine renders. Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import threading

import httpx
import pytest

from serve_fixtures import ServeApp, WebhookReceiver, free_port, read_sse, settle, wait_for
from step_holds import HOOK
from wan_dist.config import GroupSpec
from wan_dist.controls.renditions import parse_renditions
from wan_dist.serve.jobs import ACTIVE_STATUSES, TERMINAL_STATUSES
from wan_dist.serve.settings import (AuthSettings, JobSettings, LimitSettings, PreviewSettings, RendererSettings,
                                     ServeSettings, WebhookSettings)
from wan_dist.serve.stores import open_store
from wan_dist.serve.webhooks import generate_secret
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow

SECRET = generate_secret()  # the module's webhook signing secret, handed to the app and to the receiver
KEYS = ("k1", "k2")
FAST = {"prompt": "a fox in the snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64", "seed": 1}
HELD = {**FAST, "num_inference_steps": 8}  # held at step HOLD_STEP (tests/step_holds.py) with a prompt of its own
HOLD_STEP = 2
# A held render waits at least this long, more than the store step control's 0.5 s throttle: the control then
# runs at the held step itself (reads a cancel, renews the lease) whatever the machine's speed.
HOLD_MIN_S = 0.6
QUEUE_BOUND = 4


def settings_for(root) -> ServeSettings:
    return ServeSettings(models=("tiny",), store=str(root / "jobs.db"), output=str(root / "out"),
                         allow_private_urls=True, auth=AuthSettings(api_keys=KEYS),
                         limits=LimitSettings(rate_per_s=1000.0, burst=1000, max_queue_per_model=QUEUE_BOUND),
                         jobs=JobSettings(poll_after_ms=100, lease_s=3.0), previews=PreviewSettings(every_s=0.2),
                         webhooks=WebhookSettings(base_delay_s=0.05, secret=SECRET),
                         renderer=RendererSettings(group=GroupSpec(step_hook=HOOK)))


@pytest.fixture(scope="module")
def serve_app(ray_local, tmp_path_factory):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ServeApp(port)
    try:
        app.start(settings_for(tmp_path_factory.mktemp("serve-api")))
        yield app
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def store(serve_app):
    """The app's job store, opened from the test process (SQLite is shared between processes)."""
    store = open_store(serve_app.settings.store)
    yield store
    store.close()


@pytest.fixture
def api(serve_app, store, holds):
    """An httpx client with key k1; afterwards every hold is released, every job still queued or running is
    cancelled and the renderer is idle, so each test starts with an empty queue."""
    with serve_app.client("k1") as client:
        yield client
    settle(store, holds, 60)


def held(holds, prompt: str) -> dict:
    """A HELD job body whose render will wait after step HOLD_STEP until ``holds.release(prompt)``."""
    return {**HELD, "prompt": holds.plan(prompt, HOLD_STEP, min_s=HOLD_MIN_S)}


def create(client: httpx.Client, body: dict, *, model: str = "tiny", **headers) -> dict:
    response = client.post(f"/v1/models/{model}/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def get(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(client: httpx.Client, job_id: str, statuses, timeout_s: float = 60.0) -> dict:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    return wait_for(lambda: (job := get(client, job_id))["status"] in statuses and job, timeout_s,
                    what=f"job {job_id} to be {sorted(statuses)}")


def assert_error(response: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_clip(data: bytes, frames: int = 5, size: tuple[int, int] = (64, 64)) -> None:
    video, _fps = decode_mp4(data)
    assert video.shape == (frames, size[1], size[0], 3)


# ---- the official openai SDK ----------------------------------------------------------------------------

def test_openai_sdk_videos_create_poll_download_list_delete(serve_app, api):
    import openai

    client = openai.OpenAI(base_url=f"{serve_app.base_url}/v1", api_key="k1", max_retries=0, timeout=30)
    wan = {"num_frames": 5, "num_inference_steps": 2, "seed": 7, "metadata": {"campaign": "sdk"}}
    video = client.videos.create(model="tiny", prompt="a red kite over the sea", size="64x64", extra_body=wan)
    assert (video.object, video.model, video.status, video.size) == ("video", "tiny", "queued", "64x64")
    assert video.seconds == "0.25"  # (5 - 1) frames at 16 fps

    polled: list = []  # the SDK's own poll loop, paced by openai-poll-after-ms
    poller = threading.Thread(target=lambda: polled.append(client.videos.poll(video.id)), daemon=True)
    poller.start()
    poller.join(60)
    assert polled, "client.videos.poll did not return within 60 s"
    assert (polled[0].status, polled[0].progress, polled[0].error) == ("completed", 100, None)
    assert client.videos.retrieve(video.id).status == "completed"

    assert_clip(client.videos.download_content(video.id).read())

    second = client.videos.create(model="tiny", prompt="a blue kite", size="64x64",
                                  extra_body={**wan, "num_inference_steps": 3})
    page = client.videos.list(limit=100)
    assert [v.id for v in page.data][:2] == [second.id, video.id]  # newest first
    assert [v.id for v in client.videos.list(limit=1, order="asc")][-2:] == [video.id, second.id]  # paged by after

    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.videos.create(model="tiny", prompt="a kite", size="64x64", extra_body={"num_frames": 6})
    assert info.value.param == "num_frames"
    with pytest.raises(openai.NotFoundError):
        client.videos.create(model="sora-2", prompt="a kite")

    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted) == (video.id, True)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert video.id not in [v.id for v in client.videos.list(limit=100)]
    client.videos.delete(second.id)  # queued or running: cancelled, then removed
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(second.id)


# ---- auth, versions, validation -------------------------------------------------------------------------

def test_health_is_open_everything_else_needs_a_key(serve_app, api):
    with serve_app.client(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").json() == {"status": "ready"}
        assert anonymous.get("/openapi.json").status_code == 200
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/models/tiny/jobs"), ("GET", "/v1/jobs"),
                             ("GET", "/v1/videos")):
            response = anonymous.request(method, path, json=FAST if method == "POST" else None)
            assert_error(response, 401, None, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
    with serve_app.client("not-a-key") as wrong:
        assert_error(wrong.post("/v1/models/tiny/jobs", json=FAST), 401, None, "invalid_api_key")
        assert_error(wrong.get("/v1/jobs"), 401, None, "invalid_api_key")
    with serve_app.client(None, Authorization="Basic azE6") as basic:
        assert_error(basic.get("/v1/jobs"), 401, None)
    assert api.get("/v1/models").json()["data"] == [{"id": "tiny", "object": "model", "owned_by": "wan-dist"}]

    job = create(api, FAST)
    with serve_app.client("k2") as other:  # another key's job does not exist for this key
        assert_error(other.get(f"/v1/jobs/{job['id']}"), 404, "id", "not_found")
        assert_error(other.post(f"/v1/jobs/{job['id']}/cancel"), 404, "id")
        assert job["id"] not in [j["id"] for j in other.get("/v1/jobs").json()["data"]]
    assert wait_status(api, job["id"], "completed")["progress"] == 100


def test_wan_version_header(serve_app, api):
    error = assert_error(api.get("/v1/models", headers={"Wan-Version": "9.9"}), 400, "Wan-Version",
                         "unsupported_version")
    assert "9.9" in error["message"] and "2.2" in error["message"]
    assert_error(api.post("/v1/models/tiny/jobs", json=FAST, headers={"Wan-Version": "2.1"}), 400, "Wan-Version")
    response = api.get("/v1/models", headers={"Wan-Version": "2.2"})
    assert response.status_code == 200 and response.headers["wan-version"] == "2.2"
    assert api.get("/v1/models").headers["wan-version"] == "2.2"  # absent: the current default
    job = create(api, FAST, **{"Wan-Version": "2.2"})
    assert wait_status(api, job["id"], "completed")["status"] == "completed"


@pytest.mark.parametrize("fields, param, code", [
    ({"num_frames": 6}, "num_frames", None),
    ({"num_inference_steps": -1}, "num_inference_steps", None),
    ({"num_inference_steps": 0}, "num_inference_steps", None),
    ({"colour": "red"}, "colour", "unknown_parameter"),
    ({"size": "640x480"}, "size", "unsupported_size"),
    ({"size": "big"}, "size", None),
    ({"prompt": None}, "prompt", None),
    ({"seed": -3}, "seed", None),
    ({"guidance_scale": "loud"}, "guidance_scale", None),
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", None),
    ({"metadata": {"nested": {"a": 1}}}, "metadata.nested", None),
])
def test_bad_fields_are_422_naming_the_field(serve_app, api, fields, param, code):
    body = {k: v for k, v in {**FAST, **fields}.items() if v is not None}
    assert_error(api.post("/v1/models/tiny/jobs", json=body), 422, param, code)


def test_malformed_bodies_and_unknown_models(serve_app, api):
    assert_error(api.post("/v1/models/sora-2/jobs", json=FAST), 404, "model", "model_not_found")
    assert_error(api.post("/v1/models/t2v-a14b/jobs", json=FAST), 404, "model", "model_not_found")  # not run here
    assert_error(api.get("/v1/jobs/job_doesnotexist"), 404, "id", "not_found")
    response = api.post("/v1/models/tiny/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 400, None, "invalid_json")
    assert_error(api.post("/v1/models/tiny/jobs", json=[FAST]), 422, None)
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": "many"}).status_code == 422


# ---- jobs: idempotency, cancel, bounded queue, events ----------------------------------------------------

def test_idempotency_key_same_job_or_409(serve_app, api):
    first = create(api, FAST, **{"Idempotency-Key": "idem-1"})
    again = create(api, FAST, **{"Idempotency-Key": "idem-1"})
    assert again["id"] == first["id"]
    conflict = api.post("/v1/models/tiny/jobs", json={**FAST, "seed": 2}, headers={"Idempotency-Key": "idem-1"})
    assert_error(conflict, 409, "Idempotency-Key", "idempotency_conflict")
    other = create(api, FAST, **{"Idempotency-Key": "idem-2"})
    assert other["id"] != first["id"]
    with serve_app.client("k2") as k2:  # keys are per API key
        assert create(k2, FAST, **{"Idempotency-Key": "idem-1"})["id"] != first["id"]
    wait_status(api, first["id"], "completed")
    assert create(api, FAST, **{"Idempotency-Key": "idem-1"})["id"] == first["id"]  # also once it finished


def test_cancel_queued_and_running_jobs(serve_app, api, holds):
    body = held(holds, "cancel: a fox that never finishes")
    slow = create(api, body)
    holds.wait_reached(body["prompt"])  # in progress, step 1's progress and preview recorded
    queued = create(api, FAST)
    assert (queued["status"], queued["queue_position"]) == ("queued", 0)

    cancelled = api.post(f"/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"  # at once
    again = api.post(f"/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert get(api, queued["id"])["error"]["code"] == "cancelled"

    view = get(api, slow["id"])
    assert view["status"] == "in_progress" and view["progress"] > 0, view
    assert 0 < view["preview"]["step"] < view["preview"]["total"] == HELD["num_inference_steps"]
    image = api.get(f"/v1/jobs/{slow['id']}/preview")  # the latest frame, while it renders
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8"  # a JPEG's start-of-image marker
    response = api.post(f"/v1/jobs/{slow['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] in ("in_progress", "cancelled")
    holds.release(body["prompt"])  # its step control reads the cancel at the held step
    done = wait_status(api, slow["id"], TERMINAL_STATUSES, timeout_s=30)
    assert done["status"] == "cancelled" and done["progress"] < 100 and done["result"] is None
    second = api.post(f"/v1/jobs/{slow['id']}/cancel")
    assert second.status_code == 200 and (second.json()["status"], second.json()["progress"]) == (
        "cancelled", done["progress"])
    assert_error(api.get(f"/v1/jobs/{slow['id']}/content"), 409, "id", "not_ready")
    assert not os.path.exists(os.path.join(serve_app.settings.output, slow["id"], "clip.mp4"))

    after = create(api, FAST)  # the renderer goes on with the next job
    assert wait_status(api, after["id"], "completed")["progress"] == 100


def test_queue_full_is_429_with_retry_after(serve_app, api, holds):
    body = held(holds, "queue: a fox that keeps the renderer busy")
    running = create(api, body)
    holds.wait_reached(body["prompt"])
    queued = [create(api, {**FAST, "seed": i}) for i in range(QUEUE_BOUND)]
    assert [job["queue_position"] for job in queued] == list(range(QUEUE_BOUND))
    full = api.post("/v1/models/tiny/jobs", json=FAST)
    error = assert_error(full, 429, None, "queue_full")
    assert error["type"] == "rate_limit_error"
    assert float(full.headers["retry-after"]) > 0 and full.headers["x-should-retry"] == "true"
    with serve_app.client("k2") as k2:  # the bound is the model's, whoever asks
        assert_error(k2.post("/v1/models/tiny/jobs", json=FAST), 429, None, "queue_full")
    for job in queued:
        assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    accepted = create(api, FAST)  # room again
    api.post(f"/v1/jobs/{running['id']}/cancel")
    holds.release(body["prompt"])
    assert wait_status(api, accepted["id"], "completed")["status"] == "completed"
    assert get(api, running["id"])["status"] == "cancelled"


def test_events_stream_status_progress_and_previews_in_order(serve_app, api, holds):
    import base64
    import io

    from PIL import Image

    ahead = create(api, {**FAST, "num_inference_steps": 6})
    body = held(holds, "events: a fox held while its events are read")
    job = create(api, body)
    total = body["num_inference_steps"]

    def release_once_mid_render_events_were_read(events):  # the render waits at its hold until then
        if any(kind == "preview" for kind, _ in events) and any(
                kind == "progress" and 0 < data["progress"] < 100 for kind, data in events):
            holds.release(body["prompt"])

    events = read_sse(api, f"/v1/jobs/{job['id']}/events", on_event=release_once_mid_render_events_were_read)
    assert holds.reached(body["prompt"])["step"] == HOLD_STEP
    assert get(api, ahead["id"])["status"] == "completed"
    kinds = [kind for kind, _ in events]
    assert set(kinds) <= {"status", "progress", "preview"} and kinds[0] == kinds[-1] == "status"
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses == ["queued", "in_progress", "completed"], statuses
    progress = [data["progress"] for kind, data in events if kind != "preview"]
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(kind == "progress" and 0 < data["progress"] < 100 for kind, data in events), events
    assert events[-1][1]["result"]["clip"] == f"{job['id']}/clip.mp4"  # relative: no server path for a tenant
    assert all(data["id"] == job["id"] for _, data in events)
    assert_clip(api.get(f"/v1/jobs/{job['id']}/content").content)

    # previews: only while rendering, steps rising, each a JPEG of the clip's size
    started = kinds.index("status", 1)
    previews = [(i, data) for i, (kind, data) in enumerate(events) if kind == "preview"]
    assert previews and all(started < i < len(events) - 1 for i, _ in previews), kinds
    steps = [data["step"] for _, data in previews]
    assert steps == sorted(set(steps)) and 0 < steps[0] and steps[-1] < total
    assert {data["total"] for _, data in previews} == {total}
    for _, data in previews:
        prefix, encoded = data["image"].split(",", 1)
        assert prefix == "data:image/jpeg;base64"
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (64, 64)
    finished = api.get(f"/v1/jobs/{job['id']}/preview")  # the render ended: no preview, and its file is gone
    assert_error(finished, 409, "id", "not_ready")
    assert get(api, job["id"])["preview"] is None
    assert not os.path.exists(os.path.join(serve_app.settings.output, "_previews", f"{job['id']}.jpg"))


# ---- webhooks --------------------------------------------------------------------------------------------

def test_webhooks_are_signed_retried_and_recorded(serve_app, api, holds):
    with WebhookReceiver(SECRET) as receiver:
        hook = {"webhook_url": receiver.url, "metadata": {"order": "42"}}
        body = held(holds, "webhooks: a fox cancelled before it can finish")
        to_cancel = create(api, {**body, **hook})
        completed = create(api, {**FAST, **hook})
        late = create(api, {**FAST, **hook, "deadline_s": 0.001})
        assert api.post(f"/v1/jobs/{to_cancel['id']}/cancel").status_code == 200
        holds.release(body["prompt"])  # cancelled while queued, or its control reads the cancel at the hold
        expected = {to_cancel["id"]: "job.cancelled", completed["id"]: "job.completed", late["id"]: "job.failed"}

        def delivered():  # each event: answered 500 once, then delivered again under the same webhook-id
            return all(sorted(c for _, c, _ in receiver.events(j)) == [200, 500] for j in expected)

        wait_for(delivered, 60, what="every event delivered after a 500")
        assert receiver.errors == []  # every delivery verified with standardwebhooks
        for job_id, event in expected.items():
            attempts = receiver.events(job_id)
            assert [(c, t) for _, c, t in attempts] == [(500, event), (200, event)]
            assert attempts[0][0] == attempts[1][0]  # same webhook-id on the retry
            payload = next(p for m, _, p in receiver.requests if p["data"]["id"] == job_id)
            assert payload["data"]["metadata"] == {"order": "42"}
            job = wait_for(lambda: (j := get(api, job_id))["webhook"].get("deliveries", {}).get(event, {})
                           .get("status") == "delivered" and j, 10, what=f"{event} delivery state on {job_id}")
            state = job["webhook"]["deliveries"][event]
            assert (state["attempts"], state["last_status_code"], state["msg_id"]) == (2, 200, attempts[0][0])
        assert get(api, late["id"])["error"]["code"] == "timeout"
        assert get(api, completed["id"])["status"] == "completed"


def test_progress_webhooks_when_asked(serve_app, api, holds):
    with WebhookReceiver(SECRET) as receiver:
        body = held(holds, "webhooks: a fox whose progress is delivered")
        job = create(api, {**body, "webhook_url": receiver.url, "progress_webhooks": True})
        # held mid-render until a progress event was delivered: the job cannot end before it has one
        wait_for(lambda: any(c == 200 and t == "job.progress" for _, c, t in receiver.events(job["id"])), 60,
                 what="a progress event delivered mid-render")
        holds.release(body["prompt"])
        quiet = create(api, {**FAST, "webhook_url": receiver.url})  # no progress asked: terminal event only
        wait_for(lambda: {t for _, c, t in receiver.events(job["id"]) if c == 200} == {"job.progress", "job.completed"}
                 and any(c == 200 for _, c, _ in receiver.events(quiet["id"])), 60,
                 what="progress and completion delivered")
        assert receiver.errors == []
        progress = [(m, c, p["data"]["progress"]) for m, c, p in receiver.requests
                    if p["data"]["id"] == job["id"] and p["type"] == "job.progress"]
        values = [value for _, code, value in progress if code == 500]  # first deliveries, in arrival order
        assert values and all(0 <= v < 100 for v in values) and len(set(values)) == len(values), progress
        assert {m for m, c, _ in progress if c == 200} == {m for m, c, _ in progress if c == 500}  # each retried
        assert [t for _, _, t in receiver.events(quiet["id"])] == ["job.completed", "job.completed"]
        deliveries = wait_status(api, job["id"], "completed")["webhook"]["deliveries"]
        assert {e for e in deliveries if e.startswith("job.progress.")} == {f"job.progress.{v}" for v in values}


def test_private_webhook_urls_are_refused_unless_allowed(tmp_path):
    """SSRF: the module's app allows private URLs (its receiver is on 127.0.0.1); a default app refuses them.
    This one runs the same FastAPI app in process, without Serve or a renderer."""
    from fastapi.testclient import TestClient

    from wan_dist.serve.app import ServeState, create_app

    settings = ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             auth=AuthSettings(api_keys=KEYS), webhooks=WebhookSettings(secret=SECRET))
    state = ServeState(settings, notify=False)
    try:
        with TestClient(create_app(settings, state=lambda: state), headers={"Authorization": "Bearer k1"}) as client:
            for url in ("http://127.0.0.1:9/hook", "http://localhost:8080/hook", "http://10.1.2.3/hook",
                        "http://169.254.169.254/latest/meta-data", "http://[::1]/hook"):
                response = client.post("/v1/models/tiny/jobs", json={**FAST, "webhook_url": url})
                assert_error(response, 422, "webhook_url", "unsafe_url")
            image = client.post("/v1/videos", json={**FAST, "model": "tiny-i2v", "image": "http://127.0.0.1/a.png"})
            assert_error(image, 422, "image", "unsafe_url")
            loras = [{"path": "s3://loras/ok.safetensors"}, {"path": "http://10.0.0.7/lora.safetensors"}]
            lora = client.post("/v1/models/tiny/jobs", json={**FAST, "loras": loras})
            assert_error(lora, 422, "loras[1].path", "unsafe_url")  # LoRA URLs follow the image rules
            logo = client.post("/v1/models/tiny/jobs", json={**FAST, "renditions": ["youtube"], "overlays": {
                "logo": {"image": "http://169.254.169.254/logo.png"}}})
            assert_error(logo, 422, "overlays.logo.image", "unsafe_url")  # and so do logos
        assert state.store.count() == 0  # nothing refused was persisted
    finally:
        state.close()


# ---- durability ------------------------------------------------------------------------------------------

def test_killed_renderer_job_is_rerun_after_its_lease(serve_app, api, store, holds):
    import ray
    from ray._private.state import actors  # the GCS's actor table (ray.util.state needs the dashboard)

    body = held(holds, "kill: a fox whose renderer dies mid-render")
    job = create(api, body)
    rank = holds.wait_reached(body["prompt"])  # the render waits at a step: it cannot finish before the kill
    first_owner = store.get(job["id"]).lease_owner
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "renderer-tiny" in a["name"]]
    assert len(replicas) == 1, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    # the replica's rank actors die with it: nothing of the first attempt can finish the job later
    wait_for(lambda: actors(actor_id=rank["actor_id"])["State"] == "DEAD", 60,
             what="the killed replica's result rank to die with it")
    holds.release(body["prompt"])
    done = wait_status(api, job["id"], TERMINAL_STATUSES, timeout_s=90)  # Serve starts a new replica
    assert done["status"] == "completed", done
    record = store.get(job["id"])
    assert record.attempts == 2 and record.lease_owner is None
    assert record.result["clip_uri"].endswith(f"{job['id']}/clip.mp4") and first_owner
    assert_clip(api.get(f"/v1/jobs/{job['id']}/content").content)
    wait_for(lambda: api.get("/readyz").status_code == 200, 60, what="the new renderer to be ready")


def test_restart_of_the_app_loses_no_job(serve_app, api, store, holds):
    settings = serve_app.settings
    body = held(holds, "restart: a fox rendering while the app stops")
    running = create(api, body)
    holds.wait_reached(body["prompt"])  # still rendering when the app stops
    ids = [running["id"]] + [create(api, {**FAST, "num_inference_steps": 60, "seed": 10 + i})["id"]
                             for i in range(QUEUE_BOUND)]
    before = store.count()

    serve_app.stop()  # the Serve app is gone; its jobs are not
    left = {job_id: store.get(job_id).status for job_id in ids}
    assert left[running["id"]] in ACTIVE_STATUSES, left
    serve_app.start(settings)

    wait_for(lambda: all(store.get(job_id).terminal for job_id in ids), 120, interval_s=0.25,
             what="every job accepted before the restart to finish")
    assert store.count() == before  # none lost, none duplicated
    for job_id in ids:
        job = get(api, job_id)
        assert job["status"] == "completed", job
        if left[job_id] == "queued":  # rendered once, by the new renderer
            assert store.get(job_id).attempts == 1
        folder = os.path.join(settings.output, job_id)
        assert sorted(os.listdir(folder)) == ["clip.json", "clip.mp4"], os.listdir(folder)  # published once
        assert job["result"]["clip"] == f"{job_id}/clip.mp4"
    assert_clip(api.get(f"/v1/jobs/{ids[-1]}/content").content)
    listed = [j["id"] for j in api.get("/v1/jobs", params={"limit": 100}).json()["data"]]
    assert len(listed) == len(set(listed)) and set(ids) <= set(listed)


def test_batch_results_link_each_clip_through_the_api_when_the_store_has_no_http_urls(serve_app, api):
    """The app's output is a local folder: a remote client cannot open its paths, so each row's clip_url is the
    API's own URL, downloaded with the caller's key (and no one else's)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"local-{i}", "prompt": f"a paper lantern number {i}", "num_frames": 5, "width": 64,
             "height": 64, "num_inference_steps": 2, "seed": i} for i in range(2)]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    created = api.post("/v1/batches", files={"manifest": ("m.parquet", sink.getvalue(), "application/octet-stream")})
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    wait_for(lambda: api.get(f"/v1/batches/{batch_id}").json()["status"] == "completed", 120,
             what="the batch to complete")
    results = api.get(f"/v1/batches/{batch_id}/results").json()["data"]
    assert [r["id"] for r in results] == ["local-0", "local-1"]
    for record in results:
        assert record["clip_url"] == f"{serve_app.base_url}/v1/batches/{batch_id}/clips/{record['id']}"
        assert_clip(api.get(record["clip_url"]).content)
        assert httpx.get(record["clip_url"], timeout=30, trust_env=False).status_code == 401  # needs a key
        with serve_app.client("k2") as other:
            assert other.get(record["clip_url"]).status_code == 404  # another key's batch
    assert_error(api.get(f"/v1/batches/{batch_id}/clips/no-such-row"), 404, "row_id")


def test_a_long_clip_and_a_storyboard_render_through_the_api(serve_app, api, holds):
    # issue 17: 21 frames in 9-frame windows (3 windows); a storyboard of two shots joined by a crossfade
    long = create(api, {**FAST, "prompt": "a fox walks a long way", "num_frames": 21,
                        "long": {"window": 9, "overlap": 1}, "renditions": ["instagram_feed"]})
    # the storyboard is held at its second window's first step (2 steps a window): the job says where it is
    first = holds.plan("a fox in the snow, then by a river", FAST["num_inference_steps"] + 1)
    shots = [{"prompt": first, "duration_s": 0.5},
             {"prompt": "a fox by a river", "duration_s": 0.5, "transition": "crossfade"}]
    board = create(api, {**{k: v for k, v in FAST.items() if k != "num_frames"}, "prompt": first, "shots": shots})
    holds.wait_reached(first)
    held_job = get(api, board["id"])
    window = held_job["window"]
    assert (window["index"], window["shot"], window["shots"]) == (2, 2, 2) and window["count"] >= 2, window
    # previews stream across windows: steps count over the whole clip
    assert held_job["preview"] is not None and held_job["preview"]["total"] == window["count"] * 2, held_job
    assert api.get(f"/v1/jobs/{board['id']}/preview").headers["content-type"] == "image/jpeg"
    holds.release(first)
    for job, frames in ((long, 21), (board, 17)):  # a storyboard is 1 + 8 + 8 frames (0.5 s each at 16 fps)
        done = wait_status(api, job["id"], "completed", 120)
        assert done["progress"] == 100 and done["window"] is None  # a window is shown while it renders
        assert_clip(api.get(f"/v1/jobs/{job['id']}/content").content, frames=frames)
        if job is long:  # its rendition, cut window by window, listed and downloaded like a one-window clip's
            (rendition,) = done["result"]["renditions"]
            assert rendition["profile"] == "instagram_feed"
            video, _ = decode_mp4(api.get(rendition["url"]).content)
            (profile,) = parse_renditions(["instagram_feed"])
            assert video.shape[1:3] == (profile.height, profile.width)
    assert_error(api.post("/v1/models/tiny/jobs", json={**FAST, "shots": [{**shots[0], "transition": "whip"}]}),
                 422, "shots[0].transition")
