"""Expert sharding with FSDP2 (``ParallelConfig.fsdp``): each rank holds 1/P of every expert.

Inference only: no gradients, no optimizer; FSDP2 is used for its sharded storage and its
all-gather / free around each unit's forward (``reshard_after_forward=True``).

Which ranks shard. ``over="world"`` (the default) shards over every rank of the render group: the
weights are identical on all data, cfg, ring and ulysses ranks, so the whole group shares one copy
(1/P of an expert per rank, the most memory saved). That is safe because every rank makes the same
expert calls in the same order (one forward per step on each cfg rank, the same steps on each data
rank), so the all-gathers of all ranks line up. An axis name (``"sequence"``, ``"cfg"`` ...) shards
over that axis' group instead: less memory saved, but weight traffic stays among neighbours.

Which rank holds which shard. Every parameter is split along dim 0 as ``torch.chunk`` does over the
P ranks of the sharding group: the rank at position r holds rows ``[r * c, min((r + 1) * c, N))`` with
``c = ceil(N / P)`` (possibly none: e.g. a block's ``modulation`` [1, 6, dim] lives on position 0
only). FSDP2 pads each local shard to ``c`` rows internally; the padding is never read from a
checkpoint.

Units (what is gathered at once):
- each block's ``cross_attn`` (gathered when a render prepares the text keys and values, and again
  inside the block's cross-attention),
- each block without its ``cross_attn`` (self-attention, norm3, FFN, modulation),
- the root: patch, text and time embeddings and the head, gathered for the whole expert call.
So at any moment a rank holds at most one block (of one expert) unsharded, plus the small root.
Traffic: every all-gather is counted into the mesh's :class:`~wan_dist.parallel.comm.CommCounter` as
``fsdp_all_gather`` (:class:`~wan_dist.parallel.comm.CountedAllGather`); its analytic value is
:func:`~wan_dist.parallel.comm.expected_fsdp_bytes` of :func:`gather_unit_bytes`.
Mixed dtypes are fine: parameters never require grad (FSDP2 only asks trainable parameters for a
uniform dtype) and it all-gathers mixed-dtype groups as bytes, so a bf16 expert keeps
``WanDiT.fp32_param_patterns`` in fp32.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from wan_dist.models.checkpoint import dit_timestep_precision, fp32_param_names, visit_dit_tensors
from wan_dist.parallel.comm import CountedAllGather
from wan_dist.parallel.dit import parallelize_dit
from wan_dist.parallel.mesh import ParallelMesh

__all__ = ["shard_expert", "load_dit_sharded", "ShardedExpert", "parallelize_sharded_dit", "is_sharded",
           "shard_rows", "local_shard_bytes", "gather_unit_bytes"]

# The root's forward method that runs a whole expert call with the root unit gathered.
_RUN = "run_unsharded"
# The root's attribute holding the CountedAllGather that every unit of the expert all-gathers with.
_COMM = "fsdp_all_gather_comm"


def _device_mesh(mesh: ParallelMesh, over: str, device_type: str) -> DeviceMesh:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("shard_expert: needs an initialised torch.distributed process group")
    if over == "world":
        return DeviceMesh.from_group(dist.group.WORLD, device_type)
    axis = mesh.axis(over)
    if axis.group is None:
        raise ValueError(f"shard_expert: axis {over!r} has one rank: nothing to shard over")
    return DeviceMesh.from_group(axis.group, device_type)


def _run_unsharded(self, fn, *args):
    """``fn(*args)`` as a forward of the root unit: its parameters are gathered for the call."""
    return fn(*args)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether :func:`shard_expert` was applied to ``model``."""
    return isinstance(model, FSDPModule) and hasattr(model, _RUN)


def shard_expert(model: torch.nn.Module, mesh: ParallelMesh, *, over: str = "world",
                 device: str | torch.device | None = None) -> torch.nn.Module:
    """Shard a WanDiT with FSDP2 over ``over``'s ranks (see the module docstring); returns ``model``.

    Collective: every rank of the sharding group calls it, with the same model structure. ``model``
    may be on the meta device (then ``device`` says where the shards will live; fill them with
    :func:`load_dit_sharded`'s reader or ``to_empty``) or materialised (each rank keeps its rows and
    the full tensors are dropped). The model is switched to eval with ``requires_grad=False``.
    """
    params = list(model.parameters())
    device = torch.device(device) if device is not None else params[0].device
    if device.type == "meta":
        raise ValueError("shard_expert: the model is on the meta device; pass device= (where shards live)")
    device_mesh = _device_mesh(mesh, over, device.type)
    model.eval().requires_grad_(False)
    for block in model.blocks:
        fully_shard(block.cross_attn, mesh=device_mesh, reshard_after_forward=True)
        # The text keys and values are prepared outside the block's forward, once per render.
        register_fsdp_forward_method(block.cross_attn, "prepare_kv")
        register_fsdp_forward_method(block.cross_attn, "cross_attention")
        fully_shard(block, mesh=device_mesh, reshard_after_forward=True)
    fully_shard(model, mesh=device_mesh, reshard_after_forward=True)
    object.__setattr__(model, _RUN, _run_unsharded.__get__(model, type(model)))
    register_fsdp_forward_method(model, _RUN)
    comm = CountedAllGather()  # counts into the calling ShardedExpert's mesh counter
    if hasattr(model, "set_custom_all_gather"):  # torch >= 2.9
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_custom_all_gather(comm)
    else:
        warnings.warn("shard_expert: this torch lacks FSDPModule.set_custom_all_gather; FSDP all-gathers "
                      "are not counted in the communication counter", RuntimeWarning, stacklevel=2)
    object.__setattr__(model, _COMM, comm)
    return model


