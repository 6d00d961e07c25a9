"""A renderer's job loop: claim the oldest queued job of one model from the store, render it, record it.

The store is the queue: a job is claimed under a lease, which the render renews at denoising steps
(:class:`StoreStepControl`, run by the render group's result rank); a renderer that dies stops renewing,
``release_expired`` (run by every worker) puts its job back in the queue, and another renderer (or this one
after a restart) takes it: accepted jobs are never lost. The same control reads the job's
``cancel_requested`` flag (set by a cancel or a passed deadline) and stops the render between steps.
Outcomes:

* completed: ``result`` holds the clip / sidecar URIs and the platform renditions' (:func:`rendition_records`),
  ``timings`` the render's;
* cancelled: stopped between steps on request;
* failed: ``error`` {"code", "message"}: ``invalid_request`` (bad input the validation could not see,
  e.g. an image URL that does not load), ``render_failed`` after ``max_attempts`` tries, ``timeout``
  (deadline, set by the store), ``worker_lost`` (lease expired too often, set by the store).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable

from wan_dist.engine.dispatch import RetryPolicy
from wan_dist.serve.jobs import Job, JobNotFound, JobStatus, JobStore, LeaseLost
from wan_dist.serve.stores import open_store

__all__ = ["JobWorker", "JobCancelled", "Render", "StoreStepControl", "preview_uri", "shared_store"]

log = logging.getLogger("wan_dist.serve")
_STORES: dict[str, JobStore] = {}  # per process (a result rank's): one open store per URI
_STORES_LOCK = threading.Lock()

# render(job) -> RenderResult; raises JobCancelled / LeaseLost when its step control stopped it
Render = Callable[[Job], object]


class JobCancelled(Exception):
    """Raised by a render that its step control stopped on a cancel."""


class StoreStepControl:
    """The step control of a job (see ``wan_dist.engine.control``): after a denoising step, at most every
    ``progress_every_s`` (and after the last), renew the job's lease, stop on a cancel or a lost lease, and
    record the progress. With ``preview_every_s`` > 0 it also takes a preview frame at most that often
    (not after the last step: the clip follows), writes it as a JPEG to :func:`preview_uri` and records
    ``{"step", "total", "uri", "updated_at"}`` as the job's ``preview``. Picklable: it travels with the
    request to the group's result rank, which opens the store itself."""

    def __init__(self, job_id: str, store: str, worker_id: str, lease_s: float, progress_every_s: float = 0.5, *,
                 output: str | None = None, preview_every_s: float = 0.0, preview_max_side: int = 256):
        self.job_id, self.store, self.worker_id = job_id, store, worker_id
        self.lease_s, self.progress_every_s = lease_s, progress_every_s
        self.output, self.preview_every_s, self.preview_max_side = output, preview_every_s, preview_max_side
        self._last = float("-inf")  # this render's last report (the instance lives for one call)
        self._last_preview = float("-inf")

    def _store(self) -> JobStore:
        return shared_store(self.store)

    def __call__(self, step: int, total: int) -> None:
        from wan_dist.engine.control import StopRender

        now = time.monotonic()
        if now - self._last < self.progress_every_s and step < total:
            return
        self._last = now
        store = self._store()
        try:
            current = store.renew(self.job_id, self.worker_id, self.lease_s)
        except LeaseLost:
            raise StopRender("lease_lost") from None
        if current.cancel_requested:
            raise StopRender("cancelled")
        progress = min(99, int(100 * step / max(total, 1)))  # 100 once published
        if progress != current.progress:
            store.update(self.job_id, progress=progress)

    def on_window(self, window: dict) -> None:
        """A long clip's next window starts (engine/long.py): recorded as the job's ``window``."""
        self._store().update(self.job_id, window=dict(window))

    def preview_due(self, step: int, total: int) -> bool:
        return (self.preview_every_s > 0 and self.output is not None and step < total
                and time.monotonic() - self._last_preview >= self.preview_every_s)

    def on_preview(self, frame, step: int, total: int) -> None:
        from wan_dist.engine.preview import encode_jpeg, shrink
        from wan_dist.storage import write_bytes_atomic

        self._last_preview = time.monotonic()
        uri = preview_uri(self.output, self.job_id)
        write_bytes_atomic(uri, encode_jpeg(shrink(frame, self.preview_max_side)), content_type="image/jpeg")
        self._store().update(self.job_id, preview={"step": step, "total": total, "uri": uri,
                                                   "updated_at": time.time()})


def rendition_records(result) -> list[dict]:
    """The job result's list of a RenderResult's platform renditions, in the request's order: ``{"profile",
    "uri"}`` and, for a guides copy, ``"guides_uri"``."""
    guides = getattr(result, "rendition_guides", None) or {}
    return [{"profile": profile, "uri": uri, **({"guides_uri": guides[profile]} if profile in guides else {})}
            for profile, uri in (getattr(result, "renditions", None) or {}).items()]


