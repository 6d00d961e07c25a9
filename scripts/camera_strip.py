"""Writes docs/camera-strip.png: five frames of a camera move over a synthetic layered picture.

The frames are the proxy clip that guided image-to-video starts from (wan_dist.controls.warp.proxy_clip): the
foreground found by GrabCut from a box, the uncovered background inpainted, each layer moved by its depth
(parallax 2.5) and blurred over half a frame interval. Run from the repository root:

    python scripts/camera_strip.py [out.png]
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from PIL import Image

from wan_dist.controls import CameraPath, LayerSpec
from wan_dist.controls.warp import proxy_clip

WIDTH, HEIGHT, FRAMES = 192, 112, 17
CAMERA = {"moves": [{"type": "truck", "amount": 0.12}, {"type": "pan", "amount": -3, "start": 0.3},
                    {"type": "zoom", "amount": 1.15, "start": 0.5}], "shake": {"intensity": 0.2}}
LAYERS = {"parallax": 2.5, "motion_blur": 0.5, "foreground_box": [0.36, 0.3, 0.66, 0.95]}


def picture() -> np.ndarray:
    """Sky, hills with texture, and a red ball on a post: [H, W, 3] uint8."""
    rng = np.random.default_rng(3)
    ys = np.linspace(0, 1, HEIGHT)[:, None, None]
    image = (np.array([70, 120, 200]) * (1 - ys) + np.array([190, 210, 235]) * ys) * np.ones((1, WIDTH, 1))
    xs = np.arange(WIDTH)
    hills = (HEIGHT * (0.55 + 0.08 * np.sin(xs / 17.0) + 0.05 * np.sin(xs / 7.3 + 1))).astype(int)
    ground = np.arange(HEIGHT)[:, None] >= hills[None, :]
    texture = cv2.GaussianBlur(rng.random((HEIGHT, WIDTH)), (0, 0), 1.2)[..., None]
    image = np.where(ground[..., None], np.array([60, 120, 50]) + 70 * texture, image).astype(np.uint8)
    image = np.ascontiguousarray(image)
    cv2.rectangle(image, (96, 62), (100, 104), (90, 60, 40), -1)
    cv2.circle(image, (98, 52), 16, (220, 40, 40), -1)
    return image


def main(out: str = "docs/camera-strip.png") -> None:
    spec = LayerSpec.from_dict(LAYERS)
    path = CameraPath.from_dict(CAMERA).sample(num_frames=FRAMES, fps=16, width=WIDTH, height=HEIGHT, seed=1,
                                               pivot_depth=spec.foreground_depth)
    clip = proxy_clip(picture(), path, spec)
    shown = [clip[i] for i in np.linspace(0, FRAMES - 1, 5).round().astype(int)]
    gap = np.full((HEIGHT, 3, 3), 255, np.uint8)
    strip = np.concatenate([part for frame in shown for part in (frame, gap)][:-1], axis=1)
    Image.fromarray(strip).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
