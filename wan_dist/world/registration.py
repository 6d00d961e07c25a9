"""Camera motion between frames, for :mod:`wan_dist.world.measure`.

numpy only. The background's motion between two consecutive frames is a translation plus a zoom
about the frame centre: a global phase correlation finds the shift, and a Lucas-Kanade fit refines
shift and zoom together. Object pixels are masked out so that only the background, which carries
the camera's motion, is compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["phase_shift", "frame_motion", "camera_track"]

# Cross-power spectra are tapered by a Gaussian so the correlation peak is a smooth blob a couple of
# pixels wide: a parabola through the log of its top three values then places it to ~0.05 px.
PEAK_SIGMA_PX = 1.0
DETAIL_SIGMA_PX = 6.0


def _luma(frame: np.ndarray) -> np.ndarray:
    frame = frame.astype(np.float64)
    return 0.299 * frame[..., 0] + 0.587 * frame[..., 1] + 0.114 * frame[..., 2]


def _hann(height: int, width: int) -> np.ndarray:
    return np.outer(np.hanning(height + 2)[1:-1], np.hanning(width + 2)[1:-1])


def _subpixel(values: np.ndarray) -> float:
    """Offset of a peak from the middle of three samples (parabola through their logs)."""
    logs = np.log(np.maximum(values, 1e-9))
    denominator = logs[0] - 2 * logs[1] + logs[2]
    return 0.0 if denominator >= 0 else float(np.clip(0.5 * (logs[0] - logs[2]) / denominator, -0.5, 0.5))


def phase_shift(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift of ``second`` against ``first`` for a stack of windowed tiles [N, h, w].

    Returns (shifts [N, 2] as (dy, dx) in pixels, content at p in ``first`` is at p + shift in
    ``second``; peak heights [N], near 1 for a clean match and near 0 for none).
    """
    n, h, w = first.shape
    cross = np.conj(np.fft.fft2(first)) * np.fft.fft2(second)
    cross /= np.abs(cross) + 1e-9
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    taper = np.exp(-2 * (np.pi * PEAK_SIGMA_PX) ** 2 * (fy**2 + fx**2))
    surface = np.fft.ifft2(cross * taper).real
    shifts, peaks = np.zeros((n, 2)), np.zeros(n)
    for i in range(n):
        iy, ix = np.unravel_index(int(np.argmax(surface[i])), (h, w))
        peaks[i] = surface[i, iy, ix] / taper.mean()
        column = surface[i, [(iy - 1) % h, iy, (iy + 1) % h], ix]
        row = surface[i, iy, [(ix - 1) % w, ix, (ix + 1) % w]]
        # Wrap to signed shifts: the FFT's circular lags past the middle are negative.
        shifts[i] = ((iy + h // 2) % h - h // 2 + _subpixel(column), (ix + w // 2) % w - w // 2 + _subpixel(row))
    return shifts, peaks


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication."""
    radius = max(1, int(round(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image, radius, mode="edge")
    rows = sum(k * padded[i:i + image.shape[0], :] for i, k in enumerate(kernel))
    return sum(k * rows[:, i:i + image.shape[1]] for i, k in enumerate(kernel))


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1, constant_values=False)
        out = out & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return out


def _detail(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``image`` less its background's local mean (a masked blur over ~6 px), 0 on masked pixels.

    Why: a gradient background is a ramp, and per-frame brightness normalisation cancels most of
    what a ramp sliding through the frame shows, pulling the estimate towards no motion. Without
    the ramp only texture is left, and texture moves with the camera unambiguously.
    """
    weight = keep.astype(np.float64)
    local_mean = _blur(image * weight, DETAIL_SIGMA_PX) / np.maximum(_blur(weight, DETAIL_SIGMA_PX), 1e-3)
    return np.where(keep, image - local_mean, 0.0)


def _normalise(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Zero mean and unit spread over the kept pixels: a brightening clip compares like with like."""
    kept = image[keep]
    if kept.size < 16:
        return image - image.mean()
    return (image - kept.mean()) / (kept.std() + 1e-6)


@dataclass(frozen=True)
class _Prepared:
    """One frame ready for registration: normalised luma, its light blur and the blur's gradients."""

    image: np.ndarray
    blurred: np.ndarray
    stack: np.ndarray  # [H * W, 3]: blurred value, d/dx, d/dy

    @classmethod
    def of(cls, frame: np.ndarray, keep: np.ndarray) -> _Prepared:
        image = _normalise(_detail(_luma(frame), keep), keep)
        blurred = _blur(image, 1.0)
        gy, gx = np.gradient(blurred)
        return cls(image, blurred, np.stack([blurred, gx, gy], -1).reshape(-1, 3))


def _refine(first: _Prepared, second: _Prepared, weight: np.ndarray, params: np.ndarray,
            iterations: int = 10) -> np.ndarray:
    """Gauss-Newton fit of ``second((1 + e) p + t) = first(p)`` (p from the frame centre) over the
    weighted pixels, on the lightly blurred frames.

    ``params`` is (tx, ty, e); returns the refined copy. This is Lucas-Kanade with a translation
    plus zoom model: sub-pixel by construction, and masked pixels simply carry no weight.
    """
    height, width = weight.shape
    ys, xs = np.nonzero(weight)
    target, w = first.blurred[ys, xs], weight[ys, xs]
    px, py = xs - (width - 1) / 2, ys - (height - 1) / 2
    stack = second.stack
    params = params.astype(np.float64).copy()
    for _ in range(iterations):
        wx = (1 + params[2]) * px + params[0] + (width - 1) / 2
        wy = (1 + params[2]) * py + params[1] + (height - 1) / 2
        inside = (wx >= 0) & (wx <= width - 1.001) & (wy >= 0) & (wy <= height - 1.001)
        x0 = np.clip(wx.astype(np.int64), 0, width - 2)  # truncation is floor where inside
        y0 = np.clip(wy.astype(np.int64), 0, height - 2)
        fx, fy = (wx - x0)[:, None], (wy - y0)[:, None]
        base = y0 * width + x0
        sampled = ((stack[base] * (1 - fx) + stack[base + 1] * fx) * (1 - fy)
                   + (stack[base + width] * (1 - fx) + stack[base + width + 1] * fx) * fy)
        jac = np.stack([sampled[:, 1], sampled[:, 2], sampled[:, 1] * px + sampled[:, 2] * py], -1)
        weighted = jac * (w * inside)[:, None]
        # einsum, not matmul: these 3 x N products are too small to be worth BLAS threads, which
        # stall badly when the cores are busy.
        hessian = np.einsum("ni,nj->ij", weighted, jac) + np.diag([1e-6, 1e-6, 1e-3])
        step = -np.linalg.solve(hessian, np.einsum("ni,n->i", weighted, sampled[:, 0] - target))
        params += step
        if abs(step[0]) + abs(step[1]) < 5e-3 and abs(step[2]) < 1e-4:
            break
    return params


def _motion(first: _Prepared, second: _Prepared, keep: np.ndarray) -> tuple[float, float, float]:
    """Background motion between two prepared frames (see :func:`frame_motion`)."""
    height, width = keep.shape
    # A feathered mask: a hard one leaves a static outline that pulls the correlation peak to zero.
    window = _hann(height, width) * _blur(keep.astype(np.float64), 2.0) ** 2
    (shift,), _ = phase_shift((first.image * window)[None], (second.image * window)[None])
    params = np.array([shift[1], shift[0], 0.0])
    weight = _erode(keep, 2).astype(np.float64)
    if weight.sum() >= 32:
        params = _refine(first, second, weight, params)
    return float(params[0]), float(params[1]), float(params[2])


def frame_motion(first: np.ndarray, second: np.ndarray, keep: np.ndarray) -> tuple[float, float, float]:
    """Background motion from ``first`` to ``second`` (frames [H, W, 3]) as (dx, dy, scale - 1).

    ``keep`` [H, W] marks background pixels in both frames. Content at frame position p (pixels from
    the frame centre) in ``first`` sits at ``p * scale + (dx, dy)`` in ``second``. A global phase
    correlation of the masked frames gives the starting shift (to ~0.1 px); Lucas-Kanade on lightly
    blurred frames refines shift and zoom together.
    """
    return _motion(_Prepared.of(first, keep), _Prepared.of(second, keep), keep)


def camera_track(frames: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative background motion over a clip, frames [F, H, W, 3], object masks [F, H, W].

    Returns scale [F], translation [F, 2] (x, y pixels) and per-step translation [F - 1, 2]: content
    at p (pixels from the centre) in frame 0 sits at ``p * scale[i] + translation[i]`` in frame i.
    """
    count = frames.shape[0]
    scale, translation, steps = np.ones(count), np.zeros((count, 2)), np.zeros((max(count - 1, 0), 2))
    # Each frame is prepared once against its own mask (a pair's union mask would change its
    # brightness normalisation only slightly), then every pair is compared on the union.
    prepared = [_Prepared.of(frame, ~mask) for frame, mask in zip(frames, masks)]
    for i in range(count - 1):
        dx, dy, e = _motion(prepared[i], prepared[i + 1], ~(masks[i] | masks[i + 1]))
        steps[i] = dx, dy
        scale[i + 1] = scale[i] * (1 + e)
        translation[i + 1] = translation[i] * (1 + e) + (dx, dy)
    return scale, translation, steps
