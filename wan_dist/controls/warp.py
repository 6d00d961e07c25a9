"""Moving pictures along a sampled camera path (:class:`~wan_dist.controls.camera.SampledPath`).

- :func:`proxy_clip`: an input image moved along the path, the layout prior of guided image-to-video: one
  homography of the background plane (rotations, zoom, and translations at depth 1), or with ``layers`` each
  layer by the homography of its own depth (parallax), holes inpainted, blurred by its motion.
- :func:`warp_noise`: text-to-video's initial latent noise carried along the path. Every value of a warped
  frame is a distinct sample of frame 0's noise (nearest source, each source used once) or a fresh draw, so
  each frame stays exactly i.i.d. N(0, 1): interpolating noise would shrink its variance and correlate
  neighbours, which a diffusion model reads as signal.
- :func:`virtual_camera`: the exact mode. The render is the overscanned view (a field of view ``overscan``
  times wider than the output's); output frame ``i`` is the render's frame ``i`` seen through the path's pose
  ``i`` (background plane), so framing follows the path to interpolation accuracy whatever the model drew;
  with ``layers``, each frame's own layers move by their depths (parallax).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from wan_dist.controls.camera import ControlError, SampledPath
from wan_dist.controls.layers import (Layer, LayerSpec, composite, render_layers, split_layers, track_foreground,
                                      warp_layer)

__all__ = ["warp_image", "proxy_clip", "warp_noise", "overscan_matrix", "required_overscan", "virtual_camera",
           "MAX_OVERSCAN"]

MAX_OVERSCAN = 3.0


def warp_image(image: np.ndarray, matrix: np.ndarray, *, fill_edges: bool = True) -> np.ndarray:
    """``image`` [H, W, C] mapped by the 3x3 ``matrix`` (output pixel x shows input pixel matrix^-1 x), bicubic;
    uncovered edges reflected (``fill_edges``) or black."""
    height, width = image.shape[:2]
    border = cv2.BORDER_REFLECT_101 if fill_edges else cv2.BORDER_CONSTANT
    return cv2.warpPerspective(image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=border)


def proxy_clip(image: np.ndarray, path: SampledPath, layers: LayerSpec | None = None) -> np.ndarray:
    """Frames [F, H, W, 3] uint8: ``image`` [H, W, 3] uint8 moved along ``path`` (frame 0 is the image)."""
    if image.shape[:2] != (path.height, path.width):
        raise ValueError(f"proxy_clip: image is {image.shape[1]}x{image.shape[0]}, the path {path.width}x{path.height}")
    if layers is None:
        plane = Layer(colour=image.astype(np.float32), alpha=np.ones(image.shape[:2], np.float32), depth=1.0,
                      fill_edges=True)
        return render_layers([plane], path)
    return render_layers(split_layers(image, layers), path, motion_blur=layers.motion_blur)


def _latent_homography(path: SampledPath, frame: int, stride: int) -> np.ndarray:
    """The path's background homography at pixel frame ``frame`` on a latent grid ``stride`` times coarser
    (pixel centres: latent x = (pixel x + 0.5) / stride - 0.5)."""
    down = np.array([[1 / stride, 0, 0.5 / stride - 0.5], [0, 1 / stride, 0.5 / stride - 0.5], [0, 0, 1.0]])
    return down @ path.homography(frame) @ np.linalg.inv(down)


def _warp_frame(base: np.ndarray, fresh: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """One warped noise frame [C, h, w]: target p takes ``base`` at the nearest source of matrix^-1 p when that
    source is inside and not taken by an earlier target (raster order), else ``fresh`` at p."""
    channels, height, width = base.shape
    ys, xs = np.mgrid[0:height, 0:width]
    target = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]).astype(np.float64)
    source = np.linalg.inv(matrix) @ target
    sx, sy = np.rint(source[0] / source[2]).astype(np.int64), np.rint(source[1] / source[2]).astype(np.int64)
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height) & (source[2] > 0)
    index = np.where(inside, sy * width + sx, -1)
    keep = np.zeros(index.size, bool)
    taken = np.flatnonzero(inside)
    _, first = np.unique(index[taken], return_index=True)
    keep[taken[first]] = True
    out = fresh.reshape(channels, -1).copy()
    out[:, keep] = base.reshape(channels, -1)[:, index[keep]]
    return out.reshape(channels, height, width)


def warp_noise(noise: np.ndarray, path: SampledPath, *, temporal_stride: int, spatial_stride: int, seed: int,
               strength: float) -> np.ndarray:
    """Latent noise [B, C, f, h, w] (float) with every latent frame after the first replaced by frame 0's noise
    carried along ``path`` (latent frame j shows pixel frame ``j * temporal_stride``), then mixed with fresh
    noise: ``sqrt(1 - strength^2) * warped + strength * fresh``, which keeps N(0, 1). The fresh draws come
    from ``seed``. Returns float32 of the same shape."""
    noise = np.asarray(noise, dtype=np.float32)
    batch, channels, frames, height, width = noise.shape
    if (height * spatial_stride, width * spatial_stride) != (path.height, path.width):
        raise ValueError(f"warp_noise: latents {width}x{height} x stride {spatial_stride} do not cover the path's "
                         f"{path.width}x{path.height}")
    rng = np.random.default_rng([int(seed), 0x401])
    out = noise.copy()
    keep, mix = math.sqrt(max(0.0, 1.0 - strength ** 2)), strength
    for j in range(1, frames):
        matrix = _latent_homography(path, min(j * temporal_stride, path.num_frames - 1), spatial_stride)
        for b in range(batch):
            uncovered = rng.standard_normal((channels, height, width), dtype=np.float32)
            mixed = rng.standard_normal((channels, height, width), dtype=np.float32)
            out[b, :, j] = keep * _warp_frame(noise[b, :, 0], uncovered, matrix) + mix * mixed
    return out


def overscan_matrix(scale: float, width: int, height: int, offset=(0.0, 0.0)) -> np.ndarray:
    """The 3x3 map from the render's pixels to the first output frame's view: the render enlarged ``scale``
    times about its centre (a crop ``scale`` times smaller), its centre then at ``offset`` pixels from the
    frame's. The path's poses act after it, in output pixels, so a move is the size it asks for in the output."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return np.array([[scale, 0, cx * (1 - scale) + offset[0]], [0, scale, cy * (1 - scale) + offset[1]],
                     [0, 0, 1.0]])


