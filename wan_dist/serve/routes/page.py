"""The web page (open: no key needed): ``/`` and its static files under ``/static/``, shipped in the package
(``wan_dist/serve/static``: plain HTML, CSS and JavaScript, no build step). The page holds no secret; every
API call it makes carries the key the user pastes into it (kept in the tab's sessionStorage only).

Only the files of that folder are served, by name (no subfolders, no path to escape it), with a Content
Security Policy that lets the page reach nothing but this origin (clips and frames it fetched become blob: and
data: URLs; a presigned http(s) clip URL plays in a <video>)."""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from wan_dist.serve.schemas import RequestError
from wan_dist.serve.settings import ServeSettings

__all__ = ["PAGE_PATHS", "STATIC_PREFIX", "router"]

STATIC_PREFIX = "/static/"
PAGE_PATHS = ("/",)
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: http: https:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of the shipped static file ``name`` (a bare file name), or None."""
    suffix = name[name.rfind("."):] if "." in name else ""
    if not name or "/" in name or "\\" in name or name.startswith(".") or suffix not in _TYPES:
        return None
    entry = resources.files("wan_dist.serve").joinpath("static", name)
    if not entry.is_file():
        return None
    return entry.read_bytes(), _TYPES[suffix]


def router(settings: ServeSettings) -> APIRouter:
    api = APIRouter()

    @api.get("/", include_in_schema=False)
    async def page():
        return _file("index.html")

    @api.get(STATIC_PREFIX + "{name}", include_in_schema=False)
    async def static(name: str):
        return _file(name)

    return api


def _file(name: str) -> Response:
    found = static_file(name)
    if found is None:
        raise RequestError(404, f"no static file {name!r}", param="name", code="not_found")
    data, media_type = found
    return Response(data, media_type=media_type, headers=_HEADERS)
