"""A style lock's pull during sampling (``RenderRequest.style_lock`` with ``latent`` on): every step's clean
estimate moves toward the input image latent's per-channel statistics (``controls.style``); the pipeline's
``prepare`` makes the pull, its ``denoise`` runs the guide."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wan_dist.controls.style import StyleLock, lock_weight, pull_statistics
from wan_dist.sampling.denoise import FirstFrameToVideo, ImageToVideo

__all__ = ["StylePull", "style_guide", "style_pull"]


@dataclass(frozen=True)
class StylePull:
    """A style lock's pull: every step's clean estimate moves toward ``reference``'s per-channel statistics
    (the input image's latent, [B or 1, C, 1, h, w]) by ``controls.style.lock_weight(strength, step / steps)``."""

    reference: torch.Tensor
    strength: float


def style_pull(style_lock, conditioning) -> StylePull | None:
    """The pull a request's ``style_lock`` asks for, from the image latent its conditioning holds (None without
    a lock, with ``latent`` off, or when no image conditions the render)."""
    if style_lock is None:
        return None
    lock = StyleLock.from_dict(style_lock)
    if not lock.latent or lock.strength == 0:
        return None
    if isinstance(conditioning, ImageToVideo):  # y = [mask (4), image video latents]: the image's frame
        reference = conditioning.condition[:, 4:, :1]
    elif isinstance(conditioning, FirstFrameToVideo) and conditioning.image_latents is not None:
        reference = conditioning.image_latents
    else:
        return None
    return StylePull(reference=reference.float(), strength=lock.strength)


def style_guide(prepared, solver):
    """The denoise loop's ``guide`` for ``prepared.style``: the velocity whose clean estimate
    ``x0 = x - sigma v`` is the pulled one (so the solver's history holds the pulled x0 too)."""
    pull = prepared.style
    if pull is None:
        return None
    steps = len(prepared.steps)

    def guide(plan, latents, velocity):
        fraction = plan.index / steps
        sigma = solver.sigma(plan.index)
        if lock_weight(pull.strength, fraction) == 0.0 or sigma <= 0.0:
            return velocity
        x0 = solver.denoised(plan.index, velocity.float(), latents)
        return (latents - pull_statistics(x0, pull.reference, pull.strength, fraction)) / sigma

    return guide
