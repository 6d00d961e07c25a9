"""Decoded video tensors -> uint8 frames, the input of :func:`wan_dist.video.mp4.encode_mp4`."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["frames_from_video_tensor"]

_LAYOUTS = ("FHWC", "CFHW")


def frames_from_video_tensor(video: Any, *, layout: str = "FHWC") -> np.ndarray:
    """Map a decoded video in [-1, 1] to ``[F, H, W, 3]`` uint8 frames, as diffusers' VideoProcessor does.

    ``video`` is a float numpy array or torch tensor (any device and float dtype), shaped ``[F, H, W, 3]``
    (``layout="FHWC"``) or ``[3, F, H, W]`` (``layout="CFHW"``, one sample of the VAE's ``[B, C, F, H, W]``
    output). Values map by ``clamp(x / 2 + 0.5, 0, 1) * 255`` rounded to nearest. Non-finite values raise.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"frames_from_video_tensor: layout must be one of {_LAYOUTS}, got {layout!r}")
    if _is_torch_tensor(video):
        return _frames_from_torch(video, layout)
    if not isinstance(video, np.ndarray):
        raise TypeError(
            f"frames_from_video_tensor: expected a numpy array or torch tensor, got {type(video).__name__}"
        )
    if not np.issubdtype(video.dtype, np.floating):
        raise TypeError(f"frames_from_video_tensor: expected floats in [-1, 1], got dtype {video.dtype}")
    _check_layout_shape(tuple(video.shape), layout)
    if layout == "CFHW":
        video = np.moveaxis(video, 0, -1)
    video = video.astype(np.float32, copy=False)
    if not np.isfinite(video).all():
        raise ValueError("frames_from_video_tensor: the video holds NaN or infinite values")
    scaled = np.clip(video / 2 + 0.5, 0.0, 1.0) * 255
    return np.ascontiguousarray(np.round(scaled).astype(np.uint8))


def _is_torch_tensor(value: Any) -> bool:
    # Checked by type name so torch is never imported here (the renderer already has it loaded).
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _frames_from_torch(video: Any, layout: str) -> np.ndarray:
    if not video.is_floating_point():
        raise TypeError(f"frames_from_video_tensor: expected floats in [-1, 1], got dtype {video.dtype}")
    _check_layout_shape(tuple(video.shape), layout)
    video = video.detach()
    if layout == "CFHW":
        video = video.permute(1, 2, 3, 0)
    video = video.float()
    if not bool(video.isfinite().all()):
        raise ValueError("frames_from_video_tensor: the video holds NaN or infinite values")
    # Quantize on the tensor's device: a quarter of the bytes cross to the host.
    frames = ((video / 2 + 0.5).clamp(0, 1) * 255).round().byte()
    return np.ascontiguousarray(frames.cpu().numpy())


def _check_layout_shape(shape: tuple[int, ...], layout: str) -> None:
    channel_dim = -1 if layout == "FHWC" else 0
    if len(shape) != 4 or shape[channel_dim] != 3:
        expected = "[F, H, W, 3]" if layout == "FHWC" else "[3, F, H, W]"
        raise ValueError(
            f"frames_from_video_tensor: layout {layout} expects shape {expected}, got {list(shape)}"
        )
