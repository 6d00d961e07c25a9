"""The world's vocabulary: every colour, shape, motion, camera move, background and lighting it knows,
and the held-out split of (colour, shape, motion, camera) combinations kept back for evaluation.

Names here are identifiers (``"up_left"``, ``"pan_left"``); :mod:`wan_dist.world.caption` turns them
into words. Everything is a constant or a pure function, so two processes always agree on the split.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache

__all__ = [
    "OBJECT_COLOURS", "BACKGROUND_COLOURS", "SHAPES", "MOTIONS", "TRANSLATIONS", "CAMERAS",
    "CAMERA_DIRECTIONS", "BACKGROUNDS", "LIGHTINGS", "SPLITS", "vocabulary", "valid_combination",
    "heldout_combinations", "HELDOUT_PERCENT",
]

# Object colours are vivid (brightest channel >= 210) and background colours are muted (brightest
# channel <= 105): "objects are bright, backgrounds are dark" is the figure/ground rule that lets a
# small model, and measure.py, tell them apart. Hues are at least ~28 degrees apart.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 45, 45),
    "orange": (255, 130, 20),
    "yellow": (245, 235, 40),
    "green": (50, 210, 70),
    "blue": (45, 100, 245),
    "purple": (175, 75, 235),
    "white": (245, 245, 245),
}

BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 22),
    "grey": (85, 85, 90),
    "dark blue": (20, 35, 105),
    "dark green": (25, 80, 40),
    "dark red": (105, 25, 30),
    "dark purple": (65, 30, 95),
    "brown": (95, 62, 32),
    "teal": (20, 85, 90),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Translations carry a unit direction in image axes (x right, y down).
TRANSLATIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up_left": (-0.7071, -0.7071),
    "up_right": (0.7071, -0.7071),
    "down_left": (-0.7071, 0.7071),
    "down_right": (0.7071, 0.7071),
}
MOTIONS: tuple[str, ...] = (*TRANSLATIONS, "bounce", "grow", "shrink", "rotate", "still")

CAMERAS: tuple[str, ...] = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in",
                            "zoom_out", "dolly_left", "dolly_right", "shake")

# What an observer of the frames can tell about each camera move: a dolly reads as a pan of the
# background (only the parallax, which needs the objects' own motion to separate, tells them apart).
CAMERA_DIRECTIONS: dict[str, str] = {
    "static": "static", "pan_left": "left", "pan_right": "right", "tilt_up": "up", "tilt_down": "down",
    "zoom_in": "in", "zoom_out": "out", "dolly_left": "left", "dolly_right": "right", "shake": "shake",
}

BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "stripes", "checker", "noise", "horizon")
LIGHTINGS: tuple[str, ...] = ("constant", "brightening", "dimming")
SPLITS: tuple[str, ...] = ("all", "train", "heldout")

# About this share of all valid (colour, shape, motion, camera) combinations is held out.
HELDOUT_PERCENT = 6


def vocabulary() -> dict[str, tuple[str, ...]]:
    """Every identifier the world uses, by category (colours, shapes, motions, cameras, ...)."""
    return {
        "colours": tuple(OBJECT_COLOURS),
        "background_colours": tuple(BACKGROUND_COLOURS),
        "shapes": SHAPES,
        "motions": MOTIONS,
        "cameras": CAMERAS,
        "camera_directions": tuple(dict.fromkeys(CAMERA_DIRECTIONS.values())),
        "backgrounds": BACKGROUNDS,
        "lightings": LIGHTINGS,
    }


def valid_combination(shape: str, motion: str) -> bool:
    """False for combinations the world never renders: a rotating circle looks exactly like a still one."""
    return not (shape == "circle" and motion == "rotate")


def _held_out(key: tuple[str, str, str, str]) -> bool:
    # A hash rather than a seeded draw: the split must not move when a word is added to a list.
    digest = hashlib.sha256("|".join(key).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


@lru_cache(maxsize=1)
def heldout_combinations() -> frozenset[tuple[str, str, str, str]]:
    """The (colour, shape, motion, camera) combinations that only ``split="heldout"`` produces.

    A deterministic ~6% of the valid combinations. Every single word, and in practice every pair of
    words, still appears in training; only these exact four-way combinations are new at evaluation.
    """
    combos = itertools.product(OBJECT_COLOURS, SHAPES, MOTIONS, CAMERAS)
    return frozenset(c for c in combos if valid_combination(c[1], c[2]) and _held_out(c))
