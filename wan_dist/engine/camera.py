"""A render's camera: the request's ``camera`` and ``layers`` (wan_dist.controls) composed with the pipeline.

:func:`plan_camera` samples the path once per render (from the resolved size, frame count, fps and seed, so a
sidecar's request renders the same path again). The pipeline then uses the plan at each stage:

- resolve: the prompt gains the path's camera phrases (``controls.camera.with_camera_phrases``);
- prepare, guided mode: text-to-video's initial noise is warped along the path (:meth:`CameraPlan.warp`);
  image-to-video encodes a proxy clip of the input image moved along the path and starts the sampler from
  it at ``camera.strength`` (:meth:`CameraPlan.proxy_video`, ``sampling.sdedit``);
- finish, exact mode: the virtual camera crops, zooms, rolls and shakes the decoded frames
  (:meth:`CameraPlan.post_pass`);
- publish: :meth:`CameraPlan.record` goes into the sidecar (the request, the framing and every pose).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from wan_dist.controls.camera import DEFAULT_PIVOT_DEPTH, CameraPath, ControlError, SampledPath, with_camera_phrases
from wan_dist.controls.layers import LayerSpec
from wan_dist.controls.warp import proxy_clip, required_overscan, virtual_camera, warp_noise

__all__ = ["CameraPlan", "plan_camera", "camera_prompt"]


@dataclass(eq=False)
class CameraPlan:
    """A request's camera path sampled for one render. ``start_step``: the step guided image-to-video starts at
    (0 otherwise); ``overscan``/``offset``: the exact mode's crop (1 and (0, 0) in guided mode)."""

    path: CameraPath
    layers: LayerSpec | None
    sampled: SampledPath
    seed: int
    overscan: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    start_step: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.path.mode == "exact"

    def warps_noise(self, task: str, has_image: bool) -> bool:
        """Guided text-to-video (text-only TI2V too): the initial noise follows the path."""
        return not self.exact and not has_image and task in ("t2v", "ti2v")

    def uses_proxy(self, task: str, has_image: bool) -> bool:
        """Guided image-to-video below strength 1: the sampler starts from the proxy clip."""
        return not self.exact and has_image and task in ("i2v", "ti2v") and self.path.strength < 1.0

    def warp(self, latents: torch.Tensor, *, temporal_stride: int, spatial_stride: int) -> torch.Tensor:
        """The initial noise [B, C, f, h, w] warped along the path (see ``controls.warp.warp_noise``)."""
        warped = warp_noise(latents.detach().cpu().numpy(), self.sampled, temporal_stride=temporal_stride,
                            spatial_stride=spatial_stride, seed=self.seed, strength=self.path.strength)
        return torch.from_numpy(warped).to(latents.device, latents.dtype)

    def proxy_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """The proxy clip [B, 3, F, H, W] in [-1, 1] of the input images ``pixels`` [B, 3, H, W] in [-1, 1]."""
        clips = {}
        rows = []
        for row in pixels:
            image = np.clip(np.rint((row.permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
            key = image.tobytes()
            if key not in clips:  # a batch of one image makes one proxy
                clips[key] = proxy_clip(image, self.sampled, self.layers)
            rows.append(torch.from_numpy(clips[key]).permute(3, 0, 1, 2).float() / 127.5 - 1.0)
        return torch.stack(rows)

    def post_pass(self, frames: np.ndarray) -> np.ndarray:
        """Exact mode: decoded frames [B, F, H, W, 3] uint8 through the virtual camera (each frame split into the
        request's layers, if any: parallax); else as they are."""
        if not self.exact:
            return frames
        blur = self.layers.motion_blur if self.layers is not None else 0.0
        return np.stack([virtual_camera(clip, self.sampled, overscan=self.overscan, offset=self.offset,
                                        motion_blur=blur, layers=self.layers)[0] for clip in frames])

    def record(self) -> dict:
        """Plain data for the sidecar: what was asked, how it was applied, and the pose of every frame."""
        return {"camera": self.path.to_dict(), "layers": None if self.layers is None else self.layers.to_dict(),
                "seed": self.seed, "start_step": self.start_step, "overscan": round(self.overscan, 6),
                "offset": [round(v, 6) for v in self.offset], "path": self.sampled.record(),
                "timings": dict(self.timings)}


def plan_camera(camera, layers, *, num_frames: int, width: int, height: int, fps: int, seed: int) -> CameraPlan:
    """The plan of request values ``camera`` (a CameraPath or its dict) and ``layers`` (a LayerSpec, its dict
    or None) for a render of that size and length; the exact mode's crop is checked here, before any step.
    Bad values raise ValueError naming the field (``camera: moves[0].type: ...``)."""
    try:
        path = CameraPath.from_dict(camera)
    except ControlError as error:
        raise ValueError(f"camera: {error}") from None
    try:
        spec = None if layers is None else LayerSpec.from_dict(layers)
    except ControlError as error:
        raise ValueError(f"layers: {error}") from None
    pivot = DEFAULT_PIVOT_DEPTH if spec is None else spec.foreground_depth
    sampled = path.sample(num_frames=num_frames, fps=fps, width=width, height=height, seed=seed, pivot_depth=pivot)
    plan = CameraPlan(path=path, layers=spec, sampled=sampled, seed=seed)
    if path.mode == "exact":
        try:
            needed, plan.offset = required_overscan(sampled)
        except ControlError as error:
            raise ValueError(f"camera: {error}") from None
        if path.overscan is not None and path.overscan < needed - 1e-3:
            raise ValueError(f"camera: overscan: {path.overscan:g} is less than the {needed:.3f} this path needs")
        plan.overscan = needed if path.overscan is None else path.overscan
    return plan


def camera_prompt(prompt, camera):
    """``prompt`` (a string, a list of them, or None) with the camera phrases of ``camera`` (None: as it is)."""
    if camera is None:
        return prompt
    try:
        return with_camera_phrases(prompt, CameraPath.from_dict(camera))
    except ControlError as error:
        raise ValueError(f"camera: {error}") from None
