"""Request and response shapes of the HTTP API: validation into a ``RenderRequest``, OpenAI objects, errors.

The app parses the body (JSON, or a form through ``serve.forms``), stores an uploaded image, then calls
:func:`validate_job_request` (``POST /v1/models/{model}/jobs``) or :func:`validate_video_request`
(``POST /v1/videos``). Refusals are :class:`RequestError`; :func:`error_body` gives OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``, ``param`` naming the field (``metadata.foo``):

- 400 ``invalid_body``: the body is not an object at all (no field to name).
- 404 ``model_not_found``: unknown model, or one this server does not run (OpenAI answers 404 here too).
- 422 for a missing (``missing_required_parameter``), unknown (``unknown_parameter``) or invalid
  (``invalid_value``, ``unsupported_size``, ``image_too_large``) field, on both front doors (FastAPI's
  own validation errors are 422 too: one code for bad fields in the OpenAPI schema).

The request's own fields, their types and bounds come from ``engine.request.REQUEST_FIELDS`` and are
checked by its ``build_request`` (with ``resolve_settings``' rules: 4k+1 frames, size multiples, experts, i2v
needs an image), as at every front door. Rules of this door:

- Size: ``size`` ("1280x720"), or ``width`` + ``height``, or ``resolution`` ("480p"/"720p") +
  ``aspect_ratio`` ("16:9"/"9:16"/"1:1"), which pick the variant's supported size within 10% of the short
  side and 5% of the aspect (a missing one: the default size's). A size outside the variant's
  ``defaults.sizes`` is refused (``strict_sizes=False``: any multiple). No size on i2v: the image decides.
- Length: ``num_frames``, or ``duration_s`` / ``seconds`` / ``duration`` (``engine.request.frames_for_duration``)
  at the rate the model renders (the variant's; ``fps`` itself with ``fps_mode`` playback); beyond
  :data:`MAX_NUM_FRAMES` frames a long clip (``long``), rendered window by window. ``fps`` is the published clip's
  rate (engine.request: converted to).
- ``seed`` absent: drawn now and written into the request, so a retried job renders the same clip; the
  ``RenderRequest`` is fully resolved (size, frames, fps, sampling) so defaults changing later do not matter.
- ``image``: an http(s)/s3 URL or a ``data:image/...;base64`` URI up to :data:`MAX_IMAGE_BYTES`; never a
  local path from a client (the app passes its stored upload as ``uploaded_image``). SSRF is ``serve.urls``'.
- ``loras[i].path``: an http(s) or s3 URL, as images (:func:`body_urls` lists them for the SSRF check).

:func:`video_object` and :func:`job_view` read job dicts shaped like ``serve.jobs.Job.to_dict()``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from wan_dist.engine.request import (LORA_TRANSFORMERS, MAX_NUM_FRAMES, MAX_PROMPT_CHARS, REQUEST_FIELDS, RenderRequest,
                                     RequestError as BuildError, RequestField, build_request)
from wan_dist.models.presets import PRESETS, RELEASED, VariantSpec, public_model_name

__all__ = ["MODEL_NAMES", "MAX_NUM_FRAMES", "MAX_IMAGE_BYTES", "RequestError", "error_body", "resolve_model",
           "public_model_name", "JobCreate", "VideoCreate", "ValidatedRequest", "validate_job_request",
           "validate_video_request", "render_request", "body_urls", "LoraItem", "size_for_resolution", "video_object",
           "job_view"]

MODEL_NAMES: dict[str, str] = {**{public_model_name(name): name for name in RELEASED},
                               **{name: name for name in PRESETS}}
"""Public model name (body ``model`` or path segment) -> variant (preset) name."""
MAX_IMAGE_BYTES = 20 * 1024 * 1024
METADATA_MAX_KEYS, METADATA_MAX_KEY_CHARS, METADATA_MAX_VALUE_CHARS = 16, 64, 512  # OpenAI's metadata limits
_RESOLUTIONS, _ASPECTS = {"480p": 480, "720p": 720}, {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
_URL = re.compile(r"(https?|s3)://[^/\s?#]+\S*", re.IGNORECASE)
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)
_SIZES = {name: ", ".join(f"{w}x{h}" for w, h in spec.defaults.sizes) for name, spec in PRESETS.items()}


class RequestError(Exception):
    """A request the API refuses: HTTP ``status``, a ``message`` safe to show, the field in ``param``."""
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(err: RequestError) -> dict:
    """The OpenAI error shape of ``err``."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def _invalid(param: str, reason: str, code: str = "invalid_value") -> RequestError:
    return RequestError(422, f"{param}: {reason}", param=param, code=code)


