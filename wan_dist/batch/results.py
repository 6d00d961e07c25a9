"""The results table of a batch run: one record per row, appended as rows finish.

Object stores cannot append to an object, so a run writes its records as numbered Parquet parts,
``{output}/_results/run-{run_id}/part-00000.parquet``, ..., each published atomically; a run summary
lands beside them as ``summary.json``. ``read_results`` reads every part of every run (the parts of one
output are one dataset), and ``latest_results`` keeps the last record of each row id.

A row that asked for platform renditions lists them in ``renditions``, in the request's order: each one's
``profile``, ``uri`` and presigned ``url``, and with ``overlays.guides`` its preview copy's ``guides_uri`` and
``guides_url``; null for a row that asked for none (or has no clip). Parts written before the column existed
read as null there.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wan_dist.storage.objects import join, list_prefix, read_bytes, write_bytes_atomic

__all__ = ["RESULTS_SCHEMA", "RENDITION_TYPE", "ResultsWriter", "read_results", "latest_results", "write_summary",
           "results_prefix", "renditions_column", "sidecar_renditions"]

STATUSES = ("completed", "failed", "skipped")
RENDITION_TYPE = pa.struct([("profile", pa.string()), ("uri", pa.string()), ("url", pa.string()),
                            ("guides_uri", pa.string()), ("guides_url", pa.string())])

RESULTS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("index", pa.int64()),           # row number in the manifest
    ("model", pa.string()),
    ("status", pa.string()),         # completed | failed | skipped (published by an earlier run)
    ("attempts", pa.int32()),
    ("clip_uri", pa.string()),
    ("sidecar_uri", pa.string()),
    ("clip_url", pa.string()),       # presigned URL when the store supports them
    ("error", pa.string()),
    ("error_column", pa.string()),   # the manifest column of a validation error
    ("seed", pa.int64()),
    ("render_s", pa.float64()),      # inside the render group: text encode + denoise + decode
    ("publish_s", pa.float64()),     # MP4 encode + upload
    ("wall_s", pa.float64()),        # first submission to published
    ("timings", pa.string()),        # every timing of the render, JSON
    ("finished_at", pa.float64()),   # unix time
    ("run_id", pa.string()),
    ("request_digest", pa.string()),  # RenderRequest.digest(): a rerun skips a clip only for the same request
    ("renditions", pa.list_(RENDITION_TYPE)),  # the row's platform renditions (see the module doc), or null
])


def renditions_column(renditions: Mapping[str, str], guides: Mapping[str, str],
                      presign: Callable[[str], str | None]) -> list[dict] | None:
    """A row's ``renditions`` value from its profile -> URI maps (``RenderResult.renditions`` and
    ``rendition_guides``), each with ``presign(uri)`` as its URL; None when there are none."""
    if not renditions:
        return None
    return [{"profile": profile, "uri": uri, "url": presign(uri), "guides_uri": guides.get(profile),
             "guides_url": presign(guides[profile]) if profile in guides else None}
            for profile, uri in renditions.items()]


def sidecar_renditions(entries: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """The profile -> URI maps of a sidecar's ``renditions`` entries (a published row a rerun skips)."""
    return ({entry["profile"]: entry["uri"] for entry in entries},
            {entry["profile"]: entry["guides_uri"] for entry in entries if entry.get("guides_uri")})


def results_prefix(output_uri: str) -> str:
    return join(output_uri, "_results")


class ResultsWriter:
    """Buffers records and publishes them as a new Parquet part every ``flush_rows`` rows or ``flush_s``
    seconds (whichever first) and on ``close``. Thread-safe; a failed flush keeps the records buffered."""

    def __init__(self, output_uri: str, run_id: str, *, flush_rows: int = 25, flush_s: float = 15.0,
                 storage_options: Mapping[str, Any] | None = None):
        self.prefix = join(results_prefix(output_uri), f"run-{run_id}")
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.storage_options = storage_options
        self.parts: list[str] = []
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def add(self, record: Mapping[str, Any]) -> None:
        unknown = set(record) - set(RESULTS_SCHEMA.names)
        if unknown:
            raise ValueError(f"results: unknown field(s) {sorted(unknown)}")
        if record.get("status") not in STATUSES:
            raise ValueError(f"results: status must be one of {STATUSES}, got {record.get('status')!r}")
        with self._lock:
            self._buffer.append({"run_id": self.run_id, "finished_at": time.time(), **record})
        if len(self._buffer) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> str | None:
        """Publish the buffered records as one part; returns its URI (None when nothing was buffered)."""
        with self._lock:
            if not self._buffer:
                return None
            records, self._buffer = self._buffer, []
            uri = join(self.prefix, f"part-{len(self.parts):05d}.parquet")
            try:
                write_bytes_atomic(uri, _parquet_bytes(records), content_type="application/vnd.apache.parquet",
                                   storage_options=self.storage_options)
            except Exception:
                self._buffer = records + self._buffer
                raise
            self.parts.append(uri)
            self._last_flush = time.monotonic()
            return uri

    def close(self) -> None:
        self.flush()


def _parquet_bytes(records: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist([{name: r.get(name) for name in RESULTS_SCHEMA.names} for r in records],
                                 schema=RESULTS_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_results(output_uri: str, *, run_id: str | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """Every record of every run under ``output_uri`` (or of one run), in run and part order."""
    prefix = results_prefix(output_uri)
    if run_id is not None:
        prefix = join(prefix, f"run-{run_id}")
    parts = [u for u in list_prefix(prefix, storage_options=storage_options) if u.endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(read_bytes(u, storage_options=storage_options))) for u in parts]
    if not tables:
        return RESULTS_SCHEMA.empty_table()
    # parts of older writers lack later columns: they read as nulls, in the schema's order
    tables = [_conform(table) for table in tables]
    return pa.concat_tables(tables).sort_by([("finished_at", "ascending")])


def _conform(table: pa.Table) -> pa.Table:
    columns = [table.column(field.name) if field.name in table.column_names else pa.nulls(len(table), field.type)
               for field in RESULTS_SCHEMA]
    return pa.Table.from_arrays(columns, schema=RESULTS_SCHEMA)


def latest_results(output_uri: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Row id -> its last record over all runs."""
    latest: dict[str, dict] = {}
    for record in read_results(output_uri, storage_options=storage_options).to_pylist():
        latest[record["id"]] = record
    return latest


def write_summary(output_uri: str, run_id: str, summary: Mapping[str, Any], *,
                  storage_options: Mapping[str, Any] | None = None) -> str:
    uri = join(results_prefix(output_uri), f"run-{run_id}", "summary.json")
    payload = json.dumps(dict(summary), indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    write_bytes_atomic(uri, payload, content_type="application/json", storage_options=storage_options)
    return uri
