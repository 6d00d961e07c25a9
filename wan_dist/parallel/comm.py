"""Collective wrappers that count the bytes this rank sends, and the analytic traffic of each layout.

Every collective ``wan_dist.parallel`` issues goes through a wrapper here, which adds the payload
this rank sends to a :class:`CommCounter` under an op name:

- ``ulysses_all_to_all``: all_to_all_single over the ulysses axis. A rank keeps its own chunk and
  sends ``(P - 1) / P`` of its input.
- ``ring_kv``: the K/V block a ring rank sends to its successor, one per ring step (R - 1 per layer).
- ``sequence_gather``: all_gather of the head output over the sequence group; a rank sends its
  shard to each of the other ``P - 1`` ranks.
- ``cfg_gather``: all_gather of the guided half over the cfg axis (one per denoising step).
- ``data_gather``: all_gather of the finished rows over the data axis (one per render).
- ``fsdp_all_gather``: FSDP2's all-gather of one sharded unit's parameters (``ParallelConfig.fsdp``;
  :class:`CountedAllGather`, installed by :func:`wan_dist.parallel.fsdp.shard_expert`). A rank sends
  its padded shard of the unit to each of the other ``S - 1`` ranks of the sharding group, as
  ``all_gather_cat`` counts: ``(S - 1) * shard bytes``, i.e. ``(S - 1) / S`` of the padded unit.
  Inference has no reduce-scatter.

:func:`expected_step_bytes` and :func:`expected_fsdp_bytes` give the same numbers from the layout
alone (the formulas below); tests check measured == formula.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist

__all__ = ["CommCounter", "CountedAllGather", "all_to_all", "all_gather_cat", "ring_exchange", "expected_step_bytes",
           "expected_fsdp_bytes"]


class CommCounter:
    """Bytes sent and calls made by this rank, per op name. ``reset()`` starts a new window."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, op: str, nbytes: int) -> None:
        self.bytes[op] += int(nbytes)
        self.calls[op] += 1

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()

    def snapshot(self) -> dict[str, int]:
        """A plain copy of the byte counts (op -> bytes)."""
        return dict(self.bytes)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def all_to_all(tensor: torch.Tensor, group: dist.ProcessGroup, size: int, counter: CommCounter | None,
               op: str = "ulysses_all_to_all") -> torch.Tensor:
    """all_to_all_single of ``tensor`` [size, ...]: chunk i goes to group rank i, the result's chunk j
    came from group rank j. Counts ``nbytes * (size - 1) / size`` sent."""
    tensor = tensor.contiguous()
    out = torch.empty_like(tensor)
    dist.all_to_all_single(out, tensor, group=group)
    if counter is not None:
        counter.add(op, _nbytes(tensor) * (size - 1) // size)
    return out


def all_gather_cat(tensor: torch.Tensor, group: dist.ProcessGroup | None, size: int, *, dim: int,
                   counter: CommCounter | None, op: str) -> torch.Tensor:
    """All ranks' ``tensor`` (same shape everywhere) concatenated along ``dim`` in group order.
    Counts ``nbytes * (size - 1)`` sent. size 1: ``tensor`` itself."""
    if size == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor, group=group)
    if counter is not None:
        counter.add(op, _nbytes(tensor) * (size - 1))
    return torch.cat(parts, dim=dim)


def ring_exchange(send: torch.Tensor, receive: torch.Tensor, *, to_rank: int, from_rank: int,
                  group: dist.ProcessGroup, counter: CommCounter | None, op: str = "ring_kv") -> list:
    """Start sending ``send`` to global rank ``to_rank`` and receiving ``receive`` from ``from_rank``.

    Returns the requests; call ``wait()`` on each before reading ``receive`` or reusing ``send``.
    """
    ops = [dist.P2POp(dist.isend, send, to_rank, group), dist.P2POp(dist.irecv, receive, from_rank, group)]
    if counter is not None:
        counter.add(op, _nbytes(send))
    return dist.batch_isend_irecv(ops)


class CountedAllGather:
    """FSDP2's parameter all-gather (``FSDPModule.set_custom_all_gather``), counted as ``fsdp_all_gather``.

    FSDP2 calls it once per unshard of a unit with this rank's padded shards of the unit's parameters
    as one flat ``input_tensor`` (bytes when dtypes mix) and ``output_tensor`` of S times its size.
    Counts ``(S - 1) * input bytes`` sent into ``counter`` (None: not counted; the owner may repoint
    it between calls). The collective itself is FSDP2's default (``all_gather_single``).
    """

    op = "fsdp_all_gather"

    def __init__(self, counter: CommCounter | None = None) -> None:
        self.counter = counter

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 async_op: bool = False):
        work = _all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)
        if self.counter is not None:
            self.counter.add(self.op, _nbytes(input_tensor) * (dist.get_world_size(group) - 1))
        return work


