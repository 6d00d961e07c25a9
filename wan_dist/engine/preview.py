"""Preview frames of a render in progress: the first frame of a step's clean-latent estimate, decoded by the
real VAE (made small and encoded by whoever shows them).

Wan's VAEs are causal in time: the first latent frame decodes to the first video frame on its own, so a
preview costs a one-frame decode (no band split, no collective: it runs on the result rank alone), not a
clip's. The estimate is x0 = x_t - sigma_t * v of the step (``sampling.denoise``), which shows the
composition long before the noisy latents do.
"""

from __future__ import annotations

import io

import numpy as np
import torch

__all__ = ["preview_frame", "shrink", "encode_jpeg", "PreviewDecoder"]


def preview_frame(vae, estimate: torch.Tensor, *, row: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: frame 0 of ``estimate`` [B, z, f, h, w] (row ``row``), decoded by ``vae`` (a WanVAE)."""
    from wan_dist.models.vae import video_to_frames

    return video_to_frames(vae.decode(estimate[row:row + 1, :, :1]))[0, 0]


def shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
    """``frame`` scaled down (bilinear, aspect kept) so that its longer side is at most ``max_side``."""
    from PIL import Image

    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def encode_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


class PreviewDecoder:
    """``decoder(estimate) -> uint8 [H, W, 3]`` bound to a pipeline's VAE (what a step control's preview gets)."""

    def __init__(self, vae):
        self.vae = vae

    def __call__(self, estimate: torch.Tensor) -> np.ndarray:
        return preview_frame(self.vae, estimate)
