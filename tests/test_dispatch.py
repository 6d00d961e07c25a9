"""engine.dispatch: the path the batch runner and the Serve renderers share to a render group (hold it, settle a
call, rebuild a broken group once, retry with backoff), on a one-rank group of the tiny model on a local Ray."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from wan_dist.config import OutputConfig, SamplingConfig
from wan_dist.engine.control import StopRender
from wan_dist.engine.dispatch import GroupHolder, RetryPolicy, render_once, settle
from wan_dist.engine.group import GroupConfig
from wan_dist.engine.rank_calls import Generate
from wan_dist.engine.render import RenderRequest

REQUEST = RenderRequest(prompt="a kite over a beach", seed=11, height=32, width=32, num_frames=5,
                        sampling=SamplingConfig(num_inference_steps=2), name="kite")


@dataclass(frozen=True)
class StopAt:
    """A step control that stops the render at ``step`` (it runs on the result rank)."""

    step: int
    reason: str = "cancelled"

    def __call__(self, step: int, total: int) -> None:
        if step == self.step:
            raise StopRender(self.reason)


def test_retry_policy_backs_off_exponentially_with_jitter_and_gives_up():
    policy = RetryPolicy(max_attempts=4, backoff_s=2.0)
    for attempts in (1, 2, 3):
        delays = [policy.delay(attempts) for _ in range(200)]
        base = 2.0 * 2 ** (attempts - 1)
        assert all(0.5 * base <= d < 1.5 * base for d in delays)
        assert len(set(delays)) > 100  # jittered: failed rows do not all come back at once
    assert policy.delay(4) is None  # the fourth failure was the last try
    assert policy.delay(1, permanent=True) is None  # bad input: a retry cannot help


@pytest.fixture(scope="module")
def holder(ray_local):
    held = GroupHolder.start(GroupConfig(source="tiny", cpus_per_rank=0.5))
    yield held
    held.shutdown()


@pytest.mark.slow
def test_a_request_renders_fails_on_bad_input_and_stops_on_its_control(holder, tmp_path):
    out = OutputConfig(uri=str(tmp_path))
    assert holder.record["variant"] == "tiny" and holder.record == holder.group.model_record("tiny")
    done = render_once(holder, REQUEST, out)
    assert done.ok and done.value.status == "completed" and (tmp_path / "kite" / "clip.mp4").stat().st_size > 0

    bad = render_once(holder, RenderRequest(prompt="a kite", seed=1, height=30, width=32, num_frames=5,
                                            sampling=SamplingConfig(num_inference_steps=2)), out)
    assert not bad.ok and bad.permanent and "height" in bad.error and isinstance(bad.cause, ValueError)

    stopped = render_once(holder, REQUEST, out, StopAt(1, "lease_lost"))
    assert stopped.stopped is not None and stopped.stopped.reason == "lease_lost" and stopped.error is None
    call = holder.group.submit(Generate(REQUEST))
    frames = settle(holder.group, call).value.frames  # the group rendered on after all three
    assert frames.shape == (1, 5, 32, 32, 3)
    assert holder.generation == 1  # none of that broke the group


@pytest.mark.slow
def test_a_broken_group_is_rebuilt_once_for_everybody_who_saw_it_and_renders_again(holder, tmp_path):
    import ray

    generation = holder.generation
    ray.kill(holder.group.workers[0], no_restart=True)
    broken = render_once(holder, REQUEST, OutputConfig(uri=str(tmp_path)))
    assert broken.broken is not None and "a rank failed" in broken.broken
    assert holder.generation == generation + 1 and holder.group.workers  # rebuilt before render_once returned

    # two feeders (a renderer's job and batch threads) that both saw generation g+1 break: one rebuild
    ray.kill(holder.group.workers[0], no_restart=True)
    seen = holder.generation
    settled = settle(holder.group, holder.group.submit(Generate(REQUEST)))
    assert settled.broken is not None
    threads = [threading.Thread(target=holder.rebuild, args=(seen,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert holder.generation == seen + 1
    holder.rebuild(seen)  # a late caller with the old generation finds it rebuilt already
    assert holder.generation == seen + 1
    again = render_once(holder, REQUEST, OutputConfig(uri=str(tmp_path / "again")))
    assert again.ok and again.value.status == "completed"


@pytest.mark.slow
def test_a_renderer_whose_group_breaks_under_a_job_rebuilds_it_and_the_job_completes(ray_local, tmp_path, holds):
    """The Serve renderer on the same path: the job's attempt ends with the broken group, the renderer's holder
    rebuilds it, and the JobWorker's retry renders the job on the new group."""
    import ray

    from serve_fixtures import wait_for
    from step_holds import HOOK
    from wan_dist.config import GroupSpec
    from wan_dist.serve.jobs import Job
    from wan_dist.serve.renderer import RendererCore
    from wan_dist.serve.schemas import validate_job_request
    from wan_dist.serve.settings import JobSettings, RendererSettings, ServeSettings
    from wan_dist.serve.stores import open_store

    settings = ServeSettings(models=("tiny",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             jobs=JobSettings(lease_s=600.0),
                             renderer=RendererSettings(group=GroupSpec(cpus_per_rank=0.5, step_hook=HOOK)))
    body = {"prompt": holds.plan("dispatch: a fox whose group breaks", 1), "num_frames": 5, "size": "64x64",
            "num_inference_steps": 3, "seed": 4}
    with open_store(settings.store) as store:
        job, _ = store.create(Job.new(model="tiny", owner="k",
                                      request=validate_job_request(body, variant="tiny").record()))
        renderer = RendererCore(settings, "tiny").start()
        try:
            holds.wait_reached(body["prompt"])  # mid-render on the group's only rank
            ray.kill(renderer.holder.group.workers[0], no_restart=True)
            holds.release(body["prompt"])
            done = wait_for(lambda: (j := store.get(job.id)).terminal and j, 180, interval_s=0.25, what="the retry")
            assert (done.status, done.attempts) == ("completed", 2), (done.status, done.attempts, done.error)
            assert renderer.holder.generation == 2  # rebuilt once
        finally:
            renderer.stop()
