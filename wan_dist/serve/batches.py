"""Batches over HTTP: a Parquet manifest, validated at the door, run by the batch runner on the renderers' groups.

A batch is a record in the job store (``kind="batch"``, ``model="batch:<variant>"``, so renderers claim
batches apart from interactive jobs): persisted before the API answers, leased by the renderer that runs it,
requeued when that renderer dies, resumed from its published sidecars. The renderer
(:class:`~wan_dist.serve.batch_worker.BatchWorker`) runs :class:`wan_dist.batch.BatchRunner`, the same runner
as ``ray job submit``, on its own render group (``shared=``), so outputs, sidecars, results, retries and resume
are the batch job's. Batch rows and the renderer's interactive jobs take turns on the group through
:class:`FairGate`. A manifest whose rows name several models (as ``ray job submit`` takes them) is a batch of
one part per model, each run by that model's renderer into the batch's one output folder
(:mod:`wan_dist.serve.batch_parts`); the API shows the batch, its status and counts drawn from the parts.

A model that the server does not serve is refused at the door (422 naming it), not failed row by row: nothing
renders before the caller fixes the manifest or sends it where the model is served, so a batch never ends
half rendered for a reason known when it was created (the batch job, too, fails such rows only because it
cannot know the cluster's models in advance).

Status: ``queued`` until a renderer claims it, ``running``, then ``completed`` (every row has a result, some
may have failed alone), ``failed`` (the run itself broke, or every attempt at it was lost) or ``cancelled``
(no new rows after the cancel; rows in flight finish; published clips stay). Validation happens before the
create answers, so a batch is never seen ``validating``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wan_dist.serve.batch_parts import BATCH_QUEUE, batch_output, batch_queue, summary
from wan_dist.serve.jobs import Job, JobStatus
from wan_dist.serve.paths import public_message, relative
from wan_dist.serve.schemas import RequestError, public_model_name

__all__ = ["BATCH_QUEUE", "BatchCreate", "BatchSpec", "FairGate", "validate_batch", "batch_view", "batch_results",
           "batch_clip_uri", "batch_rendition_uri", "batch_queue", "batch_output"]

MAX_MANIFEST_BYTES = 64 * 2**20
_STATUS = {JobStatus.QUEUED: "queued", JobStatus.IN_PROGRESS: "running", JobStatus.COMPLETED: "completed",
           JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


class BatchCreate(BaseModel):
    """``POST /v1/batches`` (JSON, or multipart with the manifest as the file ``manifest``)."""

    model_config = ConfigDict(extra="forbid")
    manifest_uri: str | None = Field(None, description="https:// URL of the Parquet manifest (fetched when the "
                                                       "batch is created), or a URI under the operator's "
                                                       "source_prefixes; omit when uploading the file `manifest`")
    model: str | None = Field(None, description="variant of rows whose model is null (default: the first served)")
    output: str | None = Field(None, max_length=200,
                               description="a folder name for the clips under the key's own prefix, "
                                           "{output}/batches/{key id}/ (default: the batch id); e.g. 'campaign/7'")
    webhook_url: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class BatchSpec:
    variant: str  # the variant of rows whose model is null
    rows_by_model: dict[str, int]  # valid rows per variant (two or more: a mixed batch)
    manifest_uri: str  # where the batch reads it: the upload, our copy of a fetched URL, or the URI as given
    manifest_given: str | None  # the URI the caller gave (None for an upload): what the batch's view shows
    output: str | None  # None: the default under the batch id (known once the record exists)
    webhook_url: str | None
    metadata: dict
    rows: int
    invalid_rows: int
    steps: int  # denoising steps of its valid rows: each row's steps times its windows (engine.long.window_count)


def validate_batch(body: dict, *, served: tuple[str, ...], output_root: str, layout: str, uploaded: str | None,
                   allow_private: bool, source_prefixes: tuple[str, ...] = (), max_rows: int | None = None,
                   max_decoded_bytes: int | None = None) -> BatchSpec:
    """Check the request and read the whole manifest (the batch runner's own reader and rules): a manifest that
    cannot be used is a 422 naming its columns or duplicate rows; bad rows are accepted and fail alone. Valid rows
    may name any served models (one part each, see the module doc); a model not served here is a 422 naming it
    (a bad row naming one fails alone with its own reason, as in the batch job: it would not render anyway)."""
    from pydantic import ValidationError

    from wan_dist.serve.schemas import resolve_model

    try:
        request = BatchCreate.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(422, f"{param}: {first['msg']}", param=param, code="invalid_value") from None
    variant = resolve_model(request.model, served) if request.model else served[0]
    if (request.manifest_uri is None) == (uploaded is None):
        raise RequestError(422, "manifest_uri: give a manifest URI or upload the file `manifest` (one of them)",
                           param="manifest_uri", code="invalid_value")
    uri = uploaded or _tenant_manifest(request.manifest_uri, output_root, allow_private, source_prefixes)
    try:
        return _checked_batch(request, uri, variant=variant, served=served, layout=layout,
                              limits={"max_rows": max_rows, "max_decoded_bytes": max_decoded_bytes})
    except BaseException:
        if uploaded is None and uri != request.manifest_uri:  # our copy of a refused tenant's manifest
            from wan_dist.storage import delete

            delete(uri)
        raise


def _checked_batch(request: BatchCreate, uri: str, *, variant: str, served: tuple[str, ...], layout: str,
                   limits: dict) -> BatchSpec:
    """The batch of manifest ``uri`` (see :func:`validate_batch`)."""
    from wan_dist.batch import ManifestError, read_manifest
    from wan_dist.storage.objects import StorageError

    output = None if request.output is None else _sub_folder(request.output)
    try:
        manifest = read_manifest(uri, default_model=variant, layout=layout, **limits)
    except ManifestError as error:
        raise RequestError(422, f"manifest: {error}", param="manifest", code="invalid_manifest") from None
    except (StorageError, OSError) as error:
        raise RequestError(422, f"manifest_uri: cannot read {uri}: {error}", param="manifest_uri",
                           code="unreadable_manifest") from None
    rows_by_model = Counter(row.model for row in manifest.rows)
    unserved = [model for model in sorted(rows_by_model) if model not in served]
    if unserved:
        names = ", ".join(repr(public_model_name(model)) for model in unserved)
        raise RequestError(422, f"model: {names} {'is' if len(unserved) == 1 else 'are'} not served here, named by "
                           f"{sum(rows_by_model[m] for m in unserved)} row(s); served: {list(served)}",
                           param="model", code="model_not_found")
    from wan_dist.engine.long_checks import window_count
    from wan_dist.models.presets import PRESETS

    steps = sum(row.settings["num_inference_steps"] * window_count(row.request, PRESETS[row.model])
                for row in manifest.rows)
    return BatchSpec(variant=variant, rows_by_model=dict(rows_by_model), manifest_uri=uri,
                     manifest_given=request.manifest_uri, output=output,
                     webhook_url=request.webhook_url, metadata=dict(request.metadata),
                     rows=len(manifest), invalid_rows=len(manifest.invalid), steps=steps)


_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _sub_folder(output: str) -> str:
    """A batch's ``output``: relative segments of letters, digits, ``.``, ``_``, ``-`` (no URL, no ``..``), placed
    under the key's own prefix; anything else is a 422 naming the field."""
    segments = output.rstrip("/").split("/")
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):  # a leading "/" leaves an empty segment
        raise RequestError(422, f"output: a folder name under your own prefix (segments of letters, digits, '.', "
                                f"'_', '-', such as 'campaign/7'), got {output!r}", param="output",
                           code="invalid_value")
    return "/".join(segments)


