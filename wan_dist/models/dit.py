"""The Wan 2.2 diffusion transformer (one expert), single device, faithful to the reference.

Parameter names are the reference checkpoint's (``patch_embedding.*``, ``blocks.N.self_attn.q.*``,
``head.modulation`` ...); :mod:`wan_dist.models.keymap` converts from and to diffusers' names.

Forward is split into pieces so ``wan_dist.parallel`` can shard the sequence from outside without
forking it::

    state = model.embed(latents, timestep, context)            # all tokens, all ranks
    x = model.run_blocks(state.tokens, state.e0, state.context, state.rope)
    out = model.unpatchify(model.head(x, state.e), state.grid)

The text is the same at every step of a render, so ``model.prepare_context(context)`` computes the
text embedding and every block's cross-attention keys and values once; ``forward``/``embed`` accept
the resulting :class:`TextContext` wherever they accept a raw context. It also compresses the
zero padding: all padded rows of a prompt embed to the same vector, and attention over n identical
(k, v) pairs equals attention over one with a logit bias of log(n), so cross-attention runs over the
true prompt rows plus one padding slot per sample (exact up to summation order).

Cross-attention attends the text rows it is given, zero rows included, as diffusers' transformer does.
The reference's model first pads every prompt with zero rows to ``text_len``; the reference layout's
pipeline does that before calling (``wan_dist.engine.pipeline``), so the model itself serves both.

A sequence-parallel wrapper slices ``state.tokens``, ``state.rope`` (or calls :func:`rope_cos_sin`
for its token range) and a per-token ``state.e0``/``state.e`` along the token axis, swaps
``model.attention_fn`` for a distributed one and passes ``key_length`` when it padded the sequence.

Precision follows the reference: the time path, modulation, the three parameter-free LayerNorms,
the qk RMSNorms, the head and the residual stream are fp32; projections, attention and FFN run in
the dtype of the weights (bf16 for a bf16 model). The output is fp32.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from wan_dist.config import DiTConfig
from wan_dist.models.attention import AttentionFn, biased_attention, default_attention, local_attention
from wan_dist.models.text_context import CrossKV, TextContext, padding_bias, text_lengths

__all__ = ["WanDiT", "DiTState", "WanBlock", "TextContext", "CrossKV", "rope_cos_sin", "apply_rope",
           "sinusoidal_embedding", "text_lengths"]

ROPE_THETA = 10000.0
Rope = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- functions

def sinusoidal_embedding(timestep: torch.Tensor, freq_dim: int, *, precision: str = "float64") -> torch.Tensor:
    """Sinusoidal timestep embedding, ordered [cos, sin], frequencies ``10000^(-k / (freq_dim/2))``.

    timestep: any shape ``S``, float or int. Returns fp32 ``S + [freq_dim]``.
    ``precision="float64"`` is the reference's computation; ``"float32"`` is diffusers' (``exp(-ln(10000) k/half)``
    in fp32). They differ by ~3e-5 in the DiT output at t ~ 1000, so each checkpoint layout uses its own.
    """
    half = freq_dim // 2
    if precision == "float64":
        exponent = torch.arange(half, dtype=torch.float64, device=timestep.device) / half
        angles = timestep.to(torch.float64).unsqueeze(-1) * torch.pow(10000.0, -exponent)
    elif precision == "float32":
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
        angles = timestep.float().unsqueeze(-1) * torch.exp(exponent)
    else:
        raise ValueError(f"precision: must be 'float64' or 'float32', got {precision!r}")
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def rope_cos_sin(grid: tuple[int, int, int], rope_split: tuple[int, int, int], start: int = 0,
                 end: int | None = None, *, theta: float = ROPE_THETA,
                 device: torch.device | str | None = None) -> Rope:
    """3D RoPE angles of the tokens ``start:end`` (global positions) of a (f, h, w) token grid.

    Token ``i`` sits at frame ``i // (h*w)``, row ``(i // w) % h``, column ``i % w``. The head dim is
    split ``rope_split`` (t, h, w) channels; each axis uses ``theta^(-2j/d_axis)`` for its ``d_axis/2``
    pairs. Angles are computed in float64. Returns ``(cos, sin)``, each fp32 [end - start, head_dim/2];
    pair ``j`` rotates channels (2j, 2j+1). Indices past ``f*h*w`` (sequence padding) continue the
    grid frame by frame; such tokens must be masked anyway.
    """
    f, h, w = grid
    end = f * h * w if end is None else end
    if not 0 <= start <= end:
        raise ValueError(f"rope_cos_sin: need 0 <= start <= end, got start={start}, end={end}")
    index = torch.arange(start, end, dtype=torch.int64, device=device)
    positions = (index // (h * w), (index // w) % h, index % w)
    parts = []
    for pos, axis_dim in zip(positions, rope_split):
        exponent = torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim
        parts.append(pos.to(torch.float64).unsqueeze(1) * torch.pow(theta, -exponent))
    angles = torch.cat(parts, dim=1)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, rope: Rope, *, inplace: bool = False) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, L, heads, head_dim] by rope (cos, sin) [L, head_dim/2].

    Computed in fp32, returned in x's dtype. A pair (even, odd) times cos + i sin is one complex
    multiply: one fused kernel instead of six strided ones, same products. ``inplace=True``
    overwrites a contiguous fp32 x (no autograd) instead of allocating the result.
    """
    freqs = torch.complex(*rope).unsqueeze(1)  # [L, 1, head_dim/2]: broadcast over heads
    x32 = x.float()
    # x itself when fp32 and the caller gives it up, or the fp32 copy just made (ours) when not
    own = inplace or (x32 is not x and not torch.is_grad_enabled())
    if own and x32.is_contiguous():
        torch.view_as_complex(x32.unflatten(-1, (-1, 2))).mul_(freqs)
        return x32.to(x.dtype)
    rotated = torch.view_as_complex(x32.contiguous().unflatten(-1, (-1, 2))) * freqs
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free LayerNorm over the last dim, in fp32."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in fp32 whatever the weights' dtype (the reference's fp32 autocast regions), plus the
    layer's runtime LoRA branch when it has one (``models.lora_apply``: calling the module runs it as a hook)."""
    x = x.float()
    y = F.linear(x, layer.weight.float(), layer.bias.float())
    branch = getattr(layer, "lora_branch", None)
    return y if branch is None else branch(x, y)


