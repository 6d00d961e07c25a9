"""What a scene is: small frozen dataclasses holding only parameters, and where things are at time t.

Units. World coordinates are isotropic with 1.0 = the frame's short side; (0, 0) is the view centre
at the start of the clip, x grows to the right and y grows downwards (image axes). Time ``t`` runs
from 0 (first frame) to 1 (last frame) whatever the number of frames, so one scene rendered with 9 or
33 frames shows the same motion sampled more or less finely.

Camera. A frame shows layer points ``p`` at frame coordinates ``(p - factor * centre(t)) * zoom(t)``
(same units, (0, 0) = frame centre). Objects are the foreground layer (factor 1); the background
layer has factor 1 except under a dolly, where it moves less (:data:`DOLLY_BACKGROUND_FACTOR`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wan_dist.world.vocab import (BACKGROUND_COLOURS, BACKGROUNDS, CAMERAS, LIGHTINGS, MOTIONS,
                                  OBJECT_COLOURS, SHAPES, TRANSLATIONS, valid_combination)

__all__ = ["WorldObject", "Background", "Camera", "Scene", "object_state", "camera_state",
           "background_factor", "light_gain", "SHAPE_EXTENT", "DOLLY_BACKGROUND_FACTOR",
           "SHAKE_AMPLITUDE", "BOUNCES"]

# Farthest point of each shape from its centre, per unit of size. ``size`` is the diameter of the
# circle of equal area, so a square and a triangle of the same size cover as many pixels as the circle.
SHAPE_EXTENT = {"circle": 0.5, "square": 0.5 * math.sqrt(math.pi / 2),
                "triangle": math.sqrt(math.pi / (3 * math.sqrt(3)))}
DOLLY_BACKGROUND_FACTOR = 0.45  # the background travels 45% as far as the foreground under a dolly
SHAKE_AMPLITUDE = 0.04  # world units at shake intensity 1 (about 2.5 px at 64 x 64)
BOUNCES = 2  # hops per clip for the "bounce" motion
LIGHT_RANGE = 0.72  # darkest gain of a brightening or dimming clip (brightest is 1)


def _require(condition: bool, owner: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{owner}: {message}")


@dataclass(frozen=True)
class WorldObject:
    """One object. ``x, y``: centre at t=0; ``size``: equal-area diameter (world units).

    ``amount`` is the extent of its motion: the distance travelled (translations), the hop height
    (bounce), the final size factor (grow > 1, shrink < 1), the total turn in degrees (rotate, positive
    = clockwise on screen); unused (0) for ``still``.
    """

    shape: str
    colour: str
    motion: str
    x: float
    y: float
    size: float
    amount: float = 0.0

    def __post_init__(self) -> None:
        name = "WorldObject"
        _require(self.shape in SHAPES, name, f"unknown shape {self.shape!r}")
        _require(self.colour in OBJECT_COLOURS, name, f"unknown colour {self.colour!r}")
        _require(self.motion in MOTIONS, name, f"unknown motion {self.motion!r}")
        _require(valid_combination(self.shape, self.motion), name, f"a {self.shape} cannot {self.motion}")
        _require(self.size > 0, name, f"size must be positive, got {self.size}")
        _require(self.motion not in ("grow", "shrink") or self.amount > 0, name, "grow/shrink needs amount > 0")


@dataclass(frozen=True)
class Background:
    """The background layer. ``colour`` is the first colour (the sky for a horizon), ``colour2`` the
    second (gradient end, stripe/check/blotch colour, the ground); ``angle`` orients gradients and
    stripes (0 = varies left to right, 90 = top to bottom, 45 = diagonal); ``period`` is the stripe
    period, check size or blotch size; ``horizon`` is the world y of the horizon line."""

    kind: str
    colour: str
    colour2: str
    angle: float = 0.0
    period: float = 0.2
    horizon: float = 0.1

    def __post_init__(self) -> None:
        name = "Background"
        _require(self.kind in BACKGROUNDS, name, f"unknown kind {self.kind!r}")
        for colour in (self.colour, self.colour2):
            _require(colour in BACKGROUND_COLOURS, name, f"unknown background colour {colour!r}")
        _require(self.period > 0, name, f"period must be positive, got {self.period}")


@dataclass(frozen=True)
class Camera:
    """The camera move. ``amount``: distance in world units (pan, tilt, dolly), final zoom factor
    (zoom_in > 1, zoom_out < 1), intensity in (0, 1] (shake); unused for ``static``."""

    move: str
    amount: float = 0.0

    def __post_init__(self) -> None:
        _require(self.move in CAMERAS, "Camera", f"unknown move {self.move!r}")
        if self.move == "zoom_in":
            _require(self.amount > 1, "Camera", f"zoom_in needs amount > 1, got {self.amount}")
        if self.move == "zoom_out":
            _require(0 < self.amount < 1, "Camera", f"zoom_out needs 0 < amount < 1, got {self.amount}")
        if self.move == "shake":
            _require(0 < self.amount <= 1, "Camera", f"shake intensity must be in (0, 1], got {self.amount}")


@dataclass(frozen=True)
class Scene:
    """A whole clip's parameters. ``objects[0]`` is the main object (the largest at t=0, the one a
    caption leads with); ``seed`` fixes the background texture and the camera shake."""

    objects: tuple[WorldObject, ...]
    background: Background
    camera: Camera
    lighting: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        _require(1 <= len(self.objects) <= 3, "Scene", f"needs 1 to 3 objects, got {len(self.objects)}")
        _require(self.lighting in LIGHTINGS, "Scene", f"unknown lighting {self.lighting!r}")
        colours = [o.colour for o in self.objects]
        # Distinct colours keep captions unambiguous ("the red one") and let measure.py track by colour.
        _require(len(set(colours)) == len(colours), "Scene", f"object colours must differ, got {colours}")

    @property
    def main(self) -> WorldObject:
        """The main object (``objects[0]``)."""
        return self.objects[0]


def object_state(obj: WorldObject, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where ``obj`` is at times ``t`` [T]: world centre x [T], y [T], size [T], rotation in degrees [T]."""
    t = np.asarray(t, dtype=np.float64)
    x, y = np.full_like(t, obj.x), np.full_like(t, obj.y)
    size, angle = np.full_like(t, obj.size), np.zeros_like(t)
    if obj.motion in TRANSLATIONS:
        ux, uy = TRANSLATIONS[obj.motion]
        x, y = x + ux * obj.amount * t, y + uy * obj.amount * t
    elif obj.motion == "bounce":
        y = y - obj.amount * np.abs(np.sin(math.pi * BOUNCES * t))
    elif obj.motion in ("grow", "shrink"):
        # Geometric in time so that the apparent rate of growth is steady.
        size = size * obj.amount ** t
    elif obj.motion == "rotate":
        angle = obj.amount * t
    return x, y, size, angle


