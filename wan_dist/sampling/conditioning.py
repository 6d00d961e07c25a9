"""Image conditioning for I2V-A14B and TI2V-5B, and latent shapes. Pure tensor operations: the caller
passes VAE latents that are already encoded and normalised.

I2V-A14B: channel concatenation. ``y = [mask (4), image latents (16)]``; model input ``[noise (16), y (20)]``.
TI2V-5B: latent frame 0 is the clean image latent, imposed at the start and after every step, and its tokens
get timestep 0 while the rest get ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["latent_shape", "i2v_condition_video", "i2v_mask", "i2v_condition", "i2v_model_input",
           "ti2v_first_frame_mask", "ti2v_impose_first_frame", "ti2v_token_timesteps"]


def latent_shape(num_frames: int, height: int, width: int, *, z_dim: int, temporal_stride: int = 4,
                 spatial_stride: int, patch_size: int = 2) -> tuple[int, int, int, int]:
    """``(z_dim, latent_frames, latent_height, latent_width)`` of a ``num_frames x height x width`` clip.

    ``num_frames`` must be ``temporal_stride * k + 1``; ``height`` and ``width`` multiples of
    ``spatial_stride * patch_size`` so the latent grid patchifies evenly.
    """
    if num_frames < 1 or (num_frames - 1) % temporal_stride:
        raise ValueError(f"num_frames must be {temporal_stride}k+1 (e.g. 81), got {num_frames}")
    multiple = spatial_stride * patch_size
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} (VAE stride {spatial_stride} x "
                             f"patch {patch_size}), got {value}")
    return (z_dim, (num_frames - 1) // temporal_stride + 1, height // spatial_stride, width // spatial_stride)


def i2v_condition_video(first_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The video an I2V-A14B model's condition encodes: each first frame followed by ``num_frames - 1`` black
    (zero) frames, ``[B, 3, H, W] -> [B, 3, num_frames, H, W]`` in the input's dtype and range ([-1, 1]).

    Inference encodes it for the given image and training for each clip's own first frame, through this one
    function, so what the model learns from is what it is given.
    """
    if first_frames.ndim != 4 or first_frames.shape[1] != 3:
        raise ValueError(f"first_frames: expected [B, 3, H, W], got {list(first_frames.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames: must be >= 1, got {num_frames}")
    batch, _, height, width = first_frames.shape
    zeros = first_frames.new_zeros(batch, 3, num_frames - 1, height, width)
    return torch.cat([first_frames.unsqueeze(2), zeros], dim=2)


