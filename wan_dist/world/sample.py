"""Drawing scenes at random: ``sample_scene(rng or seed, **constraints) -> Scene``.

A scene is drawn so that every object stays fully inside the frame for the whole clip (under the
camera move) and objects never touch, at any aspect ratio: positions are checked against the
central square of side 1 (the frame's short side), which every frame contains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from wan_dist.world.scene import (SHAPE_EXTENT, Background, Camera, Scene, WorldObject, camera_state,
                                  object_state)
from wan_dist.world.vocab import (BACKGROUND_COLOURS, BACKGROUNDS, CAMERAS, LIGHTINGS, MOTIONS,
                                  OBJECT_COLOURS, SHAPES, SPLITS, TRANSLATIONS, heldout_combinations,
                                  valid_combination)

__all__ = ["sample_scene", "is_heldout"]

MAIN_SIZE = (0.24, 0.34)  # the main object is always larger at t=0 than any other (<= 0.2)
GROW_MAIN_SIZE = (0.22, 0.28)
OTHER_SIZE = (0.15, 0.2)
MARGIN = 0.03  # world units kept free between an object and the frame edge or another object
SKY_COLOURS = ("dark blue", "grey", "dark purple", "teal", "black")
GROUND_COLOURS = ("dark green", "brown", "grey", "dark red")
_CHECK_TIMES = np.linspace(0.0, 1.0, 33)
STARTS_PER_TRY = 8


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _allowed(name: str, value: str | Iterable[str] | None, universe: Iterable[str]) -> tuple[str, ...]:
    """A constraint as the tuple of allowed values (None: all of ``universe``)."""
    universe = tuple(universe)
    if value is None:
        return universe
    values = (value,) if isinstance(value, str) else tuple(value)
    unknown = [v for v in values if v not in universe]
    if unknown or not values:
        raise ValueError(f"sample_scene: {name} must be among {universe}, got {value!r}")
    return values


def is_heldout(scene: Scene) -> bool:
    """Whether the scene's main object and camera form a held-out (colour, shape, motion, camera)."""
    main = scene.main
    return (main.colour, main.shape, main.motion, scene.camera.move) in heldout_combinations()


def _main_combo(rng: np.random.Generator, split: str, colours, shapes, motions, cameras) -> tuple[str, ...]:
    """The main object's (colour, shape, motion) and the camera move, honouring the split."""
    heldout = heldout_combinations()
    if split == "heldout":
        options = sorted(c for c in heldout if c[0] in colours and c[1] in shapes and c[2] in motions
                         and c[3] in cameras)
        if not options:
            raise ValueError("sample_scene: no held-out combination matches the constraints")
        return options[rng.integers(len(options))]
    for _ in range(1000):
        combo = (str(rng.choice(colours)), str(rng.choice(shapes)), str(rng.choice(motions)),
                 str(rng.choice(cameras)))
        if valid_combination(combo[1], combo[2]) and not (split == "train" and combo in heldout):
            return combo
    raise ValueError("sample_scene: no valid (train) combination matches the constraints")


def _camera(rng: np.random.Generator, move: str, scale: float = 1.0) -> Camera:
    """A camera move with its extent drawn from a range a small model can see and measure.py can
    tell; ``scale`` < 1 (down to 0.6) shortens it when a fast object finds no room."""
    if move.startswith(("pan", "tilt")):
        return Camera(move, float(rng.uniform(0.15, 0.3) * scale))
    if move.startswith("dolly"):
        return Camera(move, float(rng.uniform(0.3, 0.4) * scale))
    if move == "zoom_in":
        return Camera(move, float(rng.uniform(1.3, 1.5) ** scale))
    if move == "zoom_out":
        return Camera(move, float(1 / rng.uniform(1.3, 1.5) ** scale))
    if move == "shake":
        return Camera(move, float(rng.uniform(0.4, 1.0)))
    return Camera(move)


def _background(rng: np.random.Generator, kind: str) -> Background:
    """A background of ``kind`` with two different colours (a solid one uses only the first)."""
    names = list(BACKGROUND_COLOURS)
    if kind == "horizon":
        sky = str(rng.choice(SKY_COLOURS))
        ground = str(rng.choice([g for g in GROUND_COLOURS if g != sky]))
        return Background(kind, sky, ground, horizon=float(rng.uniform(-0.05, 0.2)))
    first = str(rng.choice(names))
    # Two-colour textures need contrast, or the pattern (and the camera's motion over it) disappears.
    seconds = [n for n in names if n != first and _contrast(first, n) >= 45]
    second = str(rng.choice(seconds))
    angle = float(rng.choice([0.0, 90.0] if kind == "gradient" else [0.0, 45.0, 90.0]))
    period = {"stripes": (0.12, 0.25), "checker": (0.12, 0.22), "noise": (0.08, 0.16)}.get(kind, (0.2, 0.2))
    return Background(kind, first, second if kind != "solid" else first, angle=angle,
                      period=float(rng.uniform(*period)))


