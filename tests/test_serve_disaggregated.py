"""A Serve renderer whose render group is split into disaggregated expert stages (high-noise steps on rank 0,
low-noise steps and the decode on rank 1) reports progress, sends previews and cancels between steps on either
stage, as the colocated layouts do (tests/test_serve_api.py). Renders are held at a step with the test step hook
(tests/step_holds.py) while the test looks at the job and cancels it, so nothing races the render."""

from __future__ import annotations

import os

import pytest

from serve_fixtures import ServeApp, free_port, settle
from step_holds import HOOK
from test_serve_api import assert_clip, create, get, wait_status
from wan_dist.config import GroupSpec, ParallelConfig
from wan_dist.serve.settings import (AuthSettings, JobSettings, LimitSettings, PreviewSettings, RendererSettings,
                                     ServeSettings)
from wan_dist.serve.stores import open_store

pytestmark = pytest.mark.slow

STEPS = 8
BODY = {"num_frames": 5, "num_inference_steps": STEPS, "size": "64x64", "seed": 3}
HOLD_MIN_S = 0.6  # more than the store control's 0.5 s throttle: it runs again at the held step (reads a cancel)


def _boundary() -> int:
    """How many of a job's STEPS the high-noise expert (stage 0) runs: the pipeline's own step plan."""
    import torch

    from wan_dist import load_pipeline

    pipe = load_pipeline("tiny", dtype=torch.float32)
    settings = pipe.resolve("a fox", height=64, width=64, num_frames=5, num_inference_steps=STEPS, seed=3)
    return sum(1 for plan in pipe.step_plan(settings)[1] if plan.expert == 0)


@pytest.fixture(scope="module")
def serve_app(ray_local, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve-disaggregated")
    group = GroupSpec(parallel=ParallelConfig(ulysses=2, placement="disaggregated"), cpus_per_rank=0.5,
                      step_hook=HOOK)
    settings = ServeSettings(models=("tiny",), store=str(root / "jobs.db"), output=str(root / "out"),
                             allow_private_urls=True, auth=AuthSettings(api_keys=("k1",)),
                             limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             jobs=JobSettings(poll_after_ms=100, lease_s=30.0), previews=PreviewSettings(every_s=0.2),
                             renderer=RendererSettings(group=group))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ServeApp(port)
    try:
        app.start(settings, timeout_s=300)
        yield app
    finally:
        serve.shutdown()


@pytest.fixture
def api(serve_app, holds):
    with open_store(serve_app.settings.store) as store, serve_app.client("k1") as client:
        yield client
        settle(store, holds, 120)


def _held_job(api, holds, prompt: str, step: int) -> tuple[dict, dict]:
    """A job held at ``step``: (the job as created, the hold's note once the render waits there)."""
    job = create(api, {**BODY, "prompt": holds.plan(prompt, step, min_s=HOLD_MIN_S)})
    return job, holds.wait_reached(prompt)


def _cancel_while_held(api, holds, job: dict, prompt: str) -> dict:
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    holds.release(prompt)  # the job's control reads the cancel at the held step, on the stage that holds it
    done = wait_status(api, job["id"], ("cancelled", "completed", "failed"), timeout_s=120)
    assert done["status"] == "cancelled" and done["progress"] < 100 and done["result"] is None, done
    return done


def test_progress_previews_and_cancel_on_either_stage_then_the_group_renders_on(serve_app, api, holds):
    boundary = _boundary()
    assert 2 <= boundary <= STEPS - 2  # both holds below sit on the stage they name

    # held at step 2, on the high-noise stage: step 1's progress and preview came from stage 0's leader
    high_prompt = "disaggregated: a fox held on the high-noise stage"
    high, high_note = _held_job(api, holds, high_prompt, 2)
    view = get(api, high["id"])
    assert view["status"] == "in_progress" and view["progress"] > 0, view
    assert view["preview"]["step"] == 1 and view["preview"]["total"] == STEPS
    image = api.get(f"/v1/jobs/{high['id']}/preview")
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"  # a JPEG
    _cancel_while_held(api, holds, high, high_prompt)

    # held after the boundary, on the low-noise stage: the progress and preview of the step before it came from
    # stage 1's leader, another process than the one that held the first job
    low_prompt = "disaggregated: a fox held on the low-noise stage"
    low, low_note = _held_job(api, holds, low_prompt, boundary + 2)
    assert low_note["pid"] != high_note["pid"] and low_note["actor_id"] != high_note["actor_id"]
    view = get(api, low["id"])
    assert view["progress"] >= round(100 * (boundary + 1) / STEPS) - 1, view
    assert view["preview"]["step"] == boundary + 1, view
    _cancel_while_held(api, holds, low, low_prompt)
    for job in (high, low):
        assert not os.path.exists(os.path.join(serve_app.settings.output, job["id"], "clip.mp4"))

    # both stages are still in step: the next job renders whole
    done = wait_status(api, create(api, {**BODY, "prompt": "disaggregated: a fox that finishes",
                                         "num_inference_steps": 2})["id"], "completed", timeout_s=120)
    assert done["progress"] == 100
    assert_clip(api.get(f"/v1/jobs/{done['id']}/content").content)
