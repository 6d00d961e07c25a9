"""Parallel equals single-process: whole denoising runs on real gloo groups of 2 and 4 ranks.

Batch of 2 distinct prompts; 45 tokens per sample (padded for every sequence degree used); 4 steps
crossing the expert boundary with CFG. Every layout runs inside one spawn per world size (one mesh
per case over the same group), and each rank's latents must match the single-process pipeline
within 1e-5; its bytes sent per op must equal the analytic formula of
:func:`wan_dist.parallel.comm.expected_step_bytes`.
"""

from __future__ import annotations

import math

import pytest
import torch

from parallel_cases import (FRAMES, HEIGHT, NUM_TOKENS, STEPS, TI2V_HEIGHT, TI2V_WIDTH, WIDTH, make_inputs,
                            rank_program, single_process)
from wan_dist.parallel.comm import expected_step_bytes
from wan_dist.parallel.local import run_local_group

TOLERANCE = 1e-5

WORLD2 = {  # tiny (2 heads)
    "ulysses2": dict(ulysses=2),
    "ring2": dict(ring=2),
    "cfg2": dict(cfg=2),
    "data2": dict(data=2),
    "ti2v_ring2": dict(ring=2),  # per-token timesteps (image-conditioned first frame)
    "short_ulysses2": dict(ulysses=2),  # given embeddings of 20 and 12 rows, attended as given
    "short_cfg2": dict(cfg=2),
}
WORLD4 = {  # test DiT with 4 heads
    "ulysses4": dict(ulysses=4),
    "ring4": dict(ring=4),
    "usp2x2": dict(ulysses=2, ring=2),
    "cfg2_ulysses2": dict(cfg=2, ulysses=2),
    "data2_ring2": dict(data=2, ring=2),
    "short_usp2x2": dict(ulysses=2, ring=2),
}


def _t2v_kwargs():
    context, negative, latents = make_inputs(32, 16, HEIGHT, WIDTH, 8)
    return dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=4.0,
                guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative, latents=latents,
                output_type="latent", seed=0)


def _ti2v_kwargs():
    context, negative, latents = make_inputs(32, 48, TI2V_HEIGHT, TI2V_WIDTH, 16)
    return dict(height=TI2V_HEIGHT, width=TI2V_WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                guidance_scale=5.0, prompt_embeds=context, negative_prompt_embeds=negative, latents=latents,
                output_type="latent", seed=0)


def _short_kwargs():
    """Embeddings given shorter than text_len, and of different lengths for cond and uncond: the diffusers
    layout attends them as given (a batched CFG forward cannot hold both: two forwards run)."""
    kwargs = _t2v_kwargs()
    return {**kwargs, "prompt_embeds": kwargs["prompt_embeds"][:, :20].clone(),
            "negative_prompt_embeds": kwargs["negative_prompt_embeds"][:, :12].clone()}


def _cases(checkpoint_factory, layouts: dict, heads: int | None) -> list[dict]:
    tiny = str(checkpoint_factory("tiny", "diffusers"))
    cases = []
    for name, parallel in layouts.items():
        if name.startswith("ti2v"):
            folder, kwargs, image = str(checkpoint_factory("tiny-ti2v", "diffusers")), _ti2v_kwargs(), True
        else:
            folder, kwargs, image = tiny, _short_kwargs() if name.startswith("short") else _t2v_kwargs(), False
        cases.append(dict(name=name, folder=folder, heads=heads, parallel=parallel, kwargs=kwargs, image=image,
                          full=image))
    return cases


def _entry_cases(checkpoint_factory) -> list[dict]:
    """make_parallel_generate as a render-group rank uses it: text prompts, seed drawn on rank 0 and
    broadcast, VAE decode per data rank and a uint8 gather; and a one-token warm-up over ring 2
    (rank 1 holds padding only)."""
    tiny = str(checkpoint_factory("tiny", "diffusers"))
    render = dict(prompt=["a red fox in snow", "a blue bird"], negative_prompt=["blurry", "static"],
                  height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2, output_type="np")
    warmup = dict(prompt="warmup", height=16, width=16, num_frames=1, num_inference_steps=1, seed=0,
                  output_type="latent")
    return [dict(name="entry_data2_np", folder=tiny, heads=None, parallel=dict(data=2), kwargs=render, full=True,
                 entry=True),
            dict(name="entry_warmup_ring2", folder=tiny, heads=None, parallel=dict(ring=2), kwargs=warmup,
                 full=True, entry=True)]


