"""Long clips, method ``sliding``: one long latent, denoised by overlapping windows fused at every step.

FreeNoise-style (Qiu et al. 2023, "FreeNoise: Tuning-Free Longer Video Diffusion via Noise Rescheduling"; the
window fusion of Kijai's WanVideoWrapper context options and ComfyUI's context windows, WAVE2_FACTS.md):

- windows of ``L`` latent frames (the model's own length) start every ``L - o`` latent frames, the last one
  aligned to the clip's end; each window sees positions ``0..L-1`` (RoPE as in one render);
- every step, each window's guided velocity is computed on its slice of the long latent and the velocities are
  averaged with per-frame weights (:func:`fuse_weights`: ``linear`` ramps over the overlap, ``pyramid`` peaks at
  the window's centre); the solver then steps the whole latent once, so every frame follows one trajectory;
- noise rescheduling: the initial noise of frames past the first window repeats earlier frames' noise, shuffled
  within each stride (:func:`reschedule_noise`), so distant windows start from correlated noise and keep the
  content from drifting;
- text-to-video only: an image-conditioned model's condition belongs to the first window's frames.

The clip is decoded in segments of latent frames as the long latent is done (:func:`decode_segments`): each
segment is decoded with ``context`` latent frames before it, whose frames are dropped (the causal VAE then
sees the segment's past), so the decoded clip is never held whole.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

__all__ = ["latent_windows", "fuse_weights", "reschedule_noise", "fused_prediction", "decode_segments"]


def latent_windows(frames: int, *, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end))`` latent-frame ranges of windows of ``window`` frames over ``frames``, consecutive ones
    sharing at least ``overlap``; the last ends on the last frame. One window when the latent fits."""
    if frames <= window:
        return [(0, frames)]
    stride = window - overlap
    if stride <= 0:
        raise ValueError(f"overlap {overlap} must be below the window's {window} latent frames")
    starts = list(range(0, frames - window, stride)) + [frames - window]
    return [(start, start + window) for start in starts]


def fuse_weights(length: int, *, overlap: int, kind: str, first: bool, last: bool) -> torch.Tensor:
    """Per-frame weights [length] of one window's prediction. ``linear``: 1, ramping down to ``1/(o+1)`` over
    the ``o`` frames it shares with a neighbour (not at the clip's ends); ``pyramid``: ``min(i + 1, length - i)``."""
    if kind == "pyramid":
        index = torch.arange(length, dtype=torch.float64)
        return torch.minimum(index + 1, length - index)
    if kind != "linear":
        raise ValueError(f"fuse: must be linear or pyramid, got {kind!r}")
    weights = torch.ones(length, dtype=torch.float64)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float64) / (overlap + 1)
    if not first:
        weights[:overlap] = ramp
    if not last:
        weights[length - overlap:] = ramp.flip(0)
    return weights


def reschedule_noise(noise: torch.Tensor, *, window: int, stride: int, seed: int) -> torch.Tensor:
    """FreeNoise's rescheduling of ``noise`` [B, C, F, h, w]: frames ``[i, i + stride)`` for ``i >= window`` take
    the noise of frames ``[i - window, i - window + stride)`` in a shuffled order (drawn from ``seed``)."""
    noise = noise.clone()
    generator = torch.Generator().manual_seed(seed)
    frames = noise.shape[2]
    for start in range(window, frames, stride):
        count = min(stride, frames - start)
        order = torch.randperm(count, generator=generator) + start - window
        noise[:, :, start:start + count] = noise[:, :, order]
    return noise


def fused_prediction(base_predict: Callable, windows: list[tuple[int, int]], *, overlap: int, kind: str):
    """A ``predict`` for :func:`~wan_dist.sampling.denoise.denoise` over the long latent: ``base_predict`` on each
    window's slice, the velocities averaged with :func:`fuse_weights`."""
    weights = [fuse_weights(end - start, overlap=overlap, kind=kind, first=i == 0, last=i == len(windows) - 1)
               for i, (start, end) in enumerate(windows)]

    def predict(expert, model_input, timestep, context, negative_context, guidance_scale, *, batched_context=None):
        total = weight_sum = None
        for (start, end), weight in zip(windows, weights):
            velocity = base_predict(expert, model_input[:, :, start:end], timestep, context, negative_context,
                                    guidance_scale, batched_context=batched_context).float()
            if total is None:
                shape = (*velocity.shape[:2], model_input.shape[2], *velocity.shape[3:])
                total = torch.zeros(shape, dtype=torch.float32, device=velocity.device)
                weight_sum = torch.zeros(model_input.shape[2], dtype=torch.float64)
            w = weight.to(torch.float32).to(velocity.device).reshape(1, 1, -1, 1, 1)
            total[:, :, start:end] += velocity * w
            weight_sum[start:end] += weight
        return total / weight_sum.to(torch.float32).to(total.device).reshape(1, 1, -1, 1, 1)

    return predict


def decode_segments(vae, latents: torch.Tensor, *, segment: int, context: int = 2) -> Iterator[np.ndarray]:
    """uint8 frames [n, H, W, 3] of ``latents`` [1, C, F, h, w], ``segment`` latent frames at a time, in order
    (their concatenation has ``4 (F - 1) + 1`` frames). Segment ``[a, b)`` after the first is decoded from
    ``[a - context, b)`` and its first ``4 (context - 1) + 1`` frames dropped (the causal decoder's warm-up)."""
    from wan_dist.models.vae import video_to_frames

    stride = vae.temporal_stride
    frames = latents.shape[2]
    for start in range(0, frames, segment):
        end = min(start + segment, frames)
        if start == 0:
            yield video_to_frames(vae.decode(latents[:, :, :end]))[0]
            continue
        first = max(0, start - context)
        decoded = video_to_frames(vae.decode(latents[:, :, first:end]))[0]
        yield decoded[stride * (start - first - 1) + 1:]
