"""Renderer autoscaling on a running Serve app (local Ray, tiny model, the object-store job backend): no renderer
while nothing is queued, replicas up to the bound while jobs wait, back to zero when the queue is empty, and no
job rendered twice or charged an extra attempt when Serve stops a replica (a stopped renderer hands its running
job back)."""

from __future__ import annotations

import pytest

from serve_fixtures import APP_NAME, ServeApp, free_port, wait_for
from step_holds import HOOK
from wan_dist.config import GroupSpec
from wan_dist.serve.autoscale import RendererAutoscaling
from wan_dist.serve.settings import AuthSettings, JobSettings, LimitSettings, RendererSettings, ServeSettings
from wan_dist.serve.stores import open_store

pytestmark = pytest.mark.slow

JOB = {"prompt": "a fox in the snow", "num_frames": 5, "size": "64x64", "num_inference_steps": 6}


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    deployment = app.deployments.get("renderer-tiny") if app else None
    return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("autoscale")
    # the object-store backend (JSON objects in a folder): the API, both renderers and Serve's controller all
    # write or read it from their own processes (compare-and-swap writes)
    scaling = RendererAutoscaling(min_replicas=0, max_replicas=2, jobs_per_replica=1, upscale_delay_s=0,
                                  downscale_delay_s=2, refresh_s=0.2)
    settings = ServeSettings(models=("tiny",), store=(root / "store").as_uri(), output=str(root / "out"),
                             auth=AuthSettings(api_keys=("k1",)), limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             jobs=JobSettings(lease_s=30.0),
                             renderer=RendererSettings(autoscaling=scaling,
                                                       group=GroupSpec(cpus_per_rank=0.5, step_hook=HOOK)))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeApp(port).start(settings)
    finally:
        serve.shutdown()


def test_renderers_follow_the_queue_from_zero_to_the_bound_and_back(app, holds):
    assert running_replicas() == 0  # ready without a renderer: nothing is queued
    prompts = [holds.plan(f"autoscale: fox number {seed}", 2) for seed in range(3)]  # each held at step 2
    with app.client("k1") as client, open_store(app.settings.store) as store:
        ids = []
        for seed, prompt in enumerate(prompts):
            response = client.post("/v1/models/tiny/jobs", json={**JOB, "prompt": prompt, "seed": seed})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        wait_for(lambda: running_replicas() == 2, 120, interval_s=0.25, what="two renderer replicas")
        # two jobs render at once, on two replicas (held mid-render until both are seen): a job is in progress
        # from its claim, before its render reaches the hold, so wait for the holds themselves
        wait_for(lambda: sum(holds.reached(p) is not None for p in prompts) == 2, 120, interval_s=0.05,
                 what="two renders held at once")
        held = [i for i, p in zip(ids, prompts) if holds.reached(p) is not None]
        assert len({store.get(i).lease_owner for i in held}) == 2  # on two renderers
        assert all(store.get(i).status == "in_progress" for i in held)
        holds.release_all()
        wait_for(lambda: all(store.get(i).terminal for i in ids), 180, interval_s=0.25, what="every job to finish")
        jobs = [store.get(i) for i in ids]
        assert [(j.status, j.attempts) for j in jobs] == [("completed", 1)] * 3, [(j.status, j.attempts, j.error)
                                                                                  for j in jobs]
        wait_for(lambda: running_replicas() == 0, 60, interval_s=0.25, what="the renderers to scale back to zero")
        assert client.get("/readyz").status_code == 200


def test_a_stopped_renderer_hands_its_running_job_back_at_once(ray_local, tmp_path, holds):
    """What Serve's scale-down does to a busy replica (RendererCore.stop, from the replica's destructor), in
    process: the job goes back to the queue well before its lease would run out, uncharged, and the next
    renderer completes it on its first counted attempt."""
    import threading

    from wan_dist.serve.jobs import Job
    from wan_dist.serve.renderer import RendererCore
    from wan_dist.serve.schemas import validate_job_request

    settings = ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             jobs=JobSettings(lease_s=600.0),
                             renderer=RendererSettings(group=GroupSpec(cpus_per_rank=0.5, step_hook=HOOK)))
    with open_store(settings.store) as store:
        body = {**JOB, "prompt": holds.plan("hand back: a fox whose renderer stops", 2), "seed": 3}
        request = validate_job_request(body, variant="tiny").record()
        job, _ = store.create(Job.new(model="tiny", owner="k", request=request))
        first = RendererCore(settings, "tiny").start()
        stopper = threading.Thread(target=first.stop, kwargs={"timeout_s": 60})
        try:
            holds.wait_reached(body["prompt"])  # mid-render
            holder = store.get(job.id).lease_owner
            stopper.start()
            # back in the queue at once (not after the 600 s lease), while the first render still waits
            back = wait_for(lambda: (j := store.get(job.id)).status == "queued" and j, 60, interval_s=0.05,
                            what="the job handed back")
        finally:
            holds.release(body["prompt"])  # the first render goes on: it must not record its outcome
            if stopper.ident is None:  # the test failed before stopping it
                stopper.start()
            stopper.join(120)
        assert not stopper.is_alive()
        assert (back.status, back.attempts, back.lease_owner) == ("queued", 0, None), back
        assert store.get(job.id).status == "queued" and store.get(job.id).result is None
        assert holder == first.worker.worker_id
        second = RendererCore(settings, "tiny", lease_s=600.0).start()
        try:
            done = wait_for(lambda: (j := store.get(job.id)).terminal and j, 180, interval_s=0.25, what="the rerun")
        finally:
            second.stop()
        assert (done.status, done.attempts) == ("completed", 1), done
