"""Style lock: keep an image-to-video render's grade, texture and light at the source image's.

Two passes, both statistics (no learned weights):

- During sampling, :func:`pull_statistics`: the predicted clean latent's per-channel mean and standard deviation
  are moved toward the input image's latent by ``strength * (1 - step_fraction)`` (AdaIN's statistics, blended;
  Huang & Belongie 2017), strongest at the first step, gone at the last, so the layout and motion the model chooses
  early keep the source's palette, and the late steps refine detail freely.
- After decoding, :func:`colour_transfer`: Reinhard et al. 2001 colour transfer in CIE Lab (each channel's mean and
  standard deviation set to the source's), with the frames' own statistics smoothed over time first so the grade
  cannot flicker as content moves through the frame.

Measured drift (:func:`colour_drift`, :func:`high_frequency_ratio`): the mean CIEDE2000 difference (CIE 142-2001;
the formula as in Sharma, Wu and Dalal 2005) between each frame and the source at a coarse scale (64 px short
side: the grade, not the motion's detail), and the frames' high-frequency energy over the source's (texture: 1 is
the same, below is softer). Lab is OpenCV's (sRGB, D65).

A request's ``style_lock`` (INTERFACES.md) is a strength in [0, 1] or ``{"strength", "latent", "colour",
"smoothing_s"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:  # tensor methods only at run time: importing the controls does not import torch
    import torch

from wan_dist.controls.camera import ControlError, _keys, _number

__all__ = ["StyleLock", "pull_statistics", "lock_weight", "to_lab", "from_lab", "colour_transfer", "frame_statistics",
           "smooth_statistics", "regrade", "ciede2000",
           "colour_drift", "grade_drift", "high_frequency_ratio", "DRIFT_SIZE"]

DRIFT_SIZE = 64  # short side (pixels) at which colour drift is measured
_EPS = 1e-5


@dataclass(frozen=True)
class StyleLock:
    strength: float = 0.5
    latent: bool = True  # the sampling-time statistic pull
    colour: bool = True  # the post-decode colour transfer
    smoothing_s: float = 0.5  # Gaussian sigma (seconds) of the frames' colour statistics

    @classmethod
    def from_dict(cls, data: Any, field: str = "style_lock") -> "StyleLock":
        if isinstance(data, StyleLock):
            return data
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return cls(strength=_number(data, field, 0.0, 1.0))
        data = _keys(data, field, ("strength", "latent", "colour", "smoothing_s"))
        for name in ("latent", "colour"):
            if not isinstance(data.get(name, True), bool):
                raise ControlError(f"{field}.{name}", f"must be true or false, got {data[name]!r:.40}")
        return cls(strength=_number(data.get("strength", 0.5), f"{field}.strength", 0.0, 1.0),
                   latent=data.get("latent", True), colour=data.get("colour", True),
                   smoothing_s=_number(data.get("smoothing_s", 0.5), f"{field}.smoothing_s", 0.0, 60.0))

    def to_dict(self) -> dict:
        return {"strength": self.strength, "latent": self.latent, "colour": self.colour,
                "smoothing_s": self.smoothing_s}


# ----------------------------------------------------------------------------- latent statistics
def lock_weight(strength: float, step_fraction: float) -> float:
    """The pull's blend weight at ``step_fraction`` (0 at the first step, 1 after the last): linear decay."""
    return float(strength * (1.0 - min(max(step_fraction, 0.0), 1.0)))


def pull_statistics(x0: "torch.Tensor", reference: "torch.Tensor", strength: float,
                    step_fraction: float) -> "torch.Tensor":
    """``x0`` [B, C, F, H, W] (the predicted clean latent) with each (batch, channel)'s mean and standard
    deviation over (F, H, W) moved toward ``reference``'s [B or 1, C, F', H', W'] (the source image's latent,
    F' = 1 for image-to-video) by :func:`lock_weight`. With weight w the result's mean is
    (1 - w) mean(x0) + w mean(ref) and its standard deviation (1 - w) std(x0) + w std(ref), exactly. Same
    dtype and device as ``x0``; computed in float32."""
    weight = lock_weight(strength, step_fraction)
    if weight == 0.0:
        return x0
    if x0.dim() != 5 or reference.dim() != 5 or reference.shape[1] != x0.shape[1]:
        raise ValueError(f"x0 {tuple(x0.shape)} and reference {tuple(reference.shape)} must be [B, C, F, H, W] "
                         "with the same channels")
    values = x0.float()
    dims = (2, 3, 4)
    mean, std = values.mean(dim=dims, keepdim=True), values.std(dim=dims, keepdim=True, unbiased=False)
    ref = reference.to(device=x0.device).float()
    ref_mean, ref_std = ref.mean(dim=dims, keepdim=True), ref.std(dim=dims, keepdim=True, unbiased=False)
    target = (values - mean) / (std + _EPS) * ref_std + ref_mean
    return (values + weight * (target - values)).to(x0.dtype)


# ----------------------------------------------------------------------------- colour
def to_lab(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., H, W, 3] -> float32 CIE Lab (L 0..100), OpenCV's sRGB D65 conversion."""
    flat = frames.reshape(-1, *frames.shape[-3:]).astype(np.float32) / 255.0
    return np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2Lab) for image in flat]).reshape(frames.shape)


