"""Writes docs/renditions.png: one frame of a 16:9 clip in three platform renditions, with a title and guides.

The clip is synthetic (a red ball rolling right across hills); each rendition is reframed by the smoothed crop path
that keeps the ball inside the profile's action-safe area (wan_dist.controls.reframe), titled inside its title-safe
area clear of the app's interface (wan_dist.controls.overlays), and shown as its guides preview: green action-safe,
yellow title-safe, the app's interface tinted red. Run from the repository root:

    python scripts/renditions_strip.py [out.png]
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from PIL import Image

from wan_dist.controls.overlays import OverlaySpec
from wan_dist.controls.renditions import make_rendition, parse_renditions

WIDTH, HEIGHT, FRAMES, FPS = 640, 360, 16, 16
SHOWN_HEIGHT = 400
OVERLAYS = {"title": {"text": "Hills in spring", "position": "bottom", "fade": 0}, "guides": True}


def clip() -> np.ndarray:
    """Sky, textured hills and a red ball rolling right: [F, H, W, 3] uint8."""
    rng = np.random.default_rng(3)
    ys = np.linspace(0, 1, HEIGHT)[:, None, None]
    sky = (np.array([70, 120, 200]) * (1 - ys) + np.array([190, 210, 235]) * ys) * np.ones((1, WIDTH, 1))
    xs = np.arange(WIDTH)
    hills = (HEIGHT * (0.6 + 0.06 * np.sin(xs / 50.0) + 0.04 * np.sin(xs / 21.0 + 1))).astype(int)
    ground = np.arange(HEIGHT)[:, None] >= hills[None, :]
    texture = cv2.GaussianBlur(rng.random((HEIGHT, WIDTH)), (0, 0), 1.5)[..., None]
    still = np.where(ground[..., None], np.array([60, 120, 50]) + 70 * texture, sky).astype(np.uint8)
    frames = []
    for index in range(FRAMES):
        frame = np.ascontiguousarray(still.copy())
        x = int(180 + 12 * index)
        cv2.circle(frame, (x, hills[x] - 30), 30, (220, 40, 40), -1)
        frames.append(frame)
    return np.stack(frames)


def main(out: str = "docs/renditions.png") -> None:
    frames = clip()
    spec = OverlaySpec.from_dict(OVERLAYS)
    shown = []
    for profile in parse_renditions(["youtube", "tiktok", "instagram_feed"]):
        made = make_rendition(frames, FPS, profile, overlays=spec)
        frame = made.guides[len(made.guides) // 2]
        width = round(frame.shape[1] * SHOWN_HEIGHT / frame.shape[0])
        shown.append(cv2.resize(frame, (width, SHOWN_HEIGHT), interpolation=cv2.INTER_AREA))
    gap = np.full((SHOWN_HEIGHT, 6, 3), 255, np.uint8)
    strip = np.concatenate([part for frame in shown for part in (frame, gap)][:-1], axis=1)
    Image.fromarray(strip).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
