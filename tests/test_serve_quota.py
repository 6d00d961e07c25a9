"""Admission rules of the API, run in process (the FastAPI app on a TestClient, no Serve and no renderer, so
accepted jobs stay queued): the per-key quota of active jobs, the model's queue bound, and an idempotent
replay that must get its job back even when the quota or the queue is full.
"""

from __future__ import annotations

import pytest

from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings

KEYS = ("k1", "k2")
BODY = {"prompt": "a fox in the snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}


@pytest.fixture
def app(tmp_path):
    from fastapi.testclient import TestClient

    from wan_dist.serve.app import ServeState, create_app

    settings = ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             auth=AuthSettings(api_keys=KEYS),
                             limits=LimitSettings(rate_per_s=1000.0, burst=1000, max_active_per_key=3,
                                                  max_queue_per_model=5))
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
