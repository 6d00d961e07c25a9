"""Reframing a clip to a platform profile: a smoothed crop path that keeps the subject in the action-safe area.

1. The subject, one box per frame in source pixels (x0, y0, x1, y1): from the user's box (fractions of the frame;
   one box for the whole clip, or one per keyframe spread evenly and interpolated), else estimated: what moves on
   its own (dense optical flow, OpenCV's DIS, less the camera's move: an affine motion fitted to the flow with
   RANSAC, so pans, tilts, zooms and shake cancel), else the frame's spectral-residual saliency
   (:func:`wan_dist.controls.layers.saliency_map`). Motion, not a background model: a slow subject is never part of
   a background estimate (a temporal median keeps the half of it that stays put, and then tracks its ghost).
2. The crop: the largest window of the profile's aspect inside the source. Per frame, the subject box is inside the
   window's action-safe area for window positions in an interval (a corridor); the path follows the subject's
   centre, then is smoothed (Gaussian over time) and put back into the corridors, repeatedly, so it moves slowly
   and still contains the subject wherever containing it is possible. Where the subject is larger than the safe
   area the corridor collapses to the position that centres it.
3. The rendition: each window resized to the profile's size, frames picked at the profile's frame rate.
"""

from __future__ import annotations

import warnings
from typing import Any

import cv2
import numpy as np

from wan_dist.controls.camera import ControlError
from wan_dist.controls.layers import saliency_map
from wan_dist.controls.platforms import Box, PlatformProfile

__all__ = ["subject_keyframes", "MAX_SUBJECT_KEYFRAMES", "subject_track", "user_track", "crop_frame", "crop_window",
           "crop_path", "containment", "apply_crop", "retime", "reframe", "DEFAULT_SMOOTHING_S"]

DEFAULT_SMOOTHING_S = 0.5  # Gaussian sigma of the crop path, seconds: slow, deliberate reframing
_SMOOTHING_PASSES = 40
_SUBJECT_MARGIN = 0.04  # share of the frame's short side added around an estimated subject
_TRACK_SIZE = 180  # short side (pixels) at which the subject is estimated
_FLOW_GAP = 2  # frames between a frame and the two it is compared with (before and after)
_MOTION_THRESHOLD = 0.7  # pixels (working size) a pixel moves beyond the camera's move to count as moving
_CAMERA_GRID = 6  # pixels between the flow samples the camera's move is fitted to
_SIZE_WINDOW = 7  # frames over which an estimated box's width and height are median-filtered
_FLOW_PATCH = 8  # DIS patch side (pixels; its stride half that)
_STILL_CAMERA = 0.5  # pixels (working size) the camera may move between compared frames and count as still
_DIFFERENCE_THRESHOLD = 16.0  # grey levels from the background that make a pixel part of the subject


MAX_SUBJECT_KEYFRAMES = 64


def subject_keyframes(value: Any, field: str = "subject_box") -> list[list[float]]:
    """A request's ``subject_box`` normalised: one box ``[x0, y0, x1, y1]`` (fractions of the frame) or a list of
    keyframe boxes spread evenly over the clip, as a list of boxes; ControlError naming the bad part."""
    boxes = value if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)) else [value]
    if len(boxes) > MAX_SUBJECT_KEYFRAMES:
        raise ControlError(field, f"at most {MAX_SUBJECT_KEYFRAMES} keyframe boxes, got {len(boxes)}")
    where = (lambda i: f"{field}[{i}]") if len(boxes) > 1 or boxes is value else (lambda i: field)
    parsed = [Box.parse(box, where(i)) for i, box in enumerate(boxes)]
    return [[box.x0, box.y0, box.x1, box.y1] for box in parsed]


