"""The FastAPI app of the HTTP API (the Serve ingress; Ray Serve wraps it in :mod:`wan_dist.serve.deploy`).

Every route but ``/healthz``, ``/readyz`` and the OpenAPI schema needs ``Authorization: Bearer <key>``;
``Wan-Version`` selects the API generation (absent: the current one). A job is persisted before the
answer; renderers (``wan_dist.serve.renderer``) take it from the store. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; no input produces a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import uuid
from typing import Any, Callable

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from wan_dist.serve.auth import ApiKeys, AuthError, retry_after_headers
from wan_dist.serve.batches import (MAX_MANIFEST_BYTES, BatchCreate, batch_clip_uri, batch_queue, batch_results,
                                    validate_batch)
from wan_dist.serve.forms import coerce_scalars, parse_form, pop_files
from wan_dist.serve.jobs import IdempotencyConflict, Job, JobNotFound, JobStatus, body_hash
from wan_dist.serve.openapi import (BAD_VERSION, CLIP, CREATE_ERRORS, JPEG, SSE_EVENT, BatchList, BatchObject,
                                    BatchResults, HealthStatus, JobList, JobObject, ModelList, VideoDeleted, VideoList,
                                    VideoObject, request_body_schema, responses)
from wan_dist.serve.schemas import (MAX_IMAGE_BYTES, MODEL_NAMES, JobCreate, RequestError, VideoCreate, body_urls,
                                    error_body, public_model_name, resolve_model, validate_job_request,
                                    validate_video_request)
from wan_dist.serve.service import API_VERSIONS, JobService, Notifier, QueueFull, ServeSettings
from wan_dist.serve.stores import open_store
from wan_dist.serve.urls import IMAGE_SCHEMES, check_public_url

__all__ = ["create_app", "ServeState"]

log = logging.getLogger("wan_dist.serve")
_OPEN = ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc")


class ServeState:
    """What one API process holds: store, keys, rules, webhook notifier."""

    def __init__(self, settings: ServeSettings, *, ready: Callable[[], bool] = lambda: True, notify: bool = True):
        from wan_dist.serve.webhooks import WebhookDispatcher, WebhookSigner, secret_from_env

        self.settings = settings
        self.store = open_store(settings.store)
        self.keys = ApiKeys.from_sources(list(settings.api_keys), allow_anonymous=settings.allow_anonymous)
        self.service = JobService(settings, self.store)
        self.ready = ready
        signer = WebhookSigner(settings.webhook_secret or secret_from_env())
        dispatcher = WebhookDispatcher(signer, allow_private=settings.allow_private_urls,
                                       max_attempts=settings.webhook_max_attempts,
                                       base_delay_s=settings.webhook_base_delay_s)
        self.notifier = Notifier(self.service, dispatcher)
        if notify:
            self.notifier.start()

    def close(self) -> None:
        self.notifier.stop()
        self.store.close()


def _error(err: RequestError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status, headers=headers)


def create_app(settings: ServeSettings, *, state: Callable[[], ServeState] | None = None) -> FastAPI:
    """The API. ``state()`` gives this process's ServeState (created on first use when not given)."""
    app = FastAPI(title="wan-dist", version=API_VERSIONS[0],
                  description="Wan 2.2 video generation: async jobs, OpenAI-compatible videos API.")
    lock = threading.Lock()
    holder: dict[str, ServeState] = {}

    def get_state() -> ServeState:
        if state is not None:
            return state()
        with lock:
            if "state" not in holder:
                holder["state"] = ServeState(settings)
            return holder["state"]

    app.state.get_state = get_state
    served = sorted(name for name, variant in MODEL_NAMES.items() if variant in settings.models)  # documented

    @app.middleware("http")
    async def gate(request: Request, call_next):
        version = request.headers.get("wan-version")
        if version is not None and version not in API_VERSIONS:
            return _error(RequestError(400, f"Wan-Version {version!r} is not supported; supported: "
                                            f"{', '.join(API_VERSIONS)}", param="Wan-Version",
                                       code="unsupported_version"))
        if request.url.path not in _OPEN:
            try:
                s = get_state()
                request.state.owner = s.keys.authenticate(request.headers.get("authorization"))
            except AuthError as err:
                return JSONResponse({"error": {"message": err.message, "type": "authentication_error",
                                               "param": None, "code": "invalid_api_key"}},
                                    status_code=err.status, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        response.headers["Wan-Version"] = API_VERSIONS[0]
        return response

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, err: RequestError):
        headers = retry_after_headers(err.retry_after_s) if isinstance(err, QueueFull) else None
        return _error(err, headers)

    @app.exception_handler(JobNotFound)
    async def not_found(_request: Request, err: JobNotFound):
        return _error(RequestError(404, f"no job {err.job_id!r}", param="id", code="not_found"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException):
        """Starlette's own refusals (unknown route 404, 405, a malformed multipart body 400) in OpenAI's shape."""
        code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return _error(RequestError(err.status_code, str(err.detail), code=code), dict(err.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(RequestError(422, f"{param}: {first.get('msg')}", param=param, code="invalid_value"))

    # -- health -----------------------------------------------------------------------------
    @app.get("/healthz", responses={200: {"model": HealthStatus}, **BAD_VERSION})
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={200: {"model": HealthStatus}, **BAD_VERSION,
                                   503: {"model": HealthStatus, "description": "Renderers still loading"}})
    async def readyz():
        ready = await asyncio.to_thread(lambda: get_state().ready())
        return JSONResponse({"status": "ready" if ready else "loading"}, status_code=200 if ready else 503)

    @app.get("/v1/models", responses=responses(model=ModelList))
    async def models():
        return {"object": "list", "data": [{"id": public_model_name(m), "object": "model", "owned_by": "wan-dist"}
                                           for m in settings.models]}

    # -- jobs -------------------------------------------------------------------------------
    @app.post("/v1/models/{model}/jobs", status_code=202, openapi_extra=request_body_schema(JobCreate),
              responses=responses(*CREATE_ERRORS, ok=202, model=JobObject))
    async def create_job(request: Request, model: str = Path(json_schema_extra={"enum": served})):
        s = get_state()
        variant = resolve_model(model, settings.models)
        body, uploaded, digest = await _read_body(request, JobCreate, s)
        validated = validate_job_request(body, variant=variant, layout=settings.layout, uploaded_image=uploaded)
        job = await _create(s, request, variant, validated, "job", digest)
        return JSONResponse(s.service.view(job), status_code=202, headers=_poll_headers(settings))

    @app.get("/v1/jobs/{job_id}", responses=responses(404, 422, model=JobObject))
    async def get_job(job_id: str, request: Request):
        s = get_state()
        job = await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        return JSONResponse(s.service.view(job), headers=_poll_headers(settings))

    @app.get("/v1/jobs", responses=responses(404, 422, model=JobList))
    async def list_jobs(request: Request, limit: int = 20, after: str | None = None):
        s = get_state()
        jobs, more = await _page(s, request, limit, after, kind=("job", "video"))
        return {"object": "list", "data": [s.service.view(j) for j in jobs], "has_more": more,
                "first_id": jobs[0].id if jobs else None, "last_id": jobs[-1].id if jobs else None}

    @app.post("/v1/jobs/{job_id}/cancel", responses=responses(404, 422, model=JobObject))
    async def cancel_job(job_id: str, request: Request):
        s = get_state()
        await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        job = await asyncio.to_thread(s.store.request_cancel, job_id)
        return s.service.view(job)

    @app.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse,
             responses=responses(404, 422, content={"text/event-stream": {"schema": SSE_EVENT}}))
    async def job_events(job_id: str, request: Request):
        s = get_state()
        await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        return StreamingResponse(_events(s, job_id, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/v1/jobs/{job_id}/preview", response_class=Response, responses=responses(404, 409, 422, content=JPEG))
    async def job_preview(job_id: str, request: Request):
        """The latest preview frame of a job in progress (JPEG); 409 while there is none."""
        s = get_state()
        job = await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        image = await _preview_bytes(job)
        if image is None:
            raise RequestError(409, f"job {job_id} has no preview frame now (previews exist while it renders)",
                               param="id", code="not_ready")
        return Response(image, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/jobs/{job_id}/content", response_class=Response,
             responses={**responses(404, 409, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the clip"}})
    async def job_content(job_id: str, request: Request):
        return await _content(get_state(), job_id, request.state.owner)

    # -- batches ----------------------------------------------------------------------------
    @app.post("/v1/batches", status_code=202, openapi_extra=request_body_schema(BatchCreate),
              responses=responses(*CREATE_ERRORS, ok=202, model=BatchObject))
    async def create_batch(request: Request):
        s = get_state()
        owner = request.state.owner
        s.service.check_rate(owner)
        body, uploaded, digest = await _read_body(request, BatchCreate, s, ("manifest",), MAX_MANIFEST_BYTES)
        spec = await asyncio.to_thread(validate_batch, body, served=settings.models, output_root=settings.output,
                                       layout=settings.layout, uploaded=uploaded,
                                       allow_private=settings.allow_private_urls)
        if spec.webhook_url:
            try:
                await asyncio.to_thread(check_public_url, spec.webhook_url, field="webhook_url",
                                        allow_private=settings.allow_private_urls)
            except ValueError as err:
                raise RequestError(422, str(err), param="webhook_url", code="unsafe_url") from None
        key = request.headers.get("idempotency-key")
        job = Job.new(model=batch_queue(spec.variant), owner=owner, kind="batch", max_attempts=settings.max_attempts,
                      request={"manifest_uri": spec.manifest_uri, "output": spec.output, "rows": spec.rows,
                               "invalid_rows": spec.invalid_rows},
                      webhook_url=spec.webhook_url, metadata=spec.metadata, idempotency_key=key,
                      body_hash=digest if key else None)
        try:
            job, _created = await asyncio.to_thread(s.store.create, job)
        except IdempotencyConflict as err:
            raise RequestError(409, f"Idempotency-Key {key!r} was used for batch {err.job_id} with a different body",
                               param="Idempotency-Key", code="idempotency_conflict") from None
        return JSONResponse(s.service.batch(job), status_code=202, headers=_poll_headers(settings))

    @app.get("/v1/batches/{batch_id}", responses=responses(404, 422, model=BatchObject))
    async def get_batch(batch_id: str, request: Request):
        s = get_state()
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        return JSONResponse(s.service.batch(job), headers=_poll_headers(settings))

    @app.get("/v1/batches", responses=responses(404, 422, model=BatchList))
    async def list_batches(request: Request, limit: int = 20, after: str | None = None):
        s = get_state()
        jobs, more = await _page(s, request, limit, after, kind="batch")
        return {"object": "list", "data": [s.service.batch(j) for j in jobs], "has_more": more,
                "first_id": jobs[0].id if jobs else None, "last_id": jobs[-1].id if jobs else None}

    @app.post("/v1/batches/{batch_id}/cancel", responses=responses(404, 422, model=BatchObject))
    async def cancel_batch(batch_id: str, request: Request):
        s = get_state()
        await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        job = await asyncio.to_thread(s.store.request_cancel, batch_id)
        return s.service.batch(job)

    @app.get("/v1/batches/{batch_id}/results", responses=responses(404, 422, model=BatchResults))
    async def get_batch_results(batch_id: str, request: Request, limit: int = 100, after: int | None = None):
        s = get_state()
        if not 1 <= limit <= 1000:
            raise RequestError(422, "limit: must be between 1 and 1000", param="limit", code="invalid_value")
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        return await asyncio.to_thread(batch_results, job, output_root=settings.output, limit=limit, after=after,
                                       presign=s.service.presign, base_url=str(request.base_url))

    @app.get("/v1/batches/{batch_id}/clips/{row_id}", response_class=Response,
             responses={**responses(404, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the clip"}})
    async def get_batch_clip(batch_id: str, row_id: str, request: Request):
        """The clip of one row of the caller's batch (a redirect where the store presigns http URLs)."""
        s = get_state()
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        uri = await asyncio.to_thread(batch_clip_uri, job, row_id, output_root=settings.output)
        if uri is None:
            raise RequestError(404, f"row_id: batch {batch_id} has no published clip for row {row_id!r}",
                               param="row_id", code="not_found")
        return await _clip_response(s, uri)

    # -- OpenAI-compatible videos -----------------------------------------------------------
    @app.post("/v1/videos", openapi_extra=request_body_schema(VideoCreate),
               responses=responses(*CREATE_ERRORS, model=VideoObject))
    async def create_video(request: Request):
        s = get_state()
        body, uploaded, digest = await _read_body(request, VideoCreate, s)
        validated = validate_video_request(body, served=settings.models, layout=settings.layout,
                                           uploaded_image=uploaded)
        job = await _create(s, request, validated.variant, validated, "video", digest)
        return JSONResponse(s.service.video(job), headers=_poll_headers(settings))

    @app.get("/v1/videos/{video_id}", responses=responses(404, 422, model=VideoObject))
    async def get_video(video_id: str, request: Request):
        s = get_state()
        job = await asyncio.to_thread(s.service.get, video_id, request.state.owner)
        return JSONResponse(s.service.video(job), headers=_poll_headers(settings))

    @app.get("/v1/videos", responses=responses(404, 422, model=VideoList))
    async def list_videos(request: Request, limit: int = 20, after: str | None = None, order: str = "desc"):
        s = get_state()
        jobs, more = await _page(s, request, limit, after, kind="video", order=order)
        return {"object": "list", "data": [s.service.video(j) for j in jobs], "has_more": more,
                "first_id": jobs[0].id if jobs else None, "last_id": jobs[-1].id if jobs else None}

    @app.get("/v1/videos/{video_id}/content", response_class=Response,
             responses=responses(404, 409, 422, content=CLIP))
    async def video_content(video_id: str, request: Request):
        return await _content(get_state(), video_id, request.state.owner, redirect=False)

    @app.delete("/v1/videos/{video_id}", responses=responses(404, 422, model=VideoDeleted))
    async def delete_video(video_id: str, request: Request):
        s = get_state()
        job = await asyncio.to_thread(s.service.get, video_id, request.state.owner)
        if not job.terminal:
            await asyncio.to_thread(s.store.request_cancel, video_id)
        await asyncio.to_thread(s.store.delete, video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    return app


def _poll_headers(settings: ServeSettings) -> dict:
    return {"openai-poll-after-ms": str(settings.poll_after_ms)}


_IMAGE_FILES = ("image", "input_reference")


async def _read_body(request: Request, model, s: ServeState, file_fields: tuple[str, ...] = _IMAGE_FILES,
                     max_bytes: int = MAX_IMAGE_BYTES) -> tuple[dict, str | None, str]:
    """(body, URI of the uploaded file or None, hash of the body for Idempotency-Key). A form may carry the
    files ``file_fields`` (each at most ``max_bytes``), stored under the output's ``_uploads/``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        body = parse_form(list(form.multi_items()))
        files = pop_files(body)
        body = coerce_scalars(body, model)
        unknown = sorted(set(files) - set(file_fields))
        if unknown:
            raise RequestError(422, f"{unknown[0]}: unexpected file", param=unknown[0], code="unknown_parameter")
        uploaded, digest_parts = None, [json.dumps(body, sort_keys=True, default=str)]
        for name, upload in files.items():
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise RequestError(413, f"{name}: larger than {max_bytes} bytes", param=name,
                                   code="file_too_large")
            uploaded = await asyncio.to_thread(_store_upload, s.settings.output, data, upload.filename or "")
            digest_parts.append(body_hash(data))
        return body, uploaded, body_hash("|".join(digest_parts))
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not valid JSON", param=None, code="invalid_json") from None
    if _nested_deeper(body, MAX_JSON_DEPTH):  # json.dumps (body_hash) and pydantic would recurse past the stack
        raise RequestError(400, f"the body is nested more than {MAX_JSON_DEPTH} levels deep", param=None,
                           code="invalid_json")
    if not isinstance(body, dict):
        raise RequestError(422, "the body must be a JSON object", param=None, code="invalid_value")
    for name, url in body_urls(body):  # image, input_reference, loras[i].path
        try:
            await asyncio.to_thread(check_public_url, url, field=name, schemes=IMAGE_SCHEMES,
                                    allow_private=s.settings.allow_private_urls)
        except ValueError as err:
            raise RequestError(422, str(err), param=name, code="unsafe_url") from None
    return body, None, body_hash(body)


MAX_JSON_DEPTH = 32  # a valid body nests 3 levels at most


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether lists/objects in ``value`` nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _store_upload(output: str, data: bytes, filename: str) -> str:
    from wan_dist.storage.objects import join, write_bytes_atomic

    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    uri = join(output, "_uploads", f"{uuid.uuid4().hex}.{suffix[:8]}")
    write_bytes_atomic(uri, data)
    return uri


async def _create(s: ServeState, request: Request, variant: str, validated, kind: str, digest: str):
    owner = request.state.owner
    s.service.check_rate(owner)
    if validated.webhook_url:
        try:
            await asyncio.to_thread(check_public_url, validated.webhook_url, field="webhook_url",
                                    allow_private=s.settings.allow_private_urls)
        except ValueError as err:
            raise RequestError(422, str(err), param="webhook_url", code="unsafe_url") from None
    key = request.headers.get("idempotency-key")
    try:
        job, _created = await asyncio.to_thread(s.service.create, owner=owner, variant=variant, validated=validated,
                                                kind=kind, idempotency_key=key, body_hash=digest if key else None)
    except IdempotencyConflict as err:
        raise RequestError(409, f"Idempotency-Key {key!r} was used for job {err.job_id} with a different body",
                           param="Idempotency-Key", code="idempotency_conflict") from None
    return job


async def _page(s: ServeState, request: Request, limit: int, after: str | None, *, kind, order: str = "desc"):
    if not 1 <= limit <= 100:
        raise RequestError(422, "limit: must be between 1 and 100", param="limit", code="invalid_value")
    if order not in ("asc", "desc"):
        raise RequestError(422, "order: must be asc or desc", param="order", code="invalid_value")
    return await asyncio.to_thread(s.store.list, owner=request.state.owner, kind=kind, limit=limit, after=after,
                                   order=order)


async def _preview_bytes(job) -> bytes | None:
    """The JPEG of the job's latest preview frame while it renders, or None."""
    from wan_dist.storage import ObjectNotFoundError
    from wan_dist.storage.objects import read_bytes

    if job.status != JobStatus.IN_PROGRESS or not job.preview:
        return None
    try:
        return await asyncio.to_thread(read_bytes, job.preview["uri"])
    except ObjectNotFoundError:  # the render just ended and took it away
        return None


async def _events(s: ServeState, job_id: str, request: Request):
    """Server-sent events: ``status`` on every status change, ``progress`` on every progress value while in progress,
    ``preview`` (a data: URL of a JPEG) on every new preview frame, ending with the terminal status."""
    last: tuple | None = None
    shown = None  # the preview step last sent
    while True:
        job = await asyncio.to_thread(s.store.get, job_id)
        new_status = last is None or job.status != last[0]
        if new_status:
            yield f"event: status\ndata: {json.dumps(s.service.view(job))}\n\n"
        # every progress value seen while it renders, the first one too (it may come with the status change)
        if job.status == JobStatus.IN_PROGRESS and job.progress != (0 if new_status else last[1]):
            yield f"event: progress\ndata: {json.dumps({'id': job.id, 'progress': job.progress})}\n\n"
        last = (job.status, job.progress)
        if job.preview and job.preview["step"] != shown and (image := await _preview_bytes(job)) is not None:
            shown = job.preview["step"]
            data = {"id": job.id, "step": shown, "total": job.preview["total"],
                    "image": "data:image/jpeg;base64," + base64.b64encode(image).decode()}
            yield f"event: preview\ndata: {json.dumps(data)}\n\n"
        if job.terminal or await request.is_disconnected():
            return
        await asyncio.sleep(0.25)


async def _content(s: ServeState, job_id: str, owner: str, *, redirect: bool = True) -> Response:
    job = await asyncio.to_thread(s.service.get, job_id, owner)
    if job.status != JobStatus.COMPLETED or not job.result:
        raise RequestError(409, f"job {job_id} is {job.status}; its content exists once it is completed",
                           param="id", code="not_ready")
    return await _clip_response(s, job.result["clip_uri"], redirect=redirect)


async def _clip_response(s: ServeState, uri: str, *, redirect: bool = True) -> Response:
    url = s.service.presign(uri)
    if redirect and url and url.startswith(("http://", "https://")):
        return RedirectResponse(url, status_code=307)  # the CDN / object store serves the bytes
    from wan_dist.storage.objects import read_bytes

    return Response(await asyncio.to_thread(read_bytes, uri), media_type="video/mp4")
