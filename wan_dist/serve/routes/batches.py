"""Batches: a Parquet manifest rendered by the batch runner on the renderers' groups. Create (JSON with a
``manifest_uri`` or a form with the manifest file), read, list, cancel, the results table, and each row's clip and
platform renditions."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from wan_dist.serve.batch_parts import cancel_batch as cancel_parts, ensure_parts, new_batch
from wan_dist.serve.batches import (MAX_MANIFEST_BYTES, BatchCreate, batch_clip_uri, batch_rendition_uri, batch_results,
                                    validate_batch)
from wan_dist.serve.jobs import ACTIVE_STATUSES, IdempotencyConflict, Job
from wan_dist.serve.openapi import (CLIP, CREATE_ERRORS, BatchList, BatchObject, BatchResults, request_body_schema,
                                    responses)
from wan_dist.serve.routes.common import (check_webhook_url, clip_response, discarded_on_refusal, drop_unused_upload,
                                         idempotency_key, list_body, page, poll_headers, read_body)
from wan_dist.serve.schemas import RequestError
from wan_dist.serve.service import QueueFull
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.state import ServeState, state_of

__all__ = ["router"]


def router(settings: ServeSettings) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/batches", status_code=202, openapi_extra=request_body_schema(BatchCreate),
              responses=responses(*CREATE_ERRORS, ok=202, model=BatchObject))
    async def create_batch(request: Request):
        s = state_of(request)
        job = await _create_batch(s, request, settings)
        view = await asyncio.to_thread(s.service.batch, job)  # a mixed batch's view reads its parts
        return JSONResponse(view, status_code=202, headers=poll_headers(settings))

    @api.get("/v1/batches/{batch_id}", responses=responses(404, 422, model=BatchObject))
    async def get_batch(batch_id: str, request: Request):
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        return JSONResponse(await asyncio.to_thread(s.service.batch, job), headers=poll_headers(settings))

    @api.get("/v1/batches", responses=responses(404, 422, model=BatchList))
    async def list_batches(request: Request, limit: int = 20, after: str | None = None):
        s = state_of(request)
        jobs, more = await page(s, request, limit, after, kind="batch")
        return await asyncio.to_thread(list_body, jobs, more, s.service.batch)

    @api.post("/v1/batches/{batch_id}/cancel", responses=responses(404, 422, model=BatchObject))
    async def cancel_batch(batch_id: str, request: Request):
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        job = await asyncio.to_thread(cancel_parts, s.store, job)  # a mixed batch: every part
        return await asyncio.to_thread(s.service.batch, job)

    @api.get("/v1/batches/{batch_id}/results", responses=responses(404, 422, model=BatchResults))
    async def get_batch_results(batch_id: str, request: Request, limit: int = 100, after: int | None = None):
        s = state_of(request)
        if not 1 <= limit <= 1000:
            raise RequestError(422, "limit: must be between 1 and 1000", param="limit", code="invalid_value")
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        return await asyncio.to_thread(batch_results, job, output_root=settings.output, limit=limit, after=after,
                                       presign=s.service.presign, base_url=str(request.base_url))

    @api.get("/v1/batches/{batch_id}/clips/{row_id}", response_class=Response,
             responses={**responses(404, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the clip"}})
    async def get_batch_clip(batch_id: str, row_id: str, request: Request):
        """The clip of one row of the caller's batch (a redirect where the store presigns http URLs)."""
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        uri = await asyncio.to_thread(batch_clip_uri, job, row_id, output_root=settings.output)
        if uri is None:
            raise RequestError(404, f"row_id: batch {batch_id} has no published clip for row {row_id!r}",
                               param="row_id", code="not_found")
        return await clip_response(s, uri)

    @api.get("/v1/batches/{batch_id}/clips/{row_id}/renditions/{profile}", response_class=Response,
             responses={**responses(404, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the rendition"}})
    async def get_batch_rendition(batch_id: str, row_id: str, profile: str, request: Request):
        """One platform rendition of one row of the caller's batch (its results row's ``renditions[].url``)."""
        return await _rendition(request, batch_id, row_id, profile, guides=False)

    @api.get("/v1/batches/{batch_id}/clips/{row_id}/renditions/{profile}/guides", response_class=Response,
             responses={**responses(404, 422, content=CLIP),
                        307: {"description": "Redirect to a presigned URL of the guides copy"}})
    async def get_batch_rendition_guides(batch_id: str, row_id: str, profile: str, request: Request):
        """The guides copy of a row's rendition (made when the row's ``overlays.guides`` is set)."""
        return await _rendition(request, batch_id, row_id, profile, guides=True)

    async def _rendition(request: Request, batch_id: str, row_id: str, profile: str, *, guides: bool) -> Response:
        s = state_of(request)
        job = await asyncio.to_thread(s.service.get, batch_id, request.state.owner, ("batch",))
        uri = await asyncio.to_thread(batch_rendition_uri, job, row_id, profile, guides=guides,
                                      output_root=settings.output)
        if uri is None:
            what = "guides copy of the rendition" if guides else "rendition"
            raise RequestError(404, f"profile: row {row_id!r} of batch {batch_id} has no published {what} "
                                    f"{profile!r}", param="profile", code="not_found")
        return await clip_response(s, uri)

    return api


async def _create_batch(s: ServeState, request: Request, settings: ServeSettings) -> Job:
    """Validate the manifest (every row checked now; bad rows are reported, not rendered) and persist the batch."""
    key = idempotency_key(request)
    body, uploaded, digest = await read_body(request, BatchCreate, s, ("manifest",), MAX_MANIFEST_BYTES)
    async with discarded_on_refusal(uploaded):
        return await _persist_batch(s, request, settings, body, uploaded, digest, key)


async def _persist_batch(s: ServeState, request: Request, settings: ServeSettings, body: dict, uploaded: str | None,
                         digest: str, key: str | None) -> Job:
    """The batch of a read body: validated, its record and parts stored."""
    owner = request.state.owner
    spec = await asyncio.to_thread(validate_batch, body, served=settings.models, output_root=settings.output,
                                   layout=settings.layout, uploaded=uploaded,
                                   allow_private=settings.allow_private_urls,
                                   source_prefixes=settings.source_prefixes, max_rows=settings.batches.max_rows,
                                   max_decoded_bytes=settings.batches.max_decoded_bytes)
    await check_webhook_url(spec.webhook_url, s)
    if settings.batches.max_steps_per_key and (key is None or
                                               await asyncio.to_thread(s.store.find_by_key, owner, key) is None):
        await asyncio.to_thread(check_step_budget, s.store, owner, spec.steps, settings.batches.max_steps_per_key)
    job = new_batch(rows_by_model=spec.rows_by_model, default_model=spec.variant, owner=owner,
                    output_root=settings.output,
                    max_attempts=settings.jobs.max_attempts,
                    request={"manifest_uri": spec.manifest_uri, "manifest_given": spec.manifest_given,
                             "output": spec.output, "rows": spec.rows, "invalid_rows": spec.invalid_rows,
                             "steps": spec.steps},
                    webhook_url=spec.webhook_url, metadata=spec.metadata, idempotency_key=key,
                    body_hash=digest if key else None)
    try:
        job, _created = await asyncio.to_thread(s.store.create, job)
    except IdempotencyConflict as err:
        raise RequestError(409, f"Idempotency-Key {key!r} was used for batch {err.job_id} with a different body",
                           param="Idempotency-Key", code="idempotency_conflict") from None
    # after the batch record, so a replayed Idempotency-Key finds it and creates only the parts still missing
    await asyncio.to_thread(ensure_parts, s.store, job, settings.output)
    await drop_unused_upload(uploaded, job)
    return job


def check_step_budget(store, owner: str, steps: int, budget: int) -> None:
    """A key's unfinished batches hold at most ``budget`` denoising steps (``batches.max_steps_per_key``): a batch
    over it alone is a 422 (it never fits), one that the key's other batches push over it a 429 (it fits once they
    finish)."""
    if steps > budget:
        raise RequestError(422, f"manifest: its rows need {steps} denoising steps (steps x windows), more than this "
                                f"key's budget of {budget}; split it into smaller batches", param="manifest",
                           code="over_budget")
    held, after = 0, None
    while True:
        jobs, more = store.list(owner=owner, kind="batch", status=ACTIVE_STATUSES, limit=100, after=after)
        held += sum(int(job.request.get("steps") or 0) for job in jobs)
        if not more:
            break
        after = jobs[-1].id
    if held + steps > budget:
        raise QueueFull(f"this key's unfinished batches hold {held} of its {budget} denoising steps; this batch needs "
                        f"{steps}: wait for them to finish, or cancel one", 30.0, "step_budget")
