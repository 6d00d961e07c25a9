"""Interactive jobs: create one under a model, read, list, cancel, follow (server-sent events), the latest
preview frame, the clip and its platform renditions."""

import asyncio
import base64
import json
import time

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from wan_dist.serve.jobs import JobStatus
from wan_dist.serve.openapi import (CLIP, CREATE_ERRORS, JPEG, SSE_EVENT, JobList, JobObject, request_body_schema,
                                    responses)
from wan_dist.serve.routes.common import (content, discarded_on_refusal, list_body, page, persist_job, poll_headers,
                                         preview_bytes, read_body, rendition)
from wan_dist.serve.schemas import MODEL_NAMES, JobCreate, RequestError, resolve_model, validate_job_request
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.state import ServeState, state_of

__all__ = ["router"]


def router(settings: ServeSettings) -> APIRouter:
    api = APIRouter()
    served = sorted(name for name, variant in MODEL_NAMES.items() if variant in settings.models)  # documented

    @api.post("/v1/models/{model}/jobs", status_code=202, openapi_extra=request_body_schema(JobCreate),
              responses=responses(*CREATE_ERRORS, ok=202, model=JobObject))
    async def create_job(request: Request, model: str = Path(json_schema_extra={"enum": served})):
        s = state_of(request)
        variant = resolve_model(model, settings.models)
        body, uploaded, digest = await read_body(request, JobCreate, s)
        async with discarded_on_refusal(uploaded):
            validated = validate_job_request(body, variant=variant, layout=settings.layout, uploaded_image=uploaded)
            job = await persist_job(s, request, variant, validated, "job", digest, uploaded)
        return JSONResponse(s.service.view(job), status_code=202, headers=poll_headers(settings))

    @api.get("/v1/jobs/{job_id}", responses=responses(404, 422, model=JobObject))
    async def get_job(job_id: str, request: Request):
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        return JSONResponse(s.service.view(job), headers=poll_headers(settings))

    @api.get("/v1/jobs", responses=responses(404, 422, model=JobList))
    async def list_jobs(request: Request, limit: int = 20, after: str | None = None):
        s = state_of(request)
        jobs, more = await page(s, request, limit, after, kind=("job", "video"))
        return list_body(jobs, more, s.service.view)

    @api.post("/v1/jobs/{job_id}/cancel", responses=responses(404, 422, model=JobObject))
    async def cancel_job(job_id: str, request: Request):
        s = state_of(request)
        await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        job = await asyncio.to_thread(s.store.request_cancel, job_id)
        return s.service.view(job)

    @api.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse,
             responses=responses(404, 422, content={"text/event-stream": {"schema": SSE_EVENT}}))
    async def job_events(job_id: str, request: Request):
        s = state_of(request)
        await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        return StreamingResponse(_events(s, job_id, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @api.get("/v1/jobs/{job_id}/preview", response_class=Response, responses=responses(404, 409, 422, content=JPEG))
    async def job_preview(job_id: str, request: Request):
        """The latest preview frame of a job in progress (JPEG); 409 while there is none."""
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, job_id, request.state.owner)
        image = await preview_bytes(job)
        if image is None:
            raise RequestError(409, f"job {job_id} has no preview frame now (previews exist while it renders)",
                               param="id", code="not_ready")
        return Response(image, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @api.get("/v1/jobs/{job_id}/content", response_class=Response,
             responses={**responses(404, 409, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the clip"}})
    async def job_content(job_id: str, request: Request):
        return await content(state_of(request), job_id, request.state.owner)

    @api.get("/v1/jobs/{job_id}/renditions/{profile}", response_class=Response,
             responses={**responses(404, 409, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the rendition"}})
    async def job_rendition(job_id: str, profile: str, request: Request):
        """One platform rendition of a completed job (``result.renditions[].url`` links here when the store
        gives no presigned http URL)."""
        return await rendition(state_of(request), job_id, request.state.owner, profile)

    @api.get("/v1/jobs/{job_id}/renditions/{profile}/guides", response_class=Response,
             responses={**responses(404, 409, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the guides copy"}})
    async def job_rendition_guides(job_id: str, profile: str, request: Request):
        """The guides copy of a rendition (safe areas drawn; made when the request's ``overlays.guides`` is set)."""
        return await rendition(state_of(request), job_id, request.state.owner, profile, guides=True)

    return api


SSE_HEARTBEAT_S = 15.0  # a comment line when nothing else was sent for this long: proxies keep the stream open


async def _events(s: ServeState, job_id: str, request: Request):
    """Server-sent events: ``status`` on every status change, ``progress`` on every progress value while in progress,
    ``preview`` (a data: URL of a JPEG) on every new preview frame, ``window`` when a long clip's next window starts
    (``index``, ``count``, ``shot``, ``shots``), ending with the terminal status; between them a
    ``: keep-alive`` comment every :data:`SSE_HEARTBEAT_S` seconds of silence (a queued job may wait long)."""
    sent = time.monotonic()
    async for event in _changes(s, job_id, request):
        now = time.monotonic()
        if event is not None:
            sent = now
            yield event
        elif now - sent >= SSE_HEARTBEAT_S:
            sent = now
            yield ": keep-alive\n\n"


async def _changes(s: ServeState, job_id: str, request: Request):
    """The events of :func:`_events` as they happen, and None after every look that found nothing new."""
    last: tuple | None = None
    shown = None  # the preview step last sent
    window = None  # the long clip's window last sent
    while True:
        job = await asyncio.to_thread(s.store.get, job_id)
        new_status = last is None or job.status != last[0]
        if new_status:
            yield f"event: status\ndata: {json.dumps(s.service.view(job))}\n\n"
        # every progress value seen while it renders, the first one too (it may come with the status change)
        if job.status == JobStatus.IN_PROGRESS and job.progress != (0 if new_status else last[1]):
            yield f"event: progress\ndata: {json.dumps({'id': job.id, 'progress': job.progress})}\n\n"
        last = (job.status, job.progress)
        if job.status == JobStatus.IN_PROGRESS and job.window and job.window != window:
            window = job.window
            yield f"event: window\ndata: {json.dumps({'id': job.id, **window})}\n\n"
        if job.preview and job.preview["step"] != shown and (image := await preview_bytes(job)) is not None:
            shown = job.preview["step"]
            data = {"id": job.id, "step": shown, "total": job.preview["total"],
                    "image": "data:image/jpeg;base64," + base64.b64encode(image).decode()}
            yield f"event: preview\ndata: {json.dumps(data)}\n\n"
        if job.terminal or await request.is_disconnected():
            return
        yield None
        await asyncio.sleep(0.25)
