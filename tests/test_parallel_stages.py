"""Disaggregated expert stages equal the single-device pipeline, hold one expert per rank, and overlap.

Real gloo groups of 2 (1 + 1) and 4 (2 + 2 with Ulysses 2 inside each stage; 3 + 1 sized by the
T2V step share, a ring of 3 in stage 0). Queues of 2-3 requests, each a batch of 2 distinct prompts
over 4 steps that cross the expert boundary after step 2 (UniPC and DPM++ history crosses the
hand-off). Each rank loads only its stage's expert; a recording wrapper around ``load_dit`` shows the
other expert's folder is never read. Overlap is measured, not timed: per-step intervals on one
monotonic clock show stage 0 on request i + 1 while stage 1 is on request i.
"""

from __future__ import annotations

import dataclasses

from datetime import timedelta

import pytest
import torch

from parallel_cases import FRAMES, HEIGHT, STEPS, WIDTH, LatentOnlyVAE, make_inputs, single_process
from wan_dist.config import ParallelConfig
from wan_dist.parallel.local import run_local_group
from wan_dist.parallel.stages import HandOff, plan_stages, stage_sizes_by_steps
from wan_dist.sampling.solvers import SolverState

TOLERANCE = 1e-5


def _request(seed: int, **extra) -> dict:
    context, negative, latents = make_inputs(32, 16, HEIGHT, WIDTH, 8, seed=seed)
    return dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=4.0,
                guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative, latents=latents,
                output_type="latent", seed=seed, **extra)


def _short_request(seed: int) -> dict:
    """Embeddings given with 20 and 12 rows: attended as given (diffusers layout), handed off as they are."""
    request = _request(seed)
    return {**request, "prompt_embeds": request["prompt_embeds"][:, :20].clone(),
            "negative_prompt_embeds": request["negative_prompt_embeds"][:, :12].clone()}


def _load_stage_pipe(folder: str, stage: int, full: bool):
    """A float32 pipeline holding only ``stage``'s expert; returns it and the folders load_dit read."""
    from wan_dist.engine.pipeline import WanPipeline
    from wan_dist.models import checkpoint
    from wan_dist.parallel.stages import stage_expert_loader

    read, original = [], checkpoint.load_dit

    def recording(folder, *args, **kwargs):
        read.append(str(folder))
        return original(folder, *args, **kwargs)

    checkpoint.load_dit = recording
    try:
        info = checkpoint.detect_checkpoint(folder)
        experts = [stage_expert_loader(stage)(expert_dir, info) for expert_dir in info.expert_dirs]
    finally:
        checkpoint.load_dit = original
    # full: stage 0 encodes text (T2V needs no VAE there), stage 1 decodes and never encodes text
    vae = checkpoint.load_vae(info) if full and stage == 1 else LatentOnlyVAE(info.spec.vae)
    text = checkpoint.load_text_encoder(info, dtype=torch.float32) if full and stage == 0 else None
    pipe = WanPipeline(info=info, experts=experts, vae=vae, text_encoder=text, device=torch.device("cpu"),
                       dtype=torch.float32)
    return pipe, read, [str(d) for d in info.expert_dirs]


def _plain(frames):
    """numpy, so results cross the process boundary by pickling (torch tensors would pass as file
    descriptors that vanish when the rank exits)."""
    return frames.numpy() if isinstance(frames, torch.Tensor) else frames


@torch.no_grad()
def stage_rank_program(rank: int, world_size: int, cases: list[dict]) -> dict:
    from wan_dist.parallel.runtime import make_parallel_generate
    from wan_dist.parallel.stages import DisaggregatedRunner

    results = {}
    for case in cases:
        parallel = ParallelConfig(**case["parallel"])
        layout = plan_stages(parallel, world_size, stage_sizes=case.get("stage_sizes"), num_heads=2)
        stage = layout.stage_of(rank)
        pipe, read, expert_dirs = _load_stage_pipe(case["folder"], stage, case.get("full", False))
        timeout = timedelta(seconds=60)
        if case.get("entry"):
            generate = make_parallel_generate(pipe, parallel, timeout=timeout)
            outputs, runner = [generate(**case["requests"][0])], generate.runner
        else:
            runner = DisaggregatedRunner(pipe, layout, timeout=timeout)
            outputs = runner.run(case["requests"])
        results[case["name"]] = dict(
            stage=stage, sizes=layout.sizes, inner=(runner.mesh.config.ulysses, runner.mesh.config.ring),
            outputs=[_plain(o.frames) for o in outputs], seeds=[o.seed for o in outputs], read=read,
            expert_dirs=expert_dirs, experts_held=[m is not None for m in pipe.experts], events=runner.events)
    return results


