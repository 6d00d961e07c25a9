"""Step controls on Ray render groups: observe every denoising step on the result rank, stop every rank
between two steps, keep the group usable; render groups inside the caller's placement group."""

from __future__ import annotations

import pickle
import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from wan_dist.config import OutputConfig, ParallelConfig, SamplingConfig
from wan_dist.engine.control import STOP_CODES, StopRender, make_step_callback, stop_code, stop_reason
from wan_dist.engine.group import GroupConfig, RenderGroup, RequestFailed
from wan_dist.engine.rank_calls import Generate, Render
from wan_dist.engine.render import RenderRequest

STEPS = 4
REQUEST = RenderRequest(prompt="a kite over a beach", seed=11, height=48, width=80, num_frames=9,
                        sampling=SamplingConfig(num_inference_steps=STEPS), name="kite")
NEXT = RenderRequest(prompt="a red fox in snow", seed=12, height=48, width=80, num_frames=9,
                     sampling=SamplingConfig(num_inference_steps=2), name="fox")


@dataclass(frozen=True)
class RecordingControl:
    """Appends ``"<actor id> <step> <total>"`` to ``path`` per call (it runs in a rank's process) and
    raises StopRender(reason) at step ``stop_at``."""

    path: str
    stop_at: int | None = None
    reason: str = "cancelled"

    def __call__(self, step: int, total: int) -> None:
        import ray

        # outside Ray (a test calling it directly) asking for the runtime context would start a Ray
        actor = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else "driver"
        with open(self.path, "a") as handle:
            handle.write(f"{actor} {step} {total}\n")
        if step == self.stop_at:
            raise StopRender(self.reason)


@dataclass(frozen=True)
class PreviewingControl(RecordingControl):
    """A RecordingControl that asks for a preview every ``every`` steps and saves each as ``{path}.{step}.npy``."""

    every: int = 2

    def preview_due(self, step: int, total: int) -> bool:
        return step % self.every == 0

    def on_preview(self, frame, step: int, total: int) -> None:
        import numpy as np

        np.save(f"{self.path}.{step}.npy", frame)