def _contrast(a: str, b: str) -> float:
    return float(np.abs(np.subtract(BACKGROUND_COLOURS[a], BACKGROUND_COLOURS[b])).sum())


@dataclass
class _Stage:
    """The camera's path over the check times, and the objects placed so far with their frame paths."""

    cx: np.ndarray
    cy: np.ndarray
    zoom: np.ndarray
    placed: list[WorldObject] = field(default_factory=list)
    paths: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @classmethod
    def empty(cls, camera: Camera, seed: int) -> _Stage:
        return cls(*camera_state(camera, seed, _CHECK_TIMES))

    def path(self, obj: WorldObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame-space centre x, y and bounding radius of ``obj`` over the clip (objects are layer 1)."""
        x, y, size, _ = object_state(obj, _CHECK_TIMES)
        return (x - self.cx) * self.zoom, (y - self.cy) * self.zoom, SHAPE_EXTENT[obj.shape] * size * self.zoom

    def start_box(self, at_origin: WorldObject) -> tuple[float, float, float, float] | None:
        """The start centres (x_low, x_high, y_low, y_high) that keep the object inside the frame all
        clip, for an object given at start (0, 0); None when there are none.

        A frame position is ``(start + travel(t) - centre(t)) * zoom(t)``, increasing in ``start``, so
        the allowed starts are an intersection of intervals, one per time.
        """
        x, y, size, _ = object_state(at_origin, _CHECK_TIMES)
        reach = (0.5 - MARGIN) / self.zoom - SHAPE_EXTENT[at_origin.shape] * size
        box = ((self.cx - x - reach).max(), (self.cx - x + reach).min(),
               (self.cy - y - reach).max(), (self.cy - y + reach).min())
        return None if box[0] > box[1] or box[2] > box[3] else tuple(float(b) for b in box)

    def clear(self, fx: np.ndarray, fy: np.ndarray, radius: np.ndarray) -> np.ndarray:
        """For candidate paths ``fx, fy`` [K, T] with radius [T]: which keep clear of every object
        placed, all clip long [K]."""
        ok = np.ones(fx.shape[0], dtype=bool)
        for ox, oy, other in self.paths:
            ok &= np.all(np.hypot(fx - ox, fy - oy) >= radius + other + MARGIN, axis=1)
        return ok


def _amount(rng: np.random.Generator, motion: str, scale: float) -> float:
    """The extent of a motion (see :class:`WorldObject`); ``scale`` < 1 tames it when space is short."""
    if motion in TRANSLATIONS:
        return float(rng.uniform(0.25, 0.45) * max(scale, 0.6))
    if motion == "bounce":
        return float(rng.uniform(0.2, 0.3) * max(scale, 0.7))
    if motion == "grow":
        return float(rng.uniform(1.4, 1.7) ** max(scale, 0.8))
    if motion == "shrink":
        return float(rng.uniform(0.5, 0.65) ** max(scale, 0.8))
    if motion == "rotate":
        return float(rng.choice([-1.0, 1.0]) * rng.uniform(90.0, 180.0))
    return 0.0


def _place(rng: np.random.Generator, spec: tuple[str, str, str], size_range: tuple[float, float],
           stage: _Stage, tries: int = 200) -> bool:
    """Draw a size, extent and start for (colour, shape, motion) that fits and add it to ``stage``;
    False if none is found.

    Where nothing fits (a dolly against a fast triangle), size and extent shrink step by step: a
    smaller move still reads clearly as that move.
    """
    colour, shape, motion = spec
    for attempt in range(tries):
        scale = 1.0 - 0.4 * attempt / tries
        low, high = size_range
        size = float(rng.uniform(low, low + (high - low) * scale))
        obj = WorldObject(shape, colour, motion, 0.0, 0.0, size, _amount(rng, motion, scale))
        box = stage.start_box(obj)
        if box is None:
            continue
        # Several starts per size: a start moves the whole path by start * zoom(t).
        xs, ys = rng.uniform(box[0], box[1], STARTS_PER_TRY), rng.uniform(box[2], box[3], STARTS_PER_TRY)
        fx0, fy0, radius = stage.path(obj)
        fx, fy = fx0 + xs[:, None] * stage.zoom, fy0 + ys[:, None] * stage.zoom
        ok = np.flatnonzero(stage.clear(fx, fy, radius))
        if len(ok):
            stage.placed.append(dataclasses.replace(obj, x=float(xs[ok[0]]), y=float(ys[ok[0]])))
            stage.paths.append((fx[ok[0]], fy[ok[0]], radius))
            return True
    return False


def _secondary(rng: np.random.Generator, split: str, camera: Camera, stage: _Stage) -> bool:
    """Add a smaller object in a colour not yet used, never a held-out combination; False if none fits."""
    heldout = heldout_combinations()
    for attempt in range(50):
        colour = str(rng.choice([c for c in OBJECT_COLOURS if c not in {o.colour for o in stage.placed}]))
        shape = str(rng.choice(SHAPES))
        # Later attempts fall back to a still object: it needs the least room.
        motion = str(rng.choice(MOTIONS)) if attempt < 25 else "still"
        if not valid_combination(shape, motion) or (split != "all" and (colour, shape, motion, camera.move) in heldout):
            continue
        if _place(rng, (colour, shape, motion), OTHER_SIZE, stage, tries=20):
            return True
    return False


def sample_scene(rng: np.random.Generator | int | None = None, *, split: str = "all",
                 colour: str | Iterable[str] | None = None, shape: str | Iterable[str] | None = None,
                 motion: str | Iterable[str] | None = None, camera: str | Iterable[str] | None = None,
                 background: str | Iterable[str] | None = None, lighting: str | Iterable[str] | None = None,
                 num_objects: int | Iterable[int] | None = None) -> Scene:
    """Draw one scene. Deterministic: the same seed (or generator state) gives the same scene.

    Constraints fix (a value) or restrict (a collection of values) the main object's ``colour``,
    ``shape`` and ``motion``, the ``camera`` move, the ``background`` kind, the ``lighting`` and the
    number of objects (1-3). ``split="train"`` never produces a held-out (colour, shape, motion,
    camera) combination for any object; ``split="heldout"`` always makes the main object and camera
    one (other objects stay out of the held-out set); ``"all"`` ignores the split.
    """
    rng = _rng(rng)
    if split not in SPLITS:
        raise ValueError(f"sample_scene: split must be one of {SPLITS}, got {split!r}")
    combo = _main_combo(rng, split, _allowed("colour", colour, OBJECT_COLOURS), _allowed("shape", shape, SHAPES),
                        _allowed("motion", motion, MOTIONS), _allowed("camera", camera, CAMERAS))
    counts = (1, 2, 3) if num_objects is None else tuple(np.atleast_1d(num_objects).tolist())
    if not counts or any(n not in (1, 2, 3) for n in counts):
        raise ValueError(f"sample_scene: num_objects must be 1, 2 or 3, got {num_objects!r}")
    seed = int(rng.integers(2**31))
    cam = _camera(rng, combo[3])
    bg = _background(rng, str(rng.choice(_allowed("background", background, BACKGROUNDS))))
    light = str(rng.choice(_allowed("lighting", lighting, LIGHTINGS)))
    count = int(rng.choice(counts, p=_count_weights(counts)))
    for attempt in range(20):
        # Start again from the main object when the others find no room around it, with a shorter
        # camera move when the main object itself found none (a fast triangle against a dolly).
        stage = _Stage.empty(cam, seed)
        if not _place(rng, combo[:3], GROW_MAIN_SIZE if combo[2] == "grow" else MAIN_SIZE, stage):
            cam = _camera(rng, combo[3], scale=max(0.6, 0.9 - 0.1 * attempt))
            continue
        while len(stage.placed) < count and _secondary(rng, split, cam, stage):
            pass
        if len(stage.placed) == count:
            return Scene(tuple(stage.placed), bg, cam, light, seed)
    raise RuntimeError(f"sample_scene: could not fit {count} objects around a {combo} scene")


def _count_weights(counts: tuple[int, ...]) -> list[float]:
    # One object is the commonest case: it is what a tiny model must learn first.
    weights = np.array([{1: 0.5, 2: 0.3, 3: 0.2}[n] for n in counts])
    return list(weights / weights.sum())