def resolve_model(name: Any, served: Iterable[str]) -> str:
    """The variant behind public model ``name`` (``wan2.2-t2v-a14b``, ``t2v-a14b``, ``tiny``); 404 if not run here."""
    served = sorted(set(served))
    variant = MODEL_NAMES.get(name) if isinstance(name, str) else None
    runs = ", ".join(public_model_name(v) for v in served) or "none"
    if variant is None or variant not in served:
        reason = "unknown model" if variant is None else "not served here:"
        raise RequestError(404, f"model: {reason} {name!r}; this server runs: {runs}", param="model",
                           code="model_not_found")
    return variant


class LoraItem(BaseModel):
    """One entry of ``loras`` (engine.request.lora_item checks the values and names a bad one)."""
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="an http(s) or s3 URL of a LoRA .safetensors file")
    scale: float | None = Field(None, description="strength (default 1)")
    transformer: Literal[LORA_TRANSFORMERS] | None = Field(None, description="expert: high (default), low, both")


# the pydantic type of a list field's items; build_request checks them again
_LIST_ITEMS = {"loras": LoraItem, "renditions": str}  # others: any JSON (build_request checks)


def _annotation(f: RequestField):
    """The pydantic type of a request field: its type, choices and bounds, as REQUEST_FIELDS declares them."""
    bounds = {"gt" if f.open_low else "ge": f.low} if f.low is not None else {}
    bounds.update({"le": f.high} if f.high is not None else {})
    bounds.update({"max_length": f.max_length} if f.max_length is not None else {})
    structured = {dict: dict[str, Any], list: list[_LIST_ITEMS.get(f.name, Any)]}
    base = Literal[f.choices] if f.choices else structured.get(f.type, f.type)
    if f.type in (int, float) and not f.choices:  # JSON `true` or "4" is not a number (forms are coerced first)
        bounds["strict"] = True
    if f.shorthand is not None:  # style_lock: a strength or the object
        base = base | f.shorthand
    return Annotated[base, Field(description=f.help, **bounds)]


