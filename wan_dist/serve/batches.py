"""Batches over HTTP: a Parquet manifest, validated at the door, run by the batch runner on a renderer's group.

A batch is a record in the job store (``kind="batch"``, ``model="batch:<variant>"``, so renderers claim
batches apart from interactive jobs): persisted before the API answers, leased by the renderer that runs it,
requeued when that renderer dies, resumed from its published sidecars. The renderer runs
:class:`wan_dist.batch.BatchRunner`, the same runner as ``ray job submit``, on its own render group
(``shared=``), so outputs, sidecars, results, retries and resume are the batch job's. Batch rows and the
renderer's interactive jobs take turns on the group through :class:`FairGate`.

Status: ``queued`` until a renderer claims it, ``running``, then ``completed`` (every row has a result, some
may have failed alone), ``failed`` (the run itself broke, or every attempt at it was lost) or ``cancelled``
(no new rows after the cancel; rows in flight finish; published clips stay). Validation happens before the
create answers, so a batch is never seen ``validating``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wan_dist.serve.jobs import Job, JobStatus, JobStore, LeaseLost
from wan_dist.serve.schemas import RequestError, public_model_name

__all__ = ["BATCH_QUEUE", "BatchCreate", "BatchSpec", "FairGate", "BatchWorker", "validate_batch", "batch_view",
           "batch_results", "batch_clip_uri", "batch_queue"]

log = logging.getLogger("wan_dist.serve")
BATCH_QUEUE = "batch:"  # prefix of a batch record's model: the queue renderers of that variant claim batches from
MAX_MANIFEST_BYTES = 64 * 2**20
_STATUS = {JobStatus.QUEUED: "queued", JobStatus.IN_PROGRESS: "running", JobStatus.COMPLETED: "completed",
           JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


def batch_queue(variant: str) -> str:
    return BATCH_QUEUE + variant


class BatchCreate(BaseModel):
    """``POST /v1/batches`` (JSON, or multipart with the manifest as the file ``manifest``)."""

    model_config = ConfigDict(extra="forbid")
    manifest_uri: str | None = Field(None, description="s3://, gs://, az://, https:// (when allowed) URI of the "
                                                       "Parquet manifest; omit when uploading the file `manifest`")
    model: str | None = Field(None, description="variant of rows whose model is null (default: the first served)")
    output: str | None = Field(None, description="output prefix, under the operator's output "
                                                 "(default: {output}/batches/{batch id})")
    webhook_url: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class BatchSpec:
    variant: str
    manifest_uri: str
    output: str | None  # None: the default under the batch id (known once the record exists)
    webhook_url: str | None
    metadata: dict
    rows: int
    invalid_rows: int


_REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "https://")


def validate_batch(body: dict, *, served: tuple[str, ...], output_root: str, layout: str, uploaded: str | None,
                   allow_private: bool) -> BatchSpec:
    """Check the request and read the whole manifest (the batch runner's own reader and rules): a manifest that
    cannot be used is a 422 naming its columns or duplicate rows; bad rows are accepted and fail alone."""
    from pydantic import ValidationError

    from wan_dist.batch import ManifestError, read_manifest
    from wan_dist.serve.schemas import resolve_model
    from wan_dist.storage.objects import StorageError

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
    uri = uploaded or request.manifest_uri
    if uploaded is None:
        _check_manifest_uri(uri, allow_private)
    output = None
    if request.output is not None:
        output = request.output.rstrip("/")
        root = output_root.rstrip("/")
        if not output.startswith(root + "/") or "/../" in output + "/" or "/./" in output + "/":
            raise RequestError(422, f"output: must be a prefix under {root}/", param="output", code="invalid_value")
    try:
        manifest = read_manifest(uri, default_model=variant, layout=layout)
    except ManifestError as error:
        raise RequestError(422, f"manifest: {error}", param="manifest", code="invalid_manifest") from None
    except (StorageError, OSError) as error:
        raise RequestError(422, f"manifest_uri: cannot read {uri}: {error}", param="manifest_uri",
                           code="unreadable_manifest") from None
    models = sorted({row.model for row in manifest.rows})
    if len(models) > 1:
        raise RequestError(422, f"model: a batch renders one model; its rows name {models}: split the manifest",
                           param="model", code="invalid_manifest")
    if models and models[0] not in served:
        raise RequestError(422, f"model: {models[0]!r} is not served here; served: {list(served)}", param="model",
                           code="model_not_found")
    return BatchSpec(variant=models[0] if models else variant, manifest_uri=uri, output=output,
                     webhook_url=request.webhook_url, metadata=dict(request.metadata),
                     rows=len(manifest), invalid_rows=len(manifest.invalid))


def _check_manifest_uri(uri: str, allow_private: bool) -> None:
    if not uri.startswith(_REMOTE_SCHEMES) and not allow_private:
        raise RequestError(422, f"manifest_uri: must start with one of {list(_REMOTE_SCHEMES)}",
                           param="manifest_uri", code="invalid_value")
    if uri.startswith(("http://", "https://")):
        from wan_dist.serve.urls import check_public_url

        try:
            check_public_url(uri, field="manifest_uri", schemes=("https", "http"), allow_private=allow_private)
        except ValueError as error:
            raise RequestError(422, str(error), param="manifest_uri", code="unsafe_url") from None


def batch_output(job: Job, output_root: str) -> str:
    return job.request.get("output") or f"{output_root.rstrip('/')}/batches/{job.id}"


def batch_view(job: Job, *, output_root: str) -> dict[str, Any]:
    """The batch object of the API."""
    progress = dict((job.result or {}).get("progress") or {})
    total = job.request.get("rows", 0)
    done = {name: int(progress.get(name, 0)) for name in ("completed", "failed", "skipped")}
    finished = sum(done.values())
    return {"id": job.id, "object": "batch", "model": public_model_name(job.model[len(BATCH_QUEUE):]),
            "status": _STATUS[job.status], "created_at": job.created_at, "started_at": job.started_at,
            "completed_at": job.completed_at, "manifest_uri": job.request.get("manifest_uri"),
            "output": batch_output(job, output_root),
            "counts": {"total": total, "done": done["completed"] + done["skipped"], "failed": done["failed"],
                       "remaining": max(0, total - finished), **done},
            "invalid_rows": job.request.get("invalid_rows", 0),
            "clips_per_hour": progress.get("clips_per_hour"), "eta_s": progress.get("eta_s"),
            "results_uri": (job.result or {}).get("results_uri"), "summary_uri": (job.result or {}).get("summary_uri"),
            "attempts": job.attempts, "error": job.error, "webhook": _webhook(job), "metadata": job.metadata}


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


def batch_results(job: Job, *, output_root: str, limit: int, after: int | None, presign,
                  base_url: str = "") -> dict[str, Any]:
    """One page of the batch's results, in manifest order (see :func:`_final_records`). ``clip_url``: a presigned
    http(s) URL where the store gives one, else the API's ``{base_url}/v1/batches/{id}/clips/{row id}`` (the
    caller's key downloads it): never a ``file://`` or bucket path a remote client cannot open."""
    from urllib.parse import quote

    records = _final_records(job, output_root)
    rows = sorted(records.values(), key=lambda r: (r["index"] if r["index"] is not None else -1, r["id"]))
    if after is not None:
        rows = [r for r in rows if (r["index"] if r["index"] is not None else -1) > after]
    page = rows[:limit]
    data = []
    for record in page:
        record = {k: v for k, v in record.items() if k != "clip_url"}
        url = presign(record["clip_uri"]) if record.get("clip_uri") else None
        if record.get("clip_uri") and not (url or "").startswith(("http://", "https://")):
            url = f"{base_url.rstrip('/')}/v1/batches/{job.id}/clips/{quote(record['id'], safe='')}"
        record["clip_url"] = url
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


class BatchWorker:
    """Claims this renderer's model's batches from the store and runs each with the shared group."""

    def __init__(self, store: JobStore, variant: str, *, settings, shared_group, worker_id: str,
                 poll_s: float = 0.5, report_every_s: float = 1.0, check_every_s: float = 0.1):
        self.store = store
        self.variant = variant
        self.settings = settings
        self.shared_group = shared_group  # () -> wan_dist.batch.SharedGroup (the group, once loaded)
        self.worker_id = worker_id
        self.poll_s = poll_s
        self.report_every_s = report_every_s
        self.check_every_s = check_every_s

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                job = self.store.claim(batch_queue(self.variant), worker=self.worker_id,
                                       lease_s=self.settings.jobs.lease_s)
            except Exception:  # noqa: BLE001 - a broken store must not end the loop
                log.exception("%s: claiming a batch failed", self.worker_id)
                job = None
            if job is None:
                stop.wait(self.poll_s)
                continue
            try:
                self.process(job, stop)
            except Exception:  # noqa: BLE001 - the batch's lease expires and it is retried
                log.exception("%s: batch %s broke", self.worker_id, job.id)

    def process(self, job: Job, stop: threading.Event) -> Job:
        from wan_dist.batch import BatchRunner
        from wan_dist.config import BatchConfig, OutputConfig

        s = self.settings
        output = batch_output(job, s.output)
        config = BatchConfig(manifest=job.request["manifest_uri"], default_model=self.variant, sources=dict(s.sources),
                             layout=s.layout, group=s.renderer.group, max_attempts=s.jobs.max_attempts,
                             retry_backoff_s=s.batches.retry_backoff_s, presign_expires_s=s.jobs.presign_expires_s,
                             results_flush_rows=s.batches.results_flush_rows, results_flush_s=5.0,
                             progress_interval_s=30.0, run_id=f"{job.id}-{job.attempts}")
        state = {"last": 0.0, "checked": 0.0, "lost": False}

        def tick(runner: BatchRunner) -> None:
            now = time.monotonic()
            if state["lost"] or now - state["checked"] < self.check_every_s:
                return
            state["checked"] = now
            if now - state["last"] >= self.report_every_s:  # renew the lease, publish the counts
                state["last"] = now
                try:
                    current = self.store.renew(job.id, self.worker_id, s.jobs.lease_s)
                except LeaseLost:  # taken back (expired and requeued): stop here, the next owner resumes
                    state["lost"] = True
                    runner.stop_requested.set()
                    return
                self._report(current, runner, output)
            else:  # a cheap read between renewals: a cancel stops the next row from starting
                current = self.store.get(job.id)
            if current.cancel_requested or stop.is_set():
                runner.stop_requested.set()

        runner = BatchRunner(config, OutputConfig(uri=output), shared=self.shared_group(), on_tick=tick)
        try:
            summary = runner.run()
        except Exception as error:  # noqa: BLE001 - the manifest went away, storage broke: the batch fails
            return self._finish(job, JobStatus.FAILED, {"code": "batch_failed", "message": f"{type(error).__name__}: "
                                                                                         f"{error}"}, None, output)
        if state["lost"]:
            return self.store.get(job.id)
        current = self.store.get(job.id)
        left = summary.get("rows", 0) - sum(summary.get(k, 0) for k in ("completed", "failed", "skipped"))
        if current.cancel_requested and left > 0:  # a cancel after the last row changes nothing: completed
            return self._finish(job, JobStatus.CANCELLED, None, summary, output)
        if stop.is_set() and summary.get("stopped"):  # this renderer is going away: hand the batch back
            try:  # the attempt counts (its run id names the results folder it wrote)
                return self.store.finish(job.id, self.worker_id, status=JobStatus.QUEUED)
            except LeaseLost:
                return self.store.get(job.id)
        return self._finish(job, JobStatus.COMPLETED, None, summary, output)

    def _report(self, current: Job, runner, output: str) -> None:
        """Publish the run's counts on the batch (``current``: the record the lease renewal just returned;
        only this worker writes ``result`` while it holds the lease)."""
        progress = getattr(runner, "progress", None)
        if progress is None:
            return
        rate = progress.clips_per_hour()
        eta = progress.remaining / rate * 3600 if rate else None
        result = {**(current.result or {}), "results_uri": f"{output}/_results",
                  "progress": {**progress.counts, "clips_per_hour": rate, "eta_s": eta}}
        self.store.update(current.id, result=result,
                          progress=min(99, int(100 * progress.finished / max(progress.total, 1))))

    def _finish(self, job: Job, status: str, error: dict | None, summary: dict | None, output: str) -> Job:
        current = self.store.get(job.id)
        if current.terminal:
            return current
        result = dict(current.result or {})
        result["results_uri"] = f"{output}/_results"
        if summary is not None:
            result["summary_uri"] = summary.get("summary_uri")
            result["progress"] = {**{k: summary.get(k, 0) for k in ("completed", "failed", "skipped")},
                                  "clips_per_hour": summary.get("clips_per_hour"), "eta_s": 0.0}
        try:  # only while this worker still holds the batch (see JobStore.finish)
            return self.store.finish(job.id, self.worker_id, status=status, error=error, result=result,
                                     completed_at=time.time(),
                                     progress=100 if status == JobStatus.COMPLETED else current.progress)
        except LeaseLost:
            log.warning("%s: batch %s is no longer leased to it; its outcome is dropped", self.worker_id, job.id)
            return self.store.get(job.id)
