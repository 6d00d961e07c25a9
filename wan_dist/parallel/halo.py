"""Row bands of an image tensor split across a process group: split sizes, halo exchange, gathers.

A "row band" is a slice of dim -2 (height). Rank ``r`` of a group of ``P`` holds rows
``[offsets[r], offsets[r] + sizes[r])`` with ``sizes`` from :func:`row_split` (the first
``rows % P`` ranks hold one extra row). Every other dim is the same on every rank.

All functions here are collectives over ``group`` (every rank of it must call them in the same
order with tensors that agree in every dim but -2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["row_split", "halo_pad_rows", "gathered_row_sizes", "all_gather_rows", "gather_rows"]


def row_split(rows: int, world_size: int) -> list[int]:
    """Rows per rank: ``rows // P`` each, one more for the first ``rows % P`` ranks.

    Raises ValueError if a rank would get no row (a band needs at least one row to serve as
    its neighbours' halo).
    """
    if world_size < 1:
        raise ValueError(f"row_split: world_size must be >= 1, got {world_size}")
    if rows < world_size:
        raise ValueError(f"row_split: {rows} rows cannot be split over {world_size} ranks "
                         "(every rank needs at least one row)")
    base, extra = divmod(rows, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def _rank_and_size(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def halo_pad_rows(tensors: Sequence[torch.Tensor], pad: int, group=None) -> list[torch.Tensor]:
    """Extend each tensor's row band by ``pad`` rows on both sides (dim -2).

    The rows come from the neighbouring ranks' bands (rank r-1 gives its last ``pad`` rows,
    rank r+1 its first); at the global image border they are zeros, which is exactly what the
    zero padding of a convolution over the full image would add. One ``batch_isend_irecv`` for
    all ``tensors`` (e.g. a conv input and its temporal cache). ``[..., h, W] -> [..., h + 2*pad, W]``.
    """
    if pad == 0:
        return list(tensors)
    rank, world_size = _rank_and_size(group)
    for tensor in tensors:
        if tensor.shape[-2] < pad:
            raise ValueError(f"halo_pad_rows: a band of {tensor.shape[-2]} rows cannot give a halo of {pad} rows; "
                             "use fewer ranks or a taller latent")
    ops: list[dist.P2POp] = []
    tops: list[torch.Tensor] = []
    bottoms: list[torch.Tensor] = []
    for tensor in tensors:
        edge_shape = (*tensor.shape[:-2], pad, tensor.shape[-1])
        top = tensor.new_zeros(edge_shape)
        bottom = tensor.new_zeros(edge_shape)
        if rank > 0:
            ops.append(dist.P2POp(dist.isend, tensor[..., :pad, :].contiguous(), group=group, group_peer=rank - 1))
            ops.append(dist.P2POp(dist.irecv, top, group=group, group_peer=rank - 1))
        if rank < world_size - 1:
            ops.append(dist.P2POp(dist.isend, tensor[..., -pad:, :].contiguous(), group=group, group_peer=rank + 1))
            ops.append(dist.P2POp(dist.irecv, bottom, group=group, group_peer=rank + 1))
        tops.append(top)
        bottoms.append(bottom)
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return [torch.cat([top, tensor, bottom], dim=-2) for top, tensor, bottom in zip(tops, tensors, bottoms)]


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    missing = rows - tensor.shape[-2]
    if missing == 0:
        return tensor.contiguous()
    return torch.cat([tensor, tensor.new_zeros((*tensor.shape[:-2], missing, tensor.shape[-1]))], dim=-2)


def gathered_row_sizes(tensor: torch.Tensor, group=None) -> list[int]:
    """Rows (dim -2) of every rank's band, in rank order (one small all_gather)."""
    _, world_size = _rank_and_size(group)
    size = torch.tensor([tensor.shape[-2]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


def all_gather_rows(tensor: torch.Tensor, group=None, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's row band in rank order (uneven bands: padded, then trimmed).

    ``sizes`` (rows per rank) saves one small all_gather when the caller knows them.
    Every rank returns ``[..., sum(sizes), W]``.
    """
    _, world_size = _rank_and_size(group)
    sizes = list(sizes) if sizes is not None else gathered_row_sizes(tensor, group)
    longest = max(sizes)
    buffers = [tensor.new_empty((*tensor.shape[:-2], longest, tensor.shape[-1])) for _ in range(world_size)]
    dist.all_gather(buffers, _padded(tensor, longest), group=group)
    return torch.cat([buf[..., :rows, :] for buf, rows in zip(buffers, sizes)], dim=-2)


def gather_rows(tensor: torch.Tensor, dst: int, group=None, sizes: Sequence[int] | None = None) -> torch.Tensor | None:
    """Like :func:`all_gather_rows`, but only group rank ``dst`` receives (others return None)."""
    rank, world_size = _rank_and_size(group)
    sizes = list(sizes) if sizes is not None else gathered_row_sizes(tensor, group)
    longest = max(sizes)
    buffers = None
    if rank == dst:
        buffers = [tensor.new_empty((*tensor.shape[:-2], longest, tensor.shape[-1])) for _ in range(world_size)]
    dist.gather(_padded(tensor, longest), buffers, group=group, group_dst=dst)
    if buffers is None:
        return None
    return torch.cat([buf[..., :rows, :] for buf, rows in zip(buffers, sizes)], dim=-2)