class ShardedExpert:
    """``expert(latents, timestep, context) -> fp32 v`` of an FSDP-sharded WanDiT over ``mesh``.

    Same contract as :class:`~wan_dist.parallel.dit.ParallelDiT` (sequence parallel inside; inputs
    replicated over the sequence group; the full prediction on every rank of it). Every rank of the
    sharding group must make the same calls: each call all-gathers the root once and each block
    (and its cross-attention) while it runs.
    """

    def __init__(self, model: torch.nn.Module, mesh: ParallelMesh):
        if not is_sharded(model):
            raise ValueError("ShardedExpert: apply shard_expert (or load_dit_sharded) to the model first")
        self.model = model
        self.parallel = parallelize_dit(model, mesh)

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, context, *, blocks=None) -> torch.Tensor:
        """``blocks``: a step cache's hook (see :class:`~wan_dist.parallel.dit.ParallelDiT`); it runs inside the
        root unit's gathered call, so a skipped step gathers the root and no block."""
        comm = getattr(self.model, _COMM)
        outer, comm.counter = comm.counter, self.parallel.mesh.counter  # one model may serve several meshes
        fn = self.parallel if blocks is None else functools.partial(self.parallel, blocks=blocks)
        try:
            return getattr(self.model, _RUN)(fn, latents, timestep, context).float()
        finally:
            comm.counter = outer
            # FSDP2 keeps per-iteration bookkeeping for backward prefetch; without a backward it would
            # grow by one entry per unit per call. Public since torch 2.12; older versions lack it.
            reset = getattr(self.model, "reset_iter_state", None)
            if reset is not None:
                reset()


def parallelize_sharded_dit(model: torch.nn.Module, mesh: ParallelMesh, *, over: str = "world") -> ShardedExpert:
    """:class:`ShardedExpert` of ``model``, sharding it first (collective) unless it already is."""
    if not is_sharded(model):
        shard_expert(model, mesh, over=over)
    return ShardedExpert(model, mesh)


def shard_rows(num_rows: int, size: int, position: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of a dim-0 of ``num_rows`` that sharding position ``position`` of ``size``
    holds (``torch.chunk``'s split, as FSDP2 uses; ``start == end`` when it holds none)."""
    chunk = math.ceil(num_rows / size) if num_rows else 0
    start = min(position * chunk, num_rows)
    return start, min(start + chunk, num_rows)


def local_shard_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters this rank holds (the local tensors of the sharded parameters)."""
    total = 0
    for param in model.parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        total += local.numel() * local.element_size()
    return total


def gather_unit_bytes(model: torch.nn.Module, shard: int) -> dict[str, int]:
    """Bytes of one rank's all-gather input per kind of unit of a WanDiT sharded over ``shard`` ranks.

    ``{"root": ..., "blocks": ..., "cross": ...}``: the root unit; all blocks without their
    cross-attention; all cross-attention units (the inputs of
    :func:`~wan_dist.parallel.comm.expected_fsdp_bytes`). FSDP2 all-gathers every parameter [N, ...]
    as its dim-0 shard padded to ``ceil(N / shard)`` rows, the same size on every rank. ``model``
    may be sharded or not (only global shapes and dtypes are read).
    """
    def padded(params) -> int:
        return sum(math.ceil(p.shape[0] / shard) * math.prod(p.shape[1:]) * p.dtype.itemsize for p in params)

    cross = [p for block in model.blocks for p in block.cross_attn.parameters()]
    in_blocks = {id(p) for p in model.blocks.parameters()}
    in_cross = {id(p) for p in cross}
    return {"root": padded(p for p in model.parameters() if id(p) not in in_blocks),
            "blocks": padded(p for p in model.blocks.parameters() if id(p) not in in_cross),
            "cross": padded(cross)}


def load_dit_sharded(folder: str | Path, config, *, layout: str, mesh: ParallelMesh,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     over: str = "world") -> torch.nn.Module:
    """Load one expert from ``folder`` straight into this rank's FSDP2 shards; returns the WanDiT.

    Collective over the sharding group (``over``, see :func:`shard_expert`). The model is built on
    the meta device and sharded; then each rank reads from each safetensors shard only its rows of
    each tensor (:func:`shard_rows`; ``get_slice``), casting to ``dtype`` except the parameters the
    model keeps in fp32. No rank ever materialises a full tensor. Errors as
    :func:`~wan_dist.models.checkpoint.load_dit` (CheckpointError naming file and key).
    """
    from wan_dist.models.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(config)
    expected = {name: param.shape for name, param in model.named_parameters()}
    fp32 = fp32_param_names(model)
    for name, param in model.named_parameters():  # set dtypes before sharding: shards are made in them
        param.data = param.data.to(torch.float32 if name in fp32 else dtype)
    shard_expert(model, mesh, over=over, device=device)
    model.to_empty(device=device)
    local = dict(model.named_parameters())

    def read(handle, raw_key: str, name: str) -> None:
        param = local[name]
        target = param.to_local()
        size, position = param.device_mesh.size(), param.device_mesh.get_local_rank()
        start, end = shard_rows(expected[name][0], size, position)
        if target.shape[0] != end - start:
            raise RuntimeError(f"load_dit_sharded: {name}: FSDP holds {target.shape[0]} rows at position "
                               f"{position} of {size}, expected rows {start}:{end}")
        if end > start:
            target.copy_(handle.get_slice(raw_key)[start:end])

    with torch.no_grad():
        visit_dit_tensors(folder, expected, layout=layout, visit=read)  # raises on missing keys
    model.timestep_precision = dit_timestep_precision(layout)
    return model