def user_track(box, num_frames: int, width: int, height: int) -> np.ndarray:
    boxes = np.asarray(box, np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise ControlError("subject_box", "must be [x0, y0, x1, y1] or a list of them (fractions of the frame)")
    for index, row in enumerate(boxes):
        Box.parse([float(v) for v in row], f"subject_box[{index}]" if len(boxes) > 1 else "subject_box")
    keys = np.linspace(0.0, 1.0, len(boxes)) if len(boxes) > 1 else np.zeros(1)
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    track = np.stack([np.interp(times, keys, boxes[:, k]) for k in range(4)], axis=1)
    return track * np.array([width, height, width, height], np.float64)


def _estimated_box(weight: np.ndarray, threshold: float) -> np.ndarray | None:
    mask = (weight > threshold).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[largest, :4]
    return np.array([x, y, x + w, y + h], np.float64)


def subject_track(frames: np.ndarray, box=None) -> np.ndarray:
    """The subject's box per frame [F, 4] (x0, y0, x1, y1 in source pixels) of ``frames`` [F, H, W, 3] uint8:
    from ``box`` (fractions; see the module docstring), else estimated from motion, else from saliency.

    Estimated at a working size of :data:`_TRACK_SIZE` pixels on the short side: in each frame, the largest region
    that moves beyond the camera's move (:func:`_own_motion`) by more than :data:`_MOTION_THRESHOLD` pixels both
    to the frame :data:`_FLOW_GAP` before and to the one as far after (one of them at the clip's ends), else the
    frame's salient region; with a still camera, tightened to what differs from a background made without those
    boxes (:func:`_refined`); width and height median-filtered over time (:func:`_steady_size`); frames with no
    box take theirs from the nearest frames that found one."""
    num_frames, height, width = frames.shape[:3]
    if box is not None:
        return user_track(box, num_frames, width, height)
    scale = min(1.0, _TRACK_SIZE / min(width, height))
    small = frames if scale == 1.0 else np.stack([
        cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        for frame in frames])
    motion, camera = _own_motion(small)
    track = np.full((num_frames, 4), np.nan)
    for index, frame in enumerate(small):
        found = _estimated_box(motion[index], _MOTION_THRESHOLD)
        if found is None:
            found = _estimated_box(saliency_map(frame), 0.5)
        if found is not None:
            track[index] = found
    if camera.max(initial=0.0) < _STILL_CAMERA:  # a background exists only where the camera holds still
        track = _refined(small, track)
    track = _steady_size(track)
    small_height, small_width = small.shape[1:3]
    margin = _SUBJECT_MARGIN * min(small_width, small_height)
    track = track + np.array([-margin, -margin, margin, margin])
    missing = np.isnan(track[:, 0])
    if missing.all():  # nothing stands out: the whole frame's centre
        track[:] = [small_width * 0.25, small_height * 0.25, small_width * 0.75, small_height * 0.75]
    elif missing.any():  # fill gaps from the nearest frames that found the subject
        known = np.flatnonzero(~missing)
        for k in range(4):
            track[missing, k] = np.interp(np.flatnonzero(missing), known, track[known, k])
    return np.clip(track / scale, 0, [width, height, width, height])


def _refined(frames: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Each motion box [F, 4] tightened to what differs from the background there. A flow's box is a little too
    large (DIS's patches straddle the subject's edge) but never misses where the subject is not, so the background
    of a pixel is its median over the frames whose box, grown by a quarter, leaves it uncovered: no slow subject's
    ghost in it. A box stays as it was where that difference finds nothing near it, or where every frame covers
    one of its pixels."""
    num_frames, height, width = frames.shape[:3]
    covered = np.zeros((num_frames, height, width), bool)
    grown = []
    for index, box in enumerate(track):
        if np.isnan(box[0]):
            grown.append(None)
            continue
        gx, gy = (box[2] - box[0]) / 4, (box[3] - box[1]) / 4
        x0, y0 = int(max(0, box[0] - gx)), int(max(0, box[1] - gy))
        x1, y1 = int(min(width, np.ceil(box[2] + gx))), int(min(height, np.ceil(box[3] + gy)))
        covered[index, y0:y1, x0:x1] = True
        grown.append((x0, y0, x1, y1))
    values = np.where(covered[..., None], np.nan, frames.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        background = np.nanmedian(values, axis=0)
    out = track.copy()
    for index, window in enumerate(grown):
        if window is None:
            continue
        x0, y0, x1, y1 = window
        part = background[y0:y1, x0:x1]
        if np.isnan(part).any():
            continue
        differs = np.abs(frames[index, y0:y1, x0:x1].astype(np.float32) - part).max(axis=-1)
        found = _estimated_box(differs, _DIFFERENCE_THRESHOLD)
        if found is not None:
            out[index] = found + np.array([x0, y0, x0, y0], np.float64)
    return out


def _steady_size(track: np.ndarray) -> np.ndarray:
    """``track`` [F, 4] (NaN rows: not found) with each box's width and height replaced by their median over the
    :data:`_SIZE_WINDOW` frames around it (found ones), about the box's own centre: a subject's size changes
    slowly, the flow's errors (a halo at the frame's edge, a frame where part of the subject holds still) do not."""
    found = np.flatnonzero(~np.isnan(track[:, 0]))
    if len(found) < 3:
        return track
    centre = (track[:, :2] + track[:, 2:]) / 2
    size = track[:, 2:] - track[:, :2]
    steady = size.copy()
    half = _SIZE_WINDOW // 2
    for index in found:
        near = found[np.abs(found - index) <= half]
        steady[index] = np.median(size[near], axis=0)
    return np.concatenate([centre - steady / 2, centre + steady / 2], axis=1)


def _own_motion(frames: np.ndarray, gap: int = _FLOW_GAP) -> tuple[np.ndarray, np.ndarray]:
    """How far each pixel of each frame moves on its own [F, H, W] (pixels): the optical flow (DIS, on grey) to
    the frame ``gap`` before and to the one ``gap`` after, each less the camera's move (:func:`_camera_flow`), the
    smaller of the two lengths (the one that exists at the clip's ends). Both must agree: what a flow towards one
    neighbour gets wrong (the background a subject uncovers) the other gets right. Zero for a one-frame clip.
    Also the camera's move per frame [F]: the largest mean length of its flow to either neighbour (pixels)."""
    num_frames = len(frames)
    grey = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setPatchSize(_FLOW_PATCH)
    dis.setPatchStride(max(1, _FLOW_PATCH // 2))
    motion = np.zeros(np.shape(frames)[:3], np.float32)
    camera = np.zeros(num_frames)
    for index in range(num_frames):
        lengths = []
        for other in (index - gap, index + gap):
            if 0 <= other < num_frames:
                flow = dis.calc(grey[index], grey[other], None)
                moved = _camera_flow(flow)
                lengths.append(np.linalg.norm(flow - moved, axis=-1))
                camera[index] = max(camera[index], float(np.linalg.norm(moved, axis=-1).mean()))
        if lengths:
            motion[index] = np.minimum.reduce(lengths)
    return motion, camera


def _camera_flow(flow: np.ndarray) -> np.ndarray:
    """The camera's part of ``flow`` [H, W, 2]: the affine motion (pan, tilt, zoom, roll, shake) that most of the
    frame follows, fitted with RANSAC to the flow sampled every :data:`_CAMERA_GRID` pixels, at every pixel; the
    median flow when no affine fits."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[_CAMERA_GRID // 2:height:_CAMERA_GRID, _CAMERA_GRID // 2:width:_CAMERA_GRID]
    source = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    fitted = None
    if len(source) >= 3:
        fitted, _ = cv2.estimateAffine2D(source, source + flow[ys.ravel(), xs.ravel()], ransacReprojThreshold=0.5,
                                         maxIters=500, refineIters=10)
    if fitted is None:
        return np.broadcast_to(np.median(flow.reshape(-1, 2), axis=0), flow.shape)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([fitted[0, 0] * grid_x + fitted[0, 1] * grid_y + fitted[0, 2] - grid_x,
                     fitted[1, 0] * grid_x + fitted[1, 1] * grid_y + fitted[1, 2] - grid_y], axis=-1)


def crop_window(source_width: int, source_height: int, profile: PlatformProfile) -> tuple[float, float]:
    """The largest (width, height) of the profile's aspect inside the source, in source pixels."""
    if source_width / source_height > profile.aspect:
        return source_height * profile.aspect, float(source_height)
    return float(source_width), source_width / profile.aspect


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(values, radius, mode="edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def _axis_path(low: np.ndarray, high: np.ndarray, size: float, window: float, sigma: float,
               safe: tuple[float, float], centre: np.ndarray) -> np.ndarray:
    """Window start per frame along one axis: in the corridor where the subject [low, high] sits inside the
    window's safe share ``safe`` (fractions), smooth, and inside the frame [0, size - window]."""
    lower = high - safe[1] * window  # the window may start no earlier than this ...
    upper = low - safe[0] * window  # ... and no later than this
    collapsed = lower > upper
    middle = (low + high) / 2 - (safe[0] + safe[1]) / 2 * window
    lower, upper = np.where(collapsed, middle, lower), np.where(collapsed, middle, upper)
    lower, upper = np.clip(lower, 0.0, size - window), np.clip(upper, 0.0, size - window)
    path = np.clip(centre - window / 2, lower, upper)
    for _ in range(_SMOOTHING_PASSES):
        path = np.clip(_gaussian(path, sigma), lower, upper)
    return path


def crop_path(subject: np.ndarray, source_size: tuple[int, int], profile: PlatformProfile, *, fps: float,
              smoothing_s: float = DEFAULT_SMOOTHING_S) -> np.ndarray:
    """Crop windows [F, 4] (x0, y0, x1, y1, source pixels, float) of the profile's aspect following ``subject``
    [F, 4] so it stays inside each window's action-safe area; smoothed with sigma ``smoothing_s`` seconds."""
    width, height = source_size
    window_width, window_height = crop_window(width, height, profile)
    sigma = smoothing_s * fps
    safe = profile.action_safe
    x = _axis_path(subject[:, 0], subject[:, 2], width, window_width, sigma, (safe.x0, safe.x1),
                   (subject[:, 0] + subject[:, 2]) / 2)
    y = _axis_path(subject[:, 1], subject[:, 3], height, window_height, sigma, (safe.y0, safe.y1),
                   (subject[:, 1] + subject[:, 3]) / 2)
    return np.stack([x, y, x + window_width, y + window_height], axis=1)


def containment(subject: np.ndarray, windows: np.ndarray, profile: PlatformProfile, tolerance: float = 0.5) -> float:
    """The share of frames whose subject box lies inside its window's action-safe area (``tolerance`` pixels)."""
    size = windows[:, 2:] - windows[:, :2]
    safe = profile.action_safe
    left, top = windows[:, 0] + safe.x0 * size[:, 0], windows[:, 1] + safe.y0 * size[:, 1]
    right, bottom = windows[:, 0] + safe.x1 * size[:, 0], windows[:, 1] + safe.y1 * size[:, 1]
    inside = ((subject[:, 0] >= left - tolerance) & (subject[:, 1] >= top - tolerance)
              & (subject[:, 2] <= right + tolerance) & (subject[:, 3] <= bottom + tolerance))
    return float(inside.mean())


def retime(num_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Source frame index for each output frame at ``target_fps`` over the same duration (nearest earlier)."""
    duration = num_frames / source_fps
    count = max(1, int(round(duration * target_fps)))
    return np.minimum(np.floor(np.arange(count) * source_fps / target_fps + 1e-6).astype(int), num_frames - 1)


def apply_crop(frames: np.ndarray, windows: np.ndarray, profile: PlatformProfile, source_fps: float) -> np.ndarray:
    """The rendition's frames [F', profile.height, profile.width, 3] uint8: each window cut from ``frames``
    (sub-pixel, by an affine map) and resized to the profile, frames picked at the profile's rate."""
    picks = retime(len(frames), source_fps, profile.fps)
    result = np.empty((len(picks), profile.height, profile.width, 3), np.uint8)
    for out_index, index in enumerate(picks):
        result[out_index] = crop_frame(frames[index], windows[index], profile)
    return result


def crop_frame(frame: np.ndarray, window: np.ndarray, profile: PlatformProfile) -> np.ndarray:
    """One rendition frame [profile.height, profile.width, 3]: ``window`` (x0, y0, x1, y1) cut from ``frame``
    (sub-pixel, by an affine map) and resized to the profile."""
    x0, y0, x1, y1 = window
    scale_x, scale_y = profile.width / (x1 - x0), profile.height / (y1 - y0)
    matrix = np.array([[scale_x, 0, -x0 * scale_x], [0, scale_y, -y0 * scale_y]], np.float64)
    # INTER_AREA is only honoured by resize: pre-shrink by whole factors when the window is much larger
    if scale_x < 0.5:
        factor = int(1 / scale_x)
        frame = cv2.resize(frame, (frame.shape[1] // factor, frame.shape[0] // factor), interpolation=cv2.INTER_AREA)
        matrix[:, :2] *= factor
    return cv2.warpAffine(frame, matrix, (profile.width, profile.height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def reframe(frames: np.ndarray, profile: PlatformProfile, *, fps: float, subject_box=None,
            smoothing_s: float = DEFAULT_SMOOTHING_S,
            subject: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` [F, H, W, 3] uint8 at ``fps`` reframed to ``profile``: (rendition frames, crop windows [F, 4]).
    ``subject``: the track [F, 4] when it is made already (:func:`subject_track`: one for all of a clip's
    renditions), else made here from ``subject_box``."""
    if subject is None:
        subject = subject_track(frames, subject_box)
    windows = crop_path(subject, (frames.shape[2], frames.shape[1]), profile, fps=fps, smoothing_s=smoothing_s)
    return apply_crop(frames, windows, profile, fps), windows
