"""Cost model of a Wan DiT render: parameter counts, weight and activation bytes, FLOPs and communication.

The arithmetic :mod:`wan_dist.parallel.planner` builds its per-layout predictions from, and every
assumption it makes about the hardware and the implementation: the named constants below,
:class:`GpuSpec` (per-GPU speeds; H100 SXM defaults, ``H100`` and ``A100``) and
:class:`EngineProfile` (``ENGINE`` is this package, ``REFERENCE`` the published Wan2.2 scripts).
Arithmetic only on the model configs (no torch.distributed); it does not import the planner.

Units: bytes, FLOP, seconds. A *slab* is one ``[batch, tokens_per_rank, dim]`` tensor: activations
are counted in slabs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wan_dist.config import DiTConfig, TextEncoderConfig

__all__ = ["GIB", "GB", "COMPUTE_BYTES", "USABLE_FRACTION", "GpuSpec", "H100", "A100", "EngineProfile", "ENGINE",
           "REFERENCE", "dit_param_count", "dit_block_param_count", "dit_weight_bytes", "text_encoder_param_count",
           "dit_activation_bytes", "forward_flops", "step_comm_bytes"]

GIB = 2**30
GB = 1e9
COMPUTE_BYTES = 2  # bf16 weights and matmuls on GPU
CUDA_RESERVED_BYTES = 1.5 * GIB  # CUDA context, NCCL buffers and allocator slack on every GPU
# A layout fits when its predicted peak is at most this share of the GPU: the model reads 2-9% under the
# reference's published peaks (tests/test_planner.py) and the allocator fragments.
USABLE_FRACTION = 0.9
# Activation slabs alive at the peak of a block (the output projection of self-attention), see
# dit_activation_bytes: the fp32 residual stream twice (the embedded tokens the caller still holds and the
# running x), 7 compute-dtype slabs (LN-modulated input, q, k, v, attention output, its [B, L, dim] copy,
# o-projection output) and, below fp32, one fp32 upcast (qk-RMSNorm / RoPE / y.float()).
RESIDUAL_SLABS_FP32 = 2
SELF_ATTENTION_SLABS = 7
ULYSSES_SLABS = 4  # all-to-all receive buffers of q, k, v and of the output
RING_SLABS = 2  # the next (k, v) block in flight while the current one is attended
# Ring attention runs r shorter attention kernels per layer and merges them by log-sum-exp: assume it
# reaches this share of one fused kernel's speed (USP reports Ulysses ahead of ring inside a node). Measured
# 0.92 for one rank's compute on an H200 with cuDNN's log-sum-exp kernel (benchmarks/RESULTS.md, no exchange).
RING_ATTENTION_EFFICIENCY = 0.85
# Measured on diffusers' AutoencoderKLWan (torch FlopCounterMode; parameters on the meta device).
VAE_PARAMS = {"2.1": 126_892_531, "2.2": 704_688_668}
VAE_DECODE_FLOPS_PER_PIXEL = {"2.1": 8.9e6, "2.2": 19.3e6}  # per output pixel per frame
# Decoder peak (fp32) per output pixel (H x W) per decoder base channel. The decoder runs one latent frame
# (4 output frames) at a time with a 2-frame cache, so the peak does not grow with the clip: measured on CPU
# (RSS high-water mark, 64 KiB mmap threshold) for the Wan 2.1 VAE at 256x256: 1.36 GB for 5 frames, 1.42 GB
# for 13. CPU convolutions may hold more scratch than cuDNN's, so this may read high on a GPU.
VAE_DECODE_BYTES_PER_PIXEL_CHANNEL = 216.0
PCIE_BYTES_PER_S = 25e9  # host<->GPU copy of offloaded weights (pinned gen5 x16 reaches ~50; pageable ~25)
CPU_FLOPS_PER_S = 1e12  # a text encoder run on the host
GPUS_PER_NODE = 8


@dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """Per-GPU speeds the time model assumes (sustained, not peak)."""

    name: str = "H100"
    gemm_flops: float = 750e12  # bf16 GEMM at realistic kernel speed (WAN22_FACTS "Compute floor")
    attention_flops: float = 650e12  # FlashAttention-3 forward (WAN22_FACTS)
    vae_flops: float = 40e12  # fp32 (TF32) cuDNN conv3d, small channel counts
    link_bytes_per_s: float = 300e9  # NVLink4 all-to-all / all-gather per GPU (450 GB/s nominal per direction)
    internode_bytes_per_s: float = 40e9  # 400 Gb/s InfiniBand per GPU, for groups larger than a node


H100 = GpuSpec()
A100 = GpuSpec(name="A100", gemm_flops=250e12, attention_flops=200e12, vae_flops=15e12, link_bytes_per_s=200e9,
               internode_bytes_per_s=20e9)


@dataclass(frozen=True, kw_only=True)
class EngineProfile:
    """Implementation choices that move memory and time. ``ENGINE`` is this package, ``REFERENCE`` the
    Wan-Video/Wan2.2 scripts as published (used to check the model against their numbers)."""

    cfg_batched: bool = True  # cond + uncond in one batch-2 forward; False: two batch-1 forwards
    sharded_weight_bytes: int = 2  # bytes per parameter FSDP keeps (the reference shards fp32 masters)
    full_sequence_time_embedding: bool = False  # e, e0 per token for all L tokens on every rank
    t5_on_gpu: bool = True
    # FSDP shards T5 over the stage too (the reference's --t5_fsdp); False: one rank holds it whole and
    # broadcasts the embeddings, the other ranks hold none (this engine, wan_dist.parallel.text)
    t5_sharded: bool = False
    extra_slab_bytes: int = 0  # the reference rotates q and k in float64: +16 bytes per slab element
    vae_parallel: bool = True  # the decode is split over the group; False: one rank decodes the clip


ENGINE = EngineProfile()
REFERENCE = EngineProfile(cfg_batched=False, sharded_weight_bytes=4, full_sequence_time_embedding=True,
                          t5_sharded=True, extra_slab_bytes=16, vae_parallel=False)


# ----------------------------------------------------------------------------- parameters

def dit_block_param_count(config: DiTConfig) -> int:
    """One block: self- and cross-attention (q, k, v, o with bias, qk RMSNorm weights), affine norm3,
    FFN (two Linear with bias), modulation [1, 6, dim]."""
    d, f = config.dim, config.ffn_dim
    attention = 4 * (d * d + d) + 2 * d
    return 2 * attention + 2 * d + (d * f + f + f * d + d) + 6 * d


def _time_and_head_param_count(config: DiTConfig) -> int:
    d, p = config.dim, math.prod(config.patch_size)
    time = config.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d  # time_embedding, time_projection
    return time + d * p * config.out_channels + p * config.out_channels + 2 * d  # head


def _dit_fp32_param_count(config: DiTConfig) -> int:
    """Parameters WanDiT keeps in fp32 (``fp32_param_patterns``): time path, head, modulations, norms."""
    return _time_and_head_param_count(config) + config.num_layers * 12 * config.dim


def dit_param_count(config: DiTConfig) -> int:
    """All parameters of one expert (WanDiT): 14.29e9 for A14B, 5.0e9 for TI2V-5B."""
    d, p = config.dim, math.prod(config.patch_size)
    embed = config.in_channels * p * d + d + config.text_dim * d + d + d * d + d  # patch, text
    return embed + _time_and_head_param_count(config) + config.num_layers * dit_block_param_count(config)


def dit_weight_bytes(config: DiTConfig, dtype_bytes: int = COMPUTE_BYTES) -> int:
    """Bytes of one expert with its matmul weights in ``dtype_bytes`` and the fp32 set kept in fp32."""
    fp32 = _dit_fp32_param_count(config)
    return fp32 * 4 + (dit_param_count(config) - fp32) * dtype_bytes


def text_encoder_param_count(config: TextEncoderConfig) -> int:
    """UMT5 encoder (transformers' UMT5EncoderModel): tied embedding; per layer q, k, v, o without bias,
    a relative-position bias table, gated FFN (wi_0, wi_1, wo) and two RMSNorm weights; final norm.
    UMT5-XXL: 5.68e9 parameters, 10.6 GiB in bf16."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    layer = 4 * d * inner + config.relative_attention_num_buckets * config.num_heads + 3 * d * config.d_ff + 2 * d
    return config.vocab_size * d + config.num_layers * layer + d


# ----------------------------------------------------------------------------- memory, FLOPs, comm

def dit_activation_bytes(config: DiTConfig, *, tokens_per_rank: int, batch: int, seq_tokens: int | None = None,
                         dtype_bytes: int = COMPUTE_BYTES, ulysses: int = 1, ring: int = 1,
                         text_rows: int | None = None, full_sequence_time_embedding: bool = False,
                         extra_slab_bytes: int = 0) -> int:
    """Peak bytes one DiT forward adds on a rank on top of its weights (no autograd).

    slab = batch * tokens_per_rank * dim elements; bytes per slab element at the block peak:
    ``4 * RESIDUAL_SLABS_FP32 + dtype_bytes * SELF_ATTENTION_SLABS + (4 if dtype_bytes < 4)``
    ``+ dtype_bytes * (ULYSSES_SLABS if ulysses > 1) + dtype_bytes * (RING_SLABS if ring > 1)``.
    The FFN runs in token chunks whose [batch, chunk, ffn_dim] intermediate is one slab, so it peaks
    lower. Plus what lives through the forward: the text context (embedded text and every block's
    cross-attention k, v: ``(2 * layers + 1) * batch * text_rows * dim * dtype_bytes``), RoPE for all
    ``seq_tokens`` (``seq_tokens * head_dim * 4``), the time embedding (``batch * 7 * dim * 4``, or per
    token ``batch * seq_tokens * 7 * dim * 4``) and the head output (``2 * batch * tokens * p * out * 4``).
    """
    seq_tokens = seq_tokens or tokens_per_rank
    text_rows = config.text_len if text_rows is None else text_rows
    d, s = config.dim, dtype_bytes
    per_element = 4 * RESIDUAL_SLABS_FP32 + s * SELF_ATTENTION_SLABS + (4 if s < 4 else 0) + extra_slab_bytes
    per_element += s * (ULYSSES_SLABS if ulysses > 1 else 0) + s * (RING_SLABS if ring > 1 else 0)
    slab = batch * tokens_per_rank * d
    text = (2 * config.num_layers + 1) * batch * text_rows * d * s
    rope = seq_tokens * config.head_dim * 4
    time = batch * (seq_tokens if full_sequence_time_embedding else 1) * 7 * d * 4
    head = 2 * batch * tokens_per_rank * math.prod(config.patch_size) * config.out_channels * 4
    return slab * per_element + text + rope + time + head


def forward_flops(config: DiTConfig, *, query_tokens: int, seq_tokens: int, batch: int = 1,
                  text_rows: int | None = None) -> tuple[float, float]:
    """(matmul, attention) FLOPs of one forward for ``query_tokens`` of a ``seq_tokens`` sequence.

    matmul = 2 * batch * query_tokens * (layers * (6 dim^2 + 2 dim ffn) + patch and head projections)
    (q, k, v, o and the cross-attention q, o; its text k, v are computed once per render);
    attention = layers * batch * query_tokens * 4 * dim * (seq_tokens + text_rows) (QK^T and PV).
    A14B at 720p, all 75,600 tokens, batch 1: 6.5e15, 72% attention (WAN22_FACTS "Compute floor").
    """
    text_rows = config.text_len if text_rows is None else text_rows
    d, p = config.dim, math.prod(config.patch_size)
    per_token = config.num_layers * (6 * d * d + 2 * d * config.ffn_dim) + p * d * (config.in_channels
                                                                                    + config.out_channels)
    matmul = 2.0 * batch * query_tokens * per_token
    attention = 4.0 * config.num_layers * batch * query_tokens * d * (seq_tokens + text_rows)
    return matmul, attention


def step_comm_bytes(config: DiTConfig, *, seq_tokens: int, batch: int, forwards: int = 1, cfg: int = 1,
                    ulysses: int = 1, ring: int = 1, fsdp_group: int = 1,
                    dtype_bytes: int = COMPUTE_BYTES) -> dict[str, float]:
    """Bytes each GPU sends per denoising step, by kind. l = ceil(L / (ulysses * ring)).

    ulysses: 4 all-to-alls (q, k, v, out) per self-attention layer, each keeping 1/u of its slab local:
      ``forwards * layers * 4 * batch * l * dim * bytes * (u - 1) / u`` (13.5 GB at 720p, u=8, batch 1).
    ring: each rank's (k, v) block, l tokens x dim/u channels after the Ulysses exchange, travels r-1 hops:
      ``forwards * layers * 2 * batch * l * dim * bytes * (r - 1)``.
    fsdp: the active expert's weights all-gathered once per forward:
      ``forwards * weight_bytes * (n - 1) / n`` (24.5 GB for A14B in bf16 on 8 GPUs).
    cfg: one exchange of the fp32 prediction of this rank's tokens: ``l * p * out_channels * 4 * (cfg - 1)``.
    """
    d, layers = config.dim, config.num_layers
    local = math.ceil(seq_tokens / (ulysses * ring))
    slab = batch * local * d * dtype_bytes
    return {
        "ulysses": forwards * layers * 4 * slab * (ulysses - 1) / ulysses,
        "ring": forwards * layers * 2 * slab * (ring - 1),
        "fsdp": forwards * dit_weight_bytes(config, dtype_bytes) * (fsdp_group - 1) / fsdp_group,
        "cfg": local * math.prod(config.patch_size) * config.out_channels * 4 * (cfg - 1),
    }
