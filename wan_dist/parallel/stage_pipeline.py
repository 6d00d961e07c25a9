"""The pieces of ``WanPipeline.generate`` a disaggregated stage reuses (see :mod:`wan_dist.parallel.stages`).

A stage runs part of ``generate``: it accepts the same keyword arguments (:data:`GENERATE_KEYS`,
checked by ``_checked``), resolves them to settings with the engine's ``resolve_settings``
(``_settings``) and, on the last stage, decodes into the engine's ``WanOutput`` (``_finish``). The
engine is imported lazily, as :mod:`wan_dist.parallel.runtime` keeps the pipeline duck-typed; this
module is where a stage's coupling to the engine lives.
"""

from __future__ import annotations

import time

import numpy as np
import torch

GENERATE_KEYS = frozenset({"prompt", "negative_prompt", "image", "height", "width", "num_frames",
                           "num_inference_steps", "guidance_scale", "guidance_scale_2", "boundary_ratio", "shift",
                           "seed", "solver", "schedule", "prompt_embeds", "negative_prompt_embeds", "latents",
                           "output_type"})


def _checked(kwargs: dict) -> dict:
    if kwargs.get("callback", 0) is None:  # no per-step callback asked for: nothing to drop
        kwargs = {k: v for k, v in kwargs.items() if k != "callback"}
    unknown = sorted(set(kwargs) - GENERATE_KEYS)
    if unknown:
        raise TypeError(f"disaggregated generate: unsupported argument(s) {unknown}")
    return dict(kwargs)


def _settings(pipe, kwargs: dict, seed: int):
    from wan_dist.engine.images import image_size
    from wan_dist.engine.settings import resolve_settings

    image = kwargs.get("image")
    names = ("prompt", "negative_prompt", "prompt_embeds", "height", "width", "num_frames", "num_inference_steps",
             "guidance_scale", "guidance_scale_2", "boundary_ratio", "shift", "solver", "schedule")
    return resolve_settings(pipe.spec, layout=pipe.info.layout, seed=seed, has_image=image is not None,
                            output_type=kwargs.get("output_type", "np"), checkpoint_id=pipe.info.checkpoint_id,
                            image_size=image_size(image), **{name: kwargs.get(name) for name in names})


def _finish(pipe, settings, latents: torch.Tensor, timings: dict, started: float):
    """Decode as ``WanPipeline.generate`` does; a WanOutput of stage 1's part of the request."""
    from wan_dist.engine.pipeline import WanOutput

    if settings.output_type != "latent":
        tick = time.perf_counter()
        video = pipe.vae.decode(latents)  # [B, 3, F, H, W] in [-1, 1]
        frames = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        latents = np.ascontiguousarray(frames.permute(0, 2, 3, 4, 1).cpu().numpy())
        timings["decode_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    return WanOutput(frames=latents, settings=settings, timings=timings)
