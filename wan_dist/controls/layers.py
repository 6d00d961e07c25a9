"""Layers: foreground/background separation without downloaded weights, depth order, parallax along a camera
path, hole filling at disocclusions, and depth/motion-dependent blur.

A request's ``layers`` (INTERFACES.md) is ``{"parallax", "motion_blur", "foreground_box"}``:

- ``parallax``: how much further the foreground slides than the background under the same camera travel
  (the ratio of their image displacements; depths 1 and ``1 / parallax``), in [1, 10], default 2.
- ``motion_blur``: the shutter's share of a frame interval (0.5 is the cinema's 180 degree shutter): a layer
  is blurred along its own motion over that share, so nearer (faster) layers blur more. Default 0.5.
- ``foreground_box``: ``[x0, y0, x1, y1]`` fractions of the frame around the subject, GrabCut's starting
  rectangle; without it the image's spectral-residual saliency seeds GrabCut. Between frames of a video,
  :func:`motion_mask` seeds it from what moved, and :func:`track_foreground` follows the subject from frame to
  frame (the exact mode splits every frame of its render into layers).

The background plate is the image with the foreground removed and the hole inpainted (OpenCV Telea), so a
foreground sliding away uncovers plausible background instead of a copy of itself. Layers composite back to
front with premultiplied alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from wan_dist.controls.camera import ControlError, SampledPath, _keys, _number

__all__ = ["LayerSpec", "Layer", "saliency_map", "foreground_mask", "motion_mask", "track_foreground",
           "split_layers", "warp_layer", "composite", "render_layers", "DEFAULT_PARALLAX", "DEFAULT_MOTION_BLUR", "MAX_BLUR_SAMPLES"]

DEFAULT_PARALLAX = 2.0
DEFAULT_MOTION_BLUR = 0.5
MAX_BLUR_SAMPLES = 32
_GRABCUT_ITERATIONS = 5


@dataclass(frozen=True)
class LayerSpec:
    parallax: float = DEFAULT_PARALLAX
    motion_blur: float = DEFAULT_MOTION_BLUR
    foreground_box: tuple[float, float, float, float] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "LayerSpec":
        """Checked; raises ControlError naming the field (``foreground_box``)."""
        if isinstance(data, LayerSpec):
            return data
        data = _keys(data, "", ("parallax", "motion_blur", "foreground_box"))
        box = data.get("foreground_box")
        if box is not None:
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise ControlError("foreground_box", f"must be [x0, y0, x1, y1] (fractions of the frame), got {box!r:.60}")
            box = tuple(_number(v, f"foreground_box[{i}]", 0.0, 1.0) for i, v in enumerate(box))
            if box[0] >= box[2] or box[1] >= box[3]:
                raise ControlError("foreground_box", f"needs x0 < x1 and y0 < y1, got {list(box)}")
        return cls(parallax=_number(data.get("parallax", DEFAULT_PARALLAX), "parallax", 1.0, 10.0),
                   motion_blur=_number(data.get("motion_blur", DEFAULT_MOTION_BLUR), "motion_blur", 0.0, 1.0),
                   foreground_box=box)

    def to_dict(self) -> dict:
        return {"parallax": self.parallax, "motion_blur": self.motion_blur,
                "foreground_box": None if self.foreground_box is None else list(self.foreground_box)}

    @property
    def foreground_depth(self) -> float:
        return 1.0 / self.parallax


@dataclass(frozen=True, eq=False)
class Layer:
    """One plane of the scene: colour float32 [H, W, 3] (0..255, not premultiplied), alpha float32 [H, W] in
    [0, 1], depth (background 1). ``fill_edges``: the frame edges it uncovers are filled by reflection (the
    background), else left transparent."""

    colour: np.ndarray
    alpha: np.ndarray
    depth: float
    fill_edges: bool = False


# ----------------------------------------------------------------------------- separation
def saliency_map(image: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) of ``image`` [H, W, 3] uint8: float [H, W] in [0, 1]."""
    height, width = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    scale = 64.0 / max(height, width)
    small = cv2.resize(grey, (max(8, round(width * scale)), max(8, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fft2(small)
    log_amplitude = np.log(np.abs(spectrum) + 1e-6)
    residual = log_amplitude - cv2.blur(log_amplitude.astype(np.float32), (3, 3))
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), 2.5)
    saliency = cv2.resize(saliency, (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(saliency.min()), float(saliency.max())
    return (saliency - low) / (high - low) if high > low else np.zeros((height, width), np.float32)


def _models() -> tuple[np.ndarray, np.ndarray]:
    """Empty GrabCut colour models (background, foreground): OpenCV fills them in place."""
    return np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)


def _grabcut(image: np.ndarray, mask: np.ndarray | None, rect: tuple[int, int, int, int] | None,
             models: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """GrabCut's foreground [H, W] bool from a seed ``mask`` (GC_* labels) or a rectangle; fixed seed.
    ``models``: where the colour models it ends with are left (a later frame resumes from them)."""
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws from OpenCV's RNG: reproducible separations
    background, foreground = models or _models()
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if rect is not None:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.grabCut(bgr, mask, rect, background, foreground, _GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    else:
        cv2.grabCut(bgr, mask, None, background, foreground, _GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _seeded_cut(image: np.ndarray, seed: np.ndarray, models=None) -> np.ndarray:
    """GrabCut from a rough foreground ``seed`` [H, W] bool; the frame's border is background for sure."""
    if not seed.any() or seed.all():
        return np.zeros(seed.shape, bool)
    labels = np.where(seed, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    ring = max(1, min(seed.shape) // 32)
    labels[:ring], labels[-ring:], labels[:, :ring], labels[:, -ring:] = (cv2.GC_BGD,) * 4
    return _grabcut(image, labels, None, models)


def _resumed_cut(image: np.ndarray, previous: np.ndarray, models: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The foreground [H, W] bool of ``image``, the frame after one whose foreground was ``previous`` [H, W] bool:
    one GrabCut iteration resumed from that frame's colour models (no re-initialisation: a tenth of a fresh
    cut's time), the previous foreground probably foreground, its grown box probably background, the rest
    background for sure."""
    x0, y0, x1, y1 = _grown_box(previous)
    labels = np.full(previous.shape, cv2.GC_BGD, np.uint8)
    labels[y0:y1, x0:x1] = cv2.GC_PR_BGD
    labels[previous] = cv2.GC_PR_FGD
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), labels, None, *models, 1, cv2.GC_EVAL)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _soft(mask: np.ndarray) -> np.ndarray:
    """A hard mask's anti-aliased alpha (a one-pixel feather), float32 [H, W]."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)


def foreground_mask(image: np.ndarray, box: tuple[float, float, float, float] | None = None,
                    models: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The foreground's alpha [H, W] float32 in [0, 1] of ``image`` [H, W, 3] uint8: GrabCut from ``box``
    (fractions of the frame), else from the image's salient region (above Otsu's threshold of the saliency).
    ``models``: GrabCut's colour models are left there."""
    height, width = image.shape[:2]
    if box is not None:
        x0, y0 = int(math.floor(box[0] * width)), int(math.floor(box[1] * height))
        x1, y1 = int(math.ceil(box[2] * width)), int(math.ceil(box[3] * height))
        rect = (x0, y0, max(1, x1 - x0), max(1, y1 - y0))
        return _soft(_grabcut(image, None, rect, models))
    saliency = (saliency_map(image) * 255).astype(np.uint8)
    threshold, _ = cv2.threshold(saliency, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _soft(_seeded_cut(image, saliency > threshold, models))


def motion_mask(first: np.ndarray, second: np.ndarray, *, threshold: float = 12.0) -> np.ndarray:
    """The alpha [H, W] float32 of what moved from ``first`` to ``second`` (frames [H, W, 3] uint8, the camera
    still or already compensated): their difference seeds GrabCut on ``second``."""
    difference = np.abs(first.astype(np.int16) - second.astype(np.int16)).max(axis=-1).astype(np.uint8)
    moved = cv2.morphologyEx((difference > threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    moved = cv2.morphologyEx(moved, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return _soft(_seeded_cut(second, moved.astype(bool)))


def _grown_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1 pixels, end exclusive) around ``mask`` [H, W] bool, not empty, grown by a
    quarter of its size and 2 pixels on each side, inside the frame."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    grow_x, grow_y = (xs.max() - xs.min() + 1) / 4 + 2, (ys.max() - ys.min() + 1) / 4 + 2
    return (max(0, math.floor(xs.min() - grow_x)), max(0, math.floor(ys.min() - grow_y)),
            min(width, math.ceil(xs.max() + 1 + grow_x)), min(height, math.ceil(ys.max() + 1 + grow_y)))


def track_foreground(frames: np.ndarray, spec: LayerSpec) -> list[np.ndarray]:
    """The foreground's alpha [H, W] float32 in each frame of a clip [F, H, W, 3] uint8 made with the camera
    still: frame 0's as :func:`foreground_mask` finds it (the spec's box, else saliency), each later frame's by
    GrabCut resumed from the frame before (:func:`_resumed_cut`), so a subject that moves is followed; where
    the foreground was lost, the search starts again as in frame 0."""
    alphas: list[np.ndarray] = []
    models = _models()
    for frame in frames:
        previous = alphas[-1] > 0.5 if alphas else None
        alpha = None
        if previous is not None and previous.any():
            alpha = _soft(_resumed_cut(frame, previous, models))
        if alpha is None or not (alpha > 0.5).any():
            models = _models()
            alpha = foreground_mask(frame, spec.foreground_box, models)
        alphas.append(alpha)
    return alphas


def split_layers(image: np.ndarray, spec: LayerSpec, alpha: np.ndarray | None = None) -> list[Layer]:
    """Background plate and foreground of ``image`` [H, W, 3] uint8, far to near. ``alpha``: the foreground
    (else :func:`foreground_mask` of the spec's box). The plate's hole is inpainted from its surroundings."""
    if alpha is None:
        alpha = foreground_mask(image, spec.foreground_box)
    hole = cv2.dilate((alpha > 0.02).astype(np.uint8), np.ones((5, 5), np.uint8))
    radius = max(3, min(image.shape[:2]) // 32)
    plate = cv2.inpaint(image, hole, radius, cv2.INPAINT_TELEA) if hole.any() else image
    background = Layer(colour=plate.astype(np.float32), alpha=np.ones(image.shape[:2], np.float32), depth=1.0,
                       fill_edges=True)
    foreground = Layer(colour=image.astype(np.float32), alpha=alpha.astype(np.float32), depth=spec.foreground_depth)
    return [background, foreground]


# ----------------------------------------------------------------------------- rendering
def _travel(path: SampledPath, depth: float, start: float, end: float) -> float:
    """The largest image displacement (pixels) of the frame's corners and centre of a plane at ``depth``
    between fractional frames ``start`` and ``end``."""
    w, h = path.width - 1, path.height - 1
    points = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1], [w / 2, h / 2, 1]], np.float64).T
    a, b = path.homography(start, depth) @ points, path.homography(end, depth) @ points
    return float(np.max(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))))


def warp_layer(layer: Layer, path: SampledPath, t: float, shutter: float = 0.0,
               view: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``layer`` seen at frame ``t``: premultiplied colour [H, W, 3] and alpha [H, W] float32. ``shutter``: the
    share of a frame interval the shutter is open, centred on ``t``: the layer is averaged over its motion
    then (sub-frame poses half a pixel apart), so blur length = shutter x this layer's motion.
    ``view``: a 3x3 map applied before the path's (the exact mode's crop: render to first output frame)."""
    start, end = t - shutter / 2, t + shutter / 2
    # the shutter interval in equal parts, one pose at the middle of each, at most half a pixel apart: a box
    # of the layer's travel (variance L^2 / 12 (1 - 1/n^2)), not n spikes at both ends and between
    samples = 1 if shutter <= 0 else min(MAX_BLUR_SAMPLES, max(1, math.ceil(2 * _travel(path, layer.depth, start, end))))
    times = [start + (j + 0.5) * (end - start) / samples for j in range(samples)]
    size = (path.width, path.height)
    premultiplied = layer.colour * layer.alpha[..., None]
    colour, alpha = np.zeros((path.height, path.width, 3), np.float32), np.zeros((path.height, path.width), np.float32)
    border = cv2.BORDER_REFLECT_101 if layer.fill_edges else cv2.BORDER_CONSTANT
    for time in times:
        matrix = path.homography(time, layer.depth)
        if view is not None:
            matrix = matrix @ view
        # bicubic: bilinear weights spread every sub-pixel position over two pixels, a blur of its own that
        # would add to (and for short shutters swamp) the motion blur asked for
        colour += cv2.warpPerspective(premultiplied, matrix, size, flags=cv2.INTER_CUBIC, borderMode=border)
        alpha += cv2.warpPerspective(layer.alpha, matrix, size, flags=cv2.INTER_CUBIC, borderMode=border)
    alpha = np.clip(alpha / len(times), 0.0, 1.0)
    return np.clip(colour / len(times), 0.0, 255.0 * alpha[..., None]), alpha


def composite(layers: list[Layer], path: SampledPath, t: float, *, motion_blur: float = 0.0,
              view: np.ndarray | None = None) -> np.ndarray:
    """Frame ``t`` [H, W, 3] uint8 of ``layers`` composited far to near, each warped by :func:`warp_layer`."""
    canvas = np.zeros((path.height, path.width, 3), np.float32)
    for layer in sorted(layers, key=lambda item: -item.depth):
        colour, alpha = warp_layer(layer, path, t, motion_blur, view=view)
        canvas = colour + (1.0 - alpha[..., None]) * canvas
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_layers(layers: list[Layer], path: SampledPath, *, motion_blur: float = 0.0) -> np.ndarray:
    """Frames [F, H, W, 3] uint8 of ``layers`` (far to near) moved along ``path``, each layer by the
    homography of its depth (parallax), blurred over ``motion_blur`` of a frame interval."""
    return np.stack([composite(layers, path, index, motion_blur=motion_blur) for index in range(path.num_frames)])
