"""Sequence-parallel self-attention with the DiT's attention signature.

Every function made here is ``fn(q, k, v, *, key_length=None) -> out`` with ``q``, ``k``, ``v``
and ``out`` this rank's sequence shard [B, Ls, heads, head_dim] (sequence rank s holds global
tokens [s * Ls, (s + 1) * Ls), see :mod:`wan_dist.parallel.sequence`). ``key_length`` is the
GLOBAL number of valid tokens (None: all P * Ls are valid); padded keys get no weight.

- Ulysses: one all-to-all scatters heads and gathers the sequence of q, k, v
  ([B, Ls, H, D] -> [B, U * Ls, H / U, D]), local attention runs over the whole chunk, a second
  all-to-all brings the output back ([B, U * Ls, H / U, D] -> [B, Ls, H, D]).
- Ring: each ring rank keeps its queries and passes its K/V block to its successor R - 1 times
  (isend/irecv, the next block in flight while the current one is computed); partial outputs are
  merged by their softmax log-sum-exp. Blocks that lie wholly in the padding are skipped, the
  last valid block is trimmed.
- USP: Ulysses inside ring (all-to-all over ulysses, ring over the ring axis on [B, U * Ls, H / U, D]).

Cross-attention is not touched: the text is replicated and the model attends it locally.
"""

from __future__ import annotations

import inspect
import math

import torch

from wan_dist.models.attention import AttentionFn, get_attention
from wan_dist.parallel.comm import CommCounter, all_to_all, ring_exchange
from wan_dist.parallel.mesh import AxisGroup, ParallelMesh

__all__ = ["attention_with_lse", "ulysses_scatter_heads", "ulysses_gather_heads", "ring_attention",
           "make_sequence_attention", "make_deepspeed_attention"]


# CUDA kernels that return the log-sum-exp, in order of preference. cuDNN's is what SDPA itself picks on
# Hopper and ran a ring rank's attention 1.6x faster than the flash kernel on an H200 (benchmarks/RESULTS.md);
# a kernel that refuses the inputs (older cuDNN, other GPUs) falls through to the next.
CUDA_LSE_KERNELS: tuple[str, ...] = ("cudnn", "flash")


