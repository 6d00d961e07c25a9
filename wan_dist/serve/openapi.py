"""The API's documented bodies: OpenAPI only (the routes of ``wan_dist.serve.routes`` build their answers
themselves, from ``serve.schemas`` and ``serve.batches``), and the ``responses=`` helper every route uses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

def request_body_schema(model) -> dict:
    """The create body of ``model`` as JSON and as a form, for an operation's ``openapi_extra``. Nested models are
    inlined: a ``#/$defs/...`` reference inside an operation would resolve against the whole document, where
    there are no ``$defs`` (tools such as schemathesis then could not build a body at all)."""
    schema = _inline_defs(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}, "multipart/form-data": {"schema": schema}}}}


def _inline_defs(schema: dict) -> dict:
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve({**defs[ref[len("#/$defs/"):]], **{k: v for k, v in node.items() if k != "$ref"}})
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, the body of every 4xx/5xx answer."""
    error: ErrorDetail


class JobError(BaseModel):
    code: str
    message: str


class Page(BaseModel):
    """The fields of every paged list (``data`` is each list's own)."""
    object: Literal["list"]
    has_more: bool
    first_id: str | None
    last_id: str | None


class JobPreview(BaseModel):
    """The latest preview frame of a job in progress (its image: ``GET /v1/jobs/{id}/preview``)."""
    step: int
    total: int
    updated_at: float | None


class JobWindow(BaseModel):
    """The window of a long clip (request fields ``long`` / ``shots``) rendering now, 1-based; ``progress`` counts
    the steps of every window."""
    index: int
    count: int
    shot: int = Field(description="the storyboard shot it belongs to (1 without shots)")
    shots: int


class RenditionOutput(BaseModel):
    """One platform rendition of a completed job (request field ``renditions``): ``url`` downloads it, a presigned
    http(s) URL where the store gives one, else the API's ``.../renditions/{profile}`` opened with the caller's key."""
    profile: str
    file: str = Field(description="where it lies, relative to the server's output")
    url: str
    guides_file: str | None = Field(None, description="its guides copy (overlays.guides), relative to the output")
    guides_url: str | None = Field(None, description="the guides copy's download URL, as url")


class JobResult(BaseModel):
    """What a completed job made: every output with an HTTP URL that downloads it (``serve.service.JobService.view``)."""
    seed: int | None
    clip: str = Field(description="the clip, relative to the server's output")
    sidecar: str
    clip_url: str = Field(description="a presigned http(s) URL of the clip, else the API's /v1/jobs/{id}/content")
    renditions: list[RenditionOutput]