def shared_store(uri: str) -> JobStore:
    """This process's open store at ``uri`` (a result rank's step controls share one)."""
    with _STORES_LOCK:
        if uri not in _STORES:
            _STORES[uri] = open_store(uri)
        return _STORES[uri]


def preview_uri(output: str, job_id: str) -> str:
    """Where the latest preview frame of a job lives while it renders (removed once it ends)."""
    from wan_dist.storage import join

    return join(output, "_previews", f"{job_id}.jpg")


class JobWorker:
    def __init__(self, store: JobStore, model: str, render: Render, *, worker_id: str | None = None,
                 lease_s: float = 120.0, poll_s: float = 0.25, progress_every_s: float = 0.5,
                 on_change: Callable[[Job], None] | None = None, gate=None, retry_backoff_s: float = 0.0):
        self.gate = gate  # FairGate shared with batch rows (wan_dist.serve.batches), or None
        self.store = store
        self.model = model
        self.render = render
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self.on_change = on_change or (lambda job: None)
        self.current: str | None = None  # id of the job being rendered
        self.retry_backoff_s = retry_backoff_s  # a failed attempt's requeued job waits this, doubling per attempt

    # -- loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set (checked between jobs; a running job finishes or is cancelled)."""
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception:  # noqa: BLE001 - a broken store must not kill the loop; it retries
                log.exception("%s: job loop error", self.worker_id)
                worked = None
            if worked is None:
                stop.wait(self.poll_s)

    def step(self) -> Job | None:
        """Housekeeping, then claim and process one job; returns it (final state) or None when idle."""
        for job in self.store.release_expired() + self.store.expire_deadlines():
            self.on_change(job)
        if self.gate is not None:  # take the group's turn before the job, so no lease runs out while waiting
            if self.store.count(model=self.model, status=JobStatus.QUEUED) == 0:
                return None
            if not self.gate.acquire_interactive(timeout_s=max(self.poll_s, 0.5)):
                return None
        try:
            job = self.store.claim(self.model, worker=self.worker_id, lease_s=self.lease_s)
            if job is None:
                return None
            self.on_change(job)
            try:
                return self._process(job)
            except JobNotFound:  # deleted (DELETE /v1/videos/{id}) while it rendered: nothing left to record
                log.info("%s: %s was deleted while it rendered", self.worker_id, job.id)
                return None
        finally:
            if self.gate is not None:
                self.gate.release()

    # -- one job ------------------------------------------------------------------------------
    def _process(self, job: Job) -> Job:
        self.current = job.id
        try:
            result = self.render(job)
        except JobCancelled:
            return self._finish(job, status=JobStatus.CANCELLED, error=None)
        except LeaseLost:
            log.warning("%s: lost the lease of %s (it was requeued or expired)", self.worker_id, job.id)
            return self.store.get(job.id)
        except ValueError as error:  # bad input the validation could not see (an image that does not load)
            return self._finish(job, status=JobStatus.FAILED, error={"code": "invalid_request", "message": str(error)})
        except Exception as error:  # noqa: BLE001 - an engine failure: retried up to max_attempts
            return self._retry_or_fail(job, f"{type(error).__name__}: {error}")
        finally:
            self.current = None
        if getattr(result, "status", None) != "completed":
            return self._retry_or_fail(job, getattr(result, "error", None) or "publishing failed")
        return self._finish(job, status=JobStatus.COMPLETED, error=None, progress=100,
                            result={"clip_uri": result.clip_uri, "sidecar_uri": result.sidecar_uri,
                                    "seed": result.seed, "renditions": rendition_records(result)},
                            timings={k: float(v) for k, v in result.timings.items()})

    def _retry_or_fail(self, job: Job, message: str) -> Job:
        current = self.store.get(job.id)
        error = {"code": "render_failed", "message": message}
        delay = RetryPolicy(current.max_attempts, self.retry_backoff_s).delay(current.attempts)
        if delay is not None and not current.cancel_requested:
            log.warning("%s: %s attempt %d failed (%s); requeued, claimable in %.1f s", self.worker_id, job.id,
                        current.attempts, message.splitlines()[0], delay)
            return self._record(job, status=JobStatus.QUEUED, progress=0, preview=None, window=None,
                                error=error, retry_after=time.time() + delay)
        return self._finish(job, status=JobStatus.FAILED, error=error)

    def _finish(self, job: Job, *, status: str, error: dict | None, **fields) -> Job:
        return self._record(job, status=status, error=error, completed_at=time.time(), **fields)

    def _record(self, job: Job, **fields) -> Job:
        """How this worker's attempt ended, recorded only while it still holds the job's lease: a job handed
        back (this renderer is stopping), requeued after its lease or ended by a deadline keeps its state."""
        try:
            job = self.store.finish(job.id, self.worker_id, **fields)
        except LeaseLost:
            log.warning("%s: %s is no longer leased to it; its attempt's outcome is dropped", self.worker_id, job.id)
            return self.store.get(job.id)
        self.on_change(job)
        return job
