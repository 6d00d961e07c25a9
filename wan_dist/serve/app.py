"""The FastAPI app of the HTTP API (the Serve ingress; Ray Serve wraps it in :mod:`wan_dist.serve.deploy`).

Every route but ``/healthz``, ``/readyz``, the OpenAPI schema and the web page (``/``, ``/static/*``: it holds no
secret; its own API calls carry the key its user pastes) needs ``Authorization: Bearer <key>``;
``Wan-Version`` selects the API generation (absent: the current one). A job is persisted before the
answer; renderers (``wan_dist.serve.renderer``) take it from the store. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; no input produces a 5xx.

The routes live in :mod:`wan_dist.serve.routes`, one router per resource; this module holds the app itself:
the key and version gate, the error handlers, and which routers it includes.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from wan_dist.serve.auth import AuthError, retry_after_headers
from wan_dist.serve.jobs import JobNotFound
from wan_dist.serve.routes import batches, health, jobs, page, videos
from wan_dist.serve.schemas import RequestError, error_body
from wan_dist.serve.service import API_VERSIONS, QueueFull
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.state import ServeState, state_of

__all__ = ["create_app", "ServeState"]

log = logging.getLogger("wan_dist.serve")
_OPEN = ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", *page.PAGE_PATHS)
_ROUTERS = (health.router, jobs.router, batches.router, videos.router, page.router)  # the order of the OpenAPI paths


def create_app(settings: ServeSettings, *, state: Callable[[], ServeState] | None = None) -> FastAPI:
    """The API. ``state()`` gives this process's ServeState (created on first use when not given)."""
    app = FastAPI(title="wan-dist", version=API_VERSIONS[0],
                  description="Wan 2.2 video generation: async jobs, OpenAI-compatible videos API.")
    app.state.get_state = state if state is not None else _state_on_first_use(settings)
    app.middleware("http")(_gate)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    for router in _ROUTERS:
        app.include_router(router(settings))
    return app


def _state_on_first_use(settings: ServeSettings) -> Callable[[], ServeState]:
    lock = threading.Lock()
    holder: dict[str, ServeState] = {}

    def get_state() -> ServeState:
        with lock:
            if "state" not in holder:
                holder["state"] = ServeState(settings)
            return holder["state"]

    return get_state


def _error(err: RequestError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status, headers=headers)


async def _gate(request: Request, call_next):
    """Refuse an unknown Wan-Version and a missing or bad key (but on the open routes); stamp the version."""
    version = request.headers.get("wan-version")
    if version is not None and version not in API_VERSIONS:
        return _error(RequestError(400, f"Wan-Version {version!r} is not supported; supported: "
                                        f"{', '.join(API_VERSIONS)}", param="Wan-Version",
                                   code="unsupported_version"))
    path = request.url.path
    if path not in _OPEN and not path.startswith(page.STATIC_PREFIX):
        try:
            request.state.owner = state_of(request).keys.authenticate(request.headers.get("authorization"))
        except AuthError as err:
            return JSONResponse({"error": {"message": err.message, "type": "authentication_error",
                                           "param": None, "code": "invalid_api_key"}},
                                status_code=err.status, headers={"WWW-Authenticate": "Bearer"})
    response = await call_next(request)
    response.headers["Wan-Version"] = API_VERSIONS[0]
    return response


async def _request_error(_request: Request, err: RequestError):
    headers = retry_after_headers(err.retry_after_s) if isinstance(err, QueueFull) else None
    return _error(err, headers)


async def _not_found(_request: Request, err: JobNotFound):
    return _error(RequestError(404, f"no job {err.job_id!r}", param="id", code="not_found"))


async def _http_error(_request: Request, err: StarletteHTTPException):
    """Starlette's own refusals (unknown route 404, 405, a malformed multipart body 400) in OpenAI's shape."""
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    return _error(RequestError(err.status_code, str(err.detail), code=code), dict(err.headers or {}) or None)


async def _invalid(_request: Request, err: RequestValidationError):
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return _error(RequestError(422, f"{param}: {first.get('msg')}", param=param, code="invalid_value"))
