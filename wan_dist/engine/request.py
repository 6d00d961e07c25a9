"""The one description of a render: ``RenderRequest``, its fields, its builder and its serialisation.

Every front door (Python, ``wan-dist render``, a manifest row, an HTTP body, a sidecar) hands its loose
values to :func:`build_request`, which checks each field against :data:`REQUEST_FIELDS` (type and bounds),
applies the variant's rules (``resolve_settings``: defaults, 4k+1 frames, size multiples, experts, i2v
needs an image) and returns a fully resolved :class:`BuiltRequest`, or raises one :class:`RequestError`
carrying every ``(field, reason)`` found. The manifest's columns and the HTTP body schema are generated
from :data:`REQUEST_FIELDS`, so a new field is written here once: its entry, its check, its use.

Loose form (``RenderRequest.to_dict`` / ``from_dict``, the manifest's columns, the HTTP body's fields): flat
names, sampling fields beside the others, ``name`` the clip folder (a manifest's ``id``). ``duration_s`` is
an input-only spelling of ``num_frames`` (the ``4k+1`` count nearest that length at the rate the model renders).

Frame rate: the model renders ``num_frames`` frames at its own rate (``spec.defaults.fps``, 16 for A14B), a clip
of ``(num_frames - 1) / native`` seconds; ``fps`` is the published clip's rate. With ``fps_mode`` ``convert``
(the default) the publisher converts to ``fps`` over the same seconds (wan_dist.video.interpolate: in-between
frames along optical flow above the native rate, even drops below it), so the clip has
``floor((num_frames - 1) * fps / native) + 1`` frames (81 at 16 -> 121 at 24). With ``playback`` the model
renders at ``fps`` itself and its frames are played as they are (the meaning of ``fps`` before conversion
existed; sidecars of that time re-render this way). At the native rate the two are the same and the stored
``fps_mode`` is null.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from wan_dist.config import SamplingConfig
from wan_dist.controls import CameraPath, ControlError, LayerSpec, OverlaySpec, StyleLock
from wan_dist.controls.long import LongSpec
from wan_dist.controls.overlays import layout_overlays
from wan_dist.controls.renditions import parse_renditions
from wan_dist.controls.storyboard import MAX_SHOTS, TRANSITIONS
from wan_dist.engine.request_items import (LORA_TRANSFORMERS, ItemError, control_item, lora_item, renditions_item,
                                           shot_entry, subject_box_item)
from wan_dist.engine.settings import RECIPES, frames_for_duration
from wan_dist.sampling.step_cache import CACHE_MODES, DEFAULT_RETENTION, DEFAULT_THRESHOLDS
from wan_dist.video.interpolate import retimed_count

__all__ = ["REQUEST_FIELDS", "RequestField", "RequestError", "ItemError", "RenderRequest", "BuiltRequest",
           "build_request", "frames_for_duration", "lora_item", "MAX_NUM_FRAMES", "MAX_LONG_FRAMES", "MAX_PROMPT_CHARS",
           "MAX_LORAS", "LORA_TRANSFORMERS", "FPS_MODES", "MAX_INTERPOLATION"]

MAX_NUM_FRAMES = 241  # one window at most: 10 s at 24 fps, 15 s at 16 fps (longer: a long clip, engine/long.py)
MAX_LONG_FRAMES = 3600 * 24 + 1  # an hour at 24 fps, rendered window after window
MAX_PROMPT_CHARS = 10_000
MAX_LORAS = 8
MAX_INTERPOLATION = 4  # fps_mode convert reaches at most 4x the model's rate (3 made frames per rendered one)
FPS_MODES = ("convert", "playback")
MAX_GUIDANCE, MAX_SHIFT = 100.0, 100.0  # far past any useful value (Wan: guidance 3-5, shift 1-17)
_SAMPLING = ("solver", "schedule", "num_inference_steps", "shift", "guidance_scale", "guidance_scale_2",
             "boundary_ratio", "cache", "cache_threshold", "cache_retention")


@dataclass(frozen=True)
class RequestField:
    """One loose field: its Python type, bounds (``low``/``high``; ``open_low``: ``low`` itself excluded),
    allowed ``choices``, and a line of help (the HTTP schema's description, the manifest's column doc)."""

    name: str
    type: type
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    input_only: bool = False  # accepted by build_request, never stored (``duration_s``)
    normalise: Callable[[Any], Any] | None = None  # a structured field's own check: its normalised form
    items: Callable[[int, Any], Any] | None = None  # a list field: checks and normalises item i
    shorthand: type | None = None  # another input type the normaliser turns into ``type`` (style_lock: a number)

    def check(self, value: Any) -> Any:
        """``value`` checked (ints stay ints; an int is a fine float); ValueError with the reason
        (:class:`ItemError` for an item of a list, naming it)."""
        if self.items is not None and isinstance(value, (list, tuple)):
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"at most {self.max_length} items, got {len(value)}")
            return [self.items(index, item) for index, item in enumerate(value)]
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.shorthand is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.normalise(float(value))
        if isinstance(value, bool) or not isinstance(value, self.type):
            raise ValueError(f"must be {_TYPE_NAMES[self.type]}, got {type(value).__name__} {value!r:.60}")
        if self.type is float and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        low_fails = self.low is not None and (value < self.low or (self.open_low and value == self.low))
        if low_fails or (self.high is not None and value > self.high):
            raise ValueError(f"must be {self.bounds()}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}; got {value!r}")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"at most {self.max_length} characters, got {len(value)}")
        if self.normalise is not None:
            value = self.normalise(value)
        return value


    def bounds(self) -> str:
        """The allowed range in words (the same words resolve_settings uses)."""
        if self.type is int and self.low == 1 and self.high is None:
            return "a positive integer"
        if self.type is int and self.name == "seed":
            return "an integer in [0, 2^63)"
        high = "inf" if self.high is None else f"{self.high:g}"
        if self.low == 0 and self.open_low and self.high is not None:
            return f"a positive number, at most {high}"
        if self.type is int and self.low == 1:
            return f"a positive integer, at most {high}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {high}]"


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list"}


REQUEST_FIELDS: tuple[RequestField, ...] = (
    RequestField("prompt", str, "what to render", max_length=MAX_PROMPT_CHARS),
    RequestField("negative_prompt", str,
                 "what to steer away from (default: the model's; the reference's for Wan, empty for toy)",
                 max_length=MAX_PROMPT_CHARS),
    RequestField("image", str, "input image (i2v / ti2v): a path or URL"),
    RequestField("width", int, "pixels; a multiple of the VAE stride x patch (16 or 32)", low=1, high=4096),
    RequestField("height", int, "pixels; as width", low=1, high=4096),
    RequestField("num_frames", int, f"4k+1 frames (beyond {MAX_NUM_FRAMES}, or a window: a long clip, see long)", low=1,
                 high=MAX_LONG_FRAMES),
    RequestField("duration_s", float, "clip length in seconds instead of num_frames", low=0, open_low=True,
                 high=3600, input_only=True),
    RequestField("fps", int, "frames per second of the clip (default: the variant's); above the variant's rate "
                 "frames are interpolated along optical flow, below it dropped evenly (fps_mode)", low=1, high=120),
    RequestField("fps_mode", str, "how an fps other than the variant's is reached: convert (default: the model "
                 "renders at its own rate over the same seconds, then frames are interpolated or dropped) or playback "
                 "(the model's frames play at fps: motion runs faster or slower)", choices=FPS_MODES),
    RequestField("num_inference_steps", int, "denoising steps", low=1, high=200),
    RequestField("guidance_scale", float, "CFG scale (high-noise expert)", low=0, high=MAX_GUIDANCE),
    RequestField("guidance_scale_2", float, "CFG scale of the low-noise expert (A14B)", low=0, high=MAX_GUIDANCE),
    RequestField("boundary_ratio", float, "where the low-noise expert takes over (A14B)", low=0, high=1),
    RequestField("shift", float, "flow-matching timestep shift", low=0, open_low=True, high=MAX_SHIFT),
    RequestField("solver", str, "flow-matching solver", choices=("unipc", "dpm++", "euler")),
    RequestField("schedule", str, "timestep schedule", choices=("reference", "diffusers")),
    RequestField("cache", str, "step caching: off (default), magcache (calibrated residual magnitudes) or teacache "
                 "(timestep-embedding change): skipped steps reuse the blocks' residual", choices=CACHE_MODES),
    RequestField("cache_threshold", float, "step cache threshold: higher skips more steps (default: magcache "
                 f"{DEFAULT_THRESHOLDS['magcache']}, teacache {DEFAULT_THRESHOLDS['teacache']})", low=0, open_low=True,
                 high=10),
    RequestField("cache_retention", float, "step cache: share of each expert's first steps always computed "
                 f"(default {DEFAULT_RETENTION})", low=0, high=1),
    RequestField("recipe", str, "sampling recipe for the sampling fields left out: lightning = 4 steps, shift 5, "
                 "no CFG, Euler (for the Lightning LoRAs)", choices=tuple(RECIPES), input_only=True),
    RequestField("seed", int, "random seed (default: drawn, or derived from the id, and recorded)", low=0,
                 high=2**63 - 1),
    RequestField("name", str, "clip folder under the output (a manifest row's id)", max_length=200),
    RequestField("metadata", dict, "free-form data kept with the clip"),
    RequestField("camera", dict, "camera path: {moves: [{type, amount, start, end, easing}], shake: {intensity, "
                 "frequency_hz}, mode: guided|exact, strength} (INTERFACES.md)", normalise=control_item(CameraPath)),
    RequestField("layers", dict, "layer-aware motion of the camera path: {parallax, motion_blur, foreground_box}",
                 normalise=control_item(LayerSpec)),
    RequestField("loras", list, "LoRAs: [{path (file or URL), scale (default 1), transformer: high (default) | low "
                                "| both}]", max_length=MAX_LORAS, items=lora_item),
    RequestField("renditions", list, "platform outputs beside the clip: [youtube, youtube_shorts, tiktok, "
                 "instagram_reels, instagram_feed, instagram_feed_4x5]", normalise=renditions_item),
    RequestField("subject_box", list, "what the renditions keep in frame: [x0, y0, x1, y1] (fractions of the frame), "
                 "or keyframe boxes spread evenly over the clip (default: estimated from motion)",
                 normalise=subject_box_item),
    RequestField("overlays", dict, "per rendition: {title: {text, size, colour, position, start, end, fade}, "
                 "guides: bool} (INTERFACES.md)", normalise=control_item(OverlaySpec)),
    RequestField("style_lock", dict, "keep the input image's grade: a strength 0..1 or {strength, colour, "
                 "smoothing_s}", normalise=control_item(StyleLock), shorthand=float),
    RequestField("long", dict, "a clip longer than one window: {method: continue|sliding, overlap (latent frames, "
                 "default 2), window (frames, default the model's), impose (0..1, default 0.9), fuse: linear|pyramid}; "
                 f"implied beyond {MAX_NUM_FRAMES} frames", normalise=control_item(LongSpec)),
    RequestField("shots", list, "a storyboard: [{prompt, duration_s, camera, transition: "
                 f"{'|'.join(TRANSITIONS)}, transition_s}}]; a shot continues the one before unless cut",
                 max_length=MAX_SHOTS, items=shot_entry),
)
_FIELDS = {f.name: f for f in REQUEST_FIELDS}
# see RenderRequest.digest
_LATER_FIELDS = ("camera", "layers", "loras", "renditions", "subject_box", "overlays", "style_lock", "fps_mode", "long",
                 "shots")
_LATER_SAMPLING = {"cache": "off"}  # as _LATER_FIELDS, counted only when not this value (or None)


class RequestError(ValueError):
    """A request that cannot be rendered: every ``(field, reason)`` found, the first as ``field``/``reason``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        self.field, self.reason = self.problems[0]
        super().__init__("; ".join(f"{f}: {r}" for f, r in self.problems))

    def __reduce__(self):
        return (RequestError, (self.problems,))


