"""Step caching on real gloo groups of 2 ranks: every rank skips the same steps, and the cached render equals
the single-process cached render (Ulysses, CFG-parallel, data-parallel, FSDP, TI2V's per-token timesteps,
disaggregated stages).

Why a mismatch cannot happen: the decision reads the step plan, the profile and (teacache) the time embedding of
the replicated scalar timestep, never a rank's tokens. These cases give the ranks different inputs to the blocks
(Ulysses and ring: different token shards; CFG-parallel: cond on one rank, uncond on the other; data: different
rows), so a decision that read them would differ between ranks: here it would show as different skipped steps
or, inside a sequence group or FSDP, as a collective that times out.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import torch

from parallel_cases import FRAMES, HEIGHT, TI2V_HEIGHT, TI2V_WIDTH, WIDTH, generate_kwargs, load, make_inputs
from wan_dist.parallel.local import run_local_group
from wan_dist.sampling.step_cache import CacheProfile, ExpertProfile

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5
STEPS = 8
# flat ratios: magcache's error never grows, so max_skips decides (compute, skip, skip, ...); teacache's line
# scaled for random weights, whose embedding changes by ~1 per step; the low-noise expert extrapolates (order 1)
_FLAT = ExpertProfile(timesteps=(500.0,), previous=(600.0,), ratios=(1.0,), teacache=(0.1, 0.0))
PROFILE = CacheProfile(variant="tiny", max_skips=2, experts=(_FLAT, dataclasses.replace(_FLAT, order=1)))
TI2V_PROFILE = CacheProfile(variant="tiny-ti2v", experts=(dataclasses.replace(_FLAT, order=1),))
MAGCACHE = dict(cache="magcache", cache_threshold=0.1, cache_retention=0.0)
TEACACHE = dict(cache="teacache", cache_threshold=0.25, cache_retention=0.2)


def _t2v(cache: dict) -> dict:
    context, negative, latents = make_inputs(32, 16, HEIGHT, WIDTH, 8)
    return dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=4.0,
                guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative, latents=latents,
                output_type="latent", seed=0, **cache)


def _ti2v(cache: dict) -> dict:
    context, negative, latents = make_inputs(32, 48, TI2V_HEIGHT, TI2V_WIDTH, 16)
    return dict(height=TI2V_HEIGHT, width=TI2V_WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                guidance_scale=5.0, prompt_embeds=context, negative_prompt_embeds=negative, latents=latents,
                output_type="latent", seed=0, **cache)


@torch.no_grad()
def rank_program(rank: int, world_size: int, cases: list[dict]) -> dict:
    """Every case on this rank: {name: (final latents, the output's step_cache record)}."""
    from wan_dist.config import ParallelConfig
    from wan_dist.parallel.runtime import make_parallel_generate

    results = {}
    for case in cases:
        pipe = load(case["folder"], None, bool(case.get("full")))  # fresh: a disaggregated stage drops an expert
        pipe.cache_profile = case["profile"]
        generate = make_parallel_generate(pipe, ParallelConfig(**case["parallel"]), timeout=timedelta(seconds=60))
        out = generate(**generate_kwargs(case))
        results[case["name"]] = (out.frames, out.step_cache)
    return results


def _cases(checkpoint_factory) -> list[dict]:
    tiny = str(checkpoint_factory("tiny", "diffusers"))
    ti2v = str(checkpoint_factory("tiny-ti2v", "diffusers"))
    t2v = dict(folder=tiny, profile=PROFILE)
    return [
        dict(name="ulysses2_magcache", parallel=dict(ulysses=2), kwargs=_t2v(MAGCACHE), **t2v),
        dict(name="ring2_teacache", parallel=dict(ring=2), kwargs=_t2v(TEACACHE), **t2v),
        dict(name="cfg2_teacache", parallel=dict(cfg=2), kwargs=_t2v(TEACACHE), **t2v),
        dict(name="data2_magcache", parallel=dict(data=2), kwargs=_t2v(MAGCACHE), **t2v),
        dict(name="fsdp_cfg2_magcache", parallel=dict(cfg=2, fsdp=True), kwargs=_t2v(MAGCACHE), **t2v),
        dict(name="fsdp_ulysses2_teacache", parallel=dict(ulysses=2, fsdp=True), kwargs=_t2v(TEACACHE), **t2v),
        dict(name="ti2v_ulysses2_teacache", parallel=dict(ulysses=2), kwargs=_ti2v(TEACACHE), folder=ti2v,
             profile=TI2V_PROFILE, image=True, full=True),
        dict(name="disaggregated_magcache", parallel=dict(placement="disaggregated"), kwargs=_t2v(MAGCACHE), **t2v),
    ]


@pytest.fixture(scope="module")
def world2(checkpoint_factory):
    cases = _cases(checkpoint_factory)
    return cases, run_local_group(rank_program, 2, cases, timeout_s=900)


@torch.no_grad()
def _single_process(case: dict):
    pipe = load(case["folder"], None, bool(case.get("full")))
    pipe.cache_profile = case["profile"]
    out = pipe.generate(**generate_kwargs(case))
    return out.frames, out.step_cache


@pytest.mark.parametrize("name", ["ulysses2_magcache", "ring2_teacache", "cfg2_teacache", "data2_magcache",
                                  "fsdp_cfg2_magcache", "fsdp_ulysses2_teacache", "ti2v_ulysses2_teacache"])
def test_every_rank_skips_the_same_steps_and_renders_the_single_process_cached_clip(world2, name):
    cases, results = world2
    case = next(c for c in cases if c["name"] == name)
    reference, record = _single_process(case)
    assert 0 < len(record["skipped_steps"]) < STEPS - 1  # the case exercises both kinds of step
    for rank, per_rank in enumerate(results):
        latents, got = per_rank[name]
        assert got["skipped_steps"] == record["skipped_steps"], f"{name}: rank {rank} decided otherwise"
        assert got["steps"] == STEPS
        error = (latents - reference).abs().max().item()
        assert error <= TOLERANCE, f"{name}: rank {rank} differs from the single-process cached render by {error}"
    if case["parallel"].get("cfg") == 2:  # each rank runs one branch: its own forwards are half the process's
        assert sum(r[name][1]["forwards"] for r in results) == record["forwards"]
        assert sum(r[name][1]["forwards_skipped"] for r in results) == record["forwards_skipped"]


def test_disaggregated_stages_cache_each_expert_as_the_colocated_render_does(world2):
    cases, results = world2
    case = next(c for c in cases if c["name"] == "disaggregated_magcache")
    reference, record = _single_process(case)
    assert 0 < len(record["skipped_steps"]) < STEPS - 1
    for rank, per_rank in enumerate(results):
        latents, got = per_rank["disaggregated_magcache"]
        # the result comes from the low-noise stage, with the high-noise stage's counts from its hand-off: the
        # record is the colocated render's, both experts' steps
        assert got == record, f"rank {rank}: {got} != {record}"
        error = (latents - reference).abs().max().item()
        assert error <= TOLERANCE, f"rank {rank} differs from the colocated cached render by {error}"