def _tenant_manifest(uri: str, output_root: str, allow_private: bool, source_prefixes: tuple[str, ...]) -> str:
    """Where the batch reads a manifest a tenant names: storage under the operator's ``source_prefixes`` as it
    is; an http(s) URL fetched now under the URL rules (storage.fetch: every hop's address checked, at most
    MAX_MANIFEST_BYTES) into the tenant's uploads; anything else (another bucket, a server path) refused, naming
    the rule, before anything is read."""
    from wan_dist.storage import join, write_bytes_atomic
    from wan_dist.storage.fetch import FetchPolicy, FetchRefused, read_source, under_prefix
    from wan_dist.storage.objects import StorageError

    if under_prefix(uri, source_prefixes):
        return uri
    policy = FetchPolicy(allow_private=allow_private, max_bytes=MAX_MANIFEST_BYTES)
    try:
        data = read_source(uri, policy=policy, field="manifest_uri")
    except FetchRefused as error:
        rule = error.reason + ("" if uri.startswith(("http://", "https://")) else
                               " (or under the operator's source_prefixes)")
        raise RequestError(422, f"manifest_uri: {rule}", param="manifest_uri", code="unsafe_url") from None
    except StorageError as error:
        raise RequestError(422, f"manifest_uri: cannot read it ({error.reason})", param="manifest_uri",
                           code="unreadable_manifest") from None
    import uuid

    copy = join(output_root, "_uploads", f"{uuid.uuid4().hex}.parquet")
    write_bytes_atomic(copy, data)
    return copy


