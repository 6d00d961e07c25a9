"""A renderer: one model on a render group this replica owns, fed with interactive jobs and batch rows.

The group (``wan_dist.engine.group.RenderGroup``, laid out and placed as ``serve.renderer.group``) sits in the
replica's own placement group when Serve gave it one (``placement_group_bundles``: one bundle per rank), else in
one of its own. Two threads feed it, taking turns through a :class:`~wan_dist.serve.batches.FairGate`:

* a :class:`~wan_dist.serve.worker.JobWorker` claims the oldest queued interactive job of the model and
  renders it on the group; the result rank runs :class:`StoreStepControl` after every denoising step
  (renew the lease, report progress, stop every rank between steps on a cancel or a lost lease);
* a :class:`~wan_dist.serve.batch_worker.BatchWorker` claims the model's batches (and its parts of mixed
  batches) and runs each with the batch runner on the same group, one row per turn.

Each clip lands at ``{output}/{job id}/clip.mp4`` + ``clip.json``; batch rows where the batch says.
A group that breaks is rebuilt once (whoever notices first) and the job or row is retried.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from wan_dist.config import OutputConfig
from wan_dist.serve.jobs import Job, LeaseLost
from wan_dist.serve.schemas import render_request
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.stores import open_store
from wan_dist.serve.worker import JobCancelled, JobWorker, StoreStepControl

__all__ = ["RendererCore", "group_config"]

log = logging.getLogger("wan_dist.serve")


def group_config(settings: ServeSettings, model: str):
    """The GroupConfig of a renderer replica of ``model``. Its requests are tenants' (jobs and rows of manifests
    sent over HTTP): their image and LoRA URLs are read under a fetch policy (storage.fetch.read_source): http(s)
    with every hop's address checked as it is read, the tenant's uploads and ``source_prefixes``, nothing else."""
    from wan_dist.engine.group import GroupConfig
    from wan_dist.storage import join
    from wan_dist.storage.fetch import FetchPolicy

    fetch = FetchPolicy(allow_private=settings.allow_private_urls,
                        prefixes=(join(settings.output, "_uploads"), *settings.source_prefixes))
    return GroupConfig.from_spec(settings.renderer.group, source=settings.sources.get(model, model),
                                 layout=settings.layout, env=dict(settings.env), reuse_placement_group=True,
                                 bundle_offset=0, fetch=fetch)


class RendererCore:
    def __init__(self, settings: ServeSettings, model: str, *, poll_s: float = 0.2, lease_s: float | None = None):
        from wan_dist.serve.batch_parts import settle_part
        from wan_dist.serve.batch_worker import BatchWorker
        from wan_dist.serve.batches import FairGate

        self.settings = settings
        self.model = model
        self.holder = None  # engine.dispatch.GroupHolder, once loaded
        self.store = open_store(settings.store)
        self.gate = FairGate(settings.batches.interactive_per_row)
        # on_change: the job loop's lease sweep may end a part of a mixed batch (worker_lost): settle its batch
        self.worker = JobWorker(self.store, model, self.render, poll_s=poll_s, gate=self.gate,
                                lease_s=settings.jobs.lease_s if lease_s is None else lease_s,
                                on_change=lambda job: settle_part(self.store, job),
                                retry_backoff_s=settings.jobs.retry_backoff_s)
        self.batches = BatchWorker(self.store, model, settings=settings, shared_group=self.shared_group,
                                   worker_id=self.worker.worker_id + "-batch")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def ready(self) -> bool:
        return self.holder is not None and bool(self._threads) and all(t.is_alive() for t in self._threads)

    def load(self) -> None:
        from wan_dist.engine.dispatch import GroupHolder

        self.holder = GroupHolder.start(group_config(self.settings, self.model))
        log.info("renderer %s: %s loaded on a group of %d rank(s)", self.worker.worker_id, self.model,
                 self.holder.group.config.world_size)

    def start(self) -> "RendererCore":
        if self.holder is None:
            self.load()
        for name, target in (("jobs", self.worker.run), ("batches", self.batches.run)):
            thread = threading.Thread(target=target, args=(self._stop,), name=f"renderer-{self.model}-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work; hand the running job back to the queue (another replica resumes it at once, the
        attempt not counted: Serve stops a replica when it scales down), let a batch hand itself back after
        the rows in flight, then shut the group down."""
        self._stop.set()
        current = self.worker.current
        if current is not None:
            try:
                self.store.hand_back(current, self.worker.worker_id)  # its step control then stops the render
            except Exception:  # noqa: BLE001 - the lease runs out instead
                log.exception("renderer %s: handing %s back failed", self.worker.worker_id, current)
        for thread in self._threads:
            thread.join(timeout_s)
        if self.holder is not None:
            self.holder.shutdown()
        self.store.close()

    def shared_group(self):
        from wan_dist.engine.dispatch import SharedGroup

        return SharedGroup(holder=self.holder, model=self.model, gate=self.gate)

    # -- one interactive job -------------------------------------------------------------------
    def render(self, job: Job):
        """Render and publish ``job`` on the group (the JobWorker holds the gate); see the module doc."""
        from wan_dist.engine.dispatch import render_once
        from wan_dist.engine.group import RenderGroupFailed, RequestFailed

        request = dataclasses.replace(render_request(job.request), name=job.id)
        s = self.settings
        control = StoreStepControl(job.id, s.store, self.worker.worker_id, self.worker.lease_s,
                                   self.worker.progress_every_s, output=s.output, preview_every_s=s.previews.every_s,
                                   preview_max_side=s.previews.max_side)
        try:
            settled = render_once(self.holder, request, OutputConfig(uri=s.output), control)
        finally:
            if s.previews.every_s > 0:
                _discard_preview(s.output, job.id)
        if settled.stopped is not None:
            if settled.stopped.reason == "lease_lost":
                raise LeaseLost(str(settled.stopped), job.id)
            raise JobCancelled(job.id)
        if settled.broken is not None:  # rebuilt by now: the JobWorker retries the job on the new group
            raise RenderGroupFailed(settled.broken)
        if settled.permanent:  # bad input the validation could not see (an image that does not load)
            raise ValueError(str(settled.cause))
        if settled.error is not None:  # retried by the JobWorker up to max_attempts
            raise RequestFailed(settled.error, cause=settled.cause)
        return settled.value


def _discard_preview(output: str, job_id: str) -> None:
    """The job's preview frame is of no use once its render ended (completed, stopped or failed)."""
    from wan_dist.serve.worker import preview_uri
    from wan_dist.storage import delete

    try:
        delete(preview_uri(output, job_id))  # missing is fine
    except Exception:  # noqa: BLE001 - a stale preview is harmless
        log.warning("renderer: could not remove the preview of %s", job_id, exc_info=True)