class JobObject(BaseModel):
    """``GET /v1/jobs/{id}`` (``serve.schemas.job_view``)."""
    id: str
    object: Literal["job"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    queue_position: int | None
    progress: int
    created_at: float | None
    started_at: float | None
    completed_at: float | None
    deadline_at: float | None
    attempts: int
    retry_after: float | None  # a queued retry of a failed render starts no earlier (epoch seconds)
    expires_at: float | None
    request: dict[str, Any]
    timings: dict[str, Any]
    result: JobResult | None
    error: JobError | None
    preview: JobPreview | None
    window: JobWindow | None
    webhook: dict[str, Any] | None
    metadata: dict[str, Any]


class JobList(Page):
    data: list[JobObject]


class VideoObject(BaseModel):
    """OpenAI's Video object (``serve.schemas.video_object``)."""
    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    prompt: str | None
    seconds: str
    size: str
    remixed_from_video_id: str | None
    error: JobError | None
    renditions: list[RenditionOutput] = Field(default_factory=list, description="not OpenAI's: the platform "
                                              "renditions the request asked for, once the video completed")


class VideoList(Page):
    data: list[VideoObject]


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class BatchCounts(BaseModel):
    total: int
    done: int
    failed: int
    remaining: int
    completed: int
    skipped: int


class BatchPart(BaseModel):
    """One model's part of a mixed batch (``serve.batch_parts``): its rows (with the invalid rows it records)."""
    model: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    rows: int
    attempts: int
    summary_uri: str | None = Field(description="the part's run summary, relative to the server's output")
    error: JobError | None


class BatchObject(BaseModel):
    """``GET /v1/batches/{id}`` (``serve.batches.batch_view``). ``validating`` is never returned (a manifest is
    read before the create answers) but kept in the enum for clients written against the published states.
    It names no server path: its folder and files are relative to the server's output."""
    id: str
    object: Literal["batch"]
    model: str
    status: Literal["validating", "queued", "running", "completed", "failed", "cancelled"]
    created_at: float | None
    started_at: float | None
    completed_at: float | None
    manifest_uri: str | None = Field(description="the URL the caller gave, or the uploaded manifest relative to "
                                                 "the server's output (_uploads/...)")
    output: str = Field(description="the batch's folder, relative to the server's output: "
                                    "batches/{key id}/{output or batch id}")
    counts: BatchCounts
    invalid_rows: int
    clips_per_hour: float | None
    eta_s: float | None
    results_uri: str | None = Field(description="the results table's folder, relative to the server's output "
                                                "(its rows: GET /v1/batches/{id}/results)")
    summary_uri: str | None = Field(description="the run's summary, relative to the server's output")
    attempts: int
    error: JobError | None
    webhook: dict[str, Any] | None
    metadata: dict[str, Any]
    parts: list[BatchPart] | None = Field(None, description="only for a batch whose rows name several models "
                                                             "(`model` then lists them, comma-separated)")


class BatchList(Page):
    data: list[BatchObject]


class BatchResultRow(BaseModel):
    """One row's record (the batch runner's results table, ``wan_dist.batch.results``) as a tenant sees it: its
    files relative to the server's output, ``clip_url`` and ``renditions[].url`` downloading them (presigned
    http(s) where the store gives URLs, else the API's ``/v1/batches/{id}/clips/{row id}[/renditions/{profile}]``
    with the caller's key)."""
    id: str
    index: int | None
    model: str | None
    status: Literal["completed", "failed", "skipped"]
    attempts: int | None
    clip: str | None = Field(description="the clip, relative to the server's output")
    sidecar: str | None = Field(description="its sidecar JSON, relative to the server's output")
    clip_url: str | None
    error: str | None
    error_column: str | None = Field(description="the manifest column of a validation error")
    seed: int | None
    render_s: float | None
    publish_s: float | None
    wall_s: float | None
    timings: str | None = Field(description="every timing of the render, JSON")
    finished_at: float | None
    run_id: str | None
    request_digest: str | None
    renditions: list[RenditionOutput]


class BatchResults(BaseModel):
    """One page of results rows, in manifest order (``serve.batches.batch_results``)."""
    object: Literal["list"]
    data: list[BatchResultRow]
    has_more: bool
    last_index: int | None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class HealthStatus(BaseModel):
    status: Literal["ok", "ready", "loading"]


ERROR_TEXT = {400: "Malformed request (body not JSON, unsupported Wan-Version)", 401: "Missing or invalid API key",
               404: "No such job, video, batch or model (for this key)", 409: "Conflict (Idempotency-Key reuse, not ready)",
               413: "Body or uploaded file too large", 422: "Invalid field", 429: "Rate limit, key quota or queue full"}


def responses(*statuses: int, ok: int = 200, model=None, content: dict | None = None) -> dict:
    """``responses=`` of a route: the success body and the errors it can answer (all authenticated: 400, 401)."""
    out: dict = {ok: {"model": model} if model is not None else {"content": content or {}}}
    for status in sorted({400, 401, *statuses}):
        out[status] = {"model": ErrorResponse, "description": ERROR_TEXT[status]}
    return out


CREATE_ERRORS = (404, 409, 413, 422, 429)
BAD_VERSION = {400: {"model": ErrorResponse, "description": ERROR_TEXT[400]}}  # open routes too
CLIP = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
JPEG = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}
SSE_EVENT = {"type": "object", "required": ["event", "data"], "description": "One server-sent event; data is "
              "the job object (status), {id, progress} (progress) or {id, step, total, image: a data: URL of a JPEG} "
              "(preview: the first frame of the render's current estimate) or {id, index, count, shot, shots} "
              "(window: a long clip's next window), as JSON",
              "properties": {"event": {"type": "string", "enum": ["status", "progress", "preview", "window"]},
                             "data": {"type": "string"}}}