@pytest.fixture(scope="module")
def world2(checkpoint_factory):
    cases = _cases(checkpoint_factory, WORLD2, heads=None) + _entry_cases(checkpoint_factory)
    return cases, run_local_group(rank_program, 2, cases, timeout_s=600)


@pytest.fixture(scope="module")
def world4(checkpoint_factory):
    cases = _cases(checkpoint_factory, WORLD4, heads=4)
    return cases, run_local_group(rank_program, 4, cases, timeout_s=600)


def _expected_bytes(case: dict, reference: torch.Tensor, dim: int, num_layers: int, out_dim: int) -> dict:
    degrees = {axis: case["parallel"].get(axis, 1) for axis in ("data", "cfg", "ulysses", "ring")}
    rows = reference.shape[0] // degrees["data"]
    latent_numel = rows * math.prod(reference.shape[1:])
    per_step = expected_step_bytes(batch=rows * (1 if degrees["cfg"] == 2 else 2), num_tokens=NUM_TOKENS, dim=dim,
                                   num_layers=num_layers, out_dim=out_dim, latent_numel=latent_numel,
                                   ulysses=degrees["ulysses"], ring=degrees["ring"], cfg=degrees["cfg"],
                                   itemsize=4, cfg_split=True)
    expected = {op: STEPS * value for op, value in per_step.items()}
    if degrees["data"] > 1:
        expected["data_gather"] = (degrees["data"] - 1) * latent_numel * 4
    return expected


def _check(cases, results, name: str, *, dim: int, out_dim_per_channel: int = 4):
    case = next(c for c in cases if c["name"] == name)
    reference = single_process(case)
    num_layers = 2
    out_dim = out_dim_per_channel * reference.shape[1]  # patch 1 x 2 x 2 times out channels
    expected = _expected_bytes(case, reference, dim, num_layers, out_dim)
    for rank, per_rank in enumerate(results):
        latents, sent = per_rank[name]
        assert latents.shape == reference.shape
        error = (latents - reference).abs().max().item()
        assert error <= TOLERANCE, f"{name}: rank {rank} differs from single-process by {error}"
        assert sent == expected, f"{name}: rank {rank} sent {sent}, formula {expected}"


@pytest.mark.parametrize("name", list(WORLD2))
def test_two_ranks_match_single_process(world2, name):
    _check(*world2, name, dim=32)


@pytest.mark.parametrize("name", ["entry_data2_np", "entry_warmup_ring2"])
def test_render_group_entry_matches_single_process(world2, name):
    cases, results = world2
    case = next(c for c in cases if c["name"] == name)
    seeds = {per_rank[name][1] for per_rank in results}
    assert len(seeds) == 1  # drawn once, the same on every rank
    reference = torch.as_tensor(single_process(case, seed=seeds.pop()))
    for per_rank in results:
        frames = torch.as_tensor(per_rank[name][0])
        assert frames.shape == reference.shape and frames.dtype == reference.dtype
        assert (frames.double() - reference.double()).abs().max() <= (1 if frames.dtype == torch.uint8 else TOLERANCE)


@pytest.mark.parametrize("name", list(WORLD4))
def test_four_ranks_match_single_process(world4, name):
    _check(*world4, name, dim=64)


def test_deepspeed_ulysses_backend_matches_single_process(checkpoint_factory, tmp_path, monkeypatch):
    """deepspeed's DistributedAttention as the Ulysses backend, on gloo without compiling deepspeed's shared-memory
    all-reduce (an op this path never calls; building it cost ~45 s on 2 cores)."""
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # the ranks inherit it
    layouts = {"ulysses2_deepspeed": dict(ulysses=2, ulysses_backend="deepspeed")}
    cases = _cases(checkpoint_factory, layouts, heads=None)
    results = run_local_group(rank_program, 2, cases, timeout_s=900, collective_timeout_s=600)
    _check(cases, results, "ulysses2_deepspeed", dim=32)
    assert not (tmp_path / "extensions").exists() or not any((tmp_path / "extensions").iterdir())
