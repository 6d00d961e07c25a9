"""Batches in the job store: one record per batch, and for a mixed batch one part per model.

Renderers claim batch work by model (queue ``batch:<variant>``) and each holds one model on its group, so a
batch is run by the renderers of the models its rows name:

* **one model** (every valid row names one variant; the common case): one record, kind ``batch``, on that
  model's queue, claimed and run whole by its renderer. It is its own and only part.
* **mixed** (rows name two or more served models): the **batch** record (kind ``batch``: what the API reads,
  lists, cancels and sends the webhook of) sits on a queue that names its models (``batch:tiny,tiny-ti2v``),
  which no renderer claims, and holds ``request["parts"]``; one **part** per model (kind ``batch_part``, id
  ``{batch id}-p{i}``) sits on that model's queue and is run like a one-model batch with the batch runner's
  ``only_models=(model,)``, into the batch's output folder, so clips, sidecars and results tables of every part
  sit together as one run's would. The first part also records the manifest's invalid rows
  (``record_invalid_rows``), so each is recorded once. Parts have no owner: the batch record is what the key
  owns (one quota slot, as a one-model batch) and the only way to reach them.

A part lives as a one-model batch does: leased and renewed by its renderer, requeued when that renderer dies
and resumed from the sidecars already published, handed back when it shuts down. The batch record never runs
and holds no lease; it stays ``queued`` in the store until :func:`settle` writes its terminal status once every
part is terminal (called by the worker that ends a part, by the cancel route, and by a renderer whose lease
sweep ended a part), so the webhook notifier sees one terminal batch. Until then the API derives the batch's
status and counts from its parts (:func:`summary`): ``failed`` if a part failed (its error, naming the model),
else ``cancelled`` if a part was cancelled, else ``completed``; ``running`` once any part started.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from wan_dist.serve.jobs import Job, JobExists, JobNotFound, JobStatus, JobStore, VersionConflict

__all__ = ["BATCH_QUEUE", "PART_KIND", "batch_queue", "batch_output", "owner_prefix", "new_batch", "ensure_parts", "parts_of",
           "summary", "settle", "settle_part", "cancel_batch"]

log = logging.getLogger("wan_dist.serve")
BATCH_QUEUE = "batch:"  # prefix of a batch record's model: the queue renderers of that variant claim batches from
PART_KIND = "batch_part"
COUNTS = ("completed", "failed", "skipped")


def batch_queue(variant: str) -> str:
    return BATCH_QUEUE + variant


def batch_output(job: Job, output_root: str) -> str:
    """The batch's output folder (a part's request names its batch's, resolved; records made before outputs
    were resolved at creation: ``{output_root}/batches/{id}``)."""
    return job.request.get("output") or f"{output_root.rstrip('/')}/batches/{job.id}"


def owner_prefix(output_root: str, owner: str) -> str:
    """Where every batch of key ``owner`` writes: ``{output_root}/batches/{owner}`` (its key id)."""
    return f"{output_root.rstrip('/')}/batches/{owner}"


def new_batch(*, rows_by_model: dict[str, int], default_model: str, request: dict, output_root: str,
              **fields) -> Job:
    """The batch record to create: on its model's queue when its rows name one model (or none), else on the
    queue of its models with one part per model in ``request["parts"]`` (created by :func:`ensure_parts`).
    Its output is resolved now, under the owner's prefix: ``request["output"]`` (a checked sub-folder name) or
    the batch id."""
    models = sorted(rows_by_model)
    queue = batch_queue(models[0] if len(models) == 1 else ",".join(models) if models else default_model)
    job = Job.new(model=queue, kind="batch", request=request, **fields)
    request = {**request, "output": f"{owner_prefix(output_root, job.owner)}/{request.get('output') or job.id}"}
    if len(models) > 1:
        parts = [{"model": model, "id": f"{job.id}-p{i}", "rows": rows_by_model[model]}
                 for i, model in enumerate(models)]
        request = {**request, "default_model": default_model, "parts": parts}
    return Job(**{**job.to_dict(), "request": request})


def ensure_parts(store: JobStore, batch: Job, output_root: str) -> None:
    """Create the parts of a mixed ``batch`` that are not stored yet (every part when it was just created; the
    missing ones when a create was cut off and its Idempotency-Key replayed). Nothing for a one-model batch."""
    request = batch.request
    for i, part in enumerate(request.get("parts") or ()):
        first = i == 0
        invalid = request.get("invalid_rows", 0) if first else 0
        record = Job(id=part["id"], model=batch_queue(part["model"]), kind=PART_KIND, owner="",
                     max_attempts=batch.max_attempts, created_at=batch.created_at, updated_at=time.time(),
                     request={"batch_id": batch.id, "manifest_uri": request["manifest_uri"],
                              "output": batch_output(batch, output_root), "rows": part["rows"] + invalid,
                              "invalid_rows": invalid, "default_model": request["default_model"],
                              "only_models": [part["model"]], "record_invalid_rows": first})
        try:
            store.create(record)
        except JobExists:
            pass


def parts_of(store: JobStore, batch: Job) -> list[tuple[str, Job | None]]:
    """``(model, part or None when missing)`` of a mixed batch; ``[]`` for a one-model batch."""
    parts = []
    for part in batch.request.get("parts") or ():
        try:
            parts.append((part["model"], store.get(part["id"])))
        except JobNotFound:
            parts.append((part["model"], None))
    return parts


def _status(parts: list[tuple[str, Job | None]]) -> tuple[str, dict | None]:
    jobs = [job for _, job in parts]
    if any(job is None or not job.terminal for job in jobs):
        started = any(job is not None and job.status != JobStatus.QUEUED for job in jobs)
        return (JobStatus.IN_PROGRESS if started else JobStatus.QUEUED), None
    for model, job in parts:
        if job.status == JobStatus.FAILED:
            error = job.error or {"code": "batch_failed", "message": "failed"}
            return JobStatus.FAILED, {**error, "message": f"the part of model {model!r}: {error['message']}"}
    if any(job.status == JobStatus.CANCELLED for job in jobs):
        return JobStatus.CANCELLED, None
    return JobStatus.COMPLETED, None


def summary(batch: Job, parts: list[tuple[str, Job | None]]) -> dict[str, Any]:
    """What a mixed batch shows, from its parts: status and error (the stored ones once it is settled), counts
    summed, clips per hour summed (the parts render on different renderers at once), the longest ETA."""
    status, error = (batch.status, batch.error) if batch.terminal else _status(parts)
    jobs = [job for _, job in parts if job is not None]
    progress = [(job.result or {}).get("progress") or {} for job in jobs]
    rates = [p["clips_per_hour"] for p in progress if p.get("clips_per_hour") is not None]
    etas = [p["eta_s"] for p in progress if p.get("eta_s") is not None]
    started = [job.started_at for job in jobs if job.started_at is not None]
    return {"status": status, "error": error, "started_at": min(started, default=None),
            "attempts": max((job.attempts for job in jobs), default=0),
            "progress": {**{name: sum(int(p.get(name, 0)) for p in progress) for name in COUNTS},
                         "clips_per_hour": sum(rates) if rates else None, "eta_s": max(etas, default=None)},
            "results_uri": next((job.result["results_uri"] for job in jobs if (job.result or {}).get("results_uri")),
                                None),
            "parts": [{"model": model, "status": job.status if job else JobStatus.QUEUED,
                       "rows": job.request.get("rows", 0) if job else 0, "attempts": job.attempts if job else 0,
                       "summary_uri": (job.result or {}).get("summary_uri") if job else None,
                       "error": job.error if job else None} for model, job in parts]}


def settle(store: JobStore, batch_id: str) -> Job:
    """Write a mixed batch's terminal status once every part is terminal (idempotent; any number of callers)."""
    for _ in range(10):
        batch = store.get(batch_id)
        if batch.terminal or not batch.request.get("parts"):
            return batch
        parts = parts_of(store, batch)
        status, error = _status(parts)
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            return batch
        view = summary(batch, parts)
        result = {"results_uri": view["results_uri"], "progress": {**view["progress"], "eta_s": 0.0}}
        try:
            return store.update(batch_id, expected_version=batch.version, status=status, error=error, result=result,
                                started_at=view["started_at"], completed_at=time.time(),
                                progress=100 if status == JobStatus.COMPLETED else batch.progress)
        except VersionConflict:  # a sibling settled it, or the notifier saved a delivery: read again
            continue
    return store.get(batch_id)


def settle_part(store: JobStore, job: Job) -> None:
    """After ``job`` changed: settle its batch if it is a part that just ended (never raises)."""
    if job.kind != PART_KIND or not job.terminal:
        return
    try:
        settle(store, job.request["batch_id"])
    except Exception:  # noqa: BLE001 - the next caller (another part, a cancel, a lease sweep) settles it
        log.exception("settling the batch of part %s failed", job.id)


def cancel_batch(store: JobStore, batch: Job) -> Job:
    """Cancel every part (a queued one at once, a running one after its rows in flight), then settle."""
    if not batch.request.get("parts"):
        return store.request_cancel(batch.id)
    for part in batch.request["parts"]:
        try:
            store.request_cancel(part["id"])
        except JobNotFound:
            pass
    return settle(store, batch.id)
