"""A rendered clip in object storage: ``{prefix}/clip.mp4`` plus its sidecar ``{prefix}/clip.json``.

The clip is published before the sidecar, so a present sidecar means a complete clip: resume logic
checks for the sidecar only. Here in the engine, which publishes results, rather than in ``wan_dist.video``:
video and storage are leaves that know nothing of each other (../DESIGN.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wan_dist.storage import delete, join, read_bytes, write_bytes_atomic
from wan_dist.video.mp4 import encode_mp4

__all__ = ["CLIP_NAME", "SIDECAR_NAME", "ClipURIs", "publish_clip_file", "read_sidecar", "sidecar_bytes", "write_clip"]

CLIP_NAME = "clip.mp4"
SIDECAR_NAME = "clip.json"


@dataclass(frozen=True)
class ClipURIs:
    """Where one clip was published."""

    clip_uri: str
    sidecar_uri: str


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


def publish_clip_file(path, *, prefix_uri: str, sidecar: Mapping[str, Any],
                      storage_options: Mapping[str, Any] | None = None, chunk_bytes: int = 1 << 20) -> ClipURIs:
    """Publish an MP4 already encoded to the local file ``path`` (a long clip, written as it was rendered) as
    ``{prefix_uri}/clip.mp4``, streamed in chunks, then the sidecar: the order and atomicity of :func:`write_clip`."""
    payload = sidecar_bytes(sidecar)
    uris = ClipURIs(clip_uri=join(prefix_uri, CLIP_NAME), sidecar_uri=join(prefix_uri, SIDECAR_NAME))
    delete(uris.sidecar_uri, storage_options=storage_options)
    upload_file(path, uris.clip_uri, storage_options=storage_options, chunk_bytes=chunk_bytes)
    write_bytes_atomic(uris.sidecar_uri, payload, content_type="application/json", storage_options=storage_options)
    return uris


def upload_file(path, uri: str, *, content_type: str = "video/mp4", storage_options: Mapping[str, Any] | None = None,
                chunk_bytes: int = 1 << 20) -> None:
    """The local file ``path`` written atomically to ``uri``, streamed in chunks (never read whole)."""
    def chunks():
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

    write_bytes_atomic(uri, chunks(), content_type=content_type, storage_options=storage_options)


def read_sidecar(prefix_uri: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load ``{prefix_uri}/clip.json``. Raises ``ObjectNotFoundError`` when the clip is not (completely) published."""
    uri = join(prefix_uri, SIDECAR_NAME)
    value = json.loads(read_bytes(uri, storage_options=storage_options).decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{uri}: the sidecar is not a JSON object")
    return value
