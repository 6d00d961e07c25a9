"""Shared set-up of the parallel tests: inputs, a 4-head test DiT, and the per-rank program.

A rank loads the pipeline itself (as a render-group rank would), builds one mesh per case over the
same gloo group and renders with ``parallel_generate``; it returns final latents and its
communication counts per case. The test process renders the same inputs single-process.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import torch
from PIL import Image

HEIGHT, WIDTH, FRAMES = 48, 80, 9  # tiny (stride 8, patch 2): 3 x 3 x 5 = 45 tokens, padded for 2 and 4
TI2V_HEIGHT, TI2V_WIDTH = 96, 160  # tiny-ti2v (stride 16, patch 2): 3 x 3 x 5 = 45 tokens
STEPS = 4  # diffusers schedule, shift 3: t = 999, 900 (high-noise expert, g 4), 750, 500 (low-noise, g 3)
NUM_TOKENS = 45


def make_inputs(text_dim: int, z_dim: int, height: int, width: int, stride: int, *, batch: int = 2, seed: int = 0):
    """Distinct prompt embeds per row (true lengths 7 and 4), negative embeds, initial latents."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, 512, text_dim, generator=generator)
    negative = torch.randn(batch, 512, text_dim, generator=generator)
    for row in range(batch):
        context[row, 7 - 3 * (row % 2):] = 0
        negative[row, 5 - (row % 2):] = 0
    latents = torch.randn(batch, z_dim, (FRAMES - 1) // 4 + 1, height // stride, width // stride, generator=generator)
    return context, negative, latents


def gradient_image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3))
    return Image.fromarray((ramp * 0.7 + rng.uniform(0, 70, (height, width, 3))).astype(np.uint8))


def use_test_dit(pipe, *, dim: int = 64, num_heads: int = 4, seed: int = 10):
    """Replace ``pipe``'s experts by random DiTs with ``num_heads`` heads (tiny has 2; Ulysses 4 needs 4)."""
    from wan_dist.models.dit import WanDiT
    from wan_dist.models.make_checkpoint import random_dit_tensors

    spec = replace(pipe.spec, dit=replace(pipe.spec.dit, dim=dim, ffn_dim=2 * dim, num_heads=num_heads))
    experts = []
    for index, old in enumerate(pipe.experts):
        model = WanDiT(spec.dit)
        model.load_state_dict(dict(random_dit_tensors(spec, seed=seed + index)))
        model.timestep_precision = old.timestep_precision
        experts.append(model.eval())
    pipe.experts, pipe.spec = experts, spec
    return pipe


class LatentOnlyVAE:
    """The strides of a VAE, without its weights: renders of ``output_type="latent"`` from
    ``prompt_embeds`` never encode or decode, and skipping diffusers' and transformers' imports saves
    ~10 s per spawned rank."""

    def __init__(self, config):
        self.temporal_stride = config.temporal_stride
        self.spatial_stride = config.spatial_stride


def load(folder: str, heads: int | None, full: bool = False):
    """A float32 pipeline of ``folder``: the whole pipeline with ``full``, else experts only."""
    from wan_dist.engine.pipeline import WanPipeline, load_local_pipeline as load_pipeline
    from wan_dist.models.checkpoint import detect_checkpoint, load_dit

    if full:
        pipe = load_pipeline(folder, dtype=torch.float32)
    else:
        info = detect_checkpoint(folder)
        experts = [load_dit(d, info.spec.dit, layout=info.layout, dtype=torch.float32) for d in info.expert_dirs]
        pipe = WanPipeline(info=info, experts=experts, vae=LatentOnlyVAE(info.spec.vae), text_encoder=None,
                           device=torch.device("cpu"), dtype=torch.float32)
    return use_test_dit(pipe, num_heads=heads) if heads else pipe


def generate_kwargs(case: dict) -> dict:
    kwargs = dict(case["kwargs"])
    if case.get("image"):
        kwargs["image"] = gradient_image(kwargs["width"], kwargs["height"])
    return kwargs


@torch.no_grad()
def rank_program(rank: int, world_size: int, cases: list[dict]) -> dict:
    """Run every case on this rank: {name: (final latents, bytes sent per op)}."""
    from wan_dist.config import ParallelConfig
    from wan_dist.parallel.mesh import ParallelMesh
    from wan_dist.parallel.runtime import make_parallel_generate, parallel_generate

    pipes: dict = {}
    results = {}
    for case in cases:
        key = (case["folder"], case.get("heads"), bool(case.get("full")))
        if key not in pipes:
            pipes[key] = load(*key)
        pipe = pipes[key]
        if case.get("entry"):  # the render group's entry point, built from the config alone
            generate = make_parallel_generate(pipe, ParallelConfig(**case["parallel"]), timeout=timedelta(seconds=60))
            out = generate(**generate_kwargs(case))
            results[case["name"]] = (out.frames, out.seed)
            continue
        mesh = ParallelMesh.build(ParallelConfig(**case["parallel"]), num_heads=pipe.spec.dit.num_heads,
                                  timeout=timedelta(seconds=60))
        mesh.counter.reset()
        out = parallel_generate(pipe, mesh, **generate_kwargs(case))
        results[case["name"]] = (out.frames, mesh.counter.snapshot())
    return results


@torch.no_grad()
def single_process(case: dict, **overrides):
    pipe = load(case["folder"], case.get("heads"), bool(case.get("full")))
    return pipe.generate(**{**generate_kwargs(case), **overrides}).frames
