"""Resolve and validate the settings of one render: defaults per variant and layout, clear errors.

The resolved object is what the sidecar records: feeding it back reproduces the render.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from wan_dist.models.presets import VariantSpec
from wan_dist.sampling.step_cache import CACHE_MODES, DEFAULT_RETENTION, DEFAULT_THRESHOLDS

__all__ = ["RenderSettings", "resolve_settings", "negative_prompts", "frames_for_duration", "SOLVERS",
           "SCHEDULES", "RECIPES"]

SOLVERS = ("unipc", "dpm++", "euler")
SCHEDULES = ("reference", "diffusers")
# Sampling recipes: defaults for the fields a request leaves out (a field given beside the recipe wins).
# ``lightning``: ModelTC/Wan2.2-Lightning's few-step sampling (wan/configs/wan_{t2v,i2v}_A14B.py and its generate.py):
# 4 steps, shift 5, guidance 1 on both experts (no CFG: one forward per step), the Euler solver, the model's own
# boundary. With the reference schedule (the Wan code Lightning forks) the steps are t = 999, 937, 833, 624, the
# timesteps its LoRAs were distilled on (1000, 937.5, 833.3, 625: shift 5 on 4 uniform steps) up to the
# reference's integer timesteps; at the T2V boundary 0.875 two steps go to each expert. Use it with the
# Lightning LoRA of each expert (``loras``: high_noise_model on ``high``, low_noise_model on ``low``).
# lightx2v's step list (1000, 750, 500, 250) is not a shifted uniform grid and is not offered.
RECIPES: dict[str, dict] = {
    "lightning": {"num_inference_steps": 4, "shift": 5.0, "guidance_scale": 1.0, "guidance_scale_2": 1.0,
                  "solver": "euler", "schedule": "reference"},
}


def frames_for_duration(duration_s: float, fps: int, stride: int = 4) -> int:
    """The ``stride*k+1`` frame count (a length the VAE can encode) whose length ``(frames - 1) / fps`` is nearest ``duration_s`` (ties up)."""
    return stride * math.floor(duration_s * fps / stride + 0.5) + 1


@dataclass(frozen=True, kw_only=True)
class RenderSettings:
    variant: str
    task: str
    layout: str
    checkpoint_id: str
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    boundary_ratio: float | None
    shift: float
    schedule: str
    solver: str
    seed: int
    output_type: str
    cache: str = "off"  # step caching: off | magcache | teacache (sampling/step_cache.py)
    cache_threshold: float | None = None  # None when off
    cache_retention: float | None = None

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @property
    def use_cfg(self) -> bool:
        scales = {self.guidance_scale, self.guidance_scale if self.guidance_scale_2 is None else self.guidance_scale_2}
        return scales != {1.0}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompts"], data["negative_prompts"] = list(self.prompts), list(self.negative_prompts)
        return data


def _fail(field_name: str, reason: str):
    raise ValueError(f"{field_name}: {reason}")


def _as_list(value, name: str, batch: int | None) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(v, str) for v in items):
        _fail(name, "must be a string or a non-empty list of strings")
    if batch is not None and len(items) == 1 and batch > 1:
        items = items * batch
    if batch is not None and len(items) != batch:
        _fail(name, f"has {len(items)} entries for a batch of {batch}")
    return items


def negative_prompts(spec: VariantSpec, negative_prompt: str | list[str] | None, batch: int) -> list[str]:
    """A render's ``batch`` negative prompts: the given ones, or the model's default
    (``SamplingDefaults.negative_prompt``: the reference's for Wan, the empty prompt for toy)."""
    return _as_list(negative_prompt, "negative_prompt", batch) or [spec.defaults.negative_prompt] * batch


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        _fail(name, f"must be a positive integer, got {value!r}")
    return int(value)


def _number(value, name: str, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, f"must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        _fail(name, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def image_size_for_area(image_width: int, image_height: int, *, area: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the image's aspect, about ``area`` pixels, multiples of ``multiple``."""
    aspect = image_height / image_width
    height = int(math.sqrt(area * aspect) // multiple * multiple)
    width = int(math.sqrt(area / aspect) // multiple * multiple)
    return max(width, multiple), max(height, multiple)


def resolve_settings(spec: VariantSpec, *, layout: str, prompt, negative_prompt, prompt_embeds, height, width,
                     num_frames, num_inference_steps, guidance_scale, guidance_scale_2, boundary_ratio, shift,
                     seed, solver, schedule, output_type, has_image: bool, checkpoint_id: str,
                     image_size: tuple[int, int] | None = None, recipe: str | None = None, cache: str | None = None,
                     cache_threshold: float | None = None, cache_retention: float | None = None) -> RenderSettings:
    """Fill defaults from ``recipe`` (:data:`RECIPES`), then ``spec``, and validate every field, raising
    ValueError('<field>: <reason>')."""
    if recipe is not None:
        if recipe not in RECIPES:
            _fail("recipe", f"must be one of {tuple(RECIPES)}, got {recipe!r}")
        given = {"num_inference_steps": num_inference_steps, "shift": shift, "guidance_scale": guidance_scale,
                 "guidance_scale_2": guidance_scale_2, "solver": solver, "schedule": schedule}
        filled = {k: RECIPES[recipe][k] if v is None else v for k, v in given.items()}
        if not spec.two_experts and guidance_scale_2 is None:
            filled["guidance_scale_2"] = None  # one expert: the recipe's second scale does not apply
        num_inference_steps, shift, guidance_scale = (filled["num_inference_steps"], filled["shift"],
                                                      filled["guidance_scale"])
        guidance_scale_2, solver, schedule = filled["guidance_scale_2"], filled["solver"], filled["schedule"]
    d = spec.defaults
    batch = None if prompt_embeds is None else int(prompt_embeds.shape[0])
    prompts = _as_list(prompt, "prompt", batch)
    if prompts is None:
        if prompt_embeds is None:
            _fail("prompt", "give a prompt or prompt_embeds")
        prompts = [""] * batch
    batch = len(prompts)
    negatives = negative_prompts(spec, negative_prompt, batch)
    if spec.task == "i2v" and not has_image:
        _fail("image", f"the {spec.task} variant {spec.name} needs an input image")
    multiple = spec.vae.spatial_stride * spec.dit.patch_size[1]
    if (height is None or width is None) and spec.task == "i2v" and image_size is not None:
        width, height = image_size_for_area(*image_size, area=d.width * d.height, multiple=multiple)
    height = _positive_int(d.height if height is None else height, "height")
    width = _positive_int(d.width if width is None else width, "width")
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            _fail(name, f"must be a multiple of {multiple} for {spec.name} (VAE stride x patch), got {value}")
    num_frames = _positive_int(d.num_frames if num_frames is None else num_frames, "num_frames")
    stride = spec.vae.temporal_stride
    if (num_frames - 1) % stride:
        _fail("num_frames", f"must be {stride}k+1 (1, 5, 9, ..., 81, 121), got {num_frames}")
    steps = _positive_int(d.num_inference_steps if num_inference_steps is None else num_inference_steps,
                          "num_inference_steps")
    guidance = _number(d.guidance_scale if guidance_scale is None else guidance_scale, "guidance_scale", low=0)
    if spec.two_experts:
        g2 = d.guidance_scale_2 if guidance_scale_2 is None else guidance_scale_2
        guidance_2 = _number(guidance if g2 is None else g2, "guidance_scale_2", low=0)
        boundary = _number(d.boundary_ratio if boundary_ratio is None else boundary_ratio, "boundary_ratio",
                           low=0, high=1)
    else:
        for name, value in (("guidance_scale_2", guidance_scale_2), ("boundary_ratio", boundary_ratio)):
            if value is not None:
                _fail(name, f"{spec.name} has one expert; {name} does not apply")
        guidance_2, boundary = None, None
    schedule = schedule or layout
    if schedule not in SCHEDULES:
        _fail("schedule", f"must be one of {SCHEDULES}, got {schedule!r}")
    default_shift = d.shift if schedule == "reference" else d.diffusers_shift
    shift = _number(default_shift if shift is None else shift, "shift", low=0, low_open=True)
    solver = solver or "unipc"
    if solver not in SOLVERS:
        _fail("solver", f"must be one of {SOLVERS}, got {solver!r}")
    if output_type not in ("np", "latent"):
        _fail("output_type", f"must be 'np' or 'latent', got {output_type!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        _fail("seed", f"must be an integer in [0, 2^63), got {seed!r}")
    cache, cache_threshold, cache_retention = _cache_settings(cache, cache_threshold, cache_retention)
    return RenderSettings(
        variant=spec.name, task=spec.task, layout=layout, checkpoint_id=checkpoint_id, prompts=tuple(prompts),
        negative_prompts=tuple(negatives), height=height, width=width, num_frames=num_frames,
        num_inference_steps=steps, guidance_scale=guidance, guidance_scale_2=guidance_2, boundary_ratio=boundary,
        shift=shift, schedule=schedule, solver=solver, seed=seed, output_type=output_type, cache=cache,
        cache_threshold=cache_threshold, cache_retention=cache_retention)


def _cache_settings(cache, threshold, retention) -> tuple[str, float | None, float | None]:
    """(mode, threshold, retention) of the step cache: the mode's defaults filled; None for both when off."""
    cache = cache or "off"
    if cache not in CACHE_MODES:
        _fail("cache", f"must be one of {CACHE_MODES}, got {cache!r}")
    if cache == "off":
        for name, value in (("cache_threshold", threshold), ("cache_retention", retention)):
            if value is not None:
                _fail(name, "applies to a step cache: give cache=magcache or cache=teacache too")
        return cache, None, None
    threshold = _number(DEFAULT_THRESHOLDS[cache] if threshold is None else threshold, "cache_threshold", low=0,
                        high=10, low_open=True)
    retention = _number(DEFAULT_RETENTION if retention is None else retention, "cache_retention", low=0, high=1)
    return cache, threshold, retention
