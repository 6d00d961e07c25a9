"""The gallery of a batch output: one self-contained HTML page with a thumbnail and the facts of every row.

Where: ``{output}/gallery.html`` shows the latest record of every row over all runs into that output (what the
output holds now); every batch run rewrites it when it ends, and ``wan-dist gallery output=<uri>`` rewrites it
for any past output on any fsspec URL. ``wan-dist gallery output=<uri> run=<id>`` writes
``{output}/_results/run-<id>/gallery.html``: that run's rows only, beside its results table.

What: the rows come from the results table (:mod:`wan_dist.batch.results`), the prompt, seed and size from each
clip's sidecar (a failed row has none: its prompt comes from the run's manifest when that is still readable).
Each clip gets a thumbnail, an animated WebP of a few decoded frames embedded as a ``data:`` URI, so the page
needs nothing beside it but the clips it links to (and each row's platform renditions, from the results table):
relative links where the page sits in the same store as the clips (local folders, or any store opened through a
website), presigned https URLs where the store signs them (``GalleryConfig.links``). Filters by status and model are a few lines of inline JS; nothing is fetched.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import posixpath
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from wan_dist.batch.gallery_page import Entry, render_page
from wan_dist.batch.results import read_results, results_prefix
from wan_dist.config import GalleryConfig
from wan_dist.storage.objects import join, list_prefix, presigned_url, read_bytes, write_bytes_atomic

__all__ = ["GALLERY_NAME", "GalleryError", "gallery_uri", "write_gallery", "write_gallery_quietly"]

log = logging.getLogger("wan_dist.batch")

GALLERY_NAME = "gallery.html"
_SHOWN_STATUSES = ("completed", "skipped")  # rows whose clip is published


class GalleryError(ValueError):
    """There is nothing to show; the message starts with the setting at fault (``output: ...``, ``run: ...``)."""


def gallery_uri(output_uri: str, run_id: str | None = None) -> str:
    """Where the gallery of ``output_uri`` (or of one of its runs) is written."""
    if run_id is None:
        return join(output_uri, GALLERY_NAME)
    return join(results_prefix(output_uri), f"run-{run_id}", GALLERY_NAME)


def write_gallery(output_uri: str, config: GalleryConfig | None = None, *, run_id: str | None = None,
                  manifest: str | None = None, storage_options: Mapping[str, Any] | None = None) -> str:
    """Build and publish the gallery of ``output_uri`` (see the module doc); returns its URI.

    ``manifest``: where failed rows' prompts are looked up (default: the manifests the runs' summaries name).
    Raises :class:`GalleryError` when the output (or the run) has no results.
    """
    config = config or GalleryConfig()
    records = _records(output_uri, run_id, storage_options)
    page_uri = gallery_uri(output_uri, run_id)
    links = _Links(output_uri, page_uri, config, storage_options)
    rows = _manifest_rows(output_uri, manifest, records, storage_options)
    entries = _entries(records, config, links, rows, storage_options)
    page = render_page(entries, output_uri=output_uri, run_id=run_id, links_note=links.note(),
                       generated_at=time.time())
    write_bytes_atomic(page_uri, page.encode("utf-8"), content_type="text/html; charset=utf-8",
                       storage_options=storage_options)
    log.info("gallery of %d row(s): %s", len(entries), page_uri)
    return page_uri


def write_gallery_quietly(output_uri: str, config: GalleryConfig, **kwargs) -> str | None:
    """:func:`write_gallery` at the end of a batch run: a gallery that cannot be written is logged, never raised
    (the clips and the results table are the run's output; the page is a view of them). None when not written."""
    if not config.enabled:
        return None
    try:
        return write_gallery(output_uri, config, **kwargs)
    except GalleryError as error:  # a run that recorded nothing (stopped at once): nothing to show
        log.info("gallery of %s not written: %s", output_uri, error)
        return None
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("gallery of %s not written: %s: %s (rerun `wan-dist gallery output=%s`)", output_uri,
                    type(error).__name__, error, output_uri, exc_info=True)
        return None


# -- the rows ---------------------------------------------------------------------------------------
def _records(output_uri: str, run_id: str | None, storage_options) -> list[dict]:
    """The record shown for each row id, in manifest order: its last one (of ``run_id``'s when given). A row
    skipped as published by an earlier run keeps the seed and timings of the record that rendered it."""
    try:
        records = read_results(output_uri, storage_options=storage_options).to_pylist()
    except Exception as error:
        raise GalleryError(f"output: cannot read the results table under {results_prefix(output_uri)}: "
                           f"{type(error).__name__}: {error}") from error
    if not records:
        raise GalleryError(f"output: no batch results under {results_prefix(output_uri)} "
                           "(is it the output= of a `wan-dist batch` run?)")
    rendered: dict[str, dict] = {}
    shown: dict[str, dict] = {}
    for record in records:
        if record["status"] == "completed":
            rendered[record["id"]] = record
        if run_id is None or record["run_id"] == run_id:
            shown[record["id"]] = record
    if not shown:
        runs = sorted({r["run_id"] for r in records})
        raise GalleryError(f"run: no results of run {run_id!r} under {results_prefix(output_uri)}; "
                           f"its runs: {', '.join(runs)}")
    for row_id, record in shown.items():
        if record["status"] == "skipped" and row_id in rendered:
            shown[row_id] = {**rendered[row_id], **{k: v for k, v in record.items() if v is not None}}
    return sorted(shown.values(), key=lambda r: (r["index"] is None, r["index"] or 0, r["id"]))


def _entries(records: list[dict], config: GalleryConfig, links: _Links, rows: dict[str, dict],
             storage_options) -> list[Entry]:
    """One :class:`Entry` per record, its sidecar and thumbnail read by ``config.workers`` threads."""
    from tqdm import tqdm

    def entry(record: dict) -> Entry:
        try:
            return _entry(record, config, links, rows.get(record["id"], {}), storage_options)
        finally:
            bar.update(1)

    with tqdm(total=len(records), desc="gallery", unit="row", disable=not config.progress) as bar, \
            ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="gallery") as pool:
        return list(pool.map(entry, records))


