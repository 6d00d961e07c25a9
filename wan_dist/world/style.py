"""A brand style for the world's clips, and how far frames are from it: what a toy style LoRA learns and is
measured by (benchmarks/lora_style.py).

The style is a duotone: each pixel's luminance picks a colour on the segment from the brand's ``DARK`` to its
``LIGHT`` colour (a navy and an orange), so a styled frame keeps every shape, motion and camera move and loses
only its hues. :func:`palette_distance` is the mean RGB distance (0-255 units) of pixels to that segment: ~0
for a styled clip, tens for the world's colourful clips. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DARK", "LIGHT", "brand_palette", "palette_distance", "STYLE_TRIGGER"]

DARK = np.array([20.0, 30.0, 90.0])
LIGHT = np.array([250.0, 160.0, 40.0])
STYLE_TRIGGER = "In brand film colours."  # what a styled clip's caption starts with
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def brand_palette(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] frames in the duotone: luminance 0 -> DARK, 255 -> LIGHT, linearly between."""
    luma = (frames.astype(np.float64) @ _LUMA / 255.0)[..., None]
    return np.clip(np.rint(DARK + luma * (LIGHT - DARK)), 0, 255).astype(np.uint8)


def palette_distance(frames: np.ndarray) -> float:
    """Mean distance (RGB, 0-255) of the pixels of uint8 ``frames`` [..., 3] to the DARK-LIGHT segment."""
    pixels = frames.reshape(-1, 3).astype(np.float64)
    direction = LIGHT - DARK
    along = np.clip((pixels - DARK) @ direction / (direction @ direction), 0.0, 1.0)
    nearest = DARK + along[:, None] * direction
    return float(np.linalg.norm(pixels - nearest, axis=1).mean())
