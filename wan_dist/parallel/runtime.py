"""SPMD generate for one rank of a render group.

``generate = make_parallel_generate(pipe, parallel_config)`` (collective: every rank calls it, after
``torch.distributed`` is initialised) returns a function with the signature and results of
``pipe.generate`` (a loaded :class:`~wan_dist.engine.pipeline.WanPipeline`, duck-typed here so this
layer does not import the engine). Every rank calls it with the same arguments:

- the data axis splits the batch: data rank d renders rows ``[d * B / D, (d + 1) * B / D)`` (B must
  divide evenly) and the finished rows are all-gathered, so every rank returns the whole batch;
- the cfg axis runs cond and uncond on different ranks (:func:`cfg_parallel_prediction`);
- ring x ulysses shard the sequence inside each expert (:func:`parallelize_dit`).

Text encoding runs once, on rank 0 (:mod:`wan_dist.parallel.text`: the other ranks receive the embeddings
and need no text encoder). The VAE decode runs replicated on every rank, unless ``vae_parallel`` is set, in
which case every rank decodes a band of latent rows (:func:`wan_dist.parallel.vae.decode_distributed`). The seed, when not given, is drawn
on rank 0 and broadcast so every rank draws the same initial noise.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from wan_dist.config import ParallelConfig
from wan_dist.parallel.cfg import cfg_parallel_prediction
from wan_dist.parallel.comm import all_gather_cat
from wan_dist.parallel.dit import parallelize_dit
from wan_dist.parallel.mesh import ParallelMesh
from wan_dist.parallel.text import share_text

__all__ = ["ParallelGenerate", "make_parallel_generate", "parallel_generate", "parallel_experts"]


def parallel_experts(pipe, mesh: ParallelMesh) -> list:
    """``expert(x, t, context) -> fp32 v`` for each of ``pipe.experts`` (high-noise first), over ``mesh``.

    ``mesh.config.fsdp``: each expert is FSDP2-sharded over the whole group (collective; experts that
    :func:`wan_dist.parallel.fsdp.load_dit_sharded` loaded already are) and gathered block by block.
    """
    if mesh.config.fsdp:
        from wan_dist.parallel.fsdp import parallelize_sharded_dit

        return [parallelize_sharded_dit(model, mesh) for model in pipe.experts]
    experts = []
    for model in pipe.experts:
        wrapped = parallelize_dit(model, mesh)

        def expert(x, t, context, *, blocks=None, _wrapped=wrapped):
            return _wrapped(x, t, context, blocks=blocks).float()

        experts.append(expert)
    return experts


def _shared_seed(seed: int | None) -> int:
    """``seed``, or one drawn on rank 0 and broadcast to every rank."""
    if seed is not None:
        return seed
    value = torch.tensor([random.randrange(2**31)], dtype=torch.int64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(value, src=0)
    return int(value.item())


def _gather_rows(frames, mesh: ParallelMesh):
    """This data rank's rows (tensor or numpy) -> the whole batch, in data-rank order, on every rank."""
    axis = mesh.axis("data")
    if axis.size == 1:
        return frames
    is_numpy = isinstance(frames, np.ndarray)
    tensor = torch.from_numpy(frames) if is_numpy else frames
    full = all_gather_cat(tensor, axis.group, axis.size, dim=0, counter=mesh.counter, op="data_gather")
    return full.numpy() if is_numpy else full


