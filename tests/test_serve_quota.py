"""Admission rules of the API, run in process (the FastAPI app on a TestClient, no Serve and no renderer, so
accepted jobs stay queued): the per-key quota of active jobs, the model's queue bound, the per-key budget of
batch steps, and an idempotent replay that must get its job back even when the quota or the queue is full.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wan_dist.serve.settings import AuthSettings, BatchSettings, LimitSettings, ServeSettings

KEYS = ("k1", "k2")
STEP_BUDGET = 40  # denoising steps a key's unfinished batches may hold
BODY = {"prompt": "a fox in the snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}


@pytest.fixture
def app(tmp_path):
    from fastapi.testclient import TestClient

    from wan_dist.serve.app import ServeState, create_app

    settings = ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             auth=AuthSettings(api_keys=KEYS),
                             limits=LimitSettings(rate_per_s=1000.0, burst=1000, max_active_per_key=3,
                                                  max_queue_per_model=5),
                             batches=BatchSettings(max_steps_per_key=STEP_BUDGET))
    state = ServeState(settings, notify=False)
    clients = {key: TestClient(create_app(settings, state=lambda: state), headers={"Authorization": f"Bearer {key}"})
               for key in KEYS}
    try:
        yield state, clients
    finally:
        for client in clients.values():
            client.close()
        state.close()


def post(client, seed: int, **headers):
    return client.post("/v1/models/tiny/jobs", json={**BODY, "seed": seed}, headers=headers)


def assert_429(response, code: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    assert float(response.headers["retry-after"]) > 0 and response.headers["x-should-retry"] == "true"


def test_a_key_past_its_active_quota_gets_429_and_other_keys_do_not(app):
    state, clients = app
    k1, k2 = clients["k1"], clients["k2"]
    accepted = [post(k1, seed, **{"Idempotency-Key": f"job-{seed}"}) for seed in range(3)]
    assert [r.status_code for r in accepted] == [202] * 3
    assert_429(post(k1, 10), "too_many_jobs")
    assert_429(post(k1, 11, **{"Idempotency-Key": "new-key"}), "too_many_jobs")  # a new key is a new job
    # a replay of an accepted create is not a new job: it gets that job back, quota or not
    replay = post(k1, 1, **{"Idempotency-Key": "job-1"})
    assert replay.status_code == 202 and replay.json()["id"] == accepted[1].json()["id"]
    assert post(k2, 20).status_code == 202  # the quota is per key
    assert state.store.count(owner=state.store.get(accepted[0].json()["id"]).owner) == 3

    # a cancelled job is no longer active: room for exactly one more
    assert k1.post(f"/v1/jobs/{accepted[0].json()['id']}/cancel").json()["status"] == "cancelled"
    assert post(k1, 12).status_code == 202
    assert_429(post(k1, 13), "too_many_jobs")


def test_the_queue_bound_is_the_models_and_a_replay_passes_it(app):
    state, clients = app
    k1, k2 = clients["k1"], clients["k2"]
    first = post(k1, 0, **{"Idempotency-Key": "a"})
    for seed in range(1, 3):
        assert post(k1, seed).status_code == 202
    for seed in range(3, 5):
        assert post(k2, seed).status_code == 202
    assert state.store.count(status="queued") == 5
    assert_429(post(k2, 5), "queue_full")
    replay = post(k1, 0, **{"Idempotency-Key": "a"})
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    conflict = post(k1, 99, **{"Idempotency-Key": "a"})  # same key, other body: a conflict, not a full queue
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    assert state.store.count() == 5


def upload_batch(client, rows: list[dict], **headers):
    import tempfile

    from wan_dist.batch.manifest import write_manifest

    with tempfile.TemporaryDirectory() as folder:
        write_manifest(rows, f"{folder}/m.parquet")
        data = Path(folder, "m.parquet").read_bytes()
    files = {"manifest": ("m.parquet", data, "application/vnd.apache.parquet")}
    return client.post("/v1/batches", files=files, headers=headers)


def test_a_keys_batches_hold_at_most_its_step_budget(app):
    """batches.max_steps_per_key: each valid row costs its steps times its windows; bad rows cost nothing."""
    state, clients = app
    k1, k2 = clients["k1"], clients["k2"]
    row = {"model": "tiny", "num_frames": 5, "num_inference_steps": 4}
    five = [{**row, "id": f"r{i}", "prompt": f"a kite {i}"} for i in range(5)]  # 5 rows x 4 steps = 20
    first = upload_batch(k1, five, **{"Idempotency-Key": "b1"})
    assert first.status_code == 202, first.text
    assert state.store.get(first.json()["id"]).request["steps"] == 20
    # a long clip of 3 windows (9-frame windows sharing a latent frame: 21 frames) at 4 steps costs 12
    long = [{**row, "id": "long", "prompt": "a long kite", "num_frames": 21,
             "long": '{"window": 9, "overlap": 1}'}, {"id": "bad", "prompt": "x", "num_frames": 6}]
    second = upload_batch(k1, long)
    assert second.status_code == 202, second.text
    assert state.store.get(second.json()["id"]).request["steps"] == 12  # the bad row fails alone, costs nothing
    assert_429(upload_batch(k1, five), "step_budget")  # 20 + 12 + 20 > 40
    replay = upload_batch(k1, five, **{"Idempotency-Key": "b1"})  # a replay is not a new batch
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    # nor a new upload: the first batch's manifest stays, the refused one and the replay's copy are gone
    uploads = sorted(p.name for p in (Path(state.settings.output) / "_uploads").iterdir())
    kept = sorted(Path(state.store.get(r.json()["id"]).request["manifest_uri"]).name for r in (first, second))
    assert uploads == kept
    assert upload_batch(k2, five).status_code == 202  # the budget is per key
    too_big = upload_batch(k2, [{**row, "id": "r0", "prompt": "a kite", "num_inference_steps": 50}])  # never fits
    assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "over_budget", too_big.text
    # a cancelled batch no longer holds its steps
    assert k1.post(f"/v1/batches/{first.json()['id']}/cancel").status_code == 200
    assert upload_batch(k1, five).status_code == 202