# The HTTP door's own fields beside the request's: other spellings of size and length, and what happens
# around the render (webhooks, deadline). ``name`` is not a client's to choose: the job id names the folder.
_HTTP_FIELDS = {
    "size": (str | None, Field(None, description="WIDTHxHEIGHT, e.g. 1280x720 (or width and height)")),
    "resolution": (Literal["480p", "720p"] | None, None),
    "aspect_ratio": (Literal["16:9", "9:16", "1:1"] | None, None),
    "seconds": (Annotated[float, Field(gt=0, le=3600)] | None, None),
    "duration": (Annotated[float, Field(gt=0, le=3600)] | None, None),  # alias of seconds
    "webhook_url": (Annotated[str, Field(max_length=2048)] | None, None),
    "progress_webhooks": (bool, False),
    "deadline_s": (Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | None, None),
}
_REQUEST_BODY_FIELDS = [f for f in REQUEST_FIELDS if f.name != "name"]
JobCreate = create_model(
    "JobCreate", __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    __doc__="Body of ``POST /v1/models/{model}/jobs``: the fields of engine.request.REQUEST_FIELDS (except "
            "``name``) and the HTTP door's own; unknown fields are refused.",
    prompt=(Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to render")], ...),
    **{f.name: (_annotation(f) | None, None) for f in _REQUEST_BODY_FIELDS if f.name != "prompt"},
    **_HTTP_FIELDS)


class VideoCreate(JobCreate):  # type: ignore[misc,valid-type] - JobCreate is a generated model class
    """Body of ``POST /v1/videos``: OpenAI's fields, with every Wan field of :class:`JobCreate` riding along.

    Other unknown fields are refused like on the model endpoints: a misspelt Wan field must not be ignored."""
    model: str | None = None
    input_reference: str | dict[str, str] | None = None  # a URL, or OpenAI's {"image_url": ...}


@dataclasses.dataclass(frozen=True)
class ValidatedRequest:
    """A create request that passed validation: what to render and what to do around it."""
    variant: str
    request: RenderRequest
    settings: dict  # resolved settings (RenderSettings.to_dict() without checkpoint_id, plus fps)
    seconds: str  # clip length, (num_frames - 1) / the rate the model renders, as the videos API spells it
    size: str | None  # "1280x720"; None when an i2v image's aspect decides at render time
    webhook_url: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    progress_webhooks: bool = False
    deadline_s: float | None = None

    def record(self) -> dict:
        """Plain data for the job record (``job["request"]``): what the videos API shows (prompt, seconds,
        size) and, under ``render``, the whole RenderRequest's loose form (:func:`render_request` rebuilds it)."""
        return {"prompt": self.request.prompt, "seconds": self.seconds, "size": self.size,
                "render": self.request.to_dict()}


def render_request(record: dict) -> RenderRequest:
    """The RenderRequest of a job record's ``request`` (from :meth:`ValidatedRequest.record`)."""
    return RenderRequest.from_dict(record["render"])


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be an object of fields", code="invalid_body")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        params = [_loc(p["loc"]) for p in problems]
        code = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter"}.get(
            problems[0]["type"], "invalid_value")
        message = "; ".join(f"{param}: {p['msg']}" for param, p in zip(params, problems))
        raise RequestError(422, message, param=params[0], code=code) from None


def _loc(loc: tuple) -> str:
    """A pydantic location as a field path: ``("metadata", "foo")`` -> ``metadata.foo``, indices as ``[0]``."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p not in ("str", "dict[str,str]"))
    return path.lstrip(".") or "body"


def _check_metadata(metadata: dict | None) -> dict:
    metadata = metadata or {}
    if len(metadata) > METADATA_MAX_KEYS:
        raise _invalid("metadata", f"at most {METADATA_MAX_KEYS} keys, got {len(metadata)}")
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise _invalid("metadata", f"keys are at most {METADATA_MAX_KEY_CHARS} characters, got {key[:80]!r}")
        if not isinstance(value, str | int | float | bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise _invalid(f"metadata.{key}", f"must be a string, number or boolean, got {type(value).__name__}")
        if isinstance(value, str) and len(value) > METADATA_MAX_VALUE_CHARS:
            raise _invalid(f"metadata.{key}", f"at most {METADATA_MAX_VALUE_CHARS} characters, got {len(value)}")
    return dict(metadata)


def _check_image(value: str | None, param: str) -> str | None:
    match = None if value is None else _DATA_URI.fullmatch(value)
    if match and len(match.group(1)) * 3 // 4 > MAX_IMAGE_BYTES:
        raise _invalid(param, f"the image is larger than {MAX_IMAGE_BYTES} bytes", "image_too_large")
    try:
        if match:
            base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(param, "the data URI is not valid base64") from None
    if value is not None and not match and not _URL.fullmatch(value):
        raise _invalid(param, "must be an http(s) or s3 URL or a data:image/...;base64 URI")
    return value


def size_for_resolution(spec: VariantSpec, resolution: str | None, aspect_ratio: str | None) -> tuple[int, int]:
    """(width, height): the variant's supported size nearest ``resolution`` + ``aspect_ratio`` (see module doc)."""
    d = spec.defaults
    short = _RESOLUTIONS[resolution] if resolution else min(d.width, d.height)
    ratio = _ASPECTS[aspect_ratio] if aspect_ratio else d.width / d.height
    off = {(w, h): (abs(math.log(w / h / ratio)), abs(math.log(min(w, h) / short))) for w, h in d.sizes}
    candidates = [(sum(o), size) for size, o in off.items() if o[0] < 0.05 and o[1] < 0.1]
    if not candidates:
        param = "resolution" if resolution else "aspect_ratio"
        asked = " ".join(x for x in (resolution, aspect_ratio) if x)
        raise _invalid(param, f"{spec.name} has no {asked} size; supported sizes: {_SIZES[spec.name]}")
    return min(candidates)[1]


