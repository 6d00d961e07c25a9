"""Text encoding once per group: one rank runs the text encoder and broadcasts the embeddings.

Rank :data:`TEXT_RANK` of a render group (the leader of a colocated group, and of a disaggregated
group's high-noise stage) is the only rank that loads the text encoder; the others never read its
weights. A layout program sets ``pipe.text_share`` to a :class:`SharedText` over the ranks that need
text contexts (the whole group when colocated; stage 0 when disaggregated, whose hand-off carries
the contexts on to stage 1). Each ``pipe.encode_prompt`` is then collective over those ranks: the
source encodes (through its prompt cache, so prefetching still pays) and broadcasts the result.

On the wire: an int64 header ``(ok, batch, rows, dim)``, then the embeddings as bytes (any dtype
travels over gloo and NCCL). If the source's encoder raises, the header says so and the exception
follows, so every rank raises the same error for the request and the group stays healthy.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from wan_dist.parallel.handoff import _as_bytes, _wire_device

__all__ = ["TEXT_RANK", "SharedText", "share_text"]

TEXT_RANK = 0  # global rank that holds the text encoder in a render group


class SharedText:
    """``share(encode, prompts) -> [B, T, D]`` embeddings of ``prompts``, encoded on global rank ``src`` only.

    Collective over ``group`` (None: the default group): every member calls it with the same prompts in
    the same order. ``device``: where the broadcast buffers live (CPU for gloo, the GPU for NCCL); every
    rank returns the embeddings in ``dtype``, the source on its own device, the others on ``device``.
    """

    def __init__(self, *, src: int, group=None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.src, self.group, self.device, self.dtype = src, group, torch.device(device), dtype

    def __call__(self, encode: Callable[[list[str]], torch.Tensor], prompts: list[str]) -> torch.Tensor:
        if dist.get_rank() == self.src:
            return self._send(encode, prompts)
        header = torch.empty(4, dtype=torch.int64, device=self.device)
        dist.broadcast(header, self.src, group=self.group)
        ok, batch, rows, dim = (int(v) for v in header)
        if not ok:
            box = [None]
            dist.broadcast_object_list(box, self.src, group=self.group, device=self.device)
            raise box[0]
        embeds = torch.empty(batch, rows, dim, dtype=self.dtype, device=self.device)
        dist.broadcast(_as_bytes(embeds), self.src, group=self.group)
        return embeds

    def _send(self, encode, prompts: list[str]) -> torch.Tensor:
        try:
            embeds = encode(prompts).to(self.dtype)
        except Exception as error:
            dist.broadcast(torch.zeros(4, dtype=torch.int64, device=self.device), self.src, group=self.group)
            dist.broadcast_object_list([error], self.src, group=self.group, device=self.device)
            raise
        header = torch.tensor([1, *embeds.shape], dtype=torch.int64, device=self.device)
        dist.broadcast(header, self.src, group=self.group)
        dist.broadcast(_as_bytes(embeds.to(self.device)), self.src, group=self.group)
        return embeds


def share_text(pipe, group=None) -> bool:
    """Make ``pipe.encode_prompt`` collective over ``group`` (None: the default group; it must hold
    :data:`TEXT_RANK`), encoded on :data:`TEXT_RANK` only. Returns whether this rank encodes (alone,
    without a process group: nothing to share)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return True
    pipe.text_share = SharedText(src=TEXT_RANK, group=group, device=_wire_device(pipe), dtype=pipe.dtype)
    return dist.get_rank() == TEXT_RANK
