"""What a rerun of a manifest may skip: rows whose clip is published and was rendered from the same request.

A published clip is a folder ``{output}/{prefix}/{id}/`` holding ``clip.json`` (published last, atomically).
Its sidecar records ``request_digest`` (``RenderRequest.digest()``); a row is skipped only when its own
request has that digest. A row whose id names a clip of another request (other prompt, seed, size, ...) is
neither skipped nor rendered over: it fails with a message saying how to go on.
"""

from __future__ import annotations

import json
import logging

from wan_dist.storage.objects import join, list_prefix, read_bytes
from wan_dist.engine.clips import SIDECAR_NAME

__all__ = ["plan_resume", "published_rows"]

log = logging.getLogger("wan_dist.batch")


def published_rows(output_uri: str, *, storage_options=None) -> set[str]:
    """Relative clip folders under ``output_uri`` that hold a published sidecar (one listing)."""
    base = output_uri.rstrip("/") + "/"
    found = set()
    for uri in list_prefix(output_uri, storage_options=storage_options):
        if uri.endswith("/" + SIDECAR_NAME) and uri.startswith(base):
            found.add(uri[len(base):-len(SIDECAR_NAME) - 1])
    return found


def plan_resume(rows: list, output_uri: str, *, storage_options=None) -> tuple[list, list, list]:
    """``(to render, published from the same request, published from another)`` of manifest ``rows``; the
    last two as ``(row, clip folder URI, the sidecar's renditions entries)``. One listing, then one sidecar read
    per row already published."""
    published = published_rows(output_uri, storage_options=storage_options)
    todo, done, conflicts = [], [], []
    for row in rows:
        folder = "/".join(p for p in (row.output_prefix.strip("/"), row.id) if p)
        if folder not in published:
            todo.append(row)
            continue
        prefix = join(output_uri, folder)
        sidecar = _sidecar(join(prefix, SIDECAR_NAME), storage_options)
        same = sidecar.get("request_digest") == row.request.digest()
        (done if same else conflicts).append((row, prefix, list(sidecar.get("renditions") or [])))
    return todo, done, conflicts


def _sidecar(sidecar_uri: str, storage_options) -> dict:
    """A published sidecar: its ``request_digest`` (absent: unreadable, or written before digests) and the
    renditions it lists (published before it)."""
    try:
        return json.loads(read_bytes(sidecar_uri, storage_options=storage_options))
    except Exception:  # noqa: BLE001 - counted as another request: the row is refused with the reason
        log.warning("could not read %s", sidecar_uri, exc_info=True)
        return {}
