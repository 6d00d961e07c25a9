"""Sequence split and gather over the sequence group (ring x ulysses ranks).

A sample's L tokens (order frame, row, column) are padded at the end to ``P * Ls`` with
``Ls = ceil(L / P)`` and ``P`` = sequence degree; sequence rank ``s`` holds tokens
``[s * Ls, (s + 1) * Ls)`` of every sample of its batch. Only the last shard(s) carry padding; the
number of valid tokens travels to self-attention as ``key_length`` (global), so padded keys get no
weight, and padded query rows are dropped by :func:`gather_sequence`. A rank whose shard is
padding only (fewer tokens than about the degree, e.g. a one-token warm-up) still computes
correctly: its queries are dropped and its keys masked; it simply does no useful work.

Everything a shard needs is computed for the shard only: patch embedding of the frames it spans,
RoPE at its GLOBAL positions (``model.rope(grid, start, end)``), and per-token timesteps (TI2V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan_dist.parallel.comm import CommCounter, all_gather_cat
from wan_dist.parallel.mesh import AxisGroup

__all__ = ["SequenceShard", "plan_sequence", "shard_tokens", "shard_timestep", "embed_shard", "gather_sequence"]


@dataclass(frozen=True)
class SequenceShard:
    """Which tokens sequence rank ``index`` of ``degree`` holds, for a sample of ``num_tokens`` tokens."""

    num_tokens: int
    degree: int
    index: int

    @property
    def shard_tokens(self) -> int:
        """Ls: tokens per rank, padding included."""
        return math.ceil(self.num_tokens / self.degree)

    @property
    def padded_tokens(self) -> int:
        return self.shard_tokens * self.degree

    @property
    def start(self) -> int:
        """Global position of this shard's first token."""
        return self.index * self.shard_tokens

    @property
    def end(self) -> int:
        """One past the global position of this shard's last token (may exceed num_tokens: padding)."""
        return self.start + self.shard_tokens

    @property
    def valid_tokens(self) -> int:
        """Tokens of this shard that are real (not padding)."""
        return max(0, min(self.end, self.num_tokens) - self.start)

    @property
    def key_length(self) -> int | None:
        """Global count of valid keys for the attention function, None when nothing is padded."""
        return None if self.padded_tokens == self.num_tokens else self.num_tokens


def plan_sequence(num_tokens: int, degree: int, index: int) -> SequenceShard:
    """The shard of sequence rank ``index`` of ``degree`` for ``num_tokens`` (>= 1) tokens."""
    if num_tokens < 1:
        raise ValueError(f"plan_sequence: need at least one token, got {num_tokens}")
    if not 0 <= index < degree:
        raise ValueError(f"plan_sequence: index {index} out of range for degree {degree}")
    return SequenceShard(num_tokens=num_tokens, degree=degree, index=index)


def shard_tokens(x: torch.Tensor, shard: SequenceShard, *, dim: int = 1) -> torch.Tensor:
    """This rank's shard of ``x`` (all ``num_tokens`` along ``dim``), zero padded to Ls along ``dim``."""
    if x.shape[dim] != shard.num_tokens:
        raise ValueError(f"shard_tokens: dim {dim} has {x.shape[dim]} tokens, the plan {shard.num_tokens}")
    part = x.narrow(dim, shard.start, shard.valid_tokens)
    missing = shard.shard_tokens - shard.valid_tokens
    if missing == 0:
        return part
    pad = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [0, missing]
    return F.pad(part, pad)


def shard_timestep(timestep: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
    """timestep [B] (unchanged) or per token [B, L] -> [B, Ls] (padding gets t = 0, a finite value)."""
    if timestep.ndim == 1:
        return timestep
    return shard_tokens(timestep, shard, dim=1)


def embed_shard(model, latents: torch.Tensor, grid: tuple[int, int, int], shard: SequenceShard) -> torch.Tensor:
    """Patch embedding of this shard's tokens only: fp32 [B, Ls, dim], zero rows for padding.

    latents [B, C_in, F, H, W] (replicated). Only the latent frames the shard spans go through
    ``model.embed_latents`` (the model's own patch embedding), at most Ls + 2 frames of tokens.
    """
    if shard.valid_tokens == 0:
        return latents.new_zeros(latents.shape[0], shard.shard_tokens, model.config.dim, dtype=torch.float32)
    frame_tokens = grid[1] * grid[2]
    patch_t = model.config.patch_size[0]
    first = shard.start // frame_tokens
    last = math.ceil((shard.start + shard.valid_tokens) / frame_tokens)
    tokens, _ = model.embed_latents(latents[:, :, first * patch_t:last * patch_t])
    offset = shard.start - first * frame_tokens
    part = tokens[:, offset:offset + shard.valid_tokens]
    missing = shard.shard_tokens - shard.valid_tokens
    return F.pad(part, (0, 0, 0, missing)) if missing else part.contiguous()


def gather_sequence(x: torch.Tensor, shard: SequenceShard, axis: AxisGroup, *,
                    counter: CommCounter | None = None) -> torch.Tensor:
    """Every sequence rank's shard x [B, Ls, ...] -> [B, L, ...] on every rank (padding dropped)."""
    full = all_gather_cat(x, axis.group, axis.size, dim=1, counter=counter, op="sequence_gather")
    return full[:, :shard.num_tokens]
