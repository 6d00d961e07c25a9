"""Distributed VAE decode: each rank decodes a band of latent rows, equal to the one-process decode.

The reference decodes on rank 0 alone. Here the latent ``[B, z, f, h, w]`` is split by rows
(:func:`wan_dist.parallel.halo.row_split`: rank r holds ``h // P`` rows, +1 for the first
``h % P`` ranks) and every rank runs diffusers' unmodified ``AutoencoderKLWan.decode`` on its band,
with these decoder submodules given halo-aware forwards for the duration
(:func:`distributed_decode`):

- ``WanCausalConv3d`` with a spatial kernel (3x3x3): the input and its temporal cache frames get
  their missing boundary rows from the neighbouring ranks (zeros at the image border, as the
  original zero padding), then the module's own forward runs with its row padding set to 0;
- ``nn.Conv2d`` with a spatial kernel (after the nearest upsampling in ``WanResample``): same;
- ``WanAttentionBlock`` (one head over all h*w positions of a frame): local RMS norm, an
  all_gather of the normalised features, q/k/v of the whole frame (a 1x1 conv, cheap at latent
  resolution), attention and output projection for this rank's rows only.

Everything else is per pixel or row-local and runs unchanged: RMS norms, 1x1 convs, the temporal
(3,1,1) convs and the per-frame feature cache (time only), nearest 2x upsampling and Wan 2.2's
``DupUp3D`` shortcut (output row 2i+s comes from input row i), unpatchify (latent-row local).
Bands therefore double with every upsampling and stay aligned with the global rows.

What each rank holds: its band of every activation plus one halo row per side per 3x3 conv input
(cache frames included), i.e. about 1/P of the one-process decode memory; at the mid-block also
the normalised features and q/k/v of one whole latent frame (4 * C_mid * h * w values).
Communication per latent frame: two halo rows per spatial conv at that conv's resolution (P2P to
the two neighbours; a conv's cached frames travel with it), one all_gather of C_mid * h * w values
at latent resolution, and at the end the video bands (all_gather, or a gather
to one rank). The decode loop, its frame-by-frame feature cache and ``clear_cache`` are diffusers'
own, run per rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from wan_dist.parallel.halo import all_gather_rows, gather_rows, gathered_row_sizes, halo_pad_rows, row_split

__all__ = ["decode_distributed", "decode_rows", "distributed_decode"]


def _wan_classes() -> dict[str, type]:
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    return {name: getattr(wan, name) for name in (
        "WanCausalConv3d", "WanAttentionBlock", "WanRMS_norm", "WanResample", "WanUpsample", "WanResidualBlock",
        "WanMidBlock", "WanUpBlock", "WanResidualUpBlock", "WanDecoder3d", "DupUp3D")}


# Module types whose forward is per pixel, row-local, or only routes to children (checked in _plan).
_LOCAL_TORCH_TYPES = (nn.Sequential, nn.ModuleList, nn.Identity, nn.Dropout, nn.SiLU)


def _set_forward(module: nn.Module, forward: Callable, undo: list[Callable[[], None]]) -> None:
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")

    def restore() -> None:
        if had_own:
            module.forward = previous
        else:
            del module.forward

    module.forward = forward
    undo.append(restore)


def _set_attr(module: Any, name: str, value: Any, undo: list[Callable[[], None]]) -> None:
    previous = getattr(module, name)
    setattr(module, name, value)
    undo.append(lambda: setattr(module, name, previous))


def _patch_causal_conv(conv, group, undo) -> None:
    """Row halo for a WanCausalConv3d; its own forward then pads only time and width."""
    if conv.stride[1] != 1 or conv.dilation[1] != 1 or conv.kernel_size[1] != 2 * conv._padding[2] + 1:
        raise NotImplementedError(f"distributed_decode: unsupported causal conv {conv}")
    pad = conv._padding[2]
    original = conv.forward  # the class forward, bound
    padding = list(conv._padding)
    padding[2] = padding[3] = 0
    _set_attr(conv, "_padding", tuple(padding), undo)

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is not None and conv._padding[4] > 0:  # the original only uses the cache then
            x, cache_x = halo_pad_rows([x, cache_x.to(x.device)], pad, group)
        else:
            (x,) = halo_pad_rows([x], pad, group)
        return original(x, cache_x)

    _set_forward(conv, forward, undo)


def _patch_conv2d(conv: nn.Conv2d, group, undo) -> None:
    """Row halo for a stride-1 zero-padded nn.Conv2d (WanResample's conv after upsampling)."""
    if (conv.stride[0] != 1 or conv.dilation[0] != 1 or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str) or conv.kernel_size[0] != 2 * conv.padding[0] + 1):
        raise NotImplementedError(f"distributed_decode: unsupported Conv2d {conv}")
    pad = conv.padding[0]
    original = conv.forward
    _set_attr(conv, "padding", (0, conv.padding[1]), undo)

    def forward(x: torch.Tensor) -> torch.Tensor:
        (x,) = halo_pad_rows([x], pad, group)
        return original(x)

    _set_forward(conv, forward, undo)