def _cases(checkpoint_factory, world_size: int) -> list[dict]:
    tiny = str(checkpoint_factory("tiny", "diffusers"))
    if world_size == 2:
        # with a camera path: stage 0 warps the initial noise along it, stage 1 must not warp the hand-off again
        render = dict(prompt=["a red fox in snow", "a blue bird"], negative_prompt=["blurry", "static"],
                      height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, output_type="np",
                      camera={"moves": [{"type": "truck", "amount": 0.3}], "strength": 0.2}, fps=16)
        return [dict(name="queue_1+1", folder=tiny, parallel=dict(data=2, placement="disaggregated"),
                     requests=[_request(0), _request(1, solver="dpm++"), _request(2)]),
                dict(name="entry_1+1_np", folder=tiny, parallel=dict(data=2, placement="disaggregated"),
                     requests=[render], full=True, entry=True)]
    return [dict(name="queue_u2+u2", folder=tiny, parallel=dict(ulysses=2, placement="disaggregated"),
                 requests=[_request(3), _request(4, solver="dpm++"), _short_request(6)]),
            dict(name="sized_3+1", folder=tiny, parallel=dict(placement="disaggregated"),
                 stage_sizes=stage_sizes_by_steps(4, (26, 14)), requests=[_request(5)])]


@pytest.fixture(scope="module")
def world2(checkpoint_factory):
    cases = _cases(checkpoint_factory, 2)
    return cases, run_local_group(stage_rank_program, 2, cases, timeout_s=600)


@pytest.fixture(scope="module")
def world4(checkpoint_factory):
    cases = _cases(checkpoint_factory, 4)
    return cases, run_local_group(stage_rank_program, 4, cases, timeout_s=600)


def _check_matches(cases, results, name: str):
    case = next(c for c in cases if c["name"] == name)
    for index, request in enumerate(case["requests"]):
        seed = results[0][name]["seeds"][index]
        reference = torch.as_tensor(single_process(dict(folder=case["folder"], full=case.get("full", False),
                                                        kwargs=request), seed=seed))
        for rank, per_rank in enumerate(results):
            got = torch.as_tensor(per_rank[name]["outputs"][index])
            assert per_rank[name]["seeds"][index] == seed
            assert got.shape == reference.shape and got.dtype == reference.dtype
            limit = 1 if got.dtype == torch.uint8 else TOLERANCE
            error = (got.double() - reference.double()).abs().max().item()
            assert error <= limit, f"{name} request {index}: rank {rank} differs from single-device by {error}"


def _check_one_expert_per_rank(results, name: str):
    for rank, per_rank in enumerate(results):
        info = per_rank[name]
        stage = info["stage"]
        assert info["read"] == [info["expert_dirs"][stage]], f"rank {rank} read {info['read']}"
        assert info["experts_held"] == [stage == 0, stage == 1]
        assert {e.stage for e in info["events"]} <= {stage}
        steps = sorted({e.step for e in info["events"]})
        assert steps == ([0, 1] if stage == 0 else [2, 3])  # t = 999, 900 high-noise; 750, 500 low-noise


@pytest.mark.parametrize("name", ["queue_1+1", "entry_1+1_np"])
def test_two_ranks_match_single_device(world2, name):
    cases, results = world2
    assert [r[name]["stage"] for r in results] == [0, 1]
    _check_matches(cases, results, name)
    _check_one_expert_per_rank(results, name)


@pytest.mark.parametrize("name", ["queue_u2+u2", "sized_3+1"])
def test_four_ranks_match_single_device(world4, name):
    cases, results = world4
    _check_matches(cases, results, name)
    _check_one_expert_per_rank(results, name)


def test_four_rank_layouts(world4):
    _, results = world4
    assert [r["queue_u2+u2"]["stage"] for r in results] == [0, 0, 1, 1]
    assert {r["queue_u2+u2"]["inner"] for r in results} == {(2, 1)}  # Ulysses 2 inside each stage
    assert [r["sized_3+1"]["stage"] for r in results] == [0, 0, 0, 1]
    assert [r["sized_3+1"]["inner"] for r in results] == [(1, 3)] * 3 + [(1, 1)]  # 2 heads: a ring of 3