# The rank processes cannot import this test module: send its controls (and _Owner) by value.
ray_cloudpickle = pytest.importorskip("ray.cloudpickle")
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _calls(path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    return [(actor, int(step), int(total)) for actor, step, total in
            (line.split() for line in path.read_text().splitlines())]


# -- no Ray: the callback, the code table, the refusal -----------------------------------------------------
def test_a_chain_runs_its_controls_in_order_and_gives_previews_to_the_first_that_takes_them(tmp_path):
    from wan_dist.engine.control import ChainedControl

    calls = []
    first = lambda step, total: calls.append(("hook", step))  # noqa: E731 - a control without previews
    previewing = PreviewingControl(str(tmp_path / "calls"), stop_at=3)
    chain = ChainedControl(None, first, previewing)
    chain(1, 4)
    assert calls == [("hook", 1)] and len(_calls(tmp_path / "calls")) == 1
    assert chain.preview_due(2, 4) and not chain.preview_due(1, 4)
    chain.on_preview(np.zeros((2, 2, 3), np.uint8), 2, 4)
    assert (tmp_path / "calls.2.npy").exists()
    with pytest.raises(StopRender):
        chain(3, 4)
    assert calls[-1] == ("hook", 3)  # the hook ran before the control that stopped the render
    assert not ChainedControl(first).preview_due(2, 4)


def test_step_hooks_are_loaded_by_import_path_and_refused_with_the_reason():
    from wan_dist.engine.control import load_step_hook, with_step_hook

    assert load_step_hook("step_holds:hook").__name__ == "hook"
    for bad, reason in (("step_holds", "expected 'package.module:name'"), ("no_such_module:x", "cannot load"),
                        ("step_holds:nothing", "cannot load"), ("step_holds:HOOK", "not callable")):
        with pytest.raises(ValueError, match=reason):
            load_step_hook(bad)
    assert with_step_hook("control", None, REQUEST) == "control"
    hooked = with_step_hook(None, lambda request: None, REQUEST)  # a hook always yields a control
    assert hooked is not None and hooked.controls == ()


def test_stop_render_pickles_with_its_reason():
    error = pickle.loads(pickle.dumps(StopRender("lease_lost")))
    assert type(error) is StopRender and error.reason == "lease_lost" and "lease_lost" in str(error)


def test_the_code_table_round_trips_known_reasons_and_folds_the_others():
    assert STOP_CODES == {1: "cancelled", 2: "lease_lost", 3: "stopped"}
    assert [stop_reason(stop_code(r)) for r in ("cancelled", "lease_lost", "stopped", "quota")] == \
        ["cancelled", "lease_lost", "stopped", "stopped"]
    assert stop_reason(0) is None


def test_a_single_rank_callback_counts_steps_from_one_and_stops_with_the_reason():
    seen = []

    def control(step, total):
        seen.append((step, total))
        if step == 2:
            raise StopRender("quota exceeded")

    callback = make_step_callback(control, rank=0, result_rank=0, world_size=1)
    callback(0, 5, None)
    with pytest.raises(StopRender) as stopped:
        callback(1, 5, None)
    assert stopped.value.reason == "quota exceeded"  # the result rank keeps the exact reason
    assert seen == [(1, 5), (2, 5)]
    assert make_step_callback(None, rank=0, result_rank=0, world_size=1) is None


def test_a_failing_control_stops_the_render_instead_of_breaking_it():
    def control(step, total):
        raise KeyError("lease store down")

    callback = make_step_callback(control, rank=0, result_rank=0, world_size=1)
    with pytest.raises(StopRender, match="control_failed: KeyError"):
        callback(0, 3, None)


def test_a_group_that_is_not_running_refuses_a_call():
    group = RenderGroup(GroupConfig(source="tiny", parallel=ParallelConfig(ulysses=2)))
    from wan_dist.engine.group import RenderGroupFailed

    with pytest.raises(RenderGroupFailed, match="not running"):  # no control: the usual path
        group.submit(Generate(REQUEST))


# -- render groups of one and two ranks -----------------------------------------------------------------
LAYOUTS = {"world1": ParallelConfig(), "ulysses2": ParallelConfig(ulysses=2),
           # two stages of one rank: steps up to the expert boundary run on rank 0, the rest on rank 1
           "disaggregated": ParallelConfig(ulysses=2, placement="disaggregated")}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def group(request, ray_local):
    parallel = LAYOUTS[request.param]
    group = RenderGroup(GroupConfig(source="tiny", parallel=parallel, cpus_per_rank=0.5,
                                    collective_timeout_s=60)).start()
    yield group
    group.shutdown()


def _result_actor(group) -> str:
    return group.workers[group.result_rank]._actor_id.hex()


def _boundary(request: RenderRequest) -> int:
    """How many of ``request``'s steps the high-noise expert runs (the pipeline's own step plan)."""
    import torch

    from wan_dist import load_pipeline

    pipe = load_pipeline("tiny", dtype=torch.float32)
    settings = pipe.resolve(request.prompt, height=request.height, width=request.width, num_frames=request.num_frames,
                            num_inference_steps=request.sampling.num_inference_steps, solver=request.sampling.solver,
                            seed=request.seed)
    return sum(1 for plan in pipe.step_plan(settings)[1] if plan.expert == 0)


def _controller(group, request: RenderRequest, step: int) -> str:
    """The actor that runs ``request``'s control at ``step``: the result rank, or with disaggregated placement
    the leader of the stage that runs the step (rank 0 up to the boundary)."""
    if group.config.parallel.placement == "disaggregated" and step <= _boundary(request):
        return group.workers[0]._actor_id.hex()
    return _result_actor(group)


@pytest.mark.slow
def test_a_cancel_at_step_k_stops_every_rank_and_the_group_renders_the_next_request(group, tmp_path):
    import ray

    path = tmp_path / "calls.txt"
    call = group.submit(Generate(REQUEST, RecordingControl(str(path), stop_at=2)))
    with pytest.raises(RequestFailed) as failure:
        group.wait(call, timeout_s=120)
    cause = failure.value.cause
    assert isinstance(cause, StopRender) and cause.reason == "cancelled"
    assert not failure.value.permanent
    for ref in call.refs:  # every rank stopped with the same reason (not a collective timeout)
        with pytest.raises(StopRender) as stopped:
            ray.get(ref)
        assert stopped.value.reason == "cancelled"
    assert _calls(path) == [(_controller(group, REQUEST, step), step, STEPS) for step in (1, 2)]

    out = group.wait(group.submit(Generate(NEXT)), timeout_s=120)  # the group is still healthy
    assert out.frames.shape == (1, 9, 48, 80, 3) and out.settings.num_inference_steps == 2


@pytest.mark.slow
def test_a_disaggregated_render_stopped_on_the_low_noise_stage_fails_alone(group, tmp_path):
    """The high-noise stage handed the request off and returned; the low-noise stage stops it: the request
    fails with the reason, and the group (both stages) renders the next one."""
    import ray

    if group.config.parallel.placement != "disaggregated":
        pytest.skip("a stop after the boundary is the disaggregated case")
    boundary = _boundary(REQUEST)
    assert 1 <= boundary < STEPS
    path = tmp_path / "calls.txt"
    call = group.submit(Generate(REQUEST, RecordingControl(str(path), stop_at=boundary + 1)))
    with pytest.raises(RequestFailed) as failure:
        group.wait(call, timeout_s=120)
    assert isinstance(failure.value.cause, StopRender) and failure.value.cause.reason == "cancelled"
    assert ray.get(call.refs[0]) is None  # stage 0's part ended at its hand-off
    with pytest.raises(StopRender):
        ray.get(call.refs[group.result_rank])
    steps = range(1, boundary + 2)
    assert _calls(path) == [(_controller(group, REQUEST, step), step, STEPS) for step in steps]
    out = group.wait(group.submit(Generate(NEXT)), timeout_s=120)
    assert out.frames.shape == (1, 9, 48, 80, 3)


@pytest.mark.slow
def test_a_control_that_never_stops_sees_every_step_and_the_clip_is_published(group, tmp_path):
    path = tmp_path / "calls.txt"
    result = group.wait(group.submit(Render(REQUEST, OutputConfig(uri=str(tmp_path / "out")), "tiny",
                                            control=RecordingControl(str(path)))), timeout_s=120)
    assert result.status == "completed", result.error
    assert (tmp_path / "out" / "kite").is_dir()
    assert _calls(path) == [(_controller(group, REQUEST, step), step, STEPS) for step in range(1, STEPS + 1)]


def test_previews_come_from_the_controlling_rank_and_the_last_one_is_the_clips_first_frame(group, tmp_path):
    """With Euler the last step lands on sigma 0, so the preview of the last step's estimate is the first
    frame of the rendered clip (the same VAE decoding the same latents' first frame). Disaggregated: the
    high-noise stage's leader sends the previews of its steps, the low-noise leader the rest."""
    import dataclasses

    import numpy as np

    path = tmp_path / "calls.txt"
    request = dataclasses.replace(REQUEST, sampling=SamplingConfig(num_inference_steps=STEPS, solver="euler"))
    out = group.wait(group.submit(Generate(request, PreviewingControl(str(path), every=1))), timeout_s=120)
    saved = sorted(p.name for p in tmp_path.glob("calls.txt.*.npy"))
    assert saved == [f"calls.txt.{step}.npy" for step in range(1, STEPS + 1)]
    first = np.load(tmp_path / "calls.txt.1.npy")
    last = np.load(tmp_path / f"calls.txt.{STEPS}.npy")
    assert first.shape == last.shape == (48, 80, 3) and first.dtype == np.uint8
    assert np.abs(last.astype(int) - out.frames[0, 0].astype(int)).max() <= 1
    assert np.abs(first.astype(int) - last.astype(int)).mean() > 1  # an earlier estimate is another picture
    assert _calls(path) == [(_controller(group, request, step), step, STEPS) for step in range(1, STEPS + 1)]


@pytest.mark.slow
def test_a_stopped_render_publishes_nothing_and_other_reasons_reach_the_driver(group, tmp_path):
    path = tmp_path / "calls.txt"
    control = RecordingControl(str(path), stop_at=1, reason="lease_lost")
    with pytest.raises(RequestFailed) as failure:
        group.wait(group.submit(Render(REQUEST, OutputConfig(uri=str(tmp_path / "out")), "tiny", control)),
                   timeout_s=120)
    assert failure.value.cause.reason == "lease_lost"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("clip.mp4"))
    assert [step for _, step, _ in _calls(path)] == [1]