def _size(job: JobCreate, spec: VariantSpec, strict: bool) -> tuple[int | None, int | None, str | None]:
    """(width, height, the param that chose them: None for width/height); None, None: default / image aspect."""
    by_size, by_dims = job.size is not None, job.width is not None or job.height is not None
    by_resolution = job.resolution is not None or job.aspect_ratio is not None
    if by_size and by_dims:
        raise _invalid("size", "give size or width and height, not both")
    if by_resolution and (by_size or by_dims):
        raise _invalid("resolution" if job.resolution else "aspect_ratio",
                       "give size (or width and height) or resolution and aspect_ratio, not both")
    if by_resolution:
        return (*size_for_resolution(spec, job.resolution, job.aspect_ratio),
                "resolution" if job.resolution else "aspect_ratio")
    if by_size:
        match = _SIZE.fullmatch(job.size)
        if not match:
            raise _invalid("size", f"must be WIDTHxHEIGHT like 1280x720, got {job.size!r}")
        width, height, param = int(match.group(1)), int(match.group(2)), "size"
    elif by_dims:
        if job.width is None or job.height is None:
            raise _invalid("height" if job.height is None else "width", "give width and height together")
        width, height, param = job.width, job.height, None
    else:
        return None, None, "size"
    if strict and (width, height) not in spec.defaults.sizes:
        raise _invalid(param or "width", f"{width}x{height} is not a supported size for {spec.name}; "
                              f"supported sizes: {_SIZES[spec.name]}", "unsupported_size")
    if not strict and max(width, height) > 4096:
        raise _invalid(param or "width", f"at most 4096 pixels a side, got {width}x{height}")
    return width, height, param


def _length(job: JobCreate) -> tuple[dict, str]:
    """The request's length field (``num_frames`` or ``duration_s``, from ``seconds`` / ``duration`` too) and
    the param the client used for it."""
    given = [name for name in ("num_frames", "duration_s", "seconds", "duration") if getattr(job, name) is not None]
    if len(given) > 1:
        raise _invalid(given[1], f"give one of num_frames, seconds or duration, not {' and '.join(given)}")
    if not given:
        return {}, "num_frames"
    name = given[0]
    return ({"num_frames": job.num_frames} if name == "num_frames" else {"duration_s": getattr(job, name)}), name


def _build(job: JobCreate, spec: VariantSpec, *, layout: str, image: str | None, image_param: str,
           default_seed: int | None, name: str | None, strict_sizes: bool) -> ValidatedRequest:
    if job.webhook_url is not None and not re.fullmatch(r"https?://[^/\s?#]+\S*", job.webhook_url, re.I):
        raise _invalid("webhook_url", "must be an http(s) URL")
    metadata = _check_metadata(job.metadata)
    width, height, size_param = _size(job, spec, strict_sizes)
    length, length_param = _length(job)
    fields = {f.name: getattr(job, f.name) for f in _REQUEST_BODY_FIELDS if f.name not in ("num_frames", "duration_s")}
    fields.update(length, width=width, height=height, image=image, name=name, metadata=metadata)
    if job.loras is not None:  # plain data for build_request; a client names URLs, never server paths
        fields["loras"] = [item.model_dump(exclude_none=True) for item in job.loras]
        for index, item in enumerate(job.loras):
            if not re.fullmatch(r"(https?|s3)://[^/\s?#]+\S*", item.path, re.I):
                raise _invalid(f"loras[{index}].path", "must be an http(s) or s3 URL")
    params = {"num_frames": length_param, "duration_s": length_param, "image": image_param,
              **dict.fromkeys(("height", "width"), size_param)}
    try:
        built = build_request(fields, spec=spec, layout=layout,
                              default_seed=None if default_seed is None else (lambda: default_seed))
    except BuildError as error:
        raise _invalid(params.get(error.field) or error.field, error.reason) from None
    request = built.request
    by_image = request.width is None
    return ValidatedRequest(
        variant=spec.name, request=request, settings=built.settings, seconds=f"{built.seconds:g}",
        size=None if by_image else f"{request.width}x{request.height}", webhook_url=job.webhook_url,
        metadata=metadata, progress_webhooks=job.progress_webhooks, deadline_s=job.deadline_s)


