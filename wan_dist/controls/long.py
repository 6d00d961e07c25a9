"""Long clips as a sequence of windows: the request's ``long`` settings, the window plan and the seam blend.

One model window is a few seconds (Wan 2.2: 81 frames at 16 fps, 121 at 24; the ``toy`` models 17 at 16). A
longer clip is rendered window after window. Window ``k > 0`` begins ``P`` output frames before window ``k - 1``
ends and is conditioned on those frames; the ``P`` frames both windows render are cross-faded at the seam.

``overlap`` counts latent frames ``o`` (the model's unit): with the causal VAE's temporal stride ``s`` (4), ``o``
latent frames decode to ``P = s (o - 1) + 1`` frames, so a window of ``W`` frames adds ``W - P = s (L - o)`` new ones
(``L = (W - 1) / s + 1`` latent frames). ``o = 1`` shares one frame (the previous window's last).

Methods (``method``):

- ``continue`` (every task): the previous window's last ``P`` frames are VAE-encoded to ``o`` clean latent frames
  and imposed on the new window's first ``o`` latent frames, noised to each step's level with the window's own
  noise, for the first ``impose`` share of the steps (SDEdit / RePaint-style continuation: the model sees the
  seam content at every noise level it passes through early on and is then free to refine it). Image-to-video
  and text+image models also get the model's own image conditioning: the first overlap frame is the window's
  input image.
- ``sliding``: one long latent denoised by overlapping windows per step (FreeNoise-style; see
  :mod:`wan_dist.engine.sliding`).

Pure data and numpy: no torch, no engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from wan_dist.controls.camera import ControlError

__all__ = ["LONG_METHODS", "FUSE_WEIGHTS", "LongSpec", "Window", "plan_windows", "seam_weights", "blend_seam",
           "window_seed"]

LONG_METHODS = ("continue", "sliding")
FUSE_WEIGHTS = ("linear", "pyramid")
DEFAULT_IMPOSE = 0.9  # share of the steps during which the seam's latents are imposed (continue)
DEFAULT_OVERLAP = 2  # latent frames: 5 shared frames (one shared frame gives the model no motion to continue)
_SEED_STRIDE = 1_000_003  # window k's seed: seed + k * stride (mod 2^63); window 0 renders as a one-window clip


@dataclass(frozen=True)
class LongSpec:
    """A request's ``long`` field: ``{method, overlap, window, impose, fuse}``.

    ``overlap``: latent frames shared by consecutive windows (default 2); ``window``: frames per window (``4k+1``,
    default the model's own length); ``impose``: share of the steps the seam is imposed (continue); ``fuse``:
    how overlapping window predictions are weighted (sliding: ``linear`` ramps across the overlap, ``pyramid``
    peaks at a window's centre).
    """

    method: str = "continue"
    overlap: int = DEFAULT_OVERLAP
    window: int | None = None
    impose: float = DEFAULT_IMPOSE
    fuse: str = "linear"

    @classmethod
    def from_dict(cls, data: Any) -> "LongSpec":
        if not isinstance(data, Mapping):
            raise ControlError("", f"must be an object {{method, overlap, window, impose, fuse}}, got "
                                   f"{type(data).__name__}")
        known = ("method", "overlap", "window", "impose", "fuse")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ControlError(unknown[0], f"unknown field; known: {', '.join(known)}")
        method = data.get("method") or "continue"
        if method not in LONG_METHODS:
            raise ControlError("method", f"must be one of {', '.join(LONG_METHODS)}; got {method!r:.60}")
        overlap = DEFAULT_OVERLAP if data.get("overlap") is None else data["overlap"]
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
            raise ControlError("overlap", f"must be a positive integer (latent frames), got {overlap!r:.60}")
        window = data.get("window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 5):
            raise ControlError("window", f"must be an integer of at least 5 frames (4k+1), got {window!r:.60}")
        impose = DEFAULT_IMPOSE if data.get("impose") is None else data["impose"]
        if isinstance(impose, bool) or not isinstance(impose, (int, float)) or not 0.0 <= impose <= 1.0:
            raise ControlError("impose", f"must be a number in [0, 1], got {impose!r:.60}")
        fuse = data.get("fuse") or "linear"
        if fuse not in FUSE_WEIGHTS:
            raise ControlError("fuse", f"must be one of {', '.join(FUSE_WEIGHTS)}; got {fuse!r:.60}")
        return cls(method=method, overlap=overlap, window=window, impose=float(impose), fuse=fuse)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_model(self, *, window: int, temporal_stride: int, field: str = "long") -> None:
        """ControlError unless ``window`` frames (this spec's or the model's) suit a model of that stride."""
        if (window - 1) % temporal_stride:
            raise ControlError(f"{field}.window", f"must be {temporal_stride}k+1 frames, got {window}")
        latent = (window - 1) // temporal_stride + 1
        if self.overlap >= latent:
            raise ControlError(f"{field}.overlap", f"must be below the window's {latent} latent frames "
                                                   f"({window} frames), got {self.overlap}")


@dataclass(frozen=True)
class Window:
    """Window ``index``: output frames ``[start, start + frames)`` of the clip; its first ``overlap`` frames
    are the previous window's last ones (0 for the first window)."""

    index: int
    start: int
    frames: int
    overlap: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_windows(num_frames: int, *, window: int, overlap: int, temporal_stride: int = 4) -> list[Window]:
    """The windows covering ``num_frames`` (``s k + 1``) output frames: full windows of ``window`` frames sharing
    ``s (overlap - 1) + 1`` frames, the last one shortened to end on the clip's last frame (still ``s k + 1``).
    One window when the clip fits in one."""
    s = temporal_stride
    if (num_frames - 1) % s or (window - 1) % s:
        raise ValueError(f"num_frames ({num_frames}) and window ({window}) must be {s}k+1")
    if num_frames <= window:
        return [Window(index=0, start=0, frames=num_frames, overlap=0)]
    shared = s * (overlap - 1) + 1
    advance = window - shared
    if advance <= 0:
        raise ValueError(f"overlap {overlap} leaves a window of {window} frames no new frames")
    windows = [Window(index=0, start=0, frames=window, overlap=0)]
    while windows[-1].start + windows[-1].frames < num_frames:
        start = windows[-1].start + windows[-1].frames - shared
        frames = min(window, num_frames - start)
        windows.append(Window(index=len(windows), start=start, frames=frames, overlap=shared))
    return windows


def window_seed(seed: int, index: int) -> int:
    """Window ``index``'s seed: the request's for window 0 (a clip of one window renders as before)."""
    return (seed + index * _SEED_STRIDE) % 2**63


def seam_weights(count: int) -> np.ndarray:
    """Weights [count] of the later window across ``count`` shared frames: a linear ramp strictly inside (0, 1),
    ``(i + 1) / (count + 1)``, so both windows contribute to every shared frame."""
    return (np.arange(count, dtype=np.float64) + 1.0) / (count + 1.0)


def blend_seam(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """The shared frames ``[P, H, W, 3]`` uint8 cross-faded from ``earlier`` (the previous window's last ``P``) to
    ``later`` (the next window's first ``P``) with :func:`seam_weights`."""
    if earlier.shape != later.shape:
        raise ValueError(f"seam frames differ in shape: {earlier.shape} vs {later.shape}")
    weight = seam_weights(earlier.shape[0]).reshape(-1, 1, 1, 1)
    mixed = (1.0 - weight) * earlier.astype(np.float64) + weight * later.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
