"""Step caching for a pipeline: its calibration profile beside the checkpoint, and the calibration itself.

The rules and the per-render state are pure (:mod:`wan_dist.sampling.step_cache`); this module connects them
to a checkpoint. A profile is ``<checkpoint folder>/step_cache.json`` (:data:`PROFILE_NAME`): MagCache's mean
residual-magnitude ratio at every step of each expert and TeaCache's line from the time embedding's change to
the residual's, measured by :func:`calibrate` on a few uncached renders (``wan-dist calibrate-cache``). It
records a fingerprint of the experts' weight files; a profile of other weights is refused. The shipped ``toy``
checkpoint carries one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

from wan_dist.sampling.step_cache import DEFAULT_MAX_SKIPS, CacheProfile, CacheRecorder, StepCache, fit_profile

__all__ = ["PROFILE_NAME", "DEFAULT_PROMPTS", "fingerprint", "profile_path", "read_profile", "write_profile",
           "profile_of", "make_step_cache", "calibrate"]

PROFILE_NAME = "step_cache.json"
# What calibrate renders when given no prompts: scenes of the toy world's kind (any prompts serve a real model).
DEFAULT_PROMPTS = (
    "A red circle moves to the right across a dark blue background. The camera does not move.",
    "A yellow square falls down over a green checkerboard. The camera pans left.",
    "Two blue triangles bounce on a striped background. The camera zooms in slowly.",
    "A white ball rolls left across a grey floor while the camera tilts up.",
)


def fingerprint(info) -> str:
    """A hash of the variant and the experts' weight files (names and sizes): cheap, and different for the
    weights of another training run or precision."""
    digest = hashlib.sha256(info.spec.name.encode())
    for index, folder in enumerate(info.expert_dirs):
        folder = Path(folder)
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".pth", ".bin")):
            digest.update(f"{index}/{file.relative_to(folder)}:{file.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def profile_path(info) -> Path:
    return Path(info.root) / PROFILE_NAME


def read_profile(info, path: Path | str | None = None) -> CacheProfile | None:
    """The profile beside the checkpoint of ``info`` (or at ``path``), None when there is none; ValueError
    when it was measured on another model."""
    path = profile_path(info) if path is None else Path(path)
    if not path.exists():
        return None
    try:
        profile = CacheProfile.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cache: {path} is not a step-cache profile ({error})") from None
    if profile.variant != info.spec.name or len(profile.experts) != len(info.expert_dirs):
        raise ValueError(f"cache: {path} is a profile of {profile.variant} with {len(profile.experts)} expert(s), "
                         f"not of this {info.spec.name}; recalibrate with `wan-dist calibrate-cache`")
    if profile.fingerprint is not None and profile.fingerprint != fingerprint(info):
        raise ValueError(f"cache: {path} was measured on other weights of {info.spec.name}; recalibrate with "
                         "`wan-dist calibrate-cache`")
    return profile


def write_profile(profile: CacheProfile, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{time.time_ns()}")
    staging.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    staging.replace(path)
    return path


def profile_of(pipe, *, required: bool = False) -> CacheProfile | None:
    """``pipe.cache_profile``, read from beside its checkpoint on first use; ``required``: ValueError naming
    the calibration command when there is none."""
    if pipe.cache_profile is None:
        pipe.cache_profile = read_profile(pipe.info)
    if pipe.cache_profile is None and required:
        raise ValueError(f"cache: magcache needs a calibration profile of {pipe.info.root}; write one with "
                         f"`wan-dist calibrate-cache model={pipe.info.root}`")
    return pipe.cache_profile


def make_step_cache(pipe, prepared) -> StepCache | None:
    """The :class:`StepCache` of ``prepared``'s settings over its whole plan, None when its cache is off."""
    settings = prepared.settings
    if settings.cache == "off":
        return None
    profile = profile_of(pipe, required=settings.cache == "magcache")
    return StepCache(settings.cache, prepared.steps, threshold=settings.cache_threshold,
                     retention=settings.cache_retention, profile=profile)


def calibrate(pipe, prompts: Sequence[str] = DEFAULT_PROMPTS, *, seed: int = 0, max_skips: int = DEFAULT_MAX_SKIPS,
              **settings) -> CacheProfile:
    """Render ``prompts`` uncached (to latents; seeds ``seed``, ``seed + 1`` ...) with ``settings`` (any of
    ``WanPipeline.resolve``'s, e.g. ``num_inference_steps``; default: the variant's) and fit the profile."""
    if not prompts:
        raise ValueError("prompts: give at least one prompt to calibrate on")
    records, resolved = [], None
    for offset, prompt in enumerate(prompts):
        resolved = pipe.resolve(prompt, seed=seed + offset, output_type="latent", **settings)
        prepared = pipe.prepare(resolved)
        recorder = CacheRecorder()
        pipe.denoise(prepared, cache=recorder)
        records += recorder.records
    calibration = {"prompts": list(prompts), "seed": seed, "checkpoint": pipe.info.checkpoint_id,
                   **{k: getattr(resolved, k) for k in ("height", "width", "num_frames", "num_inference_steps",
                                                        "shift", "schedule", "solver", "guidance_scale",
                                                        "guidance_scale_2", "boundary_ratio")},
                   "negative_prompt": resolved.negative_prompts[0]}
    return fit_profile(records, variant=pipe.spec.name, num_experts=len(pipe.experts), max_skips=max_skips,
                       fingerprint=fingerprint(pipe.info), calibration=calibration)