@dataclass(frozen=True, kw_only=True)
class RenderRequest:
    """A render, fully described (see the module docstring for its loose form)."""

    prompt: str
    negative_prompt: str | None = None
    image: str | None = None  # local path or fsspec URL of the input image (I2V / TI2V)
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    fps_mode: str | None = None  # None: "convert" (the stored form at the native rate, where both are the same)
    seed: int | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    name: str | None = None  # clip folder under the output URI; derived from seed and prompt when None
    metadata: dict[str, Any] = field(default_factory=dict)
    camera: dict[str, Any] | None = None  # controls.CameraPath's loose form, normalised
    layers: dict[str, Any] | None = None  # controls.LayerSpec's loose form, normalised
    loras: list[dict[str, Any]] = field(default_factory=list)  # [{path, scale, transformer}], normalised
    renditions: list[str] | None = None  # platform profile names (controls.platforms)
    subject_box: list[list[float]] | None = None  # keyframe boxes the renditions keep in frame (controls.reframe)
    overlays: dict[str, Any] | None = None  # controls.OverlaySpec's loose form, normalised
    style_lock: dict[str, Any] | None = None  # controls.StyleLock's loose form, normalised
    long: dict[str, Any] | None = None  # controls.LongSpec's loose form: set when the clip spans several windows
    shots: list[dict[str, Any]] | None = None  # a storyboard: controls.storyboard.shot_item's normalised shots

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt: must be a string, got {type(self.prompt).__name__}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"name: must be a non-empty folder name without '/' or a leading '.', got {self.name!r}")

    def render_fps(self, native_fps: int) -> int:
        """The rate the model renders this request at, for a model whose own rate is ``native_fps``."""
        return self.fps if self.fps_mode == "playback" and self.fps else native_fps

    def clip_name(self, seed: int) -> str:
        if self.name:
            return self.name
        digest = hashlib.sha256(self.prompt.encode()).hexdigest()[:10]
        return f"clip-{seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        """The loose form: every stored field, flat (sidecars, the job store, results tables, manifests)."""
        data = {f.name: getattr(self, f.name) for f in REQUEST_FIELDS if not f.input_only and f.name not in _SAMPLING}
        data.update({name: getattr(self.sampling, name) for name in _SAMPLING})
        data["metadata"] = dict(self.metadata)
        data["loras"] = [dict(item) for item in self.loras]
        return {f.name: data[f.name] for f in REQUEST_FIELDS if not f.input_only}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RenderRequest":
        """The request of a loose form written by :meth:`to_dict` (records of older versions nest the
        sampling fields under ``sampling``: read too). Unknown keys are refused, naming them."""
        data = dict(data)
        data.update(data.pop("sampling", None) or {})
        unknown = sorted(set(data) - {f.name for f in REQUEST_FIELDS if not f.input_only})
        if unknown:
            raise RequestError([(unknown[0], "unknown field")])
        sampling = {k: data.pop(k) for k in _SAMPLING if k in data}
        sampling = SamplingConfig(**{k: v for k, v in sampling.items() if v is not None})
        return cls(**{k: v for k, v in data.items() if k not in ("metadata", "loras")}, sampling=sampling,
                   metadata=dict(data.get("metadata") or {}), loras=[dict(x) for x in data.get("loras") or ()])

    def digest(self) -> str:
        """A hash of the loose form: equal for the same render request (a rerun may skip its clip), different
        for any change of what is rendered or recorded."""
        # fields added after the first release count only when set (a null camera, an empty loras list): a
        # published clip of a request that does not use them keeps its digest, so a rerun after an upgrade skips it
        loose = {k: v for k, v in self.to_dict().items() if not (k in _LATER_FIELDS and v in (None, []))
                 and not (k.startswith("cache") and v in (None, _LATER_SAMPLING.get(k)))}
        text = json.dumps(loose, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @classmethod
    def from_sidecar(cls, sidecar: dict) -> "RenderRequest":
        """The request that reproduces the clip described by ``sidecar`` (same seed, same frames)."""
        s = sidecar["settings"]
        request = sidecar.get("request", {})
        fps_mode = request.get("fps_mode") if "fps_mode" in request else _legacy_fps_mode(sidecar)
        sampling = SamplingConfig(**{name: s[name] for name in _SAMPLING if s.get(name) is not None})
        # a camera path's phrases are in the resolved prompt: the request's own prompt gets them again
        prompt = request["prompt"] if request.get("camera") is not None or request.get("shots") else s["prompts"][0]
        return cls(prompt=prompt, negative_prompt=s["negative_prompts"][0], image=request.get("image"),
                   height=s["height"], width=s["width"], num_frames=s["num_frames"], fps=sidecar["fps"],
                   fps_mode=fps_mode, seed=s["seed"], sampling=sampling, metadata=dict(request.get("metadata", {})),
                   camera=request.get("camera"), layers=request.get("layers"),
                   loras=[dict(x) for x in request.get("loras") or ()],
                   renditions=request.get("renditions"), subject_box=request.get("subject_box"),
                   overlays=request.get("overlays"), style_lock=request.get("style_lock"), long=request.get("long"),
                   shots=request.get("shots"))


def _legacy_fps_mode(sidecar: dict) -> str | None:
    """A sidecar written before frame-rate conversion played the model's frames at its ``fps``: ``playback``,
    unless that is the variant's own rate (then nothing changed: null, as a new request stores it)."""
    from wan_dist.models.presets import PRESETS

    spec = PRESETS.get((sidecar.get("model") or {}).get("variant"))
    return None if spec is not None and sidecar["fps"] == spec.defaults.fps else "playback"


