"""The hand-off between disaggregated stages: its wire format and its transport.

A :class:`HandOff` is what stage 1 needs to continue a request after stage 0's high-noise steps
(latents, solver state, text contexts, seed). On the wire it is three messages: an int64 header
(request, seed, solver counters, dtypes, shapes) and two flat byte tensors (the latents stacked with
the solver state's tensors, and the contexts), so any dtype travels over gloo or NCCL. :func:`send_handoff` / :func:`recv_handoff` move one point-to-point between the stage leaders;
:func:`broadcast_handoff` spreads it inside a stage. Used by :mod:`wan_dist.parallel.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from wan_dist.sampling.solvers import SolverState

__all__ = ["HandOff", "PendingSend", "send_handoff", "recv_handoff", "broadcast_handoff"]

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_HEADER = 26  # request, seed, step_index, last_order, history, has_last, has_negative, state dtype, context dtype,
#               B, C, f, h, w (latent shape), T, D (context shape), T of the negative context (0 without one), stop,
#               has_cache, the step cache's steps, forwards, forwards skipped, skipped steps (4 words of 63 bits)
_MASK_WORDS, _MASK_BITS = 4, 63  # skipped steps as bits: up to 252 steps (requests allow 200)


@dataclass(eq=False)
class HandOff:
    """What stage 1 needs to continue a request: latents [B, C, f, h, w] after the high-noise steps,
    the solver state (tensors shaped like the latents, same dtype), the context [B, T, D], the negative
    context [B, T', D] (given embeddings may differ in rows: each is attended as it is) and the seed.
    ``stop``: 0, or the stop code (wan_dist.sampling.stop) of a request its step control stopped on stage 0:
    stage 1 then raises the same StopRender instead of running its steps (the tensors are placeholders).
    ``cache``: stage 0's step-cache counts (``steps``, ``forwards``, ``forwards_skipped``, ``skipped_steps``),
    which stage 1 adds to its own so the render's record covers both experts; None without a step cache."""

    request: int
    seed: int
    latents: torch.Tensor
    state: SolverState
    context: torch.Tensor
    negative_context: torch.Tensor | None
    stop: int = 0
    cache: dict | None = None

    def header(self) -> torch.Tensor:
        state, ctx, negative = self.state, self.context, self.negative_context
        for tensor in (*state.history, *(() if state.last_sample is None else (state.last_sample,))):
            if tensor.shape != self.latents.shape or tensor.dtype != self.latents.dtype:
                raise ValueError("HandOff: solver state tensors must match the latents' shape and dtype")
        values = [self.request, self.seed, state.step_index, state.last_order, len(state.history),
                  int(state.last_sample is not None), int(negative is not None),
                  _DTYPES.index(self.latents.dtype), _DTYPES.index(ctx.dtype), *self.latents.shape, *ctx.shape[1:],
                  0 if negative is None else negative.shape[1], self.stop, *_cache_words(self.cache)]
        return torch.tensor(values, dtype=torch.int64)

    def payloads(self) -> list[torch.Tensor]:
        """Two byte tensors: [latents, *history, last_sample] stacked, and context then negative, flat."""
        state = self.state
        stacked = torch.stack([self.latents, *state.history, *(() if state.last_sample is None else
                                                                (state.last_sample,))])
        negative = [] if self.negative_context is None else [self.negative_context.to(self.context.dtype).reshape(-1)]
        return [_as_bytes(stacked), _as_bytes(torch.cat([self.context.reshape(-1), *negative]))]

    @classmethod
    def empty_payloads(cls, header: torch.Tensor, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        h = [int(v) for v in header]
        batch, shape, (rows, dim), negative_rows = h[9], h[9:14], h[14:16], h[16]
        state_dtype, ctx_dtype = _DTYPES[h[7]], _DTYPES[h[8]]
        stacked = torch.empty(1 + h[4] + h[5], *shape, dtype=state_dtype, device=device)
        contexts = torch.empty(batch * (rows + negative_rows) * dim, dtype=ctx_dtype, device=device)
        return [_as_bytes(stacked), _as_bytes(contexts)]

    @classmethod
    def from_wire(cls, header: torch.Tensor, payloads: list[torch.Tensor]) -> HandOff:
        h = [int(v) for v in header]
        stacked = payloads[0].view(_DTYPES[h[7]]).reshape(1 + h[4] + h[5], *h[9:14])
        batch, (rows, dim), negative_rows = h[9], h[14:16], h[16]
        context, negative = payloads[1].view(_DTYPES[h[8]]).split([batch * rows * dim, batch * negative_rows * dim])
        history = tuple(stacked[1:1 + h[4]])
        last = stacked[1 + h[4]] if h[5] else None
        state = SolverState(step_index=h[2], history=history, last_sample=last, last_order=h[3])
        return cls(request=h[0], seed=h[1], latents=stacked[0], state=state, context=context.reshape(batch, rows, dim),
                   negative_context=negative.reshape(batch, negative_rows, dim) if h[6] else None, stop=h[17],
                   cache=_cache_of(h[18:]))


def _cache_words(cache: dict | None) -> list[int]:
    if cache is None:
        return [0] * (4 + _MASK_WORDS)
    words = [0] * _MASK_WORDS
    for step in cache["skipped_steps"]:
        if not 0 <= step < _MASK_WORDS * _MASK_BITS:
            raise ValueError(f"HandOff: skipped step {step} is past the {_MASK_WORDS * _MASK_BITS} the header holds")
        words[step // _MASK_BITS] |= 1 << (step % _MASK_BITS)
    return [1, cache["steps"], cache["forwards"], cache["forwards_skipped"], *words]


def _cache_of(words: list[int]) -> dict | None:
    if not words[0]:
        return None
    skipped = [w * _MASK_BITS + bit for w, word in enumerate(words[4:]) for bit in range(_MASK_BITS) if word >> bit & 1]
    return {"steps": words[1], "forwards": words[2], "forwards_skipped": words[3], "skipped_steps": skipped}


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view (gloo moves bytes of any dtype, bfloat16 included)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


@dataclass(eq=False)
class PendingSend:
    """Sends in flight: ``wait()`` before dropping them (they hold the send buffers alive)."""

    works: list
    buffers: list[torch.Tensor]

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        self.works, self.buffers = [], []


def send_handoff(handoff: HandOff, dst: int, *, group=None) -> PendingSend:
    """Start sending ``handoff`` to global rank ``dst`` (non-blocking). Three messages: an int64 header,
    the state bytes, the context bytes."""
    buffers = [handoff.header().to(handoff.latents.device), *handoff.payloads()]
    return PendingSend(works=[dist.isend(buffer, dst, group=group) for buffer in buffers], buffers=buffers)


def recv_handoff(src: int, *, group=None, device: torch.device | str = "cpu") -> HandOff:
    """Receive a :func:`send_handoff` from global rank ``src`` (blocking) into tensors on ``device``."""
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    dist.recv(header, src, group=group)
    payloads = HandOff.empty_payloads(header, device)
    for payload in payloads:
        dist.recv(payload, src, group=group)
    return HandOff.from_wire(header, payloads)


def broadcast_handoff(handoff: HandOff | None, src: int, group, *, device: torch.device | str = "cpu") -> HandOff:
    """``handoff`` from global rank ``src`` (where it is given) to every rank of ``group`` (on ``device``)."""
    header = handoff.header().to(device) if handoff is not None else torch.empty(_HEADER, dtype=torch.int64,
                                                                                   device=device)
    dist.broadcast(header, src, group=group)
    payloads = handoff.payloads() if handoff is not None else HandOff.empty_payloads(header, device)
    for payload in payloads:
        dist.broadcast(payload, src, group=group)
    return handoff if handoff is not None else HandOff.from_wire(header, payloads)


def _wire_device(pipe) -> torch.device:
    """Where hand-off tensors travel from: CPU for gloo, the pipeline's device otherwise (NCCL)."""
    return torch.device("cpu") if dist.get_backend() == "gloo" else torch.device(pipe.device)


def _to_wire(handoff: HandOff, device: torch.device) -> HandOff:
    """The hand-off with its tensors on ``device``."""
    negative = None if handoff.negative_context is None else handoff.negative_context.to(device)
    return HandOff(request=handoff.request, seed=handoff.seed, latents=handoff.latents.to(device),
                   state=handoff.state.to(device), context=handoff.context.to(device), negative_context=negative,
                   stop=handoff.stop, cache=handoff.cache)