def _patch_attention(block, group, undo) -> None:
    """Single-head spatial attention: this rank's queries against the keys and values of the frame.

    The normalised features (C channels, per pixel) are all-gathered, k and v are computed for the
    whole frame (a cheap 1x1 conv, identical to the one-process values), the quadratic part (SDPA)
    and the output projection only for this rank's rows.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        identity = x
        batch, channels, frames, height, width = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        sizes = gathered_row_sizes(x, group)
        start = sum(sizes[:dist.get_rank(group)])
        frame = all_gather_rows(block.norm(x), group, sizes)  # [b*t, c, h, w]
        qkv = block.to_qkv(frame).reshape(batch * frames, 1, 3 * channels, -1).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        q = q[:, :, start * width:(start + height) * width]
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.squeeze(1).permute(0, 2, 1).reshape(batch * frames, channels, height, width)
        x = block.proj(x)
        x = x.view(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
        return x + identity

    _set_forward(block, forward, undo)


def _plan(decoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """(kind, module) for each module that needs a halo-aware forward; raise on unknown modules."""
    classes = _wan_classes()
    local = tuple(classes[name] for name in ("WanRMS_norm", "WanResample", "WanUpsample", "WanResidualBlock",
                                             "WanMidBlock", "WanUpBlock", "WanResidualUpBlock", "WanDecoder3d",
                                             "DupUp3D")) + _LOCAL_TORCH_TYPES
    plan: list[tuple[str, nn.Module]] = []
    attention_children: set[int] = set()
    for name, module in decoder.named_modules():
        if isinstance(module, classes["WanAttentionBlock"]):
            plan.append(("attention", module))
            attention_children.update(id(child) for child in module.modules() if child is not module)
        elif id(module) in attention_children:
            continue  # its norm and 1x1 convs are called by the replaced attention forward
        elif isinstance(module, classes["WanCausalConv3d"]):
            if module.kernel_size[1] > 1 or module.kernel_size[2] > 1:
                plan.append(("causal_conv", module))
        elif isinstance(module, nn.Conv2d):
            if module.kernel_size[0] > 1:
                plan.append(("conv2d", module))
        elif isinstance(module, classes["WanResample"]) and module.mode.startswith("downsample"):
            raise NotImplementedError(f"distributed_decode: {name} is a downsampler (encoder only)")
        elif not isinstance(module, local):
            raise NotImplementedError(f"distributed_decode: no row-parallel rule for {name} ({type(module).__name__})")
    return plan


@contextmanager
def distributed_decode(model: nn.Module, group=None) -> Iterator[nn.Module]:
    """Within the block, ``model.decode`` (diffusers ``AutoencoderKLWan``) decodes a row band.

    Every rank of ``group`` must call ``model.decode`` (or ``WanVAE.decode``) with its own band of
    latent rows (``[B, z, f, h_r, w]``, rank order = top to bottom, each band >= 1 row, all other
    dims equal) the same number of times; each returns its band of video rows
    ``[B, C, F, h_r * s, W]``. Halo-aware forwards replace those of the decoder's spatial convs and
    attention; they are restored on exit, also on error. Tiling is switched off inside (it splits
    the image itself). The model is not usable for a one-process decode inside the block.
    """
    handlers = {"causal_conv": _patch_causal_conv, "conv2d": _patch_conv2d, "attention": _patch_attention}
    plan = _plan(model.decoder)
    undo: list[Callable[[], None]] = []
    try:
        if getattr(model, "use_tiling", False):
            _set_attr(model, "use_tiling", False, undo)
        for kind, module in plan:
            handlers[kind](module, group, undo)
        yield model
    finally:
        for restore in reversed(undo):
            restore()


def decode_rows(vae, latent_rows: torch.Tensor, *, group=None) -> torch.Tensor:
    """This rank's band of latent rows ``[B, z, f, h_r, w]`` -> its band of video ``[B, 3, F, h_r*s, W]``.

    Collective over ``group``: for callers that already hold a row shard of the latents.
    """
    with distributed_decode(vae.model, group):
        return vae.decode(latent_rows)


def decode_distributed(vae, latents: torch.Tensor, *, group=None, gather_to: int | None = None
                       ) -> torch.Tensor | None:
    """``vae.decode(latents)`` computed by all ranks of ``group`` together, row band by row band.

    Args:
        vae: a :class:`wan_dist.models.vae.WanVAE` (same weights on every rank).
        latents: normalised latents ``[B, z, f, h, w]``, the same on every rank; rank r decodes
            latent rows ``row_split(h, P)[r]`` (first ``h % P`` ranks one extra row; needs h >= P).
        gather_to: None -> every rank returns the full video; a group rank -> only that rank
            does, the others return None.

    Returns:
        video ``[B, 3, 4(f-1)+1, H, W]`` float32 in [-1, 1], equal to ``vae.decode(latents)``
        up to float rounding: CPU conv kernels choose their blocking by input shape, so a band's
        1x1 / (3,1,1) convs may round differently from the full image's (tiny presets: <= 5e-6
        in fp32, ~1e-15 in fp64).
        Peak memory per rank is about 1/P of a one-process decode plus halos, plus the gathered
        video where it is returned (see the module docstring for what each rank holds and sends).
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B, z, f, h, w], got shape {tuple(latents.shape)}")
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    if gather_to is not None and not 0 <= gather_to < world_size:
        raise ValueError(f"gather_to must be a rank of the group (0..{world_size - 1}) or None, got {gather_to}")
    sizes = row_split(latents.shape[-2], world_size)
    start = sum(sizes[:rank])
    band = decode_rows(vae, latents[..., start:start + sizes[rank], :], group=group)
    scale = band.shape[-2] // sizes[rank]
    video_sizes = [rows * scale for rows in sizes]
    if gather_to is None:
        return all_gather_rows(band, group, video_sizes)
    return gather_rows(band, gather_to, group, video_sizes)
