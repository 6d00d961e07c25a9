"""Ray render groups on a local Ray: same frames as the single-process pipeline, failure and retry."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.config import OutputConfig, ParallelConfig, SamplingConfig
from wan_dist.engine.group import GroupCall, GroupConfig, RenderGroup, RenderGroupFailed, RequestFailed
from wan_dist.engine.rank_calls import Generate, ModelRecord
from wan_dist.engine.render import RenderRequest
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow

REQUEST = RenderRequest(prompt="a kite over a beach", seed=11, height=48, width=80, num_frames=9,
                        sampling=SamplingConfig(num_inference_steps=3), name="kite")


def _frames(uri: str) -> np.ndarray:
    with open(uri, "rb") as handle:
        return decode_mp4(handle.read())[0]


# Every layout equals the single-device pipeline in tests/test_parallel_*.py (no Ray); here a few that
# exercise the group's paths: one rank, a sequence-parallel gang, FSDP loading, distributed VAE decode.
# The disaggregated placement is compared in test_stage_0_starts_the_next_queued_request_... below.
@pytest.mark.parametrize("parallel", [ParallelConfig(), ParallelConfig(ulysses=2),
                                      ParallelConfig(ring=2, fsdp=True, vae_parallel=True)],
                         ids=["single-rank", "ulysses2", "ring2-fsdp-vae"])
def test_group_renders_the_same_clip_as_the_pipeline(ray_local, tmp_path, parallel):
    # Lossless H.264 (crf 0): a difference in the decoded frames is a difference in the rendered ones.
    group = RenderGroup(GroupConfig(source="tiny", parallel=parallel, cpus_per_rank=0.5)).start()
    try:
        result = group.render(REQUEST, OutputConfig(uri=str(tmp_path / "group"), crf=0), model_source="tiny")
    finally:
        group.shutdown()
    assert result.status == "completed", result.error
    if parallel.world_size > 1 and parallel.placement == "colocated":  # the engine reports its traffic
        assert result.timings["comm_bytes_per_step"] > 0
    pipe = load_pipeline("tiny", dtype=torch.float32)
    expected = pipe.generate(REQUEST.prompt, height=48, width=80, num_frames=9, num_inference_steps=3, seed=11)
    from wan_dist.engine.render import render

    local = render(pipe, REQUEST, OutputConfig(uri=str(tmp_path / "local"), crf=0))
    # CFG-parallel runs cond and uncond as two batch-1 forwards instead of one batch-2 forward: fp32
    # rounding (~1e-6 in the latents) can move a pixel across a uint8 rounding edge, nothing more.
    difference = np.abs(_frames(result.clip_uri).astype(int) - _frames(local.clip_uri).astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.01
    assert expected.frames.shape == (1, 9, 48, 80, 3)


def test_a_killed_rank_fails_the_request_then_the_rebuilt_group_renders(ray_local, tmp_path, holds):
    import ray

    from step_holds import HOOK

    group = RenderGroup(GroupConfig(source="tiny", parallel=ParallelConfig(ring=2), cpus_per_rank=0.5,
                                    collective_timeout_s=60, step_hook=HOOK)).start()
    prompt = holds.plan("a storm at sea, its group broken mid-render", 2)  # rank 0 waits at step 2
    slow = RenderRequest(prompt=prompt, seed=2, height=64, width=64, num_frames=9,
                         sampling=SamplingConfig(num_inference_steps=8), name="storm")

    def kill_mid_render():
        holds.wait_reached(prompt)
        ray.kill(group.workers[-1], no_restart=True)

    try:
        killer = threading.Thread(target=kill_mid_render)
        killer.start()
        with pytest.raises(RenderGroupFailed, match="a rank failed"):
            group.render(slow, OutputConfig(uri=str(tmp_path / "out")))
        killer.join()
        assert not holds.left(prompt)  # the failure surfaced while rank 0 still waited: not after it, nor a timeout
        holds.release(prompt)
        assert not list((tmp_path / "out").glob("storm/clip.mp4"))  # nothing half-published
        with pytest.raises(RenderGroupFailed, match="not running"):
            group.render(REQUEST, OutputConfig(uri=str(tmp_path / "out")))
        group.rebuild()
        retried = group.render(REQUEST, OutputConfig(uri=str(tmp_path / "out")))
        assert retried.status == "completed" and group.generation == 2
    finally:
        group.shutdown()


# -- disaggregated placement over a queue: stage 0 starts the next call while stage 1 finishes one --------
# Steps 0-2 on the high-noise stage, 3-99 (and the decode) on the low-noise one: stage 1's part of a request
# (~1 s) outlasts what stage 0 does between two requests (Ray's dispatch, text encoding: ~0.3 s), so the
# overlap shows even on a loaded machine.
QUEUED_SAMPLING = SamplingConfig(num_inference_steps=100, boundary_ratio=0.99)
QUEUED = [RenderRequest(prompt="a lighthouse at dusk", seed=5, height=48, width=80, num_frames=9,
                        sampling=QUEUED_SAMPLING, name="lighthouse"),
          RenderRequest(prompt="a red fox in snow", seed=6, height=48, width=80, num_frames=9,
                        sampling=QUEUED_SAMPLING, name="fox")]


@pytest.fixture(scope="module")
def disaggregated_group(ray_local):
    group = RenderGroup(GroupConfig(source="tiny", parallel=ParallelConfig(ulysses=2, placement="disaggregated"),
                                    cpus_per_rank=0.5)).start()
    yield group
    group.shutdown()


def test_a_disaggregated_group_returns_the_low_noise_leaders_value(disaggregated_group):
    import ray

    group = disaggregated_group
    assert GroupCall(("rank 0", "rank 1"), 1).leader == "rank 0"  # colocated: rank 0 holds the result
    assert group.result_rank == 1  # stage 1's leader: stage 0 returns once it has handed the request over
    call = group.submit(Generate(QUEUED[0]))
    assert call.result_index == 1 and call.leader == call.refs[1]
    ref = group.wait(call, fetch=False)
    assert ref == call.refs[1]
    assert ray.get(call.refs[0]) is None
    assert ray.get(ref).frames.shape == (1, 9, 48, 80, 3)
    assert group.wait(group.submit(ModelRecord("tiny")))["variant"] == "tiny"


def test_bad_input_fails_on_both_stages_and_the_disaggregated_group_stays_up(disaggregated_group):
    group = disaggregated_group
    bad = RenderRequest(prompt="a kite", seed=1, height=50, width=80, num_frames=9,
                        sampling=SamplingConfig(num_inference_steps=2))
    with pytest.raises(RequestFailed, match="height") as failure:
        group.wait(group.submit(Generate(bad)), timeout_s=60)
    assert failure.value.permanent
    assert group.wait(group.submit(Generate(QUEUED[1]))).frames.shape == (1, 9, 48, 80, 3)


def test_prefetched_prompts_are_used_by_the_stage_that_encodes_text(disaggregated_group):
    import ray

    group = disaggregated_group
    before = [ray.get(w.prompt_cache_stats.remote()) for w in group.workers]
    request = RenderRequest(prompt="a prefetched lighthouse", seed=4, height=48, width=80, num_frames=9,
                            sampling=SamplingConfig(num_inference_steps=2))
    ray.get(group.prefetch(request))
    assert group.wait(group.submit(Generate(request))).frames.shape == (1, 9, 48, 80, 3)
    after = [ray.get(w.prompt_cache_stats.remote()) for w in group.workers]
    # stage 0 found prompt and negative prompt encoded already; stage 1 gets contexts in the hand-off
    assert after[0]["hits"] - before[0]["hits"] == 2 and after[0]["misses"] == before[0]["misses"]
    assert after[1] == before[1]


def test_stage_0_starts_the_next_queued_request_while_stage_1_finishes_one(disaggregated_group):
    group = disaggregated_group
    seen = [len(events) for events in group.stage_events()]
    calls = [group.submit(Generate(request)) for request in QUEUED]  # back to back, as a batch driver queues
    outputs = [group.wait(call) for call in calls]
    high, low = (events[n:] for events, n in zip(group.stage_events(), seen))
    first, second = sorted({e.request for e in high})
    assert [(e.request, e.step) for e in high] == [(r, s) for r in (first, second) for s in range(3)]
    assert [(e.request, e.step) for e in low] == [(r, s) for r in (first, second) for s in range(3, 100)]
    for request in (first, second):  # causality: a hand-off follows its high-noise steps
        assert max(e.end for e in high if e.request == request) <= min(e.start for e in low if e.request == request)
    # Pipelining: stage 0 began request 2 before stage 1 had ended request 1's last step (one clock: one machine).
    assert min(e.start for e in high if e.request == second) < max(e.end for e in low if e.request == first)

    from wan_dist.engine.render import generate_for

    pipe = load_pipeline("tiny", dtype=torch.float32)
    for request, out in zip(QUEUED, outputs):
        expected = generate_for(pipe, request)
        assert out.frames.shape == expected.frames.shape == (1, 9, 48, 80, 3)
        difference = np.abs(out.frames.astype(int) - expected.frames.astype(int))
        assert difference.max() <= 2 and difference.mean() < 0.01


def _rank_behind_a_busy_stage(rank: int, world_size: int, source: str, handoff_timeout_s: float, busy_s: float):
    from parallel_cases import LatentOnlyVAE, make_inputs
    from wan_dist.engine.pipeline import WanPipeline
    from wan_dist.models import checkpoint
    from wan_dist.parallel.stages import load_stage_expert, make_disaggregated_generate, plan_stages

    parallel = ParallelConfig(ulysses=2, placement="disaggregated")
    stage = plan_stages(parallel, world_size).stage_of(rank)
    info = checkpoint.detect_checkpoint(source)  # no text encoder, no VAE weights: a quick start per rank
    experts = [load_stage_expert(info, stage) if held == stage else None for held in (0, 1)]
    pipe = WanPipeline(info=info, experts=experts, vae=LatentOnlyVAE(info.spec.vae), text_encoder=None,
                       device=torch.device("cpu"), dtype=torch.float32)
    generate = make_disaggregated_generate(pipe, parallel, results_on="last_stage",
                                           handoff_timeout=timedelta(seconds=handoff_timeout_s))
    context, negative, latents = make_inputs(info.spec.dit.text_dim, info.spec.vae.z_dim, 16, 16, 8, batch=1)
    import torch.distributed as dist

    dist.barrier()  # both stages loaded: the busy time below is measured from the same moment on both ranks
    if stage == 1:
        time.sleep(busy_s)  # still on an earlier request: stage 0's hand-off send waits for this stage's receive
    started = time.monotonic()
    out = generate(prompt_embeds=context, negative_prompt_embeds=negative, latents=latents[:, :, :1], height=16,
                   width=16, num_frames=1, num_inference_steps=3, seed=3, output_type="latent")
    return generate.result_rank, time.monotonic() - started, None if out is None else tuple(out.frames.shape)


def test_the_hand_off_may_wait_longer_than_a_collective_timeout():
    """Stage 0's hand-off waits for stage 1 to finish its previous request: that wait runs on its own
    process group (GroupConfig.handoff_timeout_s), not under the collectives' short timeout (on the
    default group this send times out after 3 s)."""
    from wan_dist.engine.sources import resolve_source
    from wan_dist.parallel.local import run_local_group

    source = str(resolve_source("tiny", layout="diffusers"))
    results = run_local_group(_rank_behind_a_busy_stage, 2, source, 120.0, 5.0, collective_timeout_s=3,
                              timeout_s=120)
    (result_rank, waited, nothing), (_, _, shape) = results
    assert result_rank == 1 and nothing is None and shape == (1, 16, 1, 2, 2)
    assert waited > 3  # stage 0's send outlived the collective timeout and completed
