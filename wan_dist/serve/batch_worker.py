"""The batch loop of a renderer: claim the model's batches (and parts of mixed batches) and run each with the
batch runner on the renderer's shared group (see :mod:`wan_dist.serve.batches` and
:mod:`wan_dist.serve.batch_parts`)."""

from __future__ import annotations

import logging
import threading
import time

from wan_dist.serve.batch_parts import batch_output, batch_queue, settle_part
from wan_dist.serve.jobs import Job, JobStatus, JobStore, LeaseLost

__all__ = ["BatchWorker", "BatchCancelControl"]

log = logging.getLogger("wan_dist.serve")


class BatchCancelControl:
    """The step control of a batch's rows (engine.control): after a denoising step, at most every ``every_s``,
    read the batch's record (the part's, for a mixed batch) and stop the render on a cancel, as an interactive
    job's control does. Picklable: it travels with each row to the group's result rank, which opens the store."""

    def __init__(self, job_id: str, store: str, every_s: float = 0.5):
        self.job_id, self.store, self.every_s = job_id, store, every_s
        self._last = float("-inf")

    def __call__(self, step: int, total: int) -> None:
        from wan_dist.engine.control import StopRender
        from wan_dist.serve.worker import shared_store

        now = time.monotonic()
        if now - self._last < self.every_s or step >= total:  # after the last step the clip is done: keep it
            return
        self._last = now
        if shared_store(self.store).get(self.job_id).cancel_requested:
            raise StopRender("cancelled")


class BatchWorker:
    """Claims this renderer's model's batches from the store and runs each with the shared group. A part of a
    mixed batch is run with its row filter (``only_models``, ``record_invalid_rows``) and its batch's
    ``default_model``; once it ends, the worker settles the batch."""

    def __init__(self, store: JobStore, variant: str, *, settings, shared_group, worker_id: str,
                 poll_s: float = 0.5, report_every_s: float = 1.0, check_every_s: float = 0.1):
        self.store = store
        self.variant = variant
        self.settings = settings
        self.shared_group = shared_group  # () -> engine.dispatch.SharedGroup (the group, once loaded)
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
                job = self.process(job, stop)
            except Exception:  # noqa: BLE001 - the batch's lease expires and it is retried
                log.exception("%s: batch %s broke", self.worker_id, job.id)
            settle_part(self.store, job)

    def process(self, job: Job, stop: threading.Event) -> Job:
        from wan_dist.batch import BatchRunner
        from wan_dist.config import BatchConfig, OutputConfig

        s = self.settings
        output = batch_output(job, s.output)
        request = job.request
        config = BatchConfig(manifest=request["manifest_uri"],
                             default_model=request.get("default_model") or self.variant,
                             only_models=tuple(request.get("only_models") or ()),
                             record_invalid_rows=request.get("record_invalid_rows", True), sources=dict(s.sources),
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

        control = BatchCancelControl(job.id, s.store)  # the row in flight stops between steps on a cancel
        runner = BatchRunner(config, OutputConfig(uri=output), shared=self.shared_group(), on_tick=tick,
                             row_control=lambda row: control)
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
