"""The post pass of a long clip (engine/long.py), streamed: what ``engine.post`` does to a one-window clip's frames in
memory (the style lock's colour pass, platform renditions with overlays), done over passes of the clip's frames,
one window at a time, so memory stays flat in the clip's length.

Each pass reads the stored windows again (``engine.windows.WindowStore.segments``). The colour pass needs every
frame's statistics before it grades any (:class:`StyleRegrade`: one reading pass); renditions need the subject's
track over the published frames before they crop any (:class:`LongRenditions`: the subject is tracked while the
clip is encoded, then a second pass cuts and encodes every rendition).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["StyleRegrade", "LongRenditions", "TRACK_CHUNK_FRAMES"]

TRACK_CHUNK_FRAMES = 48  # frames the subject is tracked over at once (each chunk's own background: shots change)


class StyleRegrade:
    """A long clip's style lock colour pass (``engine.post.lock_style`` of a one-window clip), streamed over its
    stored windows: :meth:`measure` reads every frame's Lab statistics (and the drift without the pass), then
    :meth:`regrade` grades a part of the clip (its first frame's index given) with the clip's smoothed statistics,
    frame for frame what ``controls.style.colour_transfer`` does to the whole clip. Frames at the rate the model
    renders (before any fps conversion)."""

    def __init__(self, lock, source: np.ndarray, fps: float):
        self.lock, self.source, self.fps = lock, source, fps
        self.statistics: np.ndarray | None = None
        self._sums = {"without": [0.0, 0.0], "with": [0.0, 0.0]}  # colour drift, high-frequency ratio (sums)
        self._frames = {"without": 0, "with": 0}

    @classmethod
    def of(cls, request, image, fps: float) -> "StyleRegrade | None":
        """The pass ``request`` asks for (a style lock and an input image), else None."""
        if request.style_lock is None or image is None:
            return None
        from wan_dist.controls import StyleLock

        return cls(StyleLock.from_dict(request.style_lock), np.asarray(image.convert("RGB")), fps)

    def _source_at(self, frames: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.resize(self.source, (frames.shape[2], frames.shape[1]), interpolation=cv2.INTER_AREA)

    def _count(self, key: str, frames: np.ndarray) -> None:
        from wan_dist.controls.style import colour_drift, high_frequency_ratio

        source = self._source_at(frames)
        self._sums[key][0] += colour_drift(frames, source) * len(frames)
        self._sums[key][1] += high_frequency_ratio(frames, source) * len(frames)
        self._frames[key] += len(frames)

    def measure(self, parts: Iterable[np.ndarray]) -> None:
        from wan_dist.controls.style import frame_statistics, smooth_statistics

        rows = []
        for frames in parts:
            if len(frames):
                rows.append(frame_statistics(frames))
                self._count("without", frames)
        self.statistics = smooth_statistics(np.concatenate(rows), fps=self.fps, smoothing_s=self.lock.smoothing_s)

    def regrade(self, frames: np.ndarray, start: int, *, count: bool = True) -> np.ndarray:
        """``frames`` (the clip's frames ``start ..``) graded; ``count``: add them to the record's drift (the
        first pass that grades them)."""
        from wan_dist.controls.style import regrade

        if not len(frames) or not self.lock.colour or self.lock.strength <= 0:
            return frames
        frames = regrade(frames, self.statistics[start:start + len(frames)], self._source_at(frames),
                         strength=self.lock.strength)
        if count:
            self._count("with", frames)
        return frames

    def record(self) -> dict:
        """The sidecar's ``style_lock``, as a one-window clip's: the lock, drift and texture without and with it."""
        record = {**self.lock.to_dict(), "drift_ciede2000": {}, "high_frequency_ratio": {}}
        for key, (drift, texture) in self._sums.items():
            if self._frames[key]:
                record["drift_ciede2000"][key] = drift / self._frames[key]
                record["high_frequency_ratio"][key] = texture / self._frames[key]
        return record


class LongRenditions:
    """A long clip's platform renditions (``engine.post.publish_renditions`` of a one-window clip) from its
    published frames (``num_frames`` at ``fps``, ``size`` (width, height)), in two passes: :meth:`observe` sees the
    frames as the clip is encoded and tracks the subject over chunks of :data:`TRACK_CHUNK_FRAMES` (each chunk
    against its own background: a storyboard's shots differ; a request's ``subject_box`` needs no tracking), then
    :meth:`publish` cuts each profile's smoothed crop path from the frames of a second pass, draws the overlays
    (timed over the whole rendition) and guides, encodes as it goes and uploads under ``{prefix}/renditions/``."""

    def __init__(self, request, *, fps: float, num_frames: int, size: tuple[int, int], logo: np.ndarray | None):
        from wan_dist.controls import OverlaySpec
        from wan_dist.controls.renditions import parse_renditions

        self.profiles = parse_renditions(request.renditions)
        self.overlays = None if request.overlays is None else OverlaySpec.from_dict(request.overlays)
        self.subject_box = request.subject_box
        self.fps, self.num_frames, self.size, self.logo = fps, num_frames, size, logo
        self._tracks: list[np.ndarray] = []
        self._chunk: list[np.ndarray] = []

    def observe(self, frames: np.ndarray) -> None:
        if self.subject_box is not None or not len(frames):
            return
        self._chunk.append(frames)
        if sum(len(part) for part in self._chunk) >= TRACK_CHUNK_FRAMES:
            self._track()

    def _track(self) -> None:
        from wan_dist.controls.reframe import subject_track

        if self._chunk:
            self._tracks.append(subject_track(np.concatenate(self._chunk)))
            self._chunk = []

    def subject(self) -> np.ndarray:
        """The subject's box per published frame [F, 4] (source pixels)."""
        from wan_dist.controls.reframe import user_track

        if self.subject_box is not None:
            return user_track(self.subject_box, self.num_frames, *self.size)
        self._track()
        return np.concatenate(self._tracks)

    def publish(self, parts: Iterable[np.ndarray], prefix: str, output) -> list[dict]:
        """Cut, draw, encode and upload every rendition from ``parts`` (the published frames again, in order);
        the sidecar's list of them, as ``publish_renditions`` makes it."""
        from wan_dist.controls.overlays import draw_guides, layout_overlays, render_overlays
        from wan_dist.controls.reframe import crop_frame, crop_path, retime
        from wan_dist.controls.renditions import rendition_record
        from wan_dist.engine.clips import upload_file
        from wan_dist.engine.post import RENDITIONS_FOLDER
        from wan_dist.storage.objects import join
        from wan_dist.video.mp4 import Mp4Writer

        subject = self.subject()
        draws = self.overlays is not None and (self.overlays.title is not None or self.overlays.logo is not None)
        logo_size = None if self.logo is None else (self.logo.shape[1], self.logo.shape[0])
        with tempfile.TemporaryDirectory(prefix="wan-dist-renditions-") as folder, contextlib.ExitStack() as open_:
            plans = []
            for profile in self.profiles:
                windows = crop_path(subject, self.size, profile, fps=self.fps)
                layout = layout_overlays(self.overlays, profile, logo_size=logo_size) if draws else None
                guides = self.overlays is not None and self.overlays.guides
                names = {"clip": f"{profile.name}.mp4", **({"guides": f"{profile.name}.guides.mp4"} if guides else {})}
                writers = {kind: open_.enter_context(Mp4Writer(str(Path(folder) / name), profile.fps,
                                                              codec=output.codec, crf=output.crf,
                                                              preset=output.preset))
                           for kind, name in names.items()}
                plans.append((profile, windows, layout, retime(self.num_frames, self.fps, profile.fps), names,
                              writers))
            start = 0
            for frames in parts:
                end = start + len(frames)
                for profile, windows, layout, picks, _, writers in plans:
                    first, last = np.searchsorted(picks, start), np.searchsorted(picks, end)
                    if first == last:
                        continue
                    made = np.stack([crop_frame(frames[index - start], windows[index], profile)
                                     for index in picks[first:last]])
                    if layout is not None:
                        made = render_overlays(made, self.overlays, layout, fps=profile.fps, logo=self.logo,
                                               start=int(first), duration=len(picks) / profile.fps)
                    writers["clip"].write(made)
                    if "guides" in writers:
                        writers["guides"].write(draw_guides(made, profile))
                start = end
            open_.close()  # every MP4 finished before it is uploaded
            entries = []
            for profile, windows, layout, picks, names, _ in plans:
                entry = rendition_record(profile, len(picks), windows, layout)
                for kind, key in (("clip", "uri"), ("guides", "guides_uri")):
                    if kind in names:
                        entry[key] = join(prefix, RENDITIONS_FOLDER, names[kind])
                        upload_file(Path(folder) / names[kind], entry[key])
                entries.append(entry)
        return entries