def batch_view(job: Job, *, output_root: str, parts: list | None = None) -> dict[str, Any]:
    """The batch object of the API. A mixed batch's status, counts and rates come from its ``parts``
    (``batch_parts.parts_of``), listed under ``parts``; its ``model`` names its models, comma-separated.

    It names no server path (as a job's view, ``JobService.view``): ``output``, ``results_uri`` and
    ``summary_uri`` are relative to the server's output (``batches/{key id}/{folder}``, ...); ``manifest_uri`` is
    the URL the caller gave, or the uploaded file's name there (``_uploads/...``); errors go through
    :func:`~wan_dist.serve.paths.public_message`."""
    own = {"status": job.status, "error": job.error, "started_at": job.started_at, "attempts": job.attempts,
           "progress": (job.result or {}).get("progress") or {}, "results_uri": (job.result or {}).get("results_uri")}
    mixed = job.request.get("parts")
    view = summary(job, parts or []) if mixed else own
    progress = view["progress"]
    total = job.request.get("rows", 0)
    done = {name: int(progress.get(name, 0)) for name in ("completed", "failed", "skipped")}
    finished = sum(done.values())
    models = [part["model"] for part in mixed] if mixed else [job.model[len(BATCH_QUEUE):]]

    def shown(uri: str | None) -> str | None:
        return None if uri is None else relative(uri, output_root)

    manifest = job.request.get("manifest_given") or job.request.get("manifest_uri")
    body = {"id": job.id, "object": "batch", "model": ",".join(public_model_name(m) for m in models),
            "status": _STATUS[view["status"]], "created_at": job.created_at, "started_at": view["started_at"],
            "completed_at": job.completed_at, "manifest_uri": shown(manifest),
            "output": relative(batch_output(job, output_root), output_root),
            "counts": {"total": total, "done": done["completed"] + done["skipped"], "failed": done["failed"],
                       "remaining": max(0, total - finished), **done},
            "invalid_rows": job.request.get("invalid_rows", 0),
            "clips_per_hour": progress.get("clips_per_hour"), "eta_s": progress.get("eta_s"),
            "results_uri": shown(view["results_uri"]),
            "summary_uri": None if mixed else shown((job.result or {}).get("summary_uri")),
            "attempts": view["attempts"], "error": _public_error(view["error"], output_root),
            "webhook": _webhook(job), "metadata": job.metadata}
    if mixed:
        body["parts"] = [{**part, "model": public_model_name(part["model"]), "status": _STATUS[part["status"]],
                          "summary_uri": shown(part["summary_uri"]),
                          "error": _public_error(part["error"], output_root)}
                         for part in view["parts"]]
    return body


def _public_error(error: dict | None, output_root: str) -> dict | None:
    if not error:
        return error
    return {**error, "message": public_message(error.get("message"), output_root)}


def _webhook(job: Job) -> dict | None:
    if not job.webhook_url:
        return None
    return {"url": job.webhook_url, "deliveries": job.webhook.get("deliveries") or {}}


def _final_records(job: Job, output_root: str) -> dict[str, dict]:
    """Each row's final record over all runs of the batch (a row published by an earlier run and skipped by a
    resumed one is reported completed)."""
    from wan_dist.batch import read_results

    records: dict[str, dict] = {}
    for record in read_results(batch_output(job, output_root)).to_pylist():
        earlier = records.get(record["id"])
        if earlier is not None and earlier["status"] == "completed" and record["status"] == "skipped":
            continue
        records[record["id"]] = record
    return records


def batch_clip_uri(job: Job, row_id: str, *, output_root: str) -> str | None:
    """Where the published clip of row ``row_id`` lives, or None (no such row, or not rendered)."""
    record = _final_records(job, output_root).get(row_id)
    return record["clip_uri"] if record and record["status"] in ("completed", "skipped") else None


def batch_rendition_uri(job: Job, row_id: str, profile: str, *, guides: bool, output_root: str) -> str | None:
    """Where row ``row_id``'s rendition ``profile`` (its guides copy with ``guides``) lives, or None."""
    record = _final_records(job, output_root).get(row_id)
    if not record or record["status"] not in ("completed", "skipped"):
        return None
    for rendition in record.get("renditions") or []:
        if rendition["profile"] == profile:
            return rendition["guides_uri"] if guides else rendition["uri"]
    return None


def _link(uri: str, presign, api_url: str) -> str:
    url = presign(uri)
    return url if (url or "").startswith(("http://", "https://")) else api_url


