"""Health (open: no key needed) and the list of served models."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from wan_dist.serve.openapi import BAD_VERSION, HealthStatus, ModelList, responses
from wan_dist.serve.schemas import public_model_name
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.state import state_of

__all__ = ["router"]


def router(settings: ServeSettings) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", responses={200: {"model": HealthStatus}, **BAD_VERSION})
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", responses={200: {"model": HealthStatus}, **BAD_VERSION,
                                   503: {"model": HealthStatus, "description": "Renderers still loading"}})
    async def readyz(request: Request):
        ready = await asyncio.to_thread(lambda: state_of(request).ready())
        return JSONResponse({"status": "ready" if ready else "loading"}, status_code=200 if ready else 503)

    @api.get("/v1/models", responses=responses(model=ModelList))
    async def models():
        return {"object": "list", "data": [{"id": public_model_name(m), "object": "model", "owned_by": "wan-dist"}
                                           for m in settings.models]}

    return api