def _entry(record: dict, config: GalleryConfig, links: _Links, row: dict, storage_options) -> Entry:
    """``row``: the row's manifest columns (prompt, model), for rows without a sidecar."""
    notes = []
    sidecar: dict = {}
    clip_uri, sidecar_uri = record.get("clip_uri"), record.get("sidecar_uri")
    published = record["status"] in _SHOWN_STATUSES and clip_uri
    if published and sidecar_uri:
        try:
            sidecar = json.loads(read_bytes(sidecar_uri, storage_options=storage_options))
        except Exception as error:  # noqa: BLE001 - the row is still shown, with why its details are missing
            notes.append(f"sidecar unreadable: {type(error).__name__}: {error}")
    thumbnail = None
    if published:
        try:
            thumbnail = _thumbnail(read_bytes(clip_uri, storage_options=storage_options), config)
        except Exception as error:  # noqa: BLE001 - as above
            notes.append(f"no thumbnail: {type(error).__name__}: {error}")
    request, settings = sidecar.get("request") or {}, sidecar.get("settings") or {}
    return Entry(
        id=record["id"], index=record["index"], status=record["status"],
        model=record["model"] if record["model"] not in (None, "?") else (row.get("model") or "?"),
        run_id=record["run_id"], attempts=record["attempts"], finished_at=record["finished_at"],
        prompt=request.get("prompt") or row.get("prompt"), seed=record["seed"] or request.get("seed"),
        error=record["error"], error_column=record["error_column"], render_s=record["render_s"],
        publish_s=record["publish_s"], wall_s=record["wall_s"], size=_size(settings, sidecar.get("fps")),
        clip_href=links.href(clip_uri) if published else None,
        sidecar_href=links.href(sidecar_uri) if published and sidecar_uri else None,
        thumbnail=thumbnail[0] if thumbnail else None, thumbnail_size=thumbnail[1] if thumbnail else None,
        note="; ".join(notes) or None,
        renditions=tuple(_rendition_links(record, links)) if published else ())


def _rendition_links(record: dict, links: _Links):
    """(profile, href, href of its guides copy or None) of each rendition the row's record lists."""
    for rendition in record.get("renditions") or []:
        guides = rendition.get("guides_uri")
        yield rendition["profile"], links.href(rendition["uri"]), links.href(guides) if guides else None