@dataclass(frozen=True)
class BuiltRequest:
    """What :func:`build_request` returns: the request and its resolved settings (``RenderSettings.to_dict()``
    without ``checkpoint_id``, plus ``fps``, ``render_fps`` (the rate the model renders at) and ``frames`` (the
    published clip's frame count); ``height``/``width`` None when an i2v image's aspect decides)."""

    request: RenderRequest
    settings: dict

    @property
    def seconds(self) -> float:
        return (self.request.num_frames - 1) / self.settings["render_fps"]


def build_request(fields: Mapping[str, Any], *, spec, layout: str = "diffusers",
                  default_seed: Callable[[], int] | None = None) -> BuiltRequest:
    """The resolved RenderRequest of loose ``fields`` for variant ``spec`` (a ``VariantSpec``), or a
    RequestError with every problem. ``None`` values count as absent. ``default_seed()``: the seed when none
    is given (a manifest derives it from the row id; the HTTP API draws one); without it the seed is drawn
    here. Every field is checked against REQUEST_FIELDS, then against the variant's rules."""
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in _FIELDS:
            problems.append((name, f"unknown field; known: {', '.join(_FIELDS)}"))
        elif value is not None:
            try:
                values[name] = _FIELDS[name].check(value)
            except ValueError as error:
                problems.append((name + getattr(error, "path", ""), str(error)))
    if "prompt" not in values and values.get("shots"):  # a storyboard: its first shot names the clip
        values["prompt"] = values["shots"][0]["prompt"]
    _check_text(values, problems)
    _check_post(values, problems)
    if values.get("layers") is not None and values.get("camera") is None and "camera" not in dict(problems):
        problems.append(("layers", "moves the scene's layers along a camera path: give camera too"))
    if not spec.two_experts:
        problems += [(f"loras[{i}].transformer", f"'low' needs a two-expert model; {spec.name} has one expert")
                     for i, item in enumerate(values.get("loras") or ()) if item["transformer"] == "low"]
    if spec.task == "t2v" and values.get("image") is not None:
        problems.append(("image", f"the t2v variant {spec.name} takes no input image"))
    fps, render_fps = _frame_rates(spec, values, problems)
    frames_field = "num_frames"
    if "duration_s" in values:
        if "num_frames" in values:
            problems.append(("duration_s", "give num_frames or duration_s, not both"))
        else:
            values["num_frames"] = frames_for_duration(values["duration_s"], render_fps, spec.vae.temporal_stride)
            frames_field = "duration_s"
            if values["num_frames"] > MAX_LONG_FRAMES:
                problems.append(("duration_s", f"at most {(MAX_LONG_FRAMES - 1) / render_fps:g} s: the model renders "
                                                f"at most {MAX_LONG_FRAMES} frames at {render_fps} fps"))
    _check_long(values, problems, spec, frames_field, render_fps)
    if "seed" not in values:
        values["seed"] = default_seed() if default_seed is not None else _random_seed()
    settings = _resolve(spec, layout, values, problems, frames_field)
    if problems:
        raise RequestError(problems)
    return _built(spec, values, settings, fps, render_fps)


