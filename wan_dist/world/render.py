"""Rendering a scene to frames: ``render_clip(scene, height=, width=, num_frames=) -> uint8 [F, H, W, 3]``.

The background is painted once per clip on a canvas covering everything the camera will see, at
twice the frame's resolution, and each frame samples it through the camera (bilinear, 2 x 2
supersampled). Objects are drawn with Pillow at 4x and box-filtered down, so edges stay clean even
at 64 x 64. Lighting scales whole frames last.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from wan_dist.world.background import paint_background
from wan_dist.world.scene import (SHAPE_EXTENT, Scene, WorldObject, background_factor, camera_state, light_gain,
                                  object_state)
from wan_dist.world.vocab import OBJECT_COLOURS

__all__ = ["render_clip", "first_frame", "clip_times"]

OBJECT_SUPERSAMPLE = 4
BACKGROUND_SUPERSAMPLE = 2


def clip_times(num_frames: int) -> np.ndarray:
    """The scene time (0 = first frame, 1 = last) of each of ``num_frames`` frames [F]."""
    return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def _canvas_window(height: int, width: int, cx: np.ndarray, cy: np.ndarray, zoom: np.ndarray,
                   texels_per_unit: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """First texel (column, row) and shape (texels) of a canvas covering every view of the clip.

    Texels sit on a grid fixed in the world, so a clip and its first frame alone sample the same
    texels however far each one's canvas reaches.
    """
    short = min(height, width)
    half_w, half_h = width / short / 2 / zoom, height / short / 2 / zoom
    col0 = int(math.floor((cx - half_w).min() * texels_per_unit)) - 3
    row0 = int(math.floor((cy - half_h).min() * texels_per_unit)) - 3
    col1 = int(math.ceil((cx + half_w).max() * texels_per_unit)) + 3
    row1 = int(math.ceil((cy + half_h).max() * texels_per_unit)) + 3
    return (col0, row0), (row1 - row0, col1 - col0)


def _taps(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Left bilinear tap (clipped into the canvas) and its right-hand weight for fractional indices."""
    low = np.clip(np.floor(positions).astype(np.int64), 0, size - 2)
    return low, np.clip(positions - low, 0.0, 1.0).astype(np.float32)


def _sample_background(canvas: np.ndarray, first_texel: tuple[int, int], texels_per_unit: float,
                       height: int, width: int, centre: tuple[float, float], zoom: float) -> np.ndarray:
    """One frame's background [H, W, 3] (float32, 0-255) seen through the camera, bilinear and supersampled.

    The view has no rotation, so the bilinear read separates into rows then columns (two 1-D
    gathers instead of four 2-D ones; and no BLAS, whose threads stall on a busy 2-core machine).
    """
    short, ss = min(height, width), BACKGROUND_SUPERSAMPLE
    cols = (np.arange(width * ss) + 0.5) / ss - width / 2
    rows = (np.arange(height * ss) + 0.5) / ss - height / 2
    # Frame pixel -> world point -> fractional canvas index (texel centres sit at integers).
    x0, fx = _taps((cols / short / zoom + centre[0]) * texels_per_unit - first_texel[0] - 0.5, canvas.shape[1])
    y0, fy = _taps((rows / short / zoom + centre[1]) * texels_per_unit - first_texel[1] - 0.5, canvas.shape[0])
    span = canvas[:, x0.min():x0.max() + 2]
    x0 = x0 - x0.min()
    by_rows = span[y0] * (1 - fy)[:, None, None] + span[y0 + 1] * fy[:, None, None]
    fine = by_rows[:, x0] * (1 - fx)[None, :, None] + by_rows[:, x0 + 1] * fx[None, :, None]
    return fine.reshape(height, ss, width, ss, 3).mean(axis=(1, 3))