# torch >= 2.13 renames all_gather_into_tensor (which then warns) to all_gather_single
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def expected_step_bytes(*, batch: int, num_tokens: int, dim: int, num_layers: int, out_dim: int,
                        latent_numel: int, ulysses: int, ring: int, cfg: int, itemsize: int,
                        cfg_split: bool) -> dict[str, int]:
    """Bytes one rank sends in one denoising step, per op (ops that move nothing are left out).

    batch: rows in this rank's forward (its data shard, x2 when cond and uncond are batched locally).
    num_tokens: L of one sample; the sequence group (P = ulysses * ring) pads it to P * Ls, so each
    rank holds Ls = ceil(L / P) tokens. dim: model width (heads * head_dim). out_dim: prod(patch) *
    out_channels. latent_numel: elements of this rank's guided prediction [rows, C, F, H, W].
    itemsize: bytes per element of q/k/v (the weights' dtype); head output and prediction are fp32.
    cfg_split: cond and uncond run on different cfg ranks this step.

    Per self-attention layer (Ulysses inside ring, USP):
      ulysses_all_to_all = 4 * batch * Ls * dim * itemsize * (U - 1) / U   (q, k, v in; out back)
      ring_kv            = 2 * (R - 1) * batch * (U * Ls) * (dim / U) * itemsize   (K and V per ring step)
    Per forward:  sequence_gather = (P - 1) * batch * Ls * out_dim * 4
    Per step:     cfg_gather      = (cfg - 1) * latent_numel * 4   (when cond/uncond are split)
    """
    parallel = ulysses * ring
    shard = math.ceil(num_tokens / parallel)
    result: dict[str, int] = {}
    if ulysses > 1:
        result["ulysses_all_to_all"] = num_layers * 4 * batch * shard * dim * itemsize * (ulysses - 1) // ulysses
    if ring > 1:
        result["ring_kv"] = num_layers * 2 * (ring - 1) * batch * (ulysses * shard) * (dim // ulysses) * itemsize
    if parallel > 1:
        result["sequence_gather"] = (parallel - 1) * batch * shard * out_dim * 4
    if cfg > 1 and cfg_split:
        result["cfg_gather"] = (cfg - 1) * latent_numel * 4
    return result


def expected_fsdp_bytes(*, root: int, blocks: int, cross: int, shard: int, expert_steps, forwards_per_step: int = 1
                        ) -> dict[str, int]:
    """Bytes one rank sends for FSDP2's parameter all-gathers in one render (``fsdp_all_gather``).

    root, blocks, cross: bytes of this rank's all-gather input (its padded shards, see
    :func:`wan_dist.parallel.fsdp.gather_unit_bytes`) of one expert's root unit, of all its block
    units (without cross-attention) together, and of all its cross-attention units together.
    shard: S, the ranks of the sharding group. expert_steps: denoising steps each expert serves in
    the render (only the active expert is gathered on a step; an expert with 0 steps moves nothing).
    forwards_per_step: expert calls of this rank per step, each with its own text context: 1 with
    CFG batched or split over the cfg axis (or without guidance), 2 with sequential CFG.

    Every unit is resharded after its forward (:func:`~wan_dist.parallel.fsdp.shard_expert`
    always sets ``reshard_after_forward``; without it a unit would be gathered once and stay whole:
    no traffic after its first use, and the memory of both whole experts), so each use gathers it:
      per expert call:              (S - 1) * (root + blocks + cross)   (root once, each block and its
                                                                         cross-attention once)
      per context, on first use:    (S - 1) * cross   (the text keys/values, prepared inside the call)
    total = (S - 1) * sum over experts with n > 0 steps of F * (n * (root + blocks + cross) + cross)
    In steady state (not an expert's first step): (S - 1) * F * (root + blocks + cross) per step.
    """
    if shard <= 1:
        return {}
    per_call = root + blocks + cross
    total = sum(forwards_per_step * (steps * per_call + cross) for steps in expert_steps if steps > 0)
    return {CountedAllGather.op: (shard - 1) * total} if total else {}