def body_urls(body: Any) -> list[tuple[str, str]]:
    """(param, URL) of every URL in a create body the server would fetch from a client-chosen host: ``image``,
    ``input_reference`` (or its ``image_url``), each ``loras[i].path`` and ``overlays.logo.image``; the app checks each against
    ``serve.urls.check_public_url`` (private addresses refused unless allowed)."""
    if not isinstance(body, dict):
        return []
    found = []
    for name in ("image", "input_reference"):
        value = body.get(name)
        found.append((name, value.get("image_url") if isinstance(value, dict) else value))
    loras = body.get("loras")
    for index, item in enumerate(loras if isinstance(loras, list) else []):
        found.append((f"loras[{index}].path", item.get("path") if isinstance(item, dict) else None))
    overlays = body.get("overlays")
    logo = overlays.get("logo") if isinstance(overlays, dict) else None
    found.append(("overlays.logo.image", logo.get("image") if isinstance(logo, dict) else None))
    return [(param, url) for param, url in found
            if isinstance(url, str) and url.lower().startswith(("http://", "https://"))]


def _one_image(sources: list[tuple[str, str | None]]) -> tuple[str | None, str]:
    given = [(param, value) for param, value in sources if value is not None] or [(sources[0][0], None)]
    if len(given) > 1:
        raise _invalid(given[1][0], f"give one image, got {' and '.join(p for p, _ in given)}")
    return given[0][1], given[0][0]


def validate_job_request(body: Any, *, variant: str, layout: str = "diffusers", uploaded_image: str | None = None,
                         default_seed: int | None = None, name: str | None = None,
                         strict_sizes: bool = True) -> ValidatedRequest:
    """Validate the body of ``POST /v1/models/{model}/jobs`` for ``variant`` (from :func:`resolve_model`).
    ``uploaded_image``: where the app stored an uploaded ``image`` (trusted, may be a local path);
    ``default_seed``: the seed when the body has none (else random); ``name``: the clip folder."""
    job = _parse(JobCreate, body)
    image, image_param = _one_image([("image", _check_image(job.image, "image")), ("image", uploaded_image)])
    return _build(job, PRESETS[variant], layout=layout, image=image, image_param=image_param,
                  default_seed=default_seed, name=name, strict_sizes=strict_sizes)


def validate_video_request(body: Any, *, served: Iterable[str], default_model: str | None = None,
                           layout: str = "diffusers", uploaded_image: str | None = None,
                           default_seed: int | None = None, name: str | None = None,
                           strict_sizes: bool = True) -> ValidatedRequest:
    """Validate the body of ``POST /v1/videos`` (after ``parse_form``/``coerce_scalars`` for forms).
    ``model`` absent: ``default_model``, or the one model when the server runs one. ``input_reference``:
    a URL / data URI or ``{"image_url": ...}``; an uploaded file arrives as ``uploaded_image``."""
    video = _parse(VideoCreate, body)
    served = list(served)
    model = video.model or default_model or (public_model_name(served[0]) if len(served) == 1 else None)
    if model is None:
        raise _invalid("model", f"required: this server runs {', '.join(map(public_model_name, served))}",
                       "missing_required_parameter")
    variant = resolve_model(model, served)
    reference = video.input_reference
    if isinstance(reference, dict):
        for key in sorted(set(reference) - {"image_url"}):
            raise _invalid(f"input_reference.{key}", "not supported: give image_url or upload a file",
                           "unknown_parameter" if key != "file_id" else "invalid_value")
        reference = reference.get("image_url")
    image, image_param = _one_image([
        ("input_reference", _check_image(reference, "input_reference")),
        ("image", _check_image(video.image, "image")), ("input_reference", uploaded_image)])
    return _build(video, PRESETS[variant], layout=layout, image=image, image_param=image_param,
                  default_seed=default_seed, name=name, strict_sizes=strict_sizes)


