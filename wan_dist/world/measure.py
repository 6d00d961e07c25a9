"""Reading a clip back: the main object's colour, shape and motion, and the camera's move, from frames.

numpy only (OpenCV is not a dependency). Made for evaluating generated clips of this world, and
checked against its own renders. It relies on the world's figure/ground rule: objects are vivid and
bright, backgrounds are dark, so object pixels are those within a fraction of the frame's brightest.
The main object is the largest blob in the first frame; later frames follow the blob of its colour.

Directions are in image terms: an object "right" moves towards the frame's right edge; a camera
"left" pans (or dollies) left, so the background slides right. Object motion is measured against
the background, so a still object under a pan reads "still". Under a dolly the foreground moves
against the background by design (parallax), and a pan with a moving object looks the same; pass
the dolly's ``parallax`` to undo it when the clip is known to dolly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wan_dist.world.registration import camera_track
from wan_dist.world.vocab import OBJECT_COLOURS

__all__ = ["object_mask", "components", "dominant_colour", "shape_name", "track_main_object",
           "object_motion", "camera_motion", "measure_clip", "ClipMeasure", "ObjectTrack"]

BRIGHT_FRACTION = 0.72  # object pixels: brightest channel >= this share of the frame's bright level
WHITE_SATURATION = 0.3  # below this saturation a bright object is white
CIRCLE_HARMONICS = 0.035  # radial-profile harmonic below which an outline is round
MOVE_FRACTION = 0.12  # net displacement (share of the short side) that counts as moving
BOUNCE_FRACTION = 0.08  # vertical excursion that counts as a bounce
GROW_RATIO, SHRINK_RATIO = 1.4, 0.7  # area change that counts as growing or shrinking
ROTATE_DEGREES = 40.0
ZOOM_LOG = 0.12  # |log scale| over the clip that counts as a zoom
PAN_FRACTION = 0.06  # background travel (share of the short side) that counts as a pan or tilt
SHAKE_FRACTION = 0.05  # background path length, with little net travel, that counts as shake
_HUES = {name: math.degrees(math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360
         for name, (r, g, b) in OBJECT_COLOURS.items() if name != "white"}
_DIRECTIONS = ("right", "up_right", "up", "up_left", "left", "down_left", "down", "down_right")


def object_mask(frame: np.ndarray) -> np.ndarray:
    """Object pixels [H, W] bool of a frame [H, W, 3]: bright relative to the frame's brightest 0.5%.

    Relative, not absolute, so a clip that dims or brightens keeps its objects.
    """
    value = frame[..., :3].max(axis=-1).astype(np.float64)
    reference = max(float(np.percentile(value, 99.5)), 90.0)
    return value >= BRIGHT_FRACTION * reference


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of ``mask`` [H, W]: labels [H, W] (0 = none, 1..n by size, largest first), n."""
    height, width = mask.shape
    big = height * width + 1
    labels = np.where(mask, np.arange(1, big, dtype=np.int64).reshape(height, width), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        smallest = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        smallest = np.where(mask, smallest, big)
        # Jump each label to its root's label (path compression): converges in a few passes.
        flat = smallest.ravel()
        jumped = np.where(mask, flat[np.minimum(smallest, big - 1) - 1].reshape(height, width), big)
        jumped = np.minimum(jumped, smallest)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    roots, inverse, counts = np.unique(labels[mask], return_inverse=True, return_counts=True)
    rank = np.empty(len(roots), dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(1, len(roots) + 1)
    out = np.zeros((height, width), dtype=np.int64)
    out[mask] = rank[inverse]
    return out, len(roots)


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilate ``mask`` by ``steps`` pixels (3 x 3 square); negative steps erode."""
    out = mask.copy() if steps >= 0 else ~mask
    for _ in range(abs(steps)):
        rows = out.copy()
        rows[1:] |= out[:-1]
        rows[:-1] |= out[1:]
        out = rows.copy()
        out[:, 1:] |= rows[:, :-1]
        out[:, :-1] |= rows[:, 1:]
    return out if steps >= 0 else ~out


def _colour_of(rgb: np.ndarray) -> str:
    """The world colour name nearest to one RGB triple: white if unsaturated, else by hue."""
    r, g, b = (float(c) for c in rgb)
    if max(r, g, b) <= 0 or (max(r, g, b) - min(r, g, b)) / max(r, g, b) < WHITE_SATURATION:
        return "white"
    hue = math.degrees(math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    return min(_HUES, key=lambda name: abs((hue - _HUES[name] + 180) % 360 - 180))


def _blob_colour(frame: np.ndarray, blob: np.ndarray) -> str:
    # The interior only: anti-aliased edge pixels mix in the background's hue.
    inner = _grow(blob, -1)
    pixels = frame[inner if inner.sum() >= 4 else blob][:, :3]
    return _colour_of(np.median(pixels, axis=0))


def dominant_colour(frame: np.ndarray) -> str | None:
    """Colour name of the largest object in ``frame`` [H, W, 3], or None if there is no object."""
    labels, count = components(object_mask(frame))
    return _blob_colour(frame, labels == 1) if count else None


def _coverage(frame: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Soft coverage [H, W] in [0, 1] of the object ``blob``: each pixel unmixed between the object's
    colour and the surrounding background's, so anti-aliased edges give sub-pixel outlines."""
    pixels = frame[..., :3].astype(np.float64)
    inner = _grow(blob, -1)
    inside = np.median(pixels[inner if inner.sum() >= 4 else blob], axis=0)
    ring = _grow(blob, 3) & ~_grow(blob, 1)
    outside = np.median(pixels[ring], axis=0) if ring.any() else np.zeros(3)
    direction = inside - outside
    alpha = ((pixels - outside) * direction).sum(-1) / max(float((direction * direction).sum()), 1e-6)
    coverage = np.where(_grow(blob, 2), np.clip(alpha, 0.0, 1.0), 0.0)
    # a blob whose inside matches its surroundings (a model's faint smear) unmixes to nothing: its own pixels then
    return coverage if coverage.sum() > 0 else blob.astype(np.float64)


def _radial_profile(alpha: np.ndarray, count: int = 64) -> tuple[np.ndarray, float, float]:
    """Distance from the coverage-weighted centroid to the 0.5 coverage outline at ``count`` angles."""
    height, width = alpha.shape
    total = alpha.sum()
    cy = float((alpha.sum(axis=1) * np.arange(height)).sum() / total)
    cx = float((alpha.sum(axis=0) * np.arange(width)).sum() / total)
    steps = np.arange(0.0, math.hypot(height, width) / 2, 0.25)
    angles = np.linspace(0.0, 2 * math.pi, count, endpoint=False)
    ys, xs = cy + np.sin(angles)[:, None] * steps, cx + np.cos(angles)[:, None] * steps
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    padded = np.pad(alpha, 1)
    y0, x0 = np.clip(y0 + 1, 0, height), np.clip(x0 + 1, 0, width)
    values = (padded[y0, x0] * (1 - fx) * (1 - fy) + padded[y0, x0 + 1] * fx * (1 - fy)
              + padded[y0 + 1, x0] * (1 - fx) * fy + padded[y0 + 1, x0 + 1] * fx * fy)
    first_out = np.argmax(values < 0.5, axis=1).clip(1)
    before, after = values[np.arange(count), first_out - 1], values[np.arange(count), first_out]
    radius = steps[first_out - 1] + 0.25 * (before - 0.5) / np.maximum(before - after, 1e-6)
    return radius, cx, cy


def _outline_harmonics(frame: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Complex Fourier coefficients [8] of the radial outline, each over the mean radius."""
    ys, xs = np.nonzero(blob)
    # Work on the blob's neighbourhood only: the ring and the rays never reach further.
    top, left = max(ys.min() - 6, 0), max(xs.min() - 6, 0)
    window = (slice(top, ys.max() + 7), slice(left, xs.max() + 7))
    radius, _, _ = _radial_profile(_coverage(frame[window], blob[window]))
    spectrum = np.fft.fft(radius)
    return spectrum[:8] / max(abs(spectrum[0]), 1e-9)


def _shape_from(harmonics: np.ndarray) -> str:
    # A square's outline repeats four times a turn and a triangle's three times; a circle's not at all.
    third, fourth = abs(harmonics[3]), abs(harmonics[4])
    if max(third, fourth) < CIRCLE_HARMONICS:
        return "circle"
    return "triangle" if third > fourth else "square"


def shape_name(frame: np.ndarray) -> str | None:
    """Shape name (circle, square, triangle) of the largest object in ``frame``, or None if none."""
    labels, count = components(object_mask(frame))
    return _shape_from(_outline_harmonics(frame, labels == 1)) if count else None


@dataclass(frozen=True)
class ObjectTrack:
    """The main object through a clip: frame-0 ``colour`` and ``shape``; per frame [F] whether it was
    ``found``, its centroid ``x``, ``y`` and ``area`` in the frame's pixels, and its outline
    orientation ``angle`` in degrees (NaN for circles and lost frames)."""

    colour: str
    shape: str
    found: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    angle: np.ndarray


def track_main_object(frames: np.ndarray, labelled: list[tuple[np.ndarray, int]] | None = None) -> ObjectTrack | None:
    """Follow the largest first-frame object of ``frames`` [F, H, W, 3] by its colour; None if none.

    ``labelled``: each frame's :func:`components` of :func:`object_mask`, if already computed.
    """
    labelled = labelled or [components(object_mask(frame)) for frame in frames]
    labels, count = labelled[0]
    if not count:
        return None
    colour, shape = _blob_colour(frames[0], labels == 1), _shape_from(_outline_harmonics(frames[0], labels == 1))
    order = {"square": 4, "triangle": 3}.get(shape)
    n = len(frames)
    found, x, y = np.zeros(n, bool), np.full(n, np.nan), np.full(n, np.nan)
    area, angle = np.full(n, np.nan), np.full(n, np.nan)
    for i, (frame, (labels, count)) in enumerate(zip(frames, labelled)):
        blob = next((labels == k for k in range(1, count + 1) if _blob_colour(frame, labels == k) == colour), None)
        if blob is None:
            continue
        ys, xs = np.nonzero(blob)
        found[i], x[i], y[i], area[i] = True, xs.mean() + 0.5, ys.mean() + 0.5, float(blob.sum())
        if order:
            # The outline's k-fold harmonic turns k times as fast as the shape.
            angle[i] = -math.degrees(np.angle(_outline_harmonics(frame, blob)[order])) / order
    return ObjectTrack(colour, shape, found, x, y, area, angle)


def _rotation(angle: np.ndarray, shape: str) -> float:
    """Total turn in degrees from per-frame orientations (each known only modulo the symmetry)."""
    period = {"square": 90.0, "triangle": 120.0}.get(shape)
    valid = angle[~np.isnan(angle)]
    if period is None or len(valid) < 2:
        return 0.0
    steps = (np.diff(valid) + period / 2) % period - period / 2
    return float(steps.sum())


def _direction(dx: float, dy: float) -> str:
    """One of eight compass words for an image-axes displacement (y down)."""
    sector = int(round(math.degrees(math.atan2(-dy, dx)) / 45.0)) % 8
    return _DIRECTIONS[sector]


def _motion_word(track: ObjectTrack, scale: np.ndarray, translation: np.ndarray, height: int, width: int,
                 parallax: float) -> str | None:
    """Classify a main-object track against the camera track (see :func:`object_motion`)."""
    found = track.found
    if found.sum() < 2:
        return None
    short, centre = min(height, width), np.array([width / 2, height / 2])
    # Back to frame-0 coordinates: undo the camera's zoom and the foreground layer's travel.
    travelled = translation[found] / parallax
    points = (np.stack([track.x, track.y], 1)[found] - centre - travelled) / scale[found, None]
    areas = track.area[found] / scale[found] ** 2
    travel = (points[-1] - points[0]) / short
    if math.hypot(*travel) > MOVE_FRACTION:
        return _direction(*travel)
    heights = points[:, 1] / short
    if heights[0] - heights.min() > BOUNCE_FRACTION:
        return "bounce"
    if areas[-1] / areas[0] > GROW_RATIO:
        return "grow"
    if areas[-1] / areas[0] < SHRINK_RATIO:
        return "shrink"
    if abs(_rotation(track.angle, track.shape)) > ROTATE_DEGREES:
        return "rotate"
    return "still"


def _camera_word(scale: np.ndarray, translation: np.ndarray, steps: np.ndarray, short: int) -> str:
    """Classify a camera track: zoom first (it also moves tiles), then travel, then shake."""
    log_zoom = math.log(max(float(scale[-1]), 1e-6))
    if abs(log_zoom) > ZOOM_LOG:
        return "in" if log_zoom > 0 else "out"
    net = translation[-1] / short
    path = float(np.hypot(steps[:, 0], steps[:, 1]).sum()) / short
    if math.hypot(*net) > PAN_FRACTION and math.hypot(*net) > 0.5 * path:
        # The background slides opposite to the camera: content moving right means a pan left.
        if abs(net[0]) >= abs(net[1]):
            return "left" if net[0] > 0 else "right"
        return "up" if net[1] > 0 else "down"
    return "shake" if path > SHAKE_FRACTION else "static"


@dataclass(frozen=True)
class ClipMeasure:
    """Everything :func:`measure_clip` reads from a clip (None where there is no object), with the
    main object's ``track`` for closer looks."""

    colour: str | None
    shape: str | None
    motion: str | None
    camera: str
    track: ObjectTrack | None = field(default=None, repr=False, compare=False)


def _check(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] < 3 or frames.shape[0] < 2:
        raise ValueError(f"measure: frames must be [F >= 2, H, W, 3], got shape {frames.shape}")
    return frames


def measure_clip(frames: np.ndarray, *, parallax: float = 1.0) -> ClipMeasure:
    """Main object colour, shape and motion and the camera move of ``frames`` [F, H, W, 3] uint8.

    ``motion`` is as :func:`object_motion` says (``parallax`` as there), ``camera`` as
    :func:`camera_motion` says.
    """
    frames = _check(frames)
    if not 0 < parallax <= 1:
        raise ValueError(f"measure: parallax must be in (0, 1], got {parallax}")
    masks = [object_mask(frame) for frame in frames]
    # Grown by two pixels: an object's anti-aliased rim, dimmer than the threshold, is not background.
    scale, translation, steps = camera_track(frames, np.stack([_grow(mask, 2) for mask in masks]))
    camera = _camera_word(scale, translation, steps, min(frames.shape[1:3]))
    track = track_main_object(frames, [components(mask) for mask in masks])
    if track is None:
        return ClipMeasure(None, None, None, camera)
    motion = _motion_word(track, scale, translation, *frames.shape[1:3], parallax)
    return ClipMeasure(track.colour, track.shape, motion, camera, track)


def object_motion(frames: np.ndarray, *, parallax: float = 1.0) -> str | None:
    """How the main object moves in the world over ``frames`` [F, H, W, 3].

    One of right, up_right, up, up_left, left, down_left, down, down_right, bounce, grow, shrink,
    rotate, still; None if there is no object. The camera's motion, read from the background, is
    undone first. ``parallax``: how far the background moves per unit of foreground travel, 1 for
    pans, tilts, zooms and shake; a dolly's parallax (``scene.DOLLY_BACKGROUND_FACTOR``) cannot be read
    from the frames, so pass it when the clip is known (or asked) to dolly.
    """
    return measure_clip(frames, parallax=parallax).motion


def camera_motion(frames: np.ndarray) -> str:
    """The camera move over ``frames`` [F, H, W, 3]: static, left, right, up, down, in, out or shake.

    A pan and a dolly in the same direction both read as that direction (see CAMERA_DIRECTIONS).
    """
    frames = _check(frames)
    masks = np.stack([_grow(object_mask(frame), 2) for frame in frames])
    return _camera_word(*camera_track(frames, masks), min(frames.shape[1:3]))