def test_stages_overlap_across_requests(world2):
    """Stage 0 renders request i + 1 while stage 1 renders request i (a measured property of the run)."""
    _, results = world2
    high, low = results[0]["queue_1+1"]["events"], results[1]["queue_1+1"]["events"]
    assert [(e.request, e.step) for e in high] == [(r, s) for r in range(3) for s in (0, 1)]
    assert [(e.request, e.step) for e in low] == [(r, s) for r in range(3) for s in (2, 3)]
    for request in range(3):  # causality: the hand-off of a request follows its high-noise steps
        assert max(e.end for e in high if e.request == request) <= min(e.start for e in low if e.request == request)
    # Pipelining: stage 0 does not wait for stage 1. It starts request i + 1 before stage 1 has finished
    # request i (a strict overlap of two steps also needs the OS to run both ranks at that moment, which
    # a loaded 2-core machine does not promise).
    started_early = [i for i in range(2) if min(e.start for e in high if e.request == i + 1)
                     < max(e.end for e in low if e.request == i)]
    assert started_early, "stage 0 waited for stage 1 to finish request i before starting request i + 1"


def test_stage_layouts_without_a_group():
    assert stage_sizes_by_steps(8, (26, 14)) == (5, 3)
    assert stage_sizes_by_steps(8, (15, 25)) == (3, 5)
    assert stage_sizes_by_steps(2, (39, 1)) == (1, 1)
    group = plan_stages(ParallelConfig(cfg=2, ulysses=2, placement="disaggregated"), 4, num_heads=2)
    assert group.sizes == (2, 2) and [(c.cfg, c.ulysses) for c in group.configs] == [(1, 2), (1, 2)]
    per_stage = plan_stages(ParallelConfig(cfg=2, placement="disaggregated"), 4)
    assert [(c.cfg, c.ulysses) for c in per_stage.configs] == [(2, 1), (2, 1)]
    assert list(per_stage.ranks(1)) == [2, 3] and per_stage.leader(1) == 2
    with pytest.raises(ValueError, match="even split"):
        plan_stages(ParallelConfig(), 3)
    with pytest.raises(ValueError, match="data axis"):
        plan_stages(ParallelConfig(data=4), 4)


def test_handoff_wire_format_round_trips():
    latents = torch.randn(2, 16, 3, 6, 10)
    state = SolverState(step_index=2, history=(torch.randn_like(latents), torch.randn_like(latents)),
                        last_sample=torch.randn_like(latents), last_order=2)
    context = torch.randn(2, 512, 32).to(torch.bfloat16)
    handoff = HandOff(request=7, seed=123, latents=latents, state=state, context=context, negative_context=-context)
    header, payloads = handoff.header(), handoff.payloads()
    received = HandOff.from_wire(header, [p.clone() for p in payloads])
    assert [p.shape for p in HandOff.empty_payloads(header)] == [p.shape for p in payloads]
    assert (received.request, received.seed, received.state.step_index, received.state.last_order) == (7, 123, 2, 2)
    assert torch.equal(received.latents, latents) and torch.equal(received.state.last_sample, state.last_sample)
    assert all(torch.equal(a, b) for a, b in zip(received.state.history, state.history))
    assert received.context.dtype == torch.bfloat16 and torch.equal(received.negative_context, -context)
    assert received.stop == 0  # a request to continue
    euler = HandOff(request=0, seed=1, latents=latents, state=SolverState(step_index=3), context=context,
                    negative_context=None, stop=2)
    back = HandOff.from_wire(euler.header(), euler.payloads())
    assert back.state.history == () and back.state.last_sample is None and back.negative_context is None
    assert back.stop == 2  # a request stage 0 stopped: stage 1 raises its StopRender
    assert back.cache is None and received.cache is None  # no step cache
    # stage 0's step-cache counts travel in the header: its skipped steps as bits (up to 252 steps)
    cache = {"steps": 200, "forwards": 250, "forwards_skipped": 150, "skipped_steps": [0, 1, 62, 63, 126, 199]}
    cached = HandOff(request=3, seed=4, latents=latents, state=state, context=context, negative_context=None,
                     cache=cache)
    assert HandOff.from_wire(cached.header(), [p.clone() for p in cached.payloads()]).cache == cache
    with pytest.raises(ValueError, match="skipped step 252"):
        dataclasses.replace(cached, cache={**cache, "skipped_steps": [252]}).header()
    # given embeddings: the negative context may have other rows than the context (each is attended as it is)
    uneven = HandOff(request=1, seed=2, latents=latents, state=state, context=context[:, :20],
                     negative_context=2 * context[:, :7])
    header, payloads = uneven.header(), uneven.payloads()
    assert [p.shape for p in HandOff.empty_payloads(header)] == [p.shape for p in payloads]
    back = HandOff.from_wire(header, [p.clone() for p in payloads])
    assert torch.equal(back.context, context[:, :20]) and torch.equal(back.negative_context, 2 * context[:, :7])