_VIDEO_STATUS = {"queued": "queued", "in_progress": "in_progress", "completed": "completed", "failed": "failed",
                 "cancelled": "failed"}  # the SDK's Video.status Literal has no "cancelled"


def _percent(job: dict) -> int:
    return 100 if job["status"] == "completed" else max(0, min(100, int(job.get("progress") or 0)))


def _error(job: dict) -> dict | None:
    error, status = job.get("error") or {}, job["status"]
    if status == "cancelled":
        return {"code": "cancelled", "message": error.get("message") or "the job was cancelled"}
    if error or status == "failed":
        return {"code": str(error.get("code") or "failed"), "message": str(error.get("message") or "the job failed")}
    return None


def video_object(job: dict) -> dict:
    """The OpenAI Video object of ``job``; ``cancelled`` is ``failed`` with error code ``cancelled``."""
    if job["status"] not in _VIDEO_STATUS:
        raise ValueError(f"status: unknown job status {job['status']!r}")
    request, stamp = job.get("request") or {}, (lambda key: None if job.get(key) is None else int(job[key]))
    return {"id": job["id"], "object": "video", "model": public_model_name(job.get("model") or ""),
            "status": _VIDEO_STATUS[job["status"]], "progress": _percent(job),
            "created_at": int(job["created_at"]), "completed_at": stamp("completed_at"),
            "expires_at": stamp("expires_at"), "prompt": request.get("prompt"),
            "seconds": str(request.get("seconds") or ""),
            "size": str(request.get("size") or "auto"),  # auto: an i2v size the image decides, not rendered yet
            "remixed_from_video_id": None, "error": _error(job)}


def _preview(job: dict) -> dict | None:
    """The latest preview frame's step while the job renders (the image: ``/preview``, or SSE ``preview``)."""
    preview = job.get("preview")
    if job.get("status") != "in_progress" or not preview:
        return None
    return {"step": preview["step"], "total": preview["total"], "updated_at": preview.get("updated_at")}


def _window(job: dict) -> dict | None:
    """The window of a long clip rendering now (engine/long.py), while the job renders."""
    window = job.get("window")
    if job.get("status") != "in_progress" or not window:
        return None
    return {name: window.get(name) for name in ("index", "count", "shot", "shots")}


def job_view(job: dict, *, queue_position: int | None) -> dict:
    """The body of ``GET /v1/jobs/{id}``: status, queue position (queued jobs only), progress in percent,
    times, timings, result URLs, error, the preview's step and a long clip's window while it renders, the renders
    tried so far and, for a queued retry, when it may start (``retry_after``), webhook delivery state and metadata
    (never owner, lease or keys)."""
    status, request = job["status"], dict(job.get("request") or {})
    if str((request.get("render") or {}).get("image") or "").startswith("data:"):  # no megabytes in every poll
        request["render"] = {**request["render"], "image": "data:(inline image)"}
    return {"id": job["id"], "object": "job", "model": public_model_name(job.get("model") or ""),
            "status": status, "queue_position": queue_position if status == "queued" else None,
            "progress": _percent(job), "created_at": job.get("created_at"), "started_at": job.get("started_at"),
            "completed_at": job.get("completed_at"), "deadline_at": job.get("deadline_at"),
            "attempts": int(job.get("attempts") or 0),
            "retry_after": job.get("retry_after") if status == "queued" else None,
            "expires_at": job.get("expires_at"), "request": request, "timings": dict(job.get("timings") or {}),
            "result": job.get("result"), "error": _error(job), "preview": _preview(job), "window": _window(job),
            "webhook": job.get("webhook"), "metadata": dict(job.get("metadata") or {})}