def _cuda_attention_with_lse(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor):
    """(out [B, h, Lq, D], lse) from the first of CUDA_LSE_KERNELS that takes q, k, v [B, h, L, D]."""
    error = None
    for kernel in CUDA_LSE_KERNELS:
        try:
            if kernel == "cudnn":
                return torch.ops.aten._scaled_dot_product_cudnn_attention(
                    qt, kt, vt, None, True, 0.0, False, False)[:2]
            return torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt)[:2]
        except RuntimeError as exc:
            error = exc
    raise RuntimeError(f"attention_with_lse: no CUDA kernel in {CUDA_LSE_KERNELS} took the inputs") from error


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp.

    q [B, Lq, h, D], k/v [B, Lk, h, D] -> (out fp32 [B, Lq, h, D], lse fp32 [B, h, Lq]), scale 1/sqrt(D).
    CPU: ``_scaled_dot_product_flash_attention_for_cpu`` (SDPA's public CPU path returns no LSE);
    CUDA fp16/bf16: cuDNN's or the flash kernel (``CUDA_LSE_KERNELS``); otherwise an explicit fp32 computation.
    """
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt)[:2]
    elif q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = _cuda_attention_with_lse(qt, kt, vt)
        lse = lse.reshape(q.shape[0], q.shape[2], q.shape[1])  # cuDNN's carries a trailing 1
    else:
        scores = torch.matmul(qt.float(), kt.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        lse = torch.logsumexp(scores, dim=-1)
        out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), vt.float())
    return out.transpose(1, 2).float(), lse.float()


def _merge(out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor,
           block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint keys; out [B, Lq, h, D], lse [B, h, Lq], fp32."""
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    weight = torch.exp(lse - new_lse).transpose(1, 2).unsqueeze(-1)  # [B, Lq, h, 1]
    block_weight = torch.exp(block_lse - new_lse).transpose(1, 2).unsqueeze(-1)
    return out * weight + block_out * block_weight, new_lse


def ulysses_scatter_heads(x: torch.Tensor, axis: AxisGroup, counter: CommCounter | None) -> torch.Tensor:
    """x [B, Ls, H, D] (sequence shard u of the ulysses group) -> [B, U * Ls, H / U, D]: the group's
    consecutive shards, head group u. ``x`` may carry a leading stack dim ([S, B, Ls, H, D])."""
    size = axis.size
    *lead, length, heads, head_dim = x.shape
    parts = x.reshape(*lead, length, size, heads // size, head_dim).movedim(-3, 0)  # [U, ..., Ls, H/U, D]
    received = all_to_all(parts, axis.group, size, counter)  # chunk j: shard j, my heads
    received = received.movedim(0, -4)  # [..., U, Ls, H/U, D]
    return received.reshape(*lead, size * length, heads // size, head_dim)


def ulysses_gather_heads(x: torch.Tensor, axis: AxisGroup, counter: CommCounter | None) -> torch.Tensor:
    """Inverse of :func:`ulysses_scatter_heads`: x [B, U * Ls, H / U, D] -> [B, Ls, H, D]."""
    size = axis.size
    *lead, length, heads, head_dim = x.shape
    parts = x.reshape(*lead, size, length // size, heads, head_dim).movedim(-4, 0)  # [U, B, Ls, H/U, D]
    received = all_to_all(parts, axis.group, size, counter)  # chunk j: my shard, head group j
    received = received.movedim(0, -3)  # [B, Ls, U, H/U, D]
    return received.reshape(*lead, length // size, size * heads, head_dim)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, axis: AxisGroup, *,
                   key_length: int | None, counter: CommCounter | None) -> torch.Tensor:
    """Attention of this ring rank's queries over all ring ranks' keys, without an all-gather of K/V.

    q, k, v [B, C, h, D]: ring rank r holds global chunk r, tokens [r * C, (r + 1) * C).
    key_length: global valid tokens (None: all R * C). Returns [B, C, h, D] in q's dtype.
    The K/V block of step s comes from ring rank (r - s) mod R; it is sent on before it is used.
    """
    size, index, chunk = axis.size, axis.index, k.shape[1]
    valid_total = size * chunk if key_length is None else key_length
    block = torch.stack([k, v]).contiguous()  # [2, B, C, h, D]: one message per step
    out = lse = None
    for step in range(size):
        pending = []
        if step < size - 1:
            incoming = torch.empty_like(block)
            pending = ring_exchange(block, incoming, to_rank=axis.global_rank(index + 1),
                                    from_rank=axis.global_rank(index - 1), group=axis.group, counter=counter)
        source = (index - step) % size
        valid = min(chunk, max(0, valid_total - source * chunk))
        if valid > 0:
            block_out, block_lse = attention_with_lse(q, block[0, :, :valid], block[1, :, :valid])
            out, lse = _merge(out, lse, block_out, block_lse)
        for request in pending:
            request.wait()
        if pending:
            block = incoming
    if out is None:
        raise ValueError("ring_attention: no valid key in any block (key_length must be >= 1)")
    return out.to(q.dtype)


def _local_or_ring(mesh: ParallelMesh, local: AttentionFn):
    """Attention over one ulysses-gathered chunk [B, U * Ls, H / U, D]: local when ring is 1, else ring."""
    ring = mesh.axis("ring")
    if ring.size == 1:
        return local

    def attend(q, k, v, *, key_length=None):
        return ring_attention(q, k, v, ring, key_length=key_length, counter=mesh.counter)

    return attend


def make_sequence_attention(mesh: ParallelMesh, *, local: AttentionFn | None = None,
                            backend: str | None = None) -> AttentionFn:
    """The self-attention function of this mesh (Ulysses, ring or USP by degrees).

    local: attention on one device (default: ``get_attention(mesh.config.attention)``), used for a
    whole Ulysses-gathered sequence when ring is 1. backend: ``"native"`` or ``"deepspeed"``
    (default ``mesh.config.ulysses_backend``). Signature and shards: see the module doc.
    """
    local = local or get_attention(mesh.config.attention)
    backend = backend or mesh.config.ulysses_backend
    inner = _local_or_ring(mesh, local)
    ulysses = mesh.axis("ulysses")
    if ulysses.size == 1:
        return inner
    if backend == "deepspeed":
        return make_deepspeed_attention(mesh, inner)
    if backend != "native":
        raise ValueError(f"make_sequence_attention: ulysses backend must be 'native' or 'deepspeed', got {backend!r}")

    def usp_attention(q, k, v, *, key_length=None):
        qkv = ulysses_scatter_heads(torch.stack([q, k, v]), ulysses, mesh.counter)  # [3, B, U*Ls, H/U, D]
        out = inner(qkv[0], qkv[1], qkv[2], key_length=key_length)
        return ulysses_gather_heads(out, ulysses, mesh.counter)

    return usp_attention


def make_deepspeed_attention(mesh: ParallelMesh, inner: AttentionFn) -> AttentionFn:
    """Ulysses through deepspeed's ``DistributedAttention`` around ``inner`` (local or ring attention).

    Requires deepspeed (imported here, lazily); its communication is initialised on the existing
    process group when it is not yet. Its 4 all-to-alls are accounted under ``ulysses_all_to_all``
    from the tensor shapes (deepspeed issues them, not our wrappers).
    """
    try:
        import deepspeed
        import deepspeed.comm as ds_comm
        from deepspeed.sequence.layer import DistributedAttention
    except ImportError as error:
        raise ValueError("ParallelConfig.ulysses_backend='deepspeed' needs the deepspeed package "
                         f"(pip install deepspeed; DS_BUILD_OPS=0 on CPU): {error}") from error
    if not ds_comm.is_initialized():
        # On CPU deepspeed's comm backend compiles its shared-memory all-reduce (~45 s on 2 cores) when first
        # initialised; it serves deepspeed's inference_all_reduce only, never the all-to-alls used here.
        if torch.distributed.get_backend() == "gloo":
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    ulysses = mesh.axis("ulysses")
    layer = DistributedAttention(inner, ulysses.group, scatter_idx=2, gather_idx=1)
    takes_batch_dim = "batch_dim_idx" in inspect.signature(layer.forward).parameters

    def deepspeed_attention(q, k, v, *, key_length=None):
        sent = q.numel() * q.element_size() * (ulysses.size - 1) // ulysses.size
        extra = {"batch_dim_idx": 0} if takes_batch_dim else {}
        out = layer(q, k, v, key_length=key_length, **extra)
        mesh.counter.add("ulysses_all_to_all", 4 * sent)
        return out

    return deepspeed_attention