def _centring(path: SampledPath) -> tuple[float, float]:
    """Where the render's centre goes in the first frame's view so that the view's travel over the clip is
    centred on the render: a crop that follows a one-sided move needs half the overscan of a centred one."""
    motion = np.array([path.image_motion(index) for index in range(path.num_frames)])
    return tuple(float(-(motion[:, axis].min() + motion[:, axis].max()) / 2) for axis in range(2))


def _inside(path: SampledPath, scale: float, offset, margin: float = -1e-6) -> bool:
    """Whether every output frame's corners, through the crop and the path, come from inside the render."""
    w, h = path.width - 1, path.height - 1
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
    crop = overscan_matrix(scale, path.width, path.height, offset)
    for index in range(path.num_frames):
        source = np.linalg.inv(path.homography(index) @ crop) @ corners
        if np.any(source[2] <= 0):
            return False
        x, y = source[0] / source[2], source[1] / source[2]
        if x.min() < margin or y.min() < margin or x.max() > w - margin or y.max() > h - margin:
            return False
    return True


def required_overscan(path: SampledPath) -> tuple[float, tuple[float, float]]:
    """(the least crop factor >= 1 whose view stays inside the render on every frame of ``path``, the crop's
    offset); raises ControlError when more than :data:`MAX_OVERSCAN` is needed."""
    offset = _centring(path)
    if _inside(path, 1.0, offset):
        return 1.0, offset
    if not _inside(path, MAX_OVERSCAN, offset):
        raise ControlError("overscan", f"exact mode: this path leaves the render even at {MAX_OVERSCAN:g}x "
                                       "overscan; use smaller moves or mode 'guided'")
    low, high = 1.0, MAX_OVERSCAN
    while high - low > 1e-4:
        middle = (low + high) / 2
        low, high = (low, middle) if _inside(path, middle, offset) else (middle, high)
    return high, offset


def virtual_camera(frames: np.ndarray, path: SampledPath, *, overscan: float | None = None,
                   offset: tuple[float, float] | None = None, motion_blur: float = 0.0,
                   layers: LayerSpec | None = None) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The exact mode's pass: (frames [F, H, W, 3] uint8, the overscan and crop offset used). ``frames`` is a render made with
    the camera still; output frame i is its frame i seen through pose i inside a crop ``overscan`` times smaller
    (default: :func:`required_overscan`; the crop is placed to centre the path's travel), blurred over
    ``motion_blur`` of a frame interval. With ``layers`` every frame is split into its own background plate and
    foreground (the subject followed from frame to frame: ``track_foreground``), each moved by the pose at its
    depth: parallax over whatever the model drew, the subject where the render has it in that frame.
    ``overscan`` with ``offset``: a crop already checked against the path (``required_overscan``'s search is
    then skipped: it costs more than the warps at a small size)."""
    if frames.shape[0] != path.num_frames or frames.shape[1:3] != (path.height, path.width):
        raise ValueError(f"virtual_camera: frames {list(frames.shape)} do not match the path "
                         f"({path.num_frames} x {path.height} x {path.width})")
    if overscan is None or offset is None:
        needed, offset = required_overscan(path)
        if overscan is not None and overscan < needed - 1e-3:
            raise ControlError("overscan", f"{overscan:g} is less than the {needed:.3f} this path needs")
        overscan = needed if overscan is None else overscan
    crop = overscan_matrix(overscan, path.width, path.height, offset)
    out = np.empty_like(frames)
    if layers is not None:
        for index, (frame, alpha) in enumerate(zip(frames, track_foreground(frames, layers))):
            out[index] = composite(split_layers(frame, layers, alpha), path, index, motion_blur=motion_blur, view=crop)
        return out, overscan, offset
    for index, frame in enumerate(frames):
        if motion_blur > 0:
            plane = Layer(colour=frame.astype(np.float32), alpha=np.ones(frame.shape[:2], np.float32), depth=1.0,
                          fill_edges=True)
            colour, _ = warp_layer(plane, path, index, motion_blur, view=crop)
            out[index] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        else:
            out[index] = warp_image(frame, path.homography(index) @ crop)
    return out, overscan, offset