def from_lab(lab: np.ndarray) -> np.ndarray:
    flat = lab.reshape(-1, *lab.shape[-3:]).astype(np.float32)
    rgb = np.stack([cv2.cvtColor(image, cv2.COLOR_Lab2RGB) for image in flat]).reshape(lab.shape)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _smooth_time(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of [F, ...] along frames (edges held)."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(values[:1], radius, 0), values, np.repeat(values[-1:], radius, 0)])
    return np.stack([np.tensordot(kernel, padded[i:i + 2 * radius + 1], axes=(0, 0)) for i in range(len(values))])


def colour_transfer(frames: np.ndarray, source: np.ndarray, *, strength: float = 1.0, fps: float = 16.0,
                    smoothing_s: float = 0.5) -> np.ndarray:
    """``frames`` [F, H, W, 3] uint8 regraded to ``source`` [h, w, 3] uint8: per frame and Lab channel,
    (x - m_t) / s_t * s_src + m_src, where m_t, s_t are the frames' statistics smoothed over time (Gaussian,
    sigma ``smoothing_s`` seconds at ``fps``); blended with the input by ``strength``. A clip too long to hold
    takes the same steps in parts: :func:`frame_statistics` of every part, :func:`smooth_statistics` of them
    all, then :func:`regrade` of each part with its frames' rows (equal to this, frame for frame)."""
    if strength <= 0:
        return frames
    return regrade(frames, smooth_statistics(frame_statistics(frames), fps=fps, smoothing_s=smoothing_s), source,
                   strength=strength)


def frame_statistics(frames: np.ndarray) -> np.ndarray:
    """Each frame's Lab mean and standard deviation: [F, 2, 3] float32."""
    flat = to_lab(frames).reshape(len(frames), -1, 3)
    return np.stack([flat.mean(1), flat.std(1)], axis=1)


def smooth_statistics(statistics: np.ndarray, *, fps: float, smoothing_s: float) -> np.ndarray:
    """:func:`frame_statistics` of a whole clip smoothed over time (Gaussian, sigma ``smoothing_s`` s at ``fps``)."""
    return np.stack([_smooth_time(statistics[:, 0], smoothing_s * fps), _smooth_time(statistics[:, 1],
                                                                                        smoothing_s * fps)], axis=1)


def regrade(frames: np.ndarray, statistics: np.ndarray, source: np.ndarray, *, strength: float) -> np.ndarray:
    """``frames`` regraded to ``source`` with their rows of :func:`smooth_statistics` (see :func:`colour_transfer`)."""
    lab = to_lab(frames)
    ref = to_lab(source).reshape(-1, 3)
    ref_mean, ref_std = ref.mean(0), ref.std(0)
    means, stds = statistics[:, 0], statistics[:, 1]
    graded = (lab - means[:, None, None]) / (stds[:, None, None] + _EPS) * ref_std + ref_mean
    return from_lab(lab + strength * (graded - lab))


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) of Lab arrays [..., 3], broadcast; float64 [...]."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    chroma_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(chroma_mean ** 7 / (chroma_mean ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p, h2p = np.degrees(np.arctan2(b1, a1p)) % 360, np.degrees(np.arctan2(b2, a2p)) % 360
    achromatic = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(achromatic, 0.0, dh)
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(achromatic, h_sum, np.where(np.abs(h1p - h2p) <= 180, h_sum / 2,
                                                   np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    d_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(c_mean ** 7 / (c_mean ** 7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def _coarse(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = size / min(height, width)
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def colour_drift(frames: np.ndarray, source: np.ndarray, *, size: int = DRIFT_SIZE) -> float:
    """Mean CIEDE2000 of ``frames`` [F, H, W, 3] uint8 to ``source`` (resized to the frames), pixel by pixel at
    ``size`` pixels on the short side, averaged over pixels and frames."""
    reference = to_lab(_coarse(cv2.resize(source, (frames.shape[2], frames.shape[1]), interpolation=cv2.INTER_AREA),
                               size))
    return float(np.mean([ciede2000(to_lab(_coarse(frame, size)), reference).mean() for frame in frames]))


def _high_frequency_energy(image: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 1.5)
    return float(np.mean(detail ** 2))


def grade_drift(frames: np.ndarray, source: np.ndarray) -> float:
    """The grade's drift without the content's: mean over frames of the CIEDE2000 between a frame's mean Lab
    colour and the source's (a moved or redrawn object barely changes it; a warmer, flatter or lifted grade does)."""
    reference = to_lab(source).reshape(-1, 3).mean(0)
    return float(np.mean([ciede2000(to_lab(frame).reshape(-1, 3).mean(0), reference) for frame in frames]))


def high_frequency_ratio(frames: np.ndarray, source: np.ndarray) -> float:
    """The frames' mean high-frequency energy (luma minus its Gaussian blur, sigma 1.5 px) over the source's at
    the frames' size: 1 keeps the texture, below 1 is softer, above sharper or noisier."""
    reference = cv2.resize(source, (frames.shape[2], frames.shape[1]), interpolation=cv2.INTER_AREA)
    return float(np.mean([_high_frequency_energy(frame) for frame in frames]) /
                 max(_high_frequency_energy(reference), 1e-12))