def _frame_rates(spec, values: dict, problems: list) -> tuple[int, int]:
    """(the clip's fps, the rate the model renders at); ``values["fps_mode"]`` resolved (null at the native rate)."""
    native = spec.defaults.fps
    fps = values.get("fps") or native
    mode = values.get("fps_mode") or "convert"
    values["fps_mode"] = None if fps == native else mode
    if mode == "playback":
        return fps, fps
    if fps > MAX_INTERPOLATION * native:
        problems.append(("fps", f"{spec.name} renders {native} fps and interpolates up to {MAX_INTERPOLATION}x: at "
                                f"most {MAX_INTERPOLATION * native}, got {fps} (or fps_mode playback: its frames "
                                f"played at {fps} fps)"))
    return fps, native


def _check_text(values: dict, problems: list) -> None:
    if "prompt" not in values:
        # given but refused, or shots that could not name it: their own reasons say why
        if not any(field == "prompt" or field.startswith("shots") for field, _ in problems):
            problems.append(("prompt", "required: what to render"))
    elif not values["prompt"].strip():
        problems.append(("prompt", "must be a non-empty string, not blank"))
    if values.get("image") is not None and not values["image"].strip():
        problems.append(("image", "must be a path or URL, or absent"))
    name = values.get("name")
    if name is not None and (not name.strip() or "/" in name or "\\" in name or name.startswith(".")
                             or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        problems.append(("name", f"must be a folder name: no '/' or '\\', no leading '.', no control "
                                 f"characters, got {name!r}"))


def _check_long(values: dict, problems: list, spec, frames_field: str, render_fps: int) -> None:
    """A clip beyond one window gets ``long`` (given, or the defaults past MAX_NUM_FRAMES), checked against the
    model's window; the fields a windowed render cannot honour yet are refused by name."""
    from wan_dist.engine.long_checks import check_long

    given_frames = frames_field == "num_frames" and "num_frames" in values
    for problem in check_long(values, spec, frames_field=frames_field, max_frames=MAX_NUM_FRAMES,
                              given_frames=given_frames, fps=render_fps):
        problems.append(problem)


def _check_post(values: dict, problems: list) -> None:
    """What the post pass needs: overlays are laid out per rendition (and must fit each: a logo's size is
    known once it is fetched, so here it is laid out as a square) and a style lock keeps an input image's style."""
    overlays = values.get("overlays")
    if overlays is not None:
        spec = OverlaySpec.from_dict(overlays)
        if values.get("renditions") is None:
            problems.append(("overlays", "are laid out per rendition: give renditions too"))
        else:
            for profile in parse_renditions(values["renditions"]):
                try:
                    layout_overlays(spec, profile, field="")
                except ControlError as error:
                    problems.append(("overlays", f"{error.field.lstrip('.')}: {error.reason}"))
                    break
    if values.get("subject_box") is not None and values.get("renditions") is None:
        problems.append(("subject_box", "is what the renditions keep in frame: give renditions too"))
    if values.get("style_lock") is not None and values.get("image") is None:
        problems.append(("style_lock", "keeps an input image's style: give image too"))


def _random_seed() -> int:
    import secrets

    return secrets.randbelow(2**53)  # exact in JSON everywhere


_RESOLVED = ("negative_prompt", "height", "width", "num_frames", "seed") + _SAMPLING


def _resolve(spec, layout: str, values: dict, problems: list, frames_field: str):
    """``resolve_settings`` of ``values``; after an error, retry with that field at its default to find
    the next one (a manifest row reports all of its problems at once)."""
    from wan_dist.engine.settings import resolve_settings

    args = {name: values.get(name) for name in _RESOLVED}
    has_image = values.get("image") is not None
    for _ in range(len(args) + 2):
        try:
            return resolve_settings(spec, layout=layout, prompt=values.get("prompt") or "-", prompt_embeds=None,
                                    output_type="np", has_image=has_image, checkpoint_id="request",
                                    recipe=values.get("recipe"), **args)
        except ValueError as error:
            column, _, reason = str(error).partition(": ")
            problems.append((frames_field if column == "num_frames" else column, reason))
            if column == "image" and not has_image:
                has_image = True
            elif column == "seed" and args["seed"] != 0:
                args["seed"] = 0
            elif args.get(column) is not None and column != "seed":
                args[column] = None
            else:
                return None
    return None


def _built(spec, values: dict, s, fps: int, render_fps: int) -> BuiltRequest:
    by_image = spec.task == "i2v" and (values.get("width") is None or values.get("height") is None)
    sampling = SamplingConfig(**{name: getattr(s, name) for name in _SAMPLING})
    request = RenderRequest(
        prompt=values["prompt"], negative_prompt=values.get("negative_prompt"), image=values.get("image"),
        height=None if by_image else s.height, width=None if by_image else s.width, num_frames=s.num_frames,
        fps=fps, fps_mode=values["fps_mode"], seed=s.seed, sampling=sampling, name=values.get("name"),
        metadata=dict(values.get("metadata") or {}),
        camera=values.get("camera"), layers=values.get("layers"), loras=list(values.get("loras") or ()),
        renditions=values.get("renditions"), subject_box=values.get("subject_box"), overlays=values.get("overlays"),
        style_lock=values.get("style_lock"), long=values.get("long"), shots=values.get("shots"))
    settings = {**s.to_dict(), "fps": fps, "render_fps": render_fps,
                "frames": retimed_count(s.num_frames, render_fps, fps),
                **(dict.fromkeys(("height", "width")) if by_image else {})}
    del settings["checkpoint_id"]  # a placeholder here: the renderer's checkpoint decides
    return BuiltRequest(request=request, settings=settings)
