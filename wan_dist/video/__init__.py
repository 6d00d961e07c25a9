"""Frames <-> MP4 (PyAV, H.264 yuv420p). Publishing clips to object storage is the engine's (``engine.clips``)."""

from wan_dist.video.frames import frames_from_video_tensor
from wan_dist.video.mp4 import decode_mp4, encode_mp4, probe_mp4, sample_frames

__all__ = ["decode_mp4", "encode_mp4", "frames_from_video_tensor", "probe_mp4", "sample_frames"]
