"""What the routes of several resources share: reading a create body (JSON, or a form with uploaded files),
refusing unsafe URLs, persisting a new job, paging a list, the poll-interval header, and answering with a
clip, a platform rendition or a preview frame. Every refusal is a ``RequestError`` (OpenAI's error shape, see ``serve.app``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from wan_dist.serve.forms import coerce_scalars, parse_form, pop_files
from wan_dist.serve.jobs import IdempotencyConflict, JobStatus, body_hash
from wan_dist.serve.schemas import MAX_IMAGE_BYTES, RequestError, body_urls
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.state import ServeState
from wan_dist.serve.urls import IMAGE_SCHEMES, check_public_url

__all__ = ["IMAGE_FILES", "MAX_JSON_DEPTH", "check_group_takes", "check_webhook_url", "clip_response", "content", "drop_unused_upload",
           "persist_job",
           "list_body", "page", "poll_headers", "preview_bytes", "read_body", "rendition"]

IMAGE_FILES = ("image", "input_reference")
MAX_JSON_DEPTH = 32  # a valid body nests 3 levels at most


def poll_headers(settings: ServeSettings) -> dict:
    return {"openai-poll-after-ms": str(settings.jobs.poll_after_ms)}


# -- bodies ---------------------------------------------------------------------------------------
async def read_body(request: Request, model, s: ServeState, file_fields: tuple[str, ...] = IMAGE_FILES,
                    max_bytes: int = MAX_IMAGE_BYTES) -> tuple[dict, str | None, str]:
    """(body, URI of the uploaded file or None, hash of the body for Idempotency-Key). A form may carry the
    files ``file_fields`` (each at most ``max_bytes``), stored under the output's ``_uploads/`` (the caller
    validates within :func:`discarded_on_refusal`). Every create counts against the key's rate first, refused
    or not."""
    s.service.check_rate(request.state.owner)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await _read_form(request, model, s, file_fields, max_bytes)
    raw = await _bounded_body(request, s.settings.limits.max_json_bytes)
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


async def _read_form(request: Request, model, s: ServeState, file_fields: tuple[str, ...],
                     max_bytes: int) -> tuple[dict, str | None, str]:
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
            raise RequestError(413, f"{name}: larger than {max_bytes} bytes", param=name, code="file_too_large")
        uploaded = await asyncio.to_thread(_store_upload, s.settings.output, data, upload.filename or "")
        digest_parts.append(body_hash(data))
    return body, uploaded, body_hash("|".join(digest_parts))


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, read as it streams in and refused (413) once past ``limit`` bytes: a huge body never fills memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is larger than {limit} bytes", param=None, code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is larger than {limit} bytes", param=None, code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


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


@contextlib.asynccontextmanager
async def discarded_on_refusal(uploaded: str | None):
    """Around a create's validation: an upload of a refused request is deleted, never left behind."""
    try:
        yield
    except BaseException:
        if uploaded is not None:
            await asyncio.to_thread(delete_quietly, uploaded)
        raise


def delete_quietly(uri: str) -> None:
    from wan_dist.storage import delete

    try:
        delete(uri)
    except Exception:  # noqa: BLE001 - an orphan upload is harmless; the refusal's own error matters
        logging.getLogger("wan_dist.serve").warning("could not delete %s", uri, exc_info=True)


def _store_upload(output: str, data: bytes, filename: str) -> str:
    from wan_dist.storage.objects import join, write_bytes_atomic

    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    uri = join(output, "_uploads", f"{uuid.uuid4().hex}.{suffix[:8]}")
    write_bytes_atomic(uri, data)
    return uri


async def check_webhook_url(url: str | None, s: ServeState) -> None:
    """Refuse a webhook URL that points at a loopback/private address (unless ``allow_private_urls``)."""
    if not url:
        return
    try:
        await asyncio.to_thread(check_public_url, url, field="webhook_url",
                                allow_private=s.settings.allow_private_urls)
    except ValueError as err:
        raise RequestError(422, str(err), param="webhook_url", code="unsafe_url") from None


# -- jobs -----------------------------------------------------------------------------------------
MAX_IDEMPOTENCY_KEY = 255


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key: at most 255 printable ASCII characters (a 422 naming the header otherwise)."""
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()):
        raise RequestError(422, f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, got "
                                f"{len(key)} characters", param="Idempotency-Key", code="invalid_value")
    return key


async def persist_job(s: ServeState, request: Request, variant: str, validated, kind: str, digest: str,
                      uploaded: str | None = None):
    """Persist the validated job (kind ``job`` or ``video``) of the caller, once per Idempotency-Key; an
    ``uploaded`` file a replay brought again is deleted (:func:`drop_unused_upload`)."""
    owner = request.state.owner
    key = idempotency_key(request)
    check_group_takes(s.settings, validated.request, variant)
    await check_webhook_url(validated.webhook_url, s)
    try:
        job, _created = await asyncio.to_thread(s.service.create, owner=owner, variant=variant, validated=validated,
                                                kind=kind, idempotency_key=key, body_hash=digest if key else None)
    except IdempotencyConflict as err:
        raise RequestError(409, f"Idempotency-Key {key!r} was used for job {err.job_id} with a different body",
                           param="Idempotency-Key", code="idempotency_conflict") from None
    await drop_unused_upload(uploaded, job)
    return job


async def drop_unused_upload(uploaded: str | None, job) -> None:
    """A replayed Idempotency-Key gets the first record back, which keeps the file the first request uploaded:
    the replay's own copy is deleted, not left behind."""
    if uploaded is not None and uploaded not in json.dumps(job.request):
        await asyncio.to_thread(delete_quietly, uploaded)


