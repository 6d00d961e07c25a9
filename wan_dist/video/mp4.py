"""Frames <-> MP4 bytes with PyAV (H.264, yuv420p), entirely in memory.

Frames are ``uint8`` arrays shaped ``[frames, height, width, 3]`` (RGB). PyAV is imported lazily so
that importing :mod:`wan_dist.video` costs nothing where no video is written.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["Mp4Writer", "decode_mp4", "encode_mp4", "probe_mp4", "sample_frames"]

_PIXEL_FORMAT = "yuv420p"


def encode_mp4(
    frames: np.ndarray,
    fps: int,
    *,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "medium",
) -> bytes:
    """Encode ``frames`` ``[F, H, W, 3]`` uint8 RGB as an MP4 (``codec``, yuv420p) at ``fps`` frames per second.

    Every input frame is in the output: the encoder is flushed, and frame ``i`` has timestamp ``i / fps``.
    yuv420p subsamples chroma by two, so ``H`` and ``W`` must be even.
    """
    _check_frames(frames)
    _check_fps(fps)
    fps = int(fps)
    if isinstance(crf, bool) or not isinstance(crf, int) or crf < 0:
        raise ValueError(f"encode_mp4: crf must be a non-negative int, got {crf!r}")
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        odd = " and ".join(
            f"{name}={value}" for name, value in (("height", height), ("width", width)) if value % 2
        )
        raise ValueError(
            f"encode_mp4: {_PIXEL_FORMAT} needs an even height and width, got odd {odd} "
            f"(frames shaped {tuple(frames.shape)}); crop or pad to even sizes"
        )
    av = _import_av()
    frames = np.ascontiguousarray(frames)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options={"crf": str(crf), "preset": preset})
        stream.width = width
        stream.height = height
        stream.pix_fmt = _PIXEL_FORMAT
        stream.time_base = Fraction(1, fps)
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        # The encoder holds back frames (lookahead, B-frames) until flushed.
        container.mux(stream.encode(None))
    return buffer.getvalue()


class Mp4Writer:
    """An MP4 written as its frames come (a long clip never held whole): ``write(frames)`` any number of times,
    then ``close()`` (or a ``with`` block). ``sink`` is a file path or a writable binary file object.

    The same stream as :func:`encode_mp4` of all the frames at once: frame ``i`` has timestamp ``i / fps``; the
    size is set by the first frames (even height and width, yuv420p), every later frame must match it.
    """

    def __init__(self, sink, fps: int, *, codec: str = "libx264", crf: int = 18, preset: str = "medium"):
        _check_fps(fps)
        if isinstance(crf, bool) or not isinstance(crf, int) or crf < 0:
            raise ValueError(f"Mp4Writer: crf must be a non-negative int, got {crf!r}")
        self._sink, self._fps = sink, int(fps)
        self._options = {"crf": str(crf), "preset": preset}
        self._codec = codec
        self._container = self._stream = None
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` ``[F, H, W, 3]`` uint8 RGB."""
        _check_frames(frames)
        count, height, width, _ = frames.shape
        if self._container is None:
            if height % 2 or width % 2:
                raise ValueError(f"Mp4Writer: {_PIXEL_FORMAT} needs an even height and width, got {height}x{width}")
            av = _import_av()
            self._container = av.open(self._sink, mode="w", format="mp4")
            self._stream = self._container.add_stream(self._codec, rate=self._fps, options=self._options)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = _PIXEL_FORMAT
            self._stream.time_base = Fraction(1, self._fps)
        elif (height, width) != (self._stream.height, self._stream.width):
            raise ValueError(f"Mp4Writer: frames are {height}x{width}, the stream is "
                             f"{self._stream.height}x{self._stream.width}")
        av = _import_av()
        frames = np.ascontiguousarray(frames)
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            frame.pts = self.frames_written
            self.frames_written += 1
            self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and finish the file (an error when no frame was written)."""
        if self._container is None:
            raise ValueError("Mp4Writer: no frames were written")
        container, self._container = self._container, None
        try:
            container.mux(self._stream.encode(None))
        finally:
            container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif self._container is not None:
            self._container.close()
            self._container = None


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """Decode the first video stream of an MP4 into ``([F, H, W, 3] uint8 RGB, fps)``."""
    av = _import_av()
    frames = []
    with _open_for_reading(av, data) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as error:
            raise ValueError(f"decode_mp4: corrupt video data after {len(frames)} frames: {error}") from error
    if not frames:
        raise ValueError("decode_mp4: the video stream holds no frames")
    return np.stack(frames), fps


def sample_frames(data: bytes, count: int, *, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """``count`` frames spread evenly over the first video stream, first and last included, as
    ``([count', h, w, 3] uint8 RGB, fps)`` (``count'`` <= ``count``: a shorter clip gives each of its frames once).

    With ``max_side`` each frame is scaled (area interpolation) to fit ``max_side`` x ``max_side``, aspect kept,
    never enlarged. Every frame is decoded (H.264 needs them), but only the chosen ones are converted.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"sample_frames: count must be a positive int, got {count!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"sample_frames: max_side must be a positive int or None, got {max_side!r}")
    total = probe_mp4(data)["frames"]
    wanted = set(np.linspace(0, max(total - 1, 0), num=min(count, max(total, 1))).round().astype(int).tolist())
    av = _import_av()
    frames = []
    with _open_for_reading(av, data) as container:
        stream = _video_stream(container)
        fps = _stream_fps(stream)
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    width, height = _fit(frame.width, frame.height, max_side)
                    frames.append(frame.reformat(width=width, height=height, format="rgb24",
                                                 interpolation="AREA").to_ndarray())
        except av.error.FFmpegError as error:
            raise ValueError(f"sample_frames: corrupt video data after frame {index}: {error}") from error
    if not frames:
        raise ValueError("sample_frames: the video stream holds no frames")
    return np.stack(frames), fps


def _fit(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down to fit ``max_side`` (aspect kept, at least 1 pixel), or as they are."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def probe_mp4(data: bytes) -> dict[str, Any]:
    """Describe the first video stream without decoding it.

    Returns ``{"frames", "width", "height", "fps", "codec", "pix_fmt", "duration_s"}``; ``frames`` is the
    container's count, or the number of packets when the container does not record one.
    """
    av = _import_av()
    with _open_for_reading(av, data) as container:
        stream = _video_stream(container)
        context = stream.codec_context
        fps = _stream_fps(stream)
        frames = int(stream.frames or 0)
        if frames <= 0:
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        duration_s = (
            float(stream.duration * stream.time_base)
            if stream.duration is not None and stream.time_base is not None
            else (frames / fps if fps else 0.0)
        )
        return {
            "frames": frames,
            "width": int(context.width),
            "height": int(context.height),
            "fps": fps,
            "codec": context.name,
            "pix_fmt": context.pix_fmt,
            "duration_s": duration_s,
        }


def _check_frames(frames: Any) -> None:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"encode_mp4: frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(
            f"encode_mp4: frames must be uint8, got {frames.dtype} "
            "(convert floats in [-1, 1] with wan_dist.video.frames_from_video_tensor)"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_mp4: frames must be shaped [F, H, W, 3] (RGB), got {tuple(frames.shape)}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"encode_mp4: frames must be non-empty, got shape {tuple(frames.shape)}")


def _check_fps(fps: Any) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps <= 0:
        raise ValueError(f"encode_mp4: fps must be a positive int, got {fps!r}")


def _import_av():
    try:
        import av
    except ImportError as error:  # the GPU machines have no PyAV; only the video writers need it
        raise ImportError("wan_dist.video needs PyAV (`pip install av`) to encode or decode MP4") from error
    return av


def _open_for_reading(av, data: bytes):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected MP4 bytes, got {type(data).__name__}")
    if not len(data):
        raise ValueError("expected MP4 bytes, got an empty buffer")
    try:
        return av.open(io.BytesIO(bytes(data)), mode="r")
    except av.error.FFmpegError as error:
        raise ValueError(f"not a readable video container: {error}") from error


def _video_stream(container):
    if not container.streams.video:
        raise ValueError("the container holds no video stream")
    return container.streams.video[0]


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0