def batch_results(job: Job, *, output_root: str, limit: int, after: int | None, presign,
                  base_url: str = "") -> dict[str, Any]:
    """One page of the batch's results, in manifest order (see :func:`_final_records`), naming no server path.

    Each row is the batch runner's results record with its storage URIs replaced: ``clip`` and ``sidecar``
    relative to the server's output (as a job's ``result``); ``clip_url``: a presigned http(s) URL where the store
    gives one, else the API's ``{base_url}/v1/batches/{id}/clips/{row id}`` (the caller's key downloads it);
    ``renditions``: the row's platform renditions (``[]`` for none), each ``{profile, file, url}`` (and
    ``guides_file`` / ``guides_url`` for a guides copy), linked the same way
    (``.../clips/{row id}/renditions/{profile}[/guides]``); ``error`` through
    :func:`~wan_dist.serve.paths.public_message`."""
    from urllib.parse import quote

    records = _final_records(job, output_root)
    rows = sorted(records.values(), key=lambda r: (r["index"] if r["index"] is not None else -1, r["id"]))
    if after is not None:
        rows = [r for r in rows if (r["index"] if r["index"] is not None else -1) > after]
    page = rows[:limit]
    data = []
    for stored in page:
        record = {k: v for k, v in stored.items() if k not in ("clip_uri", "sidecar_uri", "clip_url")}
        clip_api = f"{base_url.rstrip('/')}/v1/batches/{job.id}/clips/{quote(record['id'], safe='')}"
        clip_uri, sidecar_uri = stored.get("clip_uri"), stored.get("sidecar_uri")
        record["clip"] = relative(clip_uri, output_root) if clip_uri else None
        record["sidecar"] = relative(sidecar_uri, output_root) if sidecar_uri else None
        record["clip_url"] = _link(clip_uri, presign, clip_api) if clip_uri else None
        record["error"] = public_message(record.get("error"), output_root)
        shown = []
        for rendition in record.get("renditions") or []:
            api_url = f"{clip_api}/renditions/{quote(rendition['profile'], safe='')}"
            item = {"profile": rendition["profile"], "file": relative(rendition["uri"], output_root),
                    "url": _link(rendition["uri"], presign, api_url)}
            if rendition.get("guides_uri"):
                item.update(guides_file=relative(rendition["guides_uri"], output_root),
                            guides_url=_link(rendition["guides_uri"], presign, f"{api_url}/guides"))
            shown.append(item)
        record["renditions"] = shown
        data.append(record)
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "last_index": page[-1]["index"] if page else None}


class FairGate:
    """Turns on one render group between interactive jobs and batch rows.

    One holder at a time. Interactive jobs go first, except that once ``interactive_per_batch_row`` of them
    have run back to back while a batch row waited, the batch row goes next: interactive jobs are never
    starved by a batch (at most the row in flight is ahead of them) and a batch keeps moving under any
    interactive load (one row per ``interactive_per_batch_row`` jobs at least). Batch rows ask without
    blocking (``try_acquire``: the batch runner's loop asks again); a batch counts as waiting for a second
    after its last refused ask, and so does an interactive job whose ask timed out (its worker asks again after a
    poll: without that grace a row could take the group in the gap and run ahead of a waiting job).
    """

    def __init__(self, interactive_per_batch_row: int = 2, *, clock=time.monotonic):
        if interactive_per_batch_row < 1:
            raise ValueError(f"serve.batches.interactive_per_row: must be >= 1, got {interactive_per_batch_row}")
        self.burst = interactive_per_batch_row
        self._cond = threading.Condition()
        self._holder: str | None = None
        self._streak = 0  # interactive turns since the last batch turn
        self._interactive_waiting = 0
        self._batch_asked_at = float("-inf")
        self._interactive_asked_at = float("-inf")
        self._clock = clock

    def _batch_waiting(self) -> bool:
        return self._clock() - self._batch_asked_at < 1.0

    def _interactive_owed(self) -> bool:
        return self._interactive_waiting > 0 or self._clock() - self._interactive_asked_at < 1.0

    def acquire_interactive(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._interactive_waiting += 1
            try:
                while self._holder is not None or (self._batch_waiting() and self._streak >= self.burst):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._interactive_asked_at = self._clock()
                        return False
                    self._cond.wait(min(left, 0.1))
                self._holder, self._streak = "interactive", self._streak + 1
                self._interactive_asked_at = float("-inf")
                return True
            finally:
                self._interactive_waiting -= 1

    def try_acquire(self) -> bool:
        """A batch row's turn, if the group is free and no interactive job is owed it first."""
        with self._cond:
            if self._holder is None and (not self._interactive_owed() or self._streak >= self.burst):
                self._holder, self._streak = "batch", 0
                self._batch_asked_at = float("-inf")
                return True
            self._batch_asked_at = self._clock()
            return False

    def release(self) -> None:
        with self._cond:
            self._holder = None
            self._cond.notify_all()
