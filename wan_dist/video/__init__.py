"""Frames <-> MP4 (PyAV, H.264 yuv420p) and clips with sidecar JSON in object storage."""

from wan_dist.video.clip import (
    CLIP_NAME,
    SIDECAR_NAME,
    ClipURIs,
    frames_from_video_tensor,
    read_sidecar,
    sidecar_bytes,
    write_clip,
)
from wan_dist.video.mp4 import decode_mp4, encode_mp4, probe_mp4

__all__ = [
    "CLIP_NAME",
    "SIDECAR_NAME",
    "ClipURIs",
    "decode_mp4",
    "encode_mp4",
    "frames_from_video_tensor",
    "probe_mp4",
    "read_sidecar",
    "sidecar_bytes",
    "write_clip",
]