def parallel_generate(pipe, mesh: ParallelMesh, *args, experts: list | None = None, **kwargs):
    """One SPMD ``pipe.generate(*args, **kwargs)`` over ``mesh``; every rank returns the same WanOutput.

    ``experts``: from :func:`parallel_experts` (made here when None; pass them to reuse across calls).
    """
    kwargs["seed"] = _shared_seed(kwargs.get("seed"))
    experts = experts if experts is not None else parallel_experts(pipe, mesh)
    data = mesh.axis("data")
    split_decode = mesh.config.vae_parallel and kwargs.get("output_type", "np") == "np"
    if split_decode:  # denoise to latents here, then decode row bands across the whole group
        kwargs["output_type"] = "latent"
    out = pipe.generate(*args, experts=experts, predict=cfg_parallel_prediction(mesh),
                        data_shard=(data.index, data.size), **kwargs)
    out = dataclasses.replace(out, frames=_gather_rows(out.frames, mesh))
    return _decode_across_group(pipe, out) if split_decode else out


def _decode_across_group(pipe, out):
    """Every rank holds the whole batch's latents; each decodes its band of rows, all get the video."""
    import time

    from wan_dist.models.vae import video_to_frames
    from wan_dist.parallel.vae import decode_distributed

    tick = time.perf_counter()
    frames = video_to_frames(decode_distributed(pipe.vae, out.frames))
    timings = {**out.timings, "decode_s": time.perf_counter() - tick}
    frames = pipe.post_pass(out.camera, frames, timings)  # the controls' passes (exact camera) after the decode
    return dataclasses.replace(out, frames=frames, settings=dataclasses.replace(out.settings, output_type="np"),
                               timings=timings)


class ParallelGenerate:
    """This rank's ``generate(*args, **kwargs)`` of a colocated layout (Ulysses, ring, CFG, data, FSDP): the
    pipeline's generate with this rank's parallel experts on ``mesh``. Every rank returns the same WanOutput;
    ``result_rank`` 0 is the one a driver reads. A step control runs on rank 0 and broadcasts over the default
    group (``control_scope``). Prompts are encoded on :data:`~wan_dist.parallel.text.TEXT_RANK` only and
    broadcast (``encodes_text`` there). Collective to build (new process groups) and to call."""

    result_rank = 0

    def __init__(self, pipe, parallel: ParallelConfig, *, timeout: timedelta | None = None):
        self.pipe = pipe
        self.encodes_text = share_text(pipe)
        self.mesh = ParallelMesh.build(parallel, num_heads=pipe.spec.dit.num_heads, timeout=timeout)
        self.experts = parallel_experts(pipe, self.mesh)

    def __call__(self, *args, **kwargs):
        return parallel_generate(self.pipe, self.mesh, *args, experts=self.experts, **kwargs)

    def window_layout(self) -> dict:
        """What every rank denoises a long clip's windows with (engine/long.py): this layout's parallel experts
        and guided prediction (a data degree is refused before: engine.long_checks.long_layout_problem)."""
        return {"experts": self.experts, "predict": cfg_parallel_prediction(self.mesh)}

    @staticmethod
    def shared_seed(seed: int | None) -> int:
        """``seed``, or one drawn on rank 0 and broadcast (every rank calls it together)."""
        return _shared_seed(seed)

    @property
    def control_scope(self) -> tuple[int, int, Any]:
        """(rank running the step control, ranks taking part in its broadcast, their process group)."""
        return self.result_rank, dist.get_world_size(), None

    def events(self) -> list:
        return []


def make_parallel_generate(pipe, parallel: ParallelConfig, *, timeout: timedelta | None = None):
    """Build this rank's mesh and parallel experts once; return its layout's generate (a callable with
    ``result_rank``, ``mesh``, ``control_scope``, ``encodes_text`` and ``events()``).

    Collective (new process groups): every rank of the default group calls it together.
    ``parallel.placement == "disaggregated"``: the group splits into a high-noise and a low-noise
    stage, one expert each (:class:`wan_dist.parallel.stages.DisaggregatedGenerate`; every
    rank returns the same WanOutput).
    """
    if parallel.placement == "disaggregated":
        from wan_dist.parallel.stages import make_disaggregated_generate

        return make_disaggregated_generate(pipe, parallel, timeout=timeout)
    return ParallelGenerate(pipe, parallel, timeout=timeout)