def check_group_takes(settings, render_request, variant: str) -> None:
    """A clip beyond one window renders on a one-rank or colocated group without a data degree
    (``engine.long.long_layout_problem``): a server whose render groups are laid out otherwise refuses it here
    (422 naming ``shots`` or ``long``) instead of failing the job after accepting it."""
    from wan_dist.engine.long_checks import is_windowed, long_layout_problem
    from wan_dist.models.presets import PRESETS

    problem = long_layout_problem(settings.renderer.group.parallel)
    if problem is not None and is_windowed(render_request, PRESETS[variant]):
        param = "shots" if render_request.shots else "long"
        raise RequestError(422, f"{param}: {problem} on this server", param=param, code="invalid_value")


async def page(s: ServeState, request: Request, limit: int, after: str | None, *, kind, order: str = "desc"):
    """(the caller's records of ``kind``, more after them?) for a list route."""
    if not 1 <= limit <= 100:
        raise RequestError(422, "limit: must be between 1 and 100", param="limit", code="invalid_value")
    if order not in ("asc", "desc"):
        raise RequestError(422, "order: must be asc or desc", param="order", code="invalid_value")
    return await asyncio.to_thread(s.store.list, owner=request.state.owner, kind=kind, limit=limit, after=after,
                                   order=order)


def list_body(jobs: list, more: bool, view: Callable[[Any], dict]) -> dict:
    """A paged list answer: ``{object: "list", data, has_more, first_id, last_id}``."""
    return {"object": "list", "data": [view(j) for j in jobs], "has_more": more,
            "first_id": jobs[0].id if jobs else None, "last_id": jobs[-1].id if jobs else None}


# -- content --------------------------------------------------------------------------------------
async def preview_bytes(job) -> bytes | None:
    """The JPEG of the job's latest preview frame while it renders, or None."""
    from wan_dist.storage import ObjectNotFoundError
    from wan_dist.storage.objects import read_bytes

    if job.status != JobStatus.IN_PROGRESS or not job.preview:
        return None
    try:
        return await asyncio.to_thread(read_bytes, job.preview["uri"])
    except ObjectNotFoundError:  # the render just ended and took it away
        return None


async def content(s: ServeState, job_id: str, owner: str, *, redirect: bool = True) -> Response:
    """The clip of the owner's completed job (409 before it completed)."""
    job = await asyncio.to_thread(s.service.get, job_id, owner)
    if job.status != JobStatus.COMPLETED or not job.result:
        raise RequestError(409, f"job {job_id} is {job.status}; its content exists once it is completed",
                           param="id", code="not_ready")
    return await clip_response(s, job.result["clip_uri"], redirect=redirect)


async def rendition(s: ServeState, job_id: str, owner: str, profile: str, *, guides: bool = False,
                    redirect: bool = True) -> Response:
    """One platform rendition (or its guides copy) of the owner's completed job (409 before it completed, 404
    naming ``profile`` for one the job did not make)."""
    job = await asyncio.to_thread(s.service.get, job_id, owner)
    if job.status != JobStatus.COMPLETED or not job.result:
        raise RequestError(409, f"job {job_id} is {job.status}; its renditions exist once it is completed",
                           param="id", code="not_ready")
    made = {entry["profile"]: entry for entry in job.result.get("renditions") or []}
    entry = made.get(profile)
    if entry is None:
        listed = ", ".join(made) or "none (the request asked for no renditions)"
        raise RequestError(404, f"profile: job {job_id} has no rendition {profile!r}; its renditions: {listed}",
                           param="profile", code="not_found")
    uri = entry.get("guides_uri") if guides else entry["uri"]
    if uri is None:
        raise RequestError(404, f"profile: rendition {profile!r} of job {job_id} has no guides copy (the request's "
                                "overlays.guides was not set)", param="profile", code="not_found")
    return await clip_response(s, uri, redirect=redirect)


async def clip_response(s: ServeState, uri: str, *, redirect: bool = True) -> Response:
    """The clip at ``uri``: a redirect to a presigned http URL where the store has one, else its bytes."""
    url = s.service.presign(uri)
    if redirect and url and url.startswith(("http://", "https://")):
        return RedirectResponse(url, status_code=307)  # the CDN / object store serves the bytes
    from wan_dist.storage.objects import read_bytes

    return Response(await asyncio.to_thread(read_bytes, uri), media_type="video/mp4")