def _outline(shape: str, centre: tuple[float, float], size: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices (pixels, image axes) of a square or triangle; ``angle`` degrees clockwise."""
    radius = SHAPE_EXTENT[shape] * size
    corners, start = (4, 45.0) if shape == "square" else (3, -90.0)  # a triangle points up at angle 0
    return [(centre[0] + radius * math.cos(math.radians(start + angle + k * 360.0 / corners)),
             centre[1] + radius * math.sin(math.radians(start + angle + k * 360.0 / corners)))
            for k in range(corners)]


def _draw_object(frame: np.ndarray, shape: str, rgb: tuple[int, int, int], centre: tuple[float, float],
                 size: float, angle: float) -> None:
    """Composite one anti-aliased shape onto ``frame`` [H, W, 3] (float) in place; pixels, image axes."""
    height, width = frame.shape[:2]
    reach = SHAPE_EXTENT[shape] * size + 1.0
    left, top = max(int(math.floor(centre[0] - reach)), 0), max(int(math.floor(centre[1] - reach)), 0)
    right, bottom = min(int(math.ceil(centre[0] + reach)), width), min(int(math.ceil(centre[1] + reach)), height)
    if right <= left or bottom <= top:
        return
    ss = OBJECT_SUPERSAMPLE
    mask = Image.new("L", ((right - left) * ss, (bottom - top) * ss), 0)
    draw = ImageDraw.Draw(mask)
    local = ((centre[0] - left) * ss, (centre[1] - top) * ss)
    if shape == "circle":
        r = size * ss / 2
        draw.ellipse([local[0] - r, local[1] - r, local[0] + r, local[1] + r], fill=255)
    else:
        draw.polygon(_outline(shape, local, size * ss, angle), fill=255)
    alpha = np.asarray(mask.reduce(ss), dtype=np.float32)[..., None] / 255.0
    patch = frame[top:bottom, left:right]
    patch *= 1 - alpha
    patch += alpha * np.asarray(rgb, dtype=np.float32)


def _validate(height: int, width: int, num_frames: int) -> None:
    if int(height) < 8 or int(width) < 8:
        raise ValueError(f"render_clip: height and width must be >= 8, got {height} x {width}")
    if int(num_frames) < 1:
        raise ValueError(f"render_clip: num_frames must be >= 1, got {num_frames}")


def render_clip(scene: Scene, *, height: int, width: int, num_frames: int) -> np.ndarray:
    """Render ``scene`` as uint8 RGB frames [num_frames, height, width, 3], any size and length.

    Frame ``i`` shows the scene at time ``i / (num_frames - 1)``; the frame's short side spans one
    world unit at the start of the clip.
    """
    _validate(height, width, num_frames)
    times = clip_times(num_frames)
    short = min(height, width)
    cx, cy, zoom = camera_state(scene.camera, scene.seed, times)
    factor = background_factor(scene.camera)
    # From the whole clip's zoom (monotonic, so its ends), not these frames': a clip and its first
    # frame alone must paint the same texels.
    widest_zoom = float(camera_state(scene.camera, scene.seed, np.array([0.0, 1.0]))[2].max())
    texels_per_unit = BACKGROUND_SUPERSAMPLE * short * widest_zoom
    first_texel, shape = _canvas_window(height, width, factor * cx, factor * cy, zoom, texels_per_unit)
    canvas = paint_background(scene.background, scene.seed, first_texel, shape, texels_per_unit)
    states = [object_state(obj, times) for obj in scene.objects]
    gain = light_gain(scene.lighting, times)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frame = _sample_background(canvas, first_texel, texels_per_unit, height, width,
                                   (factor * cx[i], factor * cy[i]), float(zoom[i]))
        for obj, (x, y, size, angle) in zip(scene.objects, states):
            _draw_scene_object(frame, obj, short, ((x[i] - cx[i]) * zoom[i], (y[i] - cy[i]) * zoom[i]),
                               size[i] * zoom[i], angle[i])
        frames[i] = np.clip(frame * gain[i] + 0.5, 0, 255).astype(np.uint8)
    return frames


def _draw_scene_object(frame: np.ndarray, obj: WorldObject, short: int, at: tuple[float, float],
                       size: float, angle: float) -> None:
    """Draw ``obj`` at frame position ``at`` and ``size`` (world units, (0, 0) = frame centre)."""
    height, width = frame.shape[:2]
    centre = (width / 2 + at[0] * short, height / 2 + at[1] * short)
    _draw_object(frame, obj.shape, OBJECT_COLOURS[obj.colour], centre, size * short, float(angle))


def first_frame(scene: Scene, height: int, width: int) -> np.ndarray:
    """The clip's first frame, uint8 [height, width, 3]: the condition image for image-to-video."""
    return render_clip(scene, height=height, width=width, num_frames=1)[0]