def i2v_mask(num_latent_frames: int, latent_h: int, latent_w: int, *, temporal_stride: int = 4,
             dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The I2V conditioning mask ``[temporal_stride, f, h, w]``: ones at latent frame 0, zeros elsewhere.

    Built as defined: a per-pixel-frame mask over ``(f-1)*stride + 1`` frames (1 on the given first frame),
    the first entry repeated ``stride`` times so every latent frame covers ``stride`` entries, then regrouped
    to ``[f, stride]`` and transposed so the ``stride`` entries become channels.
    """
    num_frames = (num_latent_frames - 1) * temporal_stride + 1
    per_frame = torch.zeros(num_frames, latent_h, latent_w, dtype=dtype, device=device)
    per_frame[0] = 1
    padded = torch.cat([per_frame[:1].repeat(temporal_stride, 1, 1), per_frame[1:]], dim=0)
    return padded.view(num_latent_frames, temporal_stride, latent_h, latent_w).transpose(0, 1).contiguous()


def i2v_condition(image_latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``y = cat([mask, image_latents], dim=1)``.

    ``image_latents``: ``[B, 16, f, h, w]``, the normalised encoding of ``[image, black frames]``;
    ``mask``: ``[4, f, h, w]`` from :func:`i2v_mask` (or already batched ``[B, 4, f, h, w]``).
    Returns ``[B, 20, f, h, w]`` in ``image_latents``' dtype.
    """
    if mask.ndim == 4:
        mask = mask.unsqueeze(0).expand(image_latents.shape[0], -1, -1, -1, -1)
    if mask.shape[0] != image_latents.shape[0] or mask.shape[2:] != image_latents.shape[2:]:
        raise ValueError(f"i2v_condition: mask {tuple(mask.shape)} does not match image_latents "
                         f"{tuple(image_latents.shape)} in batch or (f, h, w)")
    return torch.cat([mask.to(device=image_latents.device, dtype=image_latents.dtype), image_latents], dim=1)


def i2v_model_input(latents: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The 36-channel I2V model input ``cat([latents [B,16,f,h,w], y [B,20,f,h,w]], dim=1)``, in latents' dtype."""
    if latents.shape[0] != y.shape[0] or latents.shape[2:] != y.shape[2:]:
        raise ValueError(f"i2v_model_input: latents {tuple(latents.shape)} and y {tuple(y.shape)} differ in "
                         "batch or (f, h, w)")
    return torch.cat([latents, y.to(latents.dtype)], dim=1)


def ti2v_first_frame_mask(latents_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """The TI2V noise mask: 0 on latent frame 0, 1 elsewhere (weight of the noisy latent).

    ``latents_shape``: ``[..., f, h, w]`` (e.g. ``[B, z, f, h, w]``); returns ``[1, ..., 1, f, h, w]`` with
    the same number of dims, which broadcasts against the latents.
    """
    *lead, frames, height, width = (int(s) for s in latents_shape)
    mask = torch.ones(*([1] * len(lead)), frames, height, width, dtype=dtype, device=device)
    mask[..., 0, :, :] = 0
    return mask


def ti2v_impose_first_frame(latents: torch.Tensor, image_latent: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
    """``(1 - mask) * image_latent + mask * latents``: frame 0 becomes the clean image latent.

    ``latents``: ``[B, z, f, h, w]``; ``image_latent``: ``[B, z, 1, h, w]`` (normalised); ``mask`` from
    :func:`ti2v_first_frame_mask`. Returns ``[B, z, f, h, w]`` in ``latents``' dtype.
    """
    mask = mask.to(device=latents.device, dtype=latents.dtype)
    return (1 - mask) * image_latent.to(latents.dtype) + mask * latents


def _patch_hw(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(patch_size, int):
        return 1, patch_size, patch_size
    sizes = tuple(int(p) for p in patch_size)
    return (1, *sizes) if len(sizes) == 2 else sizes  # type: ignore[return-value]


def ti2v_token_timesteps(timestep: int | float | torch.Tensor, mask: torch.Tensor,
                         patch_size: int | Sequence[int] = (1, 2, 2), *,
                         seq_len: int | None = None) -> torch.Tensor:
    """Per-token timesteps ``[B, L]``: ``t`` for every patch token, 0 for tokens of latent frame 0.

    ``timestep``: scalar or ``[B]``; ``mask``: ``[..., f, h, w]`` (the leading entries must agree, the
    first is used); ``patch_size``: an int (spatial), ``(p_h, p_w)`` or ``(p_t, p_h, p_w)``. The mask is
    sampled at each patch's first element, so ``L = f/p_t * h/p_h * w/p_w`` in token order frame, row,
    column. ``seq_len``: pad with ``t`` up to this length (sequence-parallel padding, as the reference).
    Returns float32 (the mask's dtype when floating).
    """
    p_t, p_h, p_w = _patch_hw(patch_size)
    grid = mask.reshape(-1, *mask.shape[-3:])[0][::p_t, ::p_h, ::p_w]
    dtype = grid.dtype if grid.dtype.is_floating_point else torch.float32
    t = torch.as_tensor(timestep, device=grid.device).reshape(-1, 1)
    tokens = grid.reshape(1, -1).to(dtype) * t
    if seq_len is not None:
        if seq_len < tokens.shape[1]:
            raise ValueError(f"seq_len {seq_len} is shorter than the {tokens.shape[1]} tokens")
        tokens = torch.cat([tokens, t.to(dtype).expand(-1, seq_len - tokens.shape[1])], dim=1)
    return tokens
