"""Apply sequence parallelism to an unmodified :class:`~wan_dist.models.dit.WanDiT`.

``expert = parallelize_dit(model, mesh)`` swaps the model's self-attention function for the mesh's
distributed one and returns a callable ``expert(latents, timestep, context) -> v`` with the same
contract as the model's forward, run by every rank of the sequence group (SPMD):

    embed this rank's token shard -> blocks (distributed self-attention) -> head -> gather -> unpatchify

Inputs are replicated over the sequence group; activations between embedding and gather exist
only as this rank's shard [B, Ls, dim]; the output is the full prediction on every rank. The pure
denoising loop runs unchanged on top of it.
"""

from __future__ import annotations

import inspect
import math

import torch

from wan_dist.models.attention import get_attention
from wan_dist.parallel.attention import make_sequence_attention
from wan_dist.parallel.mesh import ParallelMesh
from wan_dist.parallel.sequence import embed_shard, gather_sequence, plan_sequence, shard_timestep

__all__ = ["ParallelDiT", "parallelize_dit"]


class ParallelDiT:
    """A WanDiT run over ``mesh``'s sequence group. Create with :func:`parallelize_dit`.

    ``model`` stays a plain WanDiT (its parameters untouched, replicated on every rank); only its
    ``attention_fn`` is replaced. Call as ``expert(latents, timestep, context)``.
    """

    # denoise hands every step the same context tensors (cond, uncond or both batched): a few suffice
    context_cache_size = 4

    def __init__(self, model, mesh: ParallelMesh):
        self.model = model
        self.mesh = mesh
        self._prepared: dict[int, tuple[torch.Tensor, object]] = {}  # id(context) -> (context, prepared)

    def prepare_context(self, context):
        """The model's prepared text of ``context`` [B, <= text_len, text_dim] (replicated), made on
        first use of each context tensor and reused while it is among the last few seen; a prepared
        context (not a tensor) passes through unchanged."""
        if not isinstance(context, torch.Tensor):
            return context
        entry = self._prepared.get(id(context))
        if entry is not None and entry[0] is context:  # holding the tensor keeps its id unique
            return entry[1]
        prepare = getattr(self.model, "prepare_context", None)
        prepared = prepare(context) if prepare is not None else self.model.embed_text(context)
        if len(self._prepared) >= self.context_cache_size:
            self._prepared.pop(next(iter(self._prepared)))
        self._prepared[id(context)] = (context, prepared)
        return prepared

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, context, *, blocks=None) -> torch.Tensor:
        """Velocity prediction, as ``model(latents, timestep, context)``.

        latents [B, C_in, F, H, W], timestep [B] or per token [B, L], context [B, text_len, text_dim]
        (or the model's prepared context), all replicated over the sequence group. Sequence rank s
        computes tokens [s * Ls, (s + 1) * Ls) of every sample. Returns fp32 [B, C_out, F, H, W], the
        same on every rank of the sequence group.
        ``blocks``: a step cache's hook, called as ``blocks(model, x, run)`` on this rank's shard x [B, Ls, dim]
        in place of ``run(x)`` (see :meth:`wan_dist.sampling.step_cache.StepCache.hook`); it decides from
        replicated values only, so every rank of the group runs the blocks (and their collectives) or none.
        """
        model, axis = self.model, self.mesh.sequence
        grid = model.grid_of(latents.shape)
        shard = plan_sequence(math.prod(grid), axis.size, axis.index)
        if timestep.shape[0] != latents.shape[0]:
            raise ValueError(f"ParallelDiT: batch sizes differ: latents {latents.shape[0]}, "
                             f"timestep {timestep.shape[0]}")
        x = embed_shard(model, latents, grid, shard)  # [B, Ls, dim]
        e, e0 = model.embed_time(shard_timestep(timestep, shard).to(x.device), shard.shard_tokens)
        text = self.prepare_context(context)
        rope = model.rope(grid, shard.start, shard.end, device=x.device)

        def run(tokens: torch.Tensor) -> torch.Tensor:
            return _run_blocks(model, tokens, e0, text, rope, shard.key_length)

        x = run(x) if blocks is None else blocks(model, x, run)
        out = model.head(x, e)  # [B, Ls, prod(patch) * C_out], fp32
        out = gather_sequence(out, shard, axis, counter=self.mesh.counter)
        return model.unpatchify(out, grid)


def _run_blocks(model, x: torch.Tensor, e0: torch.Tensor, text, rope, key_length: int | None) -> torch.Tensor:
    """The model's blocks on this rank's shard x [B, Ls, dim]; x is ours (made by embed_shard), so
    without autograd the blocks may update it in place where the model supports that."""
    if "inplace" in inspect.signature(model.run_blocks).parameters:
        return model.run_blocks(x, e0, text, rope, key_length=key_length, inplace=not torch.is_grad_enabled())
    for block in model.blocks:
        x = block(x, e0, text, rope, key_length=key_length)
    return x


def parallelize_dit(model, mesh: ParallelMesh, *, attention=None) -> ParallelDiT:
    """Make ``model`` (a WanDiT, modified in place: its ``attention_fn``) run over ``mesh``.

    attention: the local attention function to use inside (default: ``mesh.config.attention`` by
    name). Raises ValueError when the ulysses degree does not divide the model's heads. With a
    sequence degree of 1 the model keeps its local attention (or ``attention``).
    """
    mesh.check_model(model.config)
    if mesh.sequence.size > 1:
        model.attention_fn = make_sequence_attention(mesh, local=attention)
    else:  # also undoes an earlier parallelize_dit over another mesh
        model.attention_fn = attention or get_attention(mesh.config.attention)
    return ParallelDiT(model, mesh)