def _shake(seed: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band-limited unit shake: three sinusoids per axis at 1-3 cycles per clip, zero at t=0."""
    rng = np.random.default_rng([seed, 0x5A4B])
    out = []
    for _axis in range(2):
        freqs, phases = rng.uniform(1.0, 3.0, 3)[:, None], rng.uniform(0, 2 * math.pi, 3)[:, None]
        weights = rng.uniform(0.5, 1.0, 3)[:, None]
        wave = (weights * (np.sin(2 * math.pi * freqs * t[None] + phases) - np.sin(phases))).sum(0) / weights.sum()
        # Minus the value at t=0: the first frame (the image-to-video condition) is the unshaken view.
        out.append(wave)
    return out[0], out[1]


def camera_state(camera: Camera, seed: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The camera at times ``t`` [T]: view centre x [T], y [T] (world units) and zoom [T] (1 = start)."""
    t = np.asarray(t, dtype=np.float64)
    cx, cy, zoom = np.zeros_like(t), np.zeros_like(t), np.ones_like(t)
    move, amount = camera.move, camera.amount
    if move in ("pan_left", "dolly_left"):
        cx = -amount * t
    elif move in ("pan_right", "dolly_right"):
        cx = amount * t
    elif move == "tilt_up":
        cy = -amount * t
    elif move == "tilt_down":
        cy = amount * t
    elif move in ("zoom_in", "zoom_out"):
        zoom = amount ** t  # geometric: a steady zoom looks like a constant rate of magnification
    elif move == "shake":
        sx, sy = _shake(seed, t)
        cx, cy = SHAKE_AMPLITUDE * amount * sx, SHAKE_AMPLITUDE * amount * sy
    return cx, cy, zoom


def background_factor(camera: Camera) -> float:
    """How far the background layer moves per unit of camera travel (parallax under a dolly)."""
    return DOLLY_BACKGROUND_FACTOR if camera.move.startswith("dolly") else 1.0


def light_gain(lighting: str, t: np.ndarray) -> np.ndarray:
    """Brightness gain [T] applied to whole frames at times ``t``: 1, rising to 1, or falling from 1."""
    t = np.asarray(t, dtype=np.float64)
    if lighting == "brightening":
        return LIGHT_RANGE + (1 - LIGHT_RANGE) * t
    if lighting == "dimming":
        return 1 - (1 - LIGHT_RANGE) * t
    return np.ones_like(t)