@pytest.mark.slow
def test_two_threads_submitting_at_once_both_get_their_clips(group):
    requests = [RenderRequest(prompt=f"scene {i}", seed=20 + i, height=48, width=80, num_frames=9,
                              sampling=SamplingConfig(num_inference_steps=1)) for i in range(4)]
    outputs: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def submit_half(first: int) -> None:
        barrier.wait()
        calls = [(i, group.submit(Generate(requests[i]))) for i in (first, first + 2)]
        outputs.update({i: group.wait(call, timeout_s=120) for i, call in calls})

    threads = [threading.Thread(target=submit_half, args=(first,)) for first in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert sorted(outputs) == [0, 1, 2, 3]
    assert {out.seed for out in outputs.values()} == {20, 21, 22, 23}
    frames = [outputs[i].frames for i in range(4)]
    assert all(not np.array_equal(frames[0], other) for other in frames[1:])


# -- a render group in the caller's placement group (how a Serve replica owns one) ---------------------
class _Owner:
    """Runs in bundle 0 of a placement group and starts its render group in the bundles after it."""

    def render(self, world_size: int, request):
        from ray.util import get_current_placement_group

        group = RenderGroup(GroupConfig(source="tiny", parallel=ParallelConfig(ulysses=world_size),
                                        cpus_per_rank=0.5, reuse_placement_group=True)).start(ready_timeout_s=60)
        try:
            same = group.placement_group.id == get_current_placement_group().id
            out = group.wait(group.submit(Generate(request)), timeout_s=120)
        finally:
            group.shutdown()
        return same, out.frames.shape


@pytest.mark.slow
def test_a_group_reuses_the_callers_placement_group_and_leaves_it_on_shutdown(ray_local):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    world_size = 2
    # bundle 0 is too small for a rank (0.5 CPU): a rank put there would never start
    outer = placement_group([{"CPU": 0.25}] + [{"CPU": 0.5}] * world_size, strategy="STRICT_PACK")
    ray.get(outer.ready(), timeout=60)
    try:
        owner = ray.remote(_Owner).options(
            num_cpus=0.25, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=outer, placement_group_bundle_index=0,
                placement_group_capture_child_tasks=True)).remote()
        before = {pg_id for pg_id, info in placement_group_table().items() if info["state"] == "CREATED"}
        same, shape = ray.get(owner.render.remote(world_size, NEXT), timeout=240)
        assert same and shape == (1, 9, 48, 80, 3)
        assert placement_group_table(outer)["state"] == "CREATED"  # not removed by the group's shutdown
        after = {pg_id for pg_id, info in placement_group_table().items() if info["state"] == "CREATED"}
        assert after == before  # none of its own left behind
        ray.kill(owner)
    finally:
        remove_placement_group(outer)
