"""Background textures as functions of world coordinates, painted onto a canvas larger than the frame.

Every texture is a function of world position only (its random parts come from a hash of the
scene seed and a lattice point, not from an array of draws), so a clip rendered at 64 x 64 and at
128 x 256 shows the same world, and the camera can roam over it freely.
"""

from __future__ import annotations

import numpy as np

from wan_dist.world.scene import Background
from wan_dist.world.vocab import BACKGROUND_COLOURS

__all__ = ["paint_background", "value_noise"]

# Faint mottling on every background, even "solid" ones: without texture a camera move over a
# plain colour is invisible, both to a model learning it and to measure.py checking it.
MOTTLE_LEVELS = 22.0
GROUND_MOTTLE_LEVELS = 34.0
_MASK = np.uint64(0xFFFFFFFF)


def _hash01(seed: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A uniform value in [0, 1) per integer lattice point (i, j): a 32-bit integer mix, no state."""
    with np.errstate(over="ignore"):
        h = (i.astype(np.uint64) * np.uint64(0x9E3779B1) + j.astype(np.uint64) * np.uint64(0x85EBCA77)
             + np.uint64(seed % 2**32) * np.uint64(0xC2B2AE3D)) & _MASK
        for shift, mult in ((15, 0x2C1B3C6D), (12, 0x297A2D39), (15, 0x1B873593)):
            h = ((h ^ (h >> np.uint64(shift))) * np.uint64(mult)) & _MASK
        h ^= h >> np.uint64(16)
    return h.astype(np.float64) / 2.0**32


def value_noise(seed: int, u: np.ndarray, v: np.ndarray, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` world units wide, at points (u [1, W], v [H, 1])."""
    gu, gv = u / cell, v / cell
    iu, iv = np.floor(gu), np.floor(gv)
    fu, fv = gu - iu, gv - iv
    su, sv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)  # smoothstep: no creases at lattice lines
    iu, iv = iu.astype(np.int64), iv.astype(np.int64)
    c00, c10 = _hash01(seed, iu, iv), _hash01(seed, iu + 1, iv)
    c01, c11 = _hash01(seed, iu, iv + 1), _hash01(seed, iu + 1, iv + 1)
    top = c00 + (c10 - c00) * su
    bottom = c01 + (c11 - c01) * su
    return top + (bottom - top) * sv


def _square_wave(s: np.ndarray, period: float, texel: float) -> np.ndarray:
    """0/1 bands of width period/2 along ``s``, each edge a one-texel ramp (anti-aliased)."""
    f = np.mod(s / period, 1.0)
    distance = (np.abs(f - 0.5) - 0.25) * period  # signed distance to the nearest edge
    return np.clip(0.5 + distance / texel, 0.0, 1.0)


def _mix(bg: Background, seed: int, u: np.ndarray, v: np.ndarray, texel: float) -> np.ndarray:
    """Weight [H, W] of ``colour2`` against ``colour`` at each point."""
    theta = np.deg2rad(bg.angle)
    if bg.kind == "gradient":
        s = u if bg.angle == 0 else v
        return np.broadcast_to(np.clip((s + 0.6) / 1.2, 0.0, 1.0), np.broadcast_shapes(u.shape, v.shape))
    if bg.kind == "stripes":
        return _square_wave(u * np.cos(theta) + v * np.sin(theta), bg.period, texel)
    if bg.kind == "checker":
        a, b = _square_wave(u, bg.period * 2, texel), _square_wave(v, bg.period * 2, texel)
        return a + b - 2 * a * b  # a soft exclusive-or of two sets of bands
    if bg.kind == "noise":
        n = 0.7 * value_noise(seed + 1, u, v, bg.period) + 0.3 * value_noise(seed + 2, u, v, bg.period / 2.5)
        return np.clip((n - 0.38) / 0.24, 0.0, 1.0)
    if bg.kind == "horizon":
        return np.broadcast_to(np.clip(0.5 + (v - bg.horizon) / texel, 0.0, 1.0), np.broadcast_shapes(u.shape, v.shape))
    return np.zeros(np.broadcast_shapes(u.shape, v.shape))


def paint_background(bg: Background, seed: int, first_texel: tuple[int, int], shape: tuple[int, int],
                     texels_per_unit: float) -> np.ndarray:
    """Paint the background on a canvas: float32 RGB [H, W, 3] in 0-255.

    Canvas texel (row r, column c) is world texel ``first_texel + (c, r)``, centred on world point
    ``(first_texel + (c, r) + 0.5) / texels_per_unit``.
    """
    texel = 1.0 / texels_per_unit
    u = (first_texel[0] + np.arange(shape[1])[None, :] + 0.5) * texel
    v = (first_texel[1] + np.arange(shape[0])[:, None] + 0.5) * texel
    weight = _mix(bg, seed, u, v, texel)[..., None]
    first = np.asarray(BACKGROUND_COLOURS[bg.colour], dtype=np.float64)
    second = np.asarray(BACKGROUND_COLOURS[bg.colour2], dtype=np.float64)
    canvas = first * (1 - weight) + second * weight
    mottle = 0.6 * value_noise(seed + 3, u, v, 0.12) + 0.4 * value_noise(seed + 4, u, v, 0.05) - 0.5
    levels = MOTTLE_LEVELS
    if bg.kind == "horizon":
        # The ground is rougher than the sky, which reads as near grass under far haze.
        levels = MOTTLE_LEVELS + (GROUND_MOTTLE_LEVELS - MOTTLE_LEVELS) * weight[..., 0]
    canvas = canvas + (mottle * levels)[..., None]
    return np.clip(canvas, 0.0, 255.0).astype(np.float32)
