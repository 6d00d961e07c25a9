"""CFG parallel: cond and uncond on different halves of the group (the ``cfg`` axis).

:func:`cfg_parallel_prediction` returns a ``predict`` for :func:`wan_dist.sampling.denoise.denoise`
with the signature of :func:`~wan_dist.sampling.denoise.guided_prediction`. cfg rank 0 runs the
cond forward, cfg rank 1 the uncond forward (each with its own sequence group inside); one
all_gather over the cfg axis per step exchanges the two predictions and every rank combines them
with the same formula, so every rank holds the same guided velocity.
"""

from __future__ import annotations

import torch

from wan_dist.parallel.comm import all_gather_cat
from wan_dist.parallel.mesh import ParallelMesh
from wan_dist.sampling.denoise import guided_prediction

__all__ = ["cfg_parallel_prediction"]


def cfg_parallel_prediction(mesh: ParallelMesh):
    """``predict(expert, model_input, timestep, context, negative_context, guidance_scale) -> v``.

    model_input [B, C, F, H, W], timestep [B] or [B, L], contexts [B, T, C_text]: replicated on the
    cfg ranks. Returns fp32 v [B, C_out, F, H, W] on every rank. With a cfg degree of 1 this is
    ``guided_prediction`` (cond and uncond batched). Without guidance this step (no negative
    context, or g == 1) every cfg rank runs the cond forward itself and nothing is exchanged.
    """
    axis = mesh.axis("cfg")
    if axis.size == 1:
        return guided_prediction

    def predict(expert, model_input: torch.Tensor, timestep: torch.Tensor, context, negative_context,
                guidance_scale: float, *, batched_context=None) -> torch.Tensor:
        del batched_context  # each cfg rank runs one half: the [cond; uncond] batch is never formed
        if negative_context is None or guidance_scale == 1.0:
            return expert(model_input, timestep, context)
        mine = context if axis.index == 0 else negative_context
        half = expert(model_input, timestep, mine).float()
        both = all_gather_cat(half.unsqueeze(0), axis.group, axis.size, dim=0, counter=mesh.counter,
                              op="cfg_gather")
        cond, uncond = both[0], both[1]
        return uncond + guidance_scale * (cond - uncond)

    return predict
