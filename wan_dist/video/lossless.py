"""Frames <-> lossless bytes (FFV1 in Matroska, RGB kept exactly): a long clip's finished windows in storage.

A window's frames are stored so that a resumed render assembles exactly the clip an uninterrupted one would
(H.264 in yuv420p would not give back the same RGB). PyAV is imported lazily, as in :mod:`wan_dist.video.mp4`.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["encode_lossless", "decode_lossless"]


def encode_lossless(frames: np.ndarray) -> bytes:
    """``frames`` [F, H, W, 3] uint8 RGB as FFV1 (bgr0) in Matroska; any size, decoded back bit for bit."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_lossless: frames must be uint8 [F, H, W, 3], got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")
    from wan_dist.video.mp4 import _import_av

    av = _import_av()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in np.ascontiguousarray(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def decode_lossless(data: bytes) -> np.ndarray:
    """The frames [F, H, W, 3] uint8 of :func:`encode_lossless`'s bytes."""
    from wan_dist.video.mp4 import _import_av

    av = _import_av()
    with av.open(io.BytesIO(bytes(data)), mode="r") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError("decode_lossless: no frames")
    return np.stack(frames)
