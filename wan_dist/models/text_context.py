"""Text conditioning prepared once per render for the DiT's cross-attention.

A context holds each prompt's true rows followed by exact zeros (the text encoder pads to text_len; given
embeddings may have any number of rows). After the (row-wise) text embedding all zero rows of a prompt
are the same vector, so every block
sees n identical (k, v) pairs, and attention over n identical pairs equals attention over one of
them with a logit bias of log(n). :meth:`wan_dist.models.dit.WanDiT.prepare_context` therefore
embeds and projects only the first ``max(length) + 1`` rows and carries that bias: exact up to
summation order, and cross-attention cost no longer grows with the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CrossKV", "TextContext", "text_lengths", "padding_bias"]


@dataclass(frozen=True)
class CrossKV:
    """One block's cross-attention keys and values of a prepared text context.

    key (RMS-normed), value: [B, S, heads, head_dim] in the weights' dtype, S = text rows kept.
    bias: fp32 [B, 1, 1, S] logit bias of the compressed padding (see :func:`padding_bias`), or
    None when all the context's rows are kept.
    """

    key: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class TextContext:
    """Text conditioning prepared once per (expert, render) by :meth:`wan_dist.models.dit.WanDiT.prepare_context`.

    lengths: int64 [B] true prompt lengths. layers: one :class:`CrossKV` per block, in block order.
    """

    lengths: torch.Tensor
    layers: tuple[CrossKV, ...]

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def num_rows(self) -> int:
        """Text rows each cross-attention attends (true length of the longest prompt + 1, or all given)."""
        return self.layers[0].key.shape[1] if self.layers else 0


def text_lengths(context: torch.Tensor) -> torch.Tensor:
    """True prompt length per sample of a zero-padded context [B, T, C]: int64 [B].

    The text encoder trims each prompt and pads it with exact zeros, so the length is the index of
    the last row that is not all zeros, plus one (0 for an all-zero context).
    """
    nonzero = context.ne(0).any(dim=-1)  # [B, T]
    positions = torch.arange(1, context.shape[1] + 1, device=context.device)
    return (nonzero * positions).amax(dim=1)


def padding_bias(lengths: torch.Tensor, window: int, rows: int) -> torch.Tensor:
    """Logit bias fp32 [B, 1, 1, window] for attention over the first ``window`` of a context's ``rows``.

    Rows >= length of a sample are its padding, all the same (k, v): each of the ``window - length``
    padding rows kept stands for ``(rows - length) / (window - length)`` of them, a factor that
    enters the softmax as the additive bias log(factor); true rows get 0. Computed in float64.
    """
    kept = (window - lengths).double()
    factor = torch.log((rows - lengths).double() / kept).float()  # [B]
    slots = torch.arange(window, device=lengths.device)
    bias = torch.where(slots.unsqueeze(0) >= lengths.unsqueeze(1), factor.unsqueeze(1), 0.0)
    return bias[:, None, None, :]
