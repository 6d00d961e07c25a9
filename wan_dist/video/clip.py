"""A rendered clip in object storage: ``{prefix}/clip.mp4`` plus its sidecar ``{prefix}/clip.json``.

The clip is published before the sidecar, so a present sidecar means a complete clip: resume logic
checks for the sidecar only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wan_dist.storage import delete, join, read_bytes, write_bytes_atomic
from wan_dist.video.mp4 import encode_mp4

__all__ = [
    "CLIP_NAME",
    "SIDECAR_NAME",
    "ClipURIs",
    "frames_from_video_tensor",
    "read_sidecar",
    "sidecar_bytes",
    "write_clip",
]

CLIP_NAME = "clip.mp4"
SIDECAR_NAME = "clip.json"
_LAYOUTS = ("FHWC", "CFHW")


@dataclass(frozen=True)
class ClipURIs:
    """Where one clip was published."""

    clip_uri: str
    sidecar_uri: str


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


def sidecar_bytes(sidecar: Mapping[str, Any]) -> bytes:
    """The sidecar as strict JSON (UTF-8, non-ASCII kept as is, sorted keys, indent 2, trailing newline)."""
    if not isinstance(sidecar, Mapping):
        raise TypeError(f"sidecar must be a mapping, got {type(sidecar).__name__}")
    text = json.dumps(dict(sidecar), ensure_ascii=False, sort_keys=True, indent=2, allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_clip(
    frames: np.ndarray,
    *,
    fps: int,
    prefix_uri: str,
    sidecar: Mapping[str, Any],
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "medium",
    storage_options: Mapping[str, Any] | None = None,
) -> ClipURIs:
    """Encode ``frames`` ``[F, H, W, 3]`` uint8 and publish ``{prefix_uri}/clip.mp4`` then ``{prefix_uri}/clip.json``.

    Both objects are written atomically. Any earlier sidecar is removed before the new clip is
    published, so at every moment a present sidecar describes the clip beside it. The sidecar is
    serialized and the video encoded before anything is written: a bad sidecar or bad frames
    leave storage untouched.
    """
    payload = sidecar_bytes(sidecar)
    video = encode_mp4(frames, fps, codec=codec, crf=crf, preset=preset)
    uris = ClipURIs(clip_uri=join(prefix_uri, CLIP_NAME), sidecar_uri=join(prefix_uri, SIDECAR_NAME))
    delete(uris.sidecar_uri, storage_options=storage_options)
    write_bytes_atomic(uris.clip_uri, video, content_type="video/mp4", storage_options=storage_options)
    write_bytes_atomic(
        uris.sidecar_uri, payload, content_type="application/json", storage_options=storage_options
    )
    return uris


def read_sidecar(prefix_uri: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load ``{prefix_uri}/clip.json``. Raises ``ObjectNotFoundError`` when the clip is not (completely) published."""
    uri = join(prefix_uri, SIDECAR_NAME)
    value = json.loads(read_bytes(uri, storage_options=storage_options).decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{uri}: the sidecar is not a JSON object")
    return value


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