# ----------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    """RMSNorm with a learned weight, computed in fp32, returned in the input's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """x * rsqrt(mean(x^2) + eps) * weight; ``inplace``: x is the caller's to overwrite (no autograd)."""
        x32 = x.float()
        if torch.is_grad_enabled() or not (inplace or x32 is not x):
            return F.rms_norm(x32, x.shape[-1:], self.weight.float(), self.eps).to(x.dtype)
        # F.rms_norm's CPU path materialises x^2 and x * rstd; here the sum of squares is a reduction
        # (vector_norm) and the scaling runs in place on a tensor of our own: no x-sized temporaries.
        rstd = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        return x32.mul_(rstd.add_(self.eps).rsqrt_()).mul_(self.weight.float()).to(x.dtype)


class WanAttention(nn.Module):
    """q, k, v, o projections with qk RMSNorm over the full dim (across heads)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def _project(self, x: torch.Tensor, source: torch.Tensor):
        """q from x [B, Lq, dim], k and v from source [B, Lk, dim]; each [B, L, heads, head_dim]."""
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x), inplace=True).unflatten(-1, heads)  # the projections are ours
        k = self.norm_k(self.k(source), inplace=True).unflatten(-1, heads)
        v = self.v(source).unflatten(-1, heads)
        return q, k, v

    def self_attention(self, x: torch.Tensor, rope: Rope, attention_fn: AttentionFn,
                       key_length: int | None = None) -> torch.Tensor:
        """x [B, L, dim] in the weights' dtype, rope [L, head_dim/2] x2 -> [B, L, dim].

        Each activation is dropped as soon as it is used (a caller that passes x without keeping a
        reference frees it before the attention runs): peak memory here is x's size times ~5.
        """
        q, k, v = self._project(x, x)
        del x
        inplace = not torch.is_grad_enabled()  # q and k are ours: rotate them without a copy
        q, k = apply_rope(q, rope, inplace=inplace), apply_rope(k, rope, inplace=inplace)
        out = attention_fn(q, k, v, key_length=key_length).flatten(2)
        del q, k, v
        return self.o(out)

    def prepare_kv(self, text: torch.Tensor, bias: torch.Tensor | None = None) -> CrossKV:
        """Keys and values of embedded text [B, S, dim] (weights' dtype) for :meth:`cross_attention`."""
        heads = (self.num_heads, -1)
        return CrossKV(key=self.norm_k(self.k(text), inplace=True).unflatten(-1, heads),
                       value=self.v(text).unflatten(-1, heads), bias=bias)

    def cross_attention(self, x: torch.Tensor, context: torch.Tensor | CrossKV) -> torch.Tensor:
        """x [B, L, dim] attends embedded text [B, T, dim] or its prepared keys and values -> [B, L, dim]."""
        kv = context if isinstance(context, CrossKV) else self.prepare_kv(context)
        q = self.norm_q(self.q(x), inplace=True).unflatten(-1, (self.num_heads, -1))
        del x  # as in self_attention
        if kv.bias is None:
            out = local_attention(q, kv.key, kv.value).flatten(2)
        else:
            out = biased_attention(q, kv.key, kv.value, kv.bias).flatten(2)
        del q
        return self.o(out)


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated FFN.

    ``index`` is the block's position in the model: it picks this block's keys and values out of a
    :class:`TextContext`.
    """

    def __init__(self, config: DiTConfig, index: int = 0):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.eps = eps
        self.index = index
        self.self_attn = WanAttention(dim, config.num_heads, eps)
        self.cross_attn = WanAttention(dim, config.num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.attention_fn: AttentionFn = default_attention()

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor | TextContext, rope: Rope,
                key_length: int | None = None, *, inplace: bool = False) -> torch.Tensor:
        """One block on the tokens this rank holds.

        x: fp32 [B, L, dim] residual stream. e0: fp32 [B, L or 1, 6, dim] (per token or per sample).
        context: embedded text [B, T, dim], or a :class:`TextContext` (this block's prepared
        keys and values). rope: (cos, sin) fp32 [L, head_dim/2] of exactly these tokens.
        key_length: valid tokens when x carries sequence padding (passed on to ``self.attention_fn``).
        inplace: x may be overwritten and returned (honoured only without autograd); otherwise x is
        never written. Returns fp32 [B, L, dim].
        """
        dtype = self.ffn[0].weight.dtype
        mod = (self.modulation.float().unsqueeze(0) + e0.float()).unbind(2)  # 6 x [B, L or 1, dim]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        # Without autograd the residual stream is updated in place (once it is a tensor of our own):
        # no second copy of it lives through the block. With autograd every op stays out of place.
        no_grad = not torch.is_grad_enabled()
        x = x.float()
        # The normed inputs go straight into the calls, which free them once projected.
        y = self.self_attn.self_attention(torch.addcmul(shift1, _layer_norm(x, self.eps), 1 + scale1).to(dtype),
                                          rope, self.attention_fn, key_length).float()
        x = x.addcmul_(y, gate1) if no_grad and inplace else torch.addcmul(x, y, gate1)
        del y

        kv = context.layers[self.index] if isinstance(context, TextContext) else context.to(dtype)
        norm3 = self.norm3
        y = self.cross_attn.cross_attention(
            F.layer_norm(x, x.shape[-1:], norm3.weight.float(), norm3.bias.float(), self.eps).to(dtype), kv).float()
        x = x.add_(y) if no_grad else x + y
        del y
        return self._ffn_residual(x, shift2, scale2, gate2, no_grad)

    def _ffn_residual(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor,
                      inplace: bool) -> torch.Tensor:
        """x + FFN(LN2(x) * (1 + scale) + shift) * gate; shift, scale, gate fp32 [B, L or 1, dim].

        In place, the tokens go through in chunks sized so that the [B, chunk, ffn_dim] intermediate
        is no larger than x itself: it would otherwise be the largest activation of the block.
        """
        dtype = self.ffn[0].weight.dtype
        if not inplace:
            h = torch.addcmul(shift, _layer_norm(x, self.eps), 1 + scale)
            return torch.addcmul(x, self.ffn(h.to(dtype)).float(), gate)
        num_tokens, scale = x.shape[1], 1 + scale
        chunk = max(1, -(-num_tokens * x.shape[-1] // self.ffn[0].out_features))
        for start in range(0, num_tokens, chunk):
            part = slice(start, start + chunk)
            s, c, g = (m[:, part] if m.shape[1] > 1 else m for m in (shift, scale, gate))
            h = torch.addcmul(s, _layer_norm(x[:, part], self.eps), c).to(dtype)
            x[:, part].addcmul_(self.ffn(h).float(), g)
        return x


class WanHead(nn.Module):
    """Final modulated LayerNorm and projection to patch pixels; modulated by e, not e0."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.eps = config.eps
        self.head = nn.Linear(config.dim, math.prod(config.patch_size) * config.out_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], e fp32 [B, L or 1, dim] -> fp32 [B, L, prod(patch) * out_channels]."""
        shift, scale = (self.modulation.float().unsqueeze(0) + e.float().unsqueeze(2)).unbind(2)
        return _linear_fp32(self.head, torch.addcmul(shift, _layer_norm(x, self.eps), 1 + scale))


@dataclass
class DiTState:
    """What :meth:`WanDiT.embed` gives the blocks; every tensor covers all L tokens.

    tokens: fp32 [B, L, dim], token order frame, row, column. grid: (f, h, w) token grid, L = f*h*w.
    rope: (cos, sin) fp32 [L, head_dim/2]. e0: fp32 [B, L or 1, 6, dim] block modulation input.
    e: fp32 [B, L or 1, dim] head modulation input (L when the timestep was per token).
    context: the prepared text (:class:`TextContext`), or embedded text [B, T, dim] in the
    weights' dtype when a caller builds a state by hand.
    """

    tokens: torch.Tensor
    grid: tuple[int, int, int]
    rope: Rope
    e0: torch.Tensor
    e: torch.Tensor
    context: torch.Tensor | TextContext

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]


class WanDiT(nn.Module):
    """Wan 2.2 DiT. ``forward(latents, timestep, context) -> velocity`` (see :meth:`forward`).

    ``attention_fn`` (settable) is the self-attention function of every block, signature
    ``fn(q, k, v, *, key_length=None)`` on [B, L, heads, head_dim]; set a plain function, not a module.
    """

    # Parameters a reduced-precision model keeps in fp32 (regexes on reference names): the reference
    # runs the time path, modulation, norms and head under fp32 autocast on its fp32 weights.
    fp32_param_patterns: tuple[str, ...] = (
        r"^time_embedding\.", r"^time_projection\.", r"^head\.", r"\.modulation$", r"\.norm3\.",
        r"\.norm_[qk]\.",
    )

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config, index) for index in range(config.num_layers))
        self.head = WanHead(config)
        self.attention_fn = default_attention()
        # "float64": the reference; "float32": diffusers. The loader sets it from the checkpoint layout.
        self.timestep_precision = "float64"
        self.gradient_checkpointing = False  # True: training recomputes each block in the backward pass

    @property
    def attention_fn(self) -> AttentionFn:
        return self._attention_fn

    @attention_fn.setter
    def attention_fn(self, fn: AttentionFn) -> None:
        object.__setattr__(self, "_attention_fn", fn)
        for block in self.blocks:
            block.attention_fn = fn

    def to_dtype(self, dtype: torch.dtype) -> WanDiT:
        """Cast parameters to ``dtype`` in place, keeping ``fp32_param_patterns`` in fp32. Returns self."""
        for name, param in self.named_parameters():
            keep = any(re.search(p, name) for p in self.fp32_param_patterns)
            param.data = param.data.to(torch.float32 if keep else dtype)
        return self

    # -- embedding -------------------------------------------------------------------------

    def grid_of(self, latents_shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (f, h, w) of latents shaped [B, C_in, F, H, W]; raises if not divisible."""
        if len(latents_shape) != 5 or latents_shape[1] != self.config.in_channels:
            raise ValueError(f"WanDiT: latents must be [B, {self.config.in_channels}, F, H, W], "
                             f"got {tuple(latents_shape)}")
        sizes, patch = tuple(latents_shape[2:]), self.config.patch_size
        if any(s % p for s, p in zip(sizes, patch)):
            raise ValueError(f"WanDiT: latent size (F, H, W)={sizes} is not divisible by patch {patch}")
        grid = tuple(s // p for s, p in zip(sizes, patch))
        if max(grid) > self.config.rope_max_seq_len:
            raise ValueError(f"WanDiT: token grid {grid} exceeds rope_max_seq_len={self.config.rope_max_seq_len}")
        return grid

    def rope(self, grid: tuple[int, int, int], start: int = 0, end: int | None = None,
             device: torch.device | str | None = None) -> Rope:
        """RoPE (cos, sin) fp32 [end - start, head_dim/2] of tokens start:end; see :func:`rope_cos_sin`."""
        return rope_cos_sin(grid, self.config.rope_split, start, end, device=device)

    def embed_latents(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """latents [B, C_in, F, H, W] -> (fp32 tokens [B, L, dim], grid (f, h, w))."""
        grid = self.grid_of(latents.shape)
        weight = self.patch_embedding.weight
        tokens = self.patch_embedding(latents.to(device=weight.device, dtype=weight.dtype))
        return tokens.flatten(2).transpose(1, 2).float().contiguous(), grid

    def embed_time(self, timestep: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] or per token [B, L] -> (e fp32 [B, T, dim], e0 fp32 [B, T, 6, dim]), T = 1 or L."""
        if timestep.ndim == 1:
            timestep = timestep.unsqueeze(1)
        elif timestep.ndim != 2 or timestep.shape[1] != num_tokens:
            raise ValueError(f"WanDiT: timestep must be [B] or [B, {num_tokens}], got {tuple(timestep.shape)}")
        first, second = self.time_embedding[0], self.time_embedding[2]
        freq = sinusoidal_embedding(timestep.to(first.weight.device), self.config.freq_dim,
                                    precision=self.timestep_precision)
        e = _linear_fp32(second, F.silu(_linear_fp32(first, freq)))
        e0 = _linear_fp32(self.time_projection[1], F.silu(e)).unflatten(-1, (6, self.config.dim))
        return e, e0

    def _check_context(self, context: torch.Tensor) -> None:
        text_len = self.config.text_len
        if (context.ndim != 3 or not 1 <= context.shape[1] <= text_len
                or context.shape[2] != self.config.text_dim):
            raise ValueError(f"WanDiT: context must be [B, 1..{text_len}, {self.config.text_dim}], "
                             f"got {tuple(context.shape)}")

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """context [B, T, text_dim] (T <= text_len) -> [B, T, dim] in the weights' dtype: the rows as given."""
        self._check_context(context)
        weight = self.text_embedding[0].weight
        return self.text_embedding(context.to(device=weight.device, dtype=weight.dtype))

    def prepare_context(self, context: torch.Tensor, *, compress: bool = True) -> TextContext:
        """Text embedding and every block's cross-attention keys and values, once per render.

        context: [B, T, text_dim] (T <= text_len), each prompt's true rows followed by zero rows; all T
        rows are attended (see the module docstring). With ``compress`` only the first ``max(length) + 1``
        rows are embedded and attended, the padding rows kept carrying a log-count logit bias (exact up
        to summation order; a prompt of T true rows disables it). ``compress=False`` embeds and attends
        all T rows. The result is valid for this model's weights and a batch of B samples.
        """
        self._check_context(context)
        weight = self.text_embedding[0].weight
        context = context.to(device=weight.device, dtype=weight.dtype)
        given = context.shape[1]
        lengths = text_lengths(context)
        window = min(int(lengths.max()) + 1, given) if compress else given
        text = self.text_embedding(context[:, :window])
        bias = padding_bias(lengths, window, given) if window < given else None
        layers = tuple(block.cross_attn.prepare_kv(text, bias) for block in self.blocks)
        return TextContext(lengths=lengths, layers=layers)

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor,
              context: torch.Tensor | TextContext) -> DiTState:
        """Patchify, embed time, prepare the text (unless given a :class:`TextContext`) and compute
        RoPE for all tokens. Shapes: see :class:`DiTState` and :meth:`forward`."""
        tokens, grid = self.embed_latents(latents)
        batch = context.batch_size if isinstance(context, TextContext) else context.shape[0]
        if timestep.shape[0] != tokens.shape[0] or batch != tokens.shape[0]:
            raise ValueError(f"WanDiT: batch sizes differ: latents {tokens.shape[0]}, "
                             f"timestep {timestep.shape[0]}, context {batch}")
        if not isinstance(context, TextContext):
            context = self.prepare_context(context)
        elif len(context.layers) != len(self.blocks):
            raise ValueError(f"WanDiT: TextContext has {len(context.layers)} layers, model {len(self.blocks)}")
        e, e0 = self.embed_time(timestep, tokens.shape[1])
        rope = self.rope(grid, device=tokens.device)
        return DiTState(tokens=tokens, grid=grid, rope=rope, e0=e0, e=e, context=context)

    # -- blocks, head, output --------------------------------------------------------------

    def run_blocks(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor | TextContext, rope: Rope,
                   key_length: int | None = None, *, inplace: bool = False) -> torch.Tensor:
        """All blocks in order. x fp32 [B, L, dim] (any slice of the tokens, with its rope and its
        e0 rows when e0 is per token) -> fp32 [B, L, dim]. context: a :class:`TextContext` or
        embedded text [B, T, dim]. inplace: x may be overwritten (without autograd); else
        the first block copies it. See :meth:`WanBlock.forward`."""
        first = x
        checkpointed = getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointed:  # keep only each block's input; recompute the block in the backward pass
                x = torch.utils.checkpoint.checkpoint(block, x, e0, context, rope, key_length=key_length,
                                                      use_reentrant=False)
            else:
                x = block(x, e0, context, rope, key_length=key_length, inplace=inplace or x is not first)
        return x

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """tokens [B, L, prod(patch) * C_out] (channel order p, q, r, c; c fastest) -> [B, C_out, F, H, W]."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = tokens.reshape(tokens.shape[0], f, h, w, pt, ph, pw, self.config.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], self.config.out_channels, f * pt, h * ph, w * pw)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor | TextContext, *, blocks=None) -> torch.Tensor:
        """Velocity prediction.

        latents: [B, C_in, F, H, W]. timestep: [B] or per token [B, L] with L = F/pt * H/ph * W/pw,
        float or int. context: [B, T, text_dim] text encoder output (T <= text_len rows, all attended), or the
        :class:`TextContext` that :meth:`prepare_context` made of it (the same result, computed once
        for all steps of a render). Returns fp32 [B, C_out, F, H, W].
        ``blocks``: a step cache's hook (:meth:`wan_dist.sampling.step_cache.StepCache.hook`), called as
        ``blocks(model, tokens, run)`` in place of ``run(tokens)``, which runs every block.
        """
        state = self.embed(latents, timestep, context)

        def run(tokens: torch.Tensor) -> torch.Tensor:
            return self.run_blocks(tokens, state.e0, state.context, state.rope, inplace=True)  # tokens are ours

        x = run(state.tokens) if blocks is None else blocks(self, state.tokens, run)
        return self.unpatchify(self.head(x, state.e), state.grid)
