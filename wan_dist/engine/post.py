"""The post pass of a render: style lock's colour transfer on the decoded frames, and the platform renditions
(reframed, titled, with an optional guides preview) published beside the main clip.

It runs in ``render.publish`` before the main clip and its sidecar are written, so a present sidecar still means a
complete set: every rendition it lists is already published. The pure work is ``wan_dist.controls``'; here it is
composed with encoding and storage. Keys: ``{prefix}/renditions/{profile}.mp4`` and, with ``guides``,
``{prefix}/renditions/{profile}.guides.mp4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from wan_dist.config import OutputConfig
from wan_dist.controls import OverlaySpec, StyleLock
from wan_dist.controls.reframe import subject_track
from wan_dist.controls.renditions import make_rendition, parse_renditions
from wan_dist.controls.style import colour_drift, colour_transfer, high_frequency_ratio
from wan_dist.engine.request import RenderRequest
from wan_dist.storage.objects import join, write_bytes_atomic
from wan_dist.video.mp4 import encode_mp4

__all__ = ["PostInputs", "post_inputs", "lock_style", "publish_renditions", "RENDITIONS_FOLDER", "MAX_LOGO_PIXELS"]

RENDITIONS_FOLDER = "renditions"
MAX_LOGO_PIXELS = 4096 * 4096  # a logo is scaled down to a share of the frame: more is a decompression bomb


@dataclass(frozen=True)
class PostInputs:
    """What the post pass needs besides the frames, read where the render ran (under its fetch policy):
    ``source`` the input image (RGB uint8) a style lock grades to, ``logo`` the overlays' logo (RGBA uint8)."""

    source: np.ndarray | None = None
    logo: np.ndarray | None = None


def post_inputs(request: RenderRequest, image, policy) -> PostInputs | None:
    """The post inputs of ``request``: ``image`` (the PIL image the render was conditioned on) when a style lock
    needs it, and the logo fetched with ``policy`` (storage.fetch.read_source: a refused URL names
    ``overlays.logo.image``). None when the request needs neither."""
    source = np.asarray(image.convert("RGB")) if request.style_lock is not None and image is not None else None
    logo = None
    overlays = None if request.overlays is None else OverlaySpec.from_dict(request.overlays)
    if overlays is not None and overlays.logo is not None and request.renditions:
        logo = _read_logo(overlays.logo.image, policy)
    return None if source is None and logo is None else PostInputs(source=source, logo=logo)


def _read_logo(uri: str, policy) -> np.ndarray:
    import io

    from PIL import Image

    from wan_dist.storage.fetch import read_source

    data = read_source(uri, policy=policy, field="overlays.logo.image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_LOGO_PIXELS:
                raise ValueError(f"overlays.logo.image: {image.width}x{image.height} is over {MAX_LOGO_PIXELS} pixels")
            return np.asarray(image.convert("RGBA"))
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"overlays.logo.image: not a readable image ({error})") from None


def lock_style(request: RenderRequest, frames: np.ndarray, fps: float,
               source: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any] | None]:
    """``frames`` [F, H, W, 3] uint8 regraded to the input image ``source`` (RGB uint8) when the request has a
    style lock with ``colour``; the sidecar's record: the lock, and drift (mean CIEDE2000 to the source) and
    texture (high-frequency energy ratio) with and without it."""
    if request.style_lock is None or source is None:
        return frames, None
    lock = StyleLock.from_dict(request.style_lock)
    source = cv2.resize(source, (frames.shape[2], frames.shape[1]), interpolation=cv2.INTER_AREA)
    record: dict[str, Any] = {**lock.to_dict(), "drift_ciede2000": {"without": colour_drift(frames, source)},
                              "high_frequency_ratio": {"without": high_frequency_ratio(frames, source)}}
    if lock.colour and lock.strength > 0:
        frames = colour_transfer(frames, source, strength=lock.strength, fps=fps, smoothing_s=lock.smoothing_s)
        record["drift_ciede2000"]["with"] = colour_drift(frames, source)
        record["high_frequency_ratio"]["with"] = high_frequency_ratio(frames, source)
    return frames, record


def publish_renditions(request: RenderRequest, frames: np.ndarray, fps: float, prefix: str,
                       output: OutputConfig, logo: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Each of the request's renditions made from ``frames`` [F, H, W, 3] uint8 at ``fps``, encoded at its
    profile's size and rate and written under ``{prefix}/renditions/``; the sidecar's list of them.
    ``logo``: the overlays' logo image (RGBA uint8, :func:`post_inputs`)."""
    if not request.renditions:
        return []
    overlays = None if request.overlays is None else OverlaySpec.from_dict(request.overlays)
    profiles = parse_renditions(request.renditions)
    subject = subject_track(frames, request.subject_box)  # once for every profile
    entries = []
    for profile in profiles:
        made = make_rendition(frames, fps, profile, overlays=overlays, logo=logo, subject=subject)
        uri = join(prefix, RENDITIONS_FOLDER, f"{profile.name}.mp4")
        video = encode_mp4(made.frames, profile.fps, codec=output.codec, crf=output.crf, preset=output.preset)
        write_bytes_atomic(uri, video, content_type="video/mp4")
        entry = {**made.record(), "uri": uri}
        if made.guides is not None:
            entry["guides_uri"] = join(prefix, RENDITIONS_FOLDER, f"{profile.name}.guides.mp4")
            guides = encode_mp4(made.guides, profile.fps, codec=output.codec, crf=output.crf, preset=output.preset)
            write_bytes_atomic(entry["guides_uri"], guides, content_type="video/mp4")
        entries.append(entry)
    return entries
