"""OpenAI-compatible videos (the openai SDK's ``client.videos``): create, read, list, download, delete; and the
platform renditions a video's request asked for (beside OpenAI's routes)."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from wan_dist.serve.openapi import (CLIP, CREATE_ERRORS, VideoDeleted, VideoList, VideoObject, request_body_schema,
                                    responses)
from wan_dist.serve.routes.common import (content, discarded_on_refusal, list_body, page, persist_job, poll_headers,
                                         read_body, rendition)
from wan_dist.serve.schemas import VideoCreate, validate_video_request
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.state import state_of

__all__ = ["router"]


def router(settings: ServeSettings) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/videos", openapi_extra=request_body_schema(VideoCreate),
              responses=responses(*CREATE_ERRORS, model=VideoObject))
    async def create_video(request: Request):
        s = state_of(request)
        body, uploaded, digest = await read_body(request, VideoCreate, s)
        async with discarded_on_refusal(uploaded):
            validated = validate_video_request(body, served=settings.models, layout=settings.layout,
                                               uploaded_image=uploaded)
            job = await persist_job(s, request, validated.variant, validated, "video", digest, uploaded)
        return JSONResponse(s.service.video(job), headers=poll_headers(settings))

    @api.get("/v1/videos/{video_id}", responses=responses(404, 422, model=VideoObject))
    async def get_video(video_id: str, request: Request):
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, video_id, request.state.owner)
        return JSONResponse(s.service.video(job), headers=poll_headers(settings))

    @api.get("/v1/videos", responses=responses(404, 422, model=VideoList))
    async def list_videos(request: Request, limit: int = 20, after: str | None = None, order: str = "desc"):
        s = state_of(request)
        jobs, more = await page(s, request, limit, after, kind="video", order=order)
        return list_body(jobs, more, s.service.video)

    @api.get("/v1/videos/{video_id}/content", response_class=Response,
             responses=responses(404, 409, 422, content=CLIP))
    async def video_content(video_id: str, request: Request):
        return await content(state_of(request), video_id, request.state.owner, redirect=False)

    @api.get("/v1/videos/{video_id}/renditions/{profile}", response_class=Response,
             responses=responses(404, 409, 422, content=CLIP))
    async def video_rendition(video_id: str, profile: str, request: Request):
        """One platform rendition of a completed video (its ``renditions[].url`` where the store gives no
        presigned http URL); the bytes, as ``/content`` answers."""
        return await rendition(state_of(request), video_id, request.state.owner, profile, redirect=False)

    @api.get("/v1/videos/{video_id}/renditions/{profile}/guides", response_class=Response,
             responses=responses(404, 409, 422, content=CLIP))
    async def video_rendition_guides(video_id: str, profile: str, request: Request):
        """The guides copy of a rendition (made when the request's ``overlays.guides`` is set)."""
        return await rendition(state_of(request), video_id, request.state.owner, profile, guides=True,
                               redirect=False)

    @api.delete("/v1/videos/{video_id}", responses=responses(404, 422, model=VideoDeleted))
    async def delete_video(video_id: str, request: Request):
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, video_id, request.state.owner, ("video",))
        if not job.terminal:
            await asyncio.to_thread(s.store.request_cancel, video_id)
        await asyncio.to_thread(s.store.delete, video_id)
        await asyncio.to_thread(_delete_outputs, s.settings.output, video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    return api


def _delete_outputs(output: str, video_id: str) -> None:
    """The video's folder (clip, sidecar, preview): a deleted video leaves nothing behind."""
    from wan_dist.storage import delete, join, list_prefix

    for uri in list_prefix(join(output, video_id), include_temporary=True):
        delete(uri)