def _size(settings: dict, fps) -> str | None:
    if not settings.get("width"):
        return None
    text = f"{settings['width']}x{settings['height']}, {settings.get('num_frames')} frames"
    text += f" at {fps} fps" if fps else ""
    steps = settings.get("num_inference_steps")
    return text + (f", {steps} steps" if steps else "")


def _thumbnail(clip: bytes, config: GalleryConfig) -> tuple[str, tuple[int, int]]:
    """An animated WebP (a still for one frame) of ``config.thumbnail_frames`` frames spread over the clip, as a
    ``data:`` URI, and its ``(width, height)``. Each frame shows for its share of the clip's duration."""
    from PIL import Image

    from wan_dist.video.mp4 import probe_mp4, sample_frames

    frames, fps = sample_frames(clip, config.thumbnail_frames, max_side=config.thumbnail_size)
    duration_s = probe_mp4(clip)["frames"] / fps if fps else 1.0
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=len(images) > 1, append_images=images[1:], loop=0,
                   duration=max(100, round(1000 * duration_s / len(images))), quality=config.thumbnail_quality,
                   method=4)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/webp;base64,{encoded}", (images[0].width, images[0].height)


def _manifest_rows(output_uri: str, manifest: str | None, records: list[dict], storage_options) -> dict[str, dict]:
    """Row id -> its prompt and model in the runs' manifests (for rows without a sidecar: an invalid row is recorded
    with model "?"); {} when none is readable."""
    import pyarrow.parquet as pq

    if all(r["status"] in _SHOWN_STATUSES for r in records):
        return {}
    uris = [manifest] if manifest else []
    try:
        for summary_uri in list_prefix(results_prefix(output_uri), storage_options=storage_options):
            if summary_uri.endswith("/summary.json"):
                uris.append(json.loads(read_bytes(summary_uri, storage_options=storage_options)).get("manifest"))
    except Exception as error:  # noqa: BLE001 - prompts of failed rows are a convenience
        log.debug("gallery: run summaries unreadable: %s", error)
    rows: dict[str, dict] = {}
    for uri in dict.fromkeys(u for u in uris if u):
        try:
            parquet = pq.ParquetFile(io.BytesIO(read_bytes(uri, storage_options=storage_options)))
            table = parquet.read(columns=[n for n in ("id", "prompt", "model") if n in parquet.schema_arrow.names])
            for row in table.to_pylist():
                if row.get("id") is not None:
                    rows.setdefault(str(row["id"]), {k: str(v) for k, v in row.items() if v is not None})
        except Exception as error:  # noqa: BLE001 - as above
            log.debug("gallery: manifest %s unreadable: %s", uri, error)
    return rows


# -- links ------------------------------------------------------------------------------------------
def _strip_file(uri: str) -> str:
    return (uri[len("file://"):] if uri.startswith("file://") else uri).rstrip("/")


@dataclass
class _Links:
    """How the page links to a clip or sidecar (``GalleryConfig.links``; see the module doc)."""

    output_uri: str
    page_uri: str
    config: GalleryConfig
    storage_options: Any
    presigned: int = 0

    def __post_init__(self):
        self.local = "://" not in _strip_file(self.output_uri)
        self.root = _strip_file(self.output_uri)
        self.page_folder = posixpath.dirname(_strip_file(self.page_uri)[len(self.root):].lstrip("/"))

    def href(self, uri: str) -> str:
        mode = self.config.links
        if mode == "auto":
            mode = "relative" if self.local else "presigned"
        if mode == "presigned":
            url = self._presign(uri)
            if url and (url.startswith(("http://", "https://")) or self.config.links == "presigned"):
                self.presigned += 1
                return url
        target = _strip_file(uri)
        if target.startswith(self.root + "/"):
            return quote(posixpath.relpath(target[len(self.root) + 1:], self.page_folder or "."), safe="/")
        return self._presign(uri) or uri  # not under this output (records of another spelling of it)

    def _presign(self, uri: str) -> str | None:
        try:
            return presigned_url(uri, expires_s=self.config.presign_expires_s, storage_options=self.storage_options)
        except Exception:  # noqa: BLE001 - then the link is relative
            return None

    def note(self) -> str:
        if self.presigned:
            until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + self.config.presign_expires_s))
            return (f"Clip and sidecar links are presigned URLs, valid until {until} "
                    "(`wan-dist gallery` writes new ones).")
        return "Clip and sidecar links are relative to this page: keep it beside the clips."
