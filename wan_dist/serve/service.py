"""The API's rules, independent of HTTP framing and of Ray: who may create what, when a queue is full,
and the webhook notifier that turns terminal jobs into signed deliveries.

The typed config is ``wan_dist.serve.settings.ServeSettings`` (conf/serve.yaml). ``JobService.create``
persists an accepted job before the API answers. ``Notifier`` polls the store for jobs that reached a
terminal state (or made progress, when asked) and delivers their events at least once: the delivery
state lives on the job, so a restarted API resumes deliveries that were pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

from wan_dist.serve.auth import RateLimiter
from wan_dist.serve.jobs import ACTIVE_STATUSES, Job, JobStatus, JobStore, VersionConflict
from wan_dist.serve.schemas import RequestError, ValidatedRequest, job_view, video_object
from wan_dist.serve.settings import ServeSettings
from wan_dist.serve.webhooks import WebhookDispatcher

__all__ = ["JobService", "QueueFull", "Notifier", "API_VERSIONS"]

log = logging.getLogger("wan_dist.serve")
API_VERSIONS = ("2.2",)  # Wan-Version header values this server answers; the first is the default


class QueueFull(RequestError):
    def __init__(self, message: str, retry_after_s: float, code: str):
        super().__init__(429, message, code=code, type="rate_limit_error")
        self.retry_after_s = retry_after_s


class JobService:
    def __init__(self, settings: ServeSettings, store: JobStore):
        self.settings = settings
        self.store = store
        self.limiter = RateLimiter(settings.limits.rate_per_s, settings.limits.burst)

    def check_rate(self, owner: str) -> None:
        wait = self.limiter.check(owner)
        if wait is not None:
            raise QueueFull(f"rate limit of {self.settings.limits.rate_per_s:g} requests/s exceeded", wait,
                            "rate_limited")

    def create(self, *, owner: str, variant: str, validated: ValidatedRequest, kind: str,
               idempotency_key: str | None, body_hash: str | None) -> tuple[Job, bool]:
        """Persist a queued job (before the API answers). Raises QueueFull past the model's queue bound or
        the key's active-job quota; an Idempotency-Key seen before returns the first job (created False)."""
        limits, jobs = self.settings.limits, self.settings.jobs
        if idempotency_key is None or self.store.find_by_key(owner, idempotency_key) is None:
            if self.store.count(model=variant, status=JobStatus.QUEUED) >= limits.max_queue_per_model:
                raise QueueFull(f"the queue of {variant} is full ({limits.max_queue_per_model} jobs)", 5.0,
                                "queue_full")
            if self.store.count(owner=owner, status=tuple(ACTIVE_STATUSES)) >= limits.max_active_per_key:
                raise QueueFull(f"this key has {limits.max_active_per_key} jobs queued or running", 5.0,
                                "too_many_jobs")
        deadline = validated.deadline_s or jobs.default_deadline_s
        job = Job.new(model=variant, owner=owner, request=validated.record(), kind=kind, deadline_s=deadline,
                      max_attempts=jobs.max_attempts, webhook_url=validated.webhook_url,
                      metadata=dict(validated.metadata), idempotency_key=idempotency_key, body_hash=body_hash,
                      webhook={"progress": validated.progress_webhooks})
        return self.store.create(job)

    def get(self, job_id: str, owner: str, kinds: tuple[str, ...] = ("job", "video")) -> Job:
        """The owner's record of one of ``kinds``: another key's job, and a batch asked for as a job (or the
        reverse), do not exist for this key."""
        from wan_dist.serve.jobs import JobNotFound

        job = self.store.get(job_id)
        if job.owner != owner or job.kind not in kinds:  # the store's own answer for an id it does not hold
            raise JobNotFound(f"no job {job_id!r}", job_id)
        return job

    def view(self, job: Job) -> dict:
        """The job as its owner sees it: storage locations relative to the server's output (a tenant learns no
        server path), the clip at a presigned http(s) URL where the store gives one, else the API's content URL."""
        position = self.store.queue_position(job.id) if job.status == JobStatus.QUEUED else None
        view = job_view(job.to_dict(), queue_position=position)
        render = view["request"].get("render")
        if render and render.get("image"):
            view["request"] = {**view["request"], "render": {**render, "image": self.relative(render["image"])}}
        view["error"] = self.public_error(view["error"])
        if job.result and job.status == JobStatus.COMPLETED:
            view["result"] = {"seed": job.result.get("seed"), "clip": self.relative(job.result["clip_uri"]),
                              "sidecar": self.relative(job.result.get("sidecar_uri") or ""),
                              "clip_url": self.link(job.result["clip_uri"], f"/v1/jobs/{job.id}/content"),
                              "renditions": self.renditions(job, f"/v1/jobs/{job.id}")}
        return view

    def public_error(self, error: dict | None) -> dict | None:
        """An error as its owner sees it: a failure's message may quote the exception of a render (a traceback,
        the output's files): without the traceback, the files relative to the output, other paths by name."""
        from wan_dist.serve.paths import public_message

        return {**error, "message": public_message(error.get("message"), self.settings.output)} if error else error

    def renditions(self, job: Job, api_base: str) -> list[dict]:
        """The completed job's platform renditions as its owner sees them, in the request's order: ``profile``,
        ``file`` (relative to the output) and ``url`` (presigned http(s), else the API's
        ``{api_base}/renditions/{profile}``), with ``guides_file`` / ``guides_url`` for a guides copy."""
        if job.status != JobStatus.COMPLETED or not job.result:
            return []
        shown = []
        for entry in job.result.get("renditions") or []:
            path = f"{api_base}/renditions/{quote(entry['profile'], safe='')}"
            item = {"profile": entry["profile"], "file": self.relative(entry["uri"]),
                    "url": self.link(entry["uri"], path)}
            if entry.get("guides_uri"):
                item.update(guides_file=self.relative(entry["guides_uri"]),
                            guides_url=self.link(entry["guides_uri"], f"{path}/guides"))
            shown.append(item)
        return shown

    def link(self, uri: str, api_path: str) -> str:
        """Where a client downloads the output at ``uri``: a presigned http(s) URL where the store gives one,
        else ``api_path`` (the API's route for it, which the caller's key opens); never a server path."""
        url = self.presign(uri) or ""
        return url if url.startswith(("https://", "http://")) else api_path

    def relative(self, uri: str) -> str:
        """``uri`` relative to the server's output when it lies there (an upload, a clip), else as it was given."""
        from wan_dist.serve.paths import relative

        return relative(uri, self.settings.output)

    def batch(self, job: Job) -> dict:
        from wan_dist.serve.batch_parts import parts_of
        from wan_dist.serve.batches import batch_view

        return batch_view(job, output_root=self.settings.output, parts=parts_of(self.store, job))

    def video(self, job: Job) -> dict:
        """OpenAI's Video object, with the platform renditions the request asked for once it completed."""
        video = video_object({**job.to_dict(), "expires_at": None})
        return {**video, "error": self.public_error(video["error"]),
                "renditions": self.renditions(job, f"/v1/videos/{job.id}")}

    def presign(self, uri: str) -> str | None:
        from wan_dist.storage.objects import presigned_url

        try:
            return presigned_url(uri, expires_s=self.settings.jobs.presign_expires_s)
        except Exception:  # noqa: BLE001 - a URL is a convenience
            return None


_EVENTS = {JobStatus.COMPLETED: "completed", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


class Notifier:
    """Delivers job events to webhooks, at least once, from a background task of the API process."""

    def __init__(self, service: JobService, dispatcher: WebhookDispatcher, *, poll_s: float = 0.5,
                 full_scan_s: float = 30.0):
        self.full_scan_s = full_scan_s
        self._last_full = float("-inf")
        self.service = service
        self.store = service.store
        self.dispatcher = dispatcher
        self.poll_s = poll_s
        self._task: asyncio.Task | None = None
        self._inflight: set[tuple[str, str]] = set()
        self._by_msg: dict[str, tuple[str, str]] = {}  # webhook-id -> (job id, event)
        dispatcher.on_state = self._on_state

    def start(self) -> None:
        """Run in a thread of its own with its own event loop (independent of the server's loop)."""
        import threading

        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="webhook-notifier",
                                        daemon=True)
        self._thread.start()
        self._loop_ready.wait(10)

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.get_loop().call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout=5)

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        self._loop_ready.set()
        try:
            await self._loop()
        except asyncio.CancelledError:
            pass
        finally:
            await self.dispatcher.aclose(timeout_s=1.0)

    async def _loop(self) -> None:
        import threading

        while threading.main_thread().is_alive():  # past it the interpreter is exiting: nothing can be scheduled
            try:
                await asyncio.to_thread(self.scan)
            except RuntimeError as error:  # the executor shut down (interpreter exit): no scan can run any more
                if "shutdown" in str(error) or not threading.main_thread().is_alive():
                    return
                log.exception("webhook notifier: scan failed")
            except Exception:  # noqa: BLE001 - keep delivering; the store may come back
                log.exception("webhook notifier: scan failed")
            await asyncio.sleep(self.poll_s)

    def _events(self, job: Job) -> list[str]:
        prefix = job.kind if job.kind in ("video", "batch") else "job"
        events = []
        if job.status in _EVENTS and not (job.kind == "video" and job.status == JobStatus.CANCELLED):
            events.append(f"{prefix}.{_EVENTS[job.status]}")
        elif job.webhook.get("progress") and job.status == JobStatus.IN_PROGRESS:
            events.append(f"{prefix}.progress.{job.progress}")
        return events

    def scan(self) -> None:
        """The newest 200 jobs every poll; all of them every ``full_scan_s`` (older jobs finishing late, and
        deliveries left pending by a restart). Reading the whole store every poll grows with its history."""
        now = time.monotonic()
        if now - self._last_full < self.full_scan_s:
            jobs, _ = self.store.list(limit=200, order="desc")
            for job in jobs:
                if job.webhook_url:
                    for event in self._events(job):
                        self._maybe_deliver(job, event)
            return
        self._last_full = now
        after = None
        while True:
            jobs, more = self.store.list(limit=200, after=after, order="asc")
            for job in jobs:
                if job.webhook_url:
                    for event in self._events(job):
                        self._maybe_deliver(job, event)
            if not more or not jobs:
                return
            after = jobs[-1].id

    def _maybe_deliver(self, job: Job, event: str) -> None:
        state = (job.webhook.get("deliveries") or {}).get(event)
        key = (job.id, event)
        if key in self._inflight or (state and state.get("status") in ("delivered", "failed")):
            return
        self._inflight.add(key)
        view = {"video": self.service.video, "batch": self.service.batch}.get(job.kind, self.service.view)
        data = view(job)
        event_type = event.rsplit(".", 1)[0] if event.count(".") > 1 else event
        msg_id = (state or {}).get("msg_id") or f"msg_{job.id}_{event.replace('.', '_')}"  # stable: retries dedupe
        self._by_msg[msg_id] = key
        self.dispatcher.schedule(job.webhook_url, event_type, data, msg_id=msg_id, loop=self._task.get_loop())

    def _on_state(self, delivery) -> None:
        key = self._by_msg.get(delivery.msg_id)
        if key is None:
            return
        self._save(*key, delivery.to_dict())
        if delivery.status != "pending":
            self._inflight.discard(key)
            self._by_msg.pop(delivery.msg_id, None)

    def _save(self, job_id: str, event: str, delivery: dict) -> None:
        for _ in range(5):  # the renderer updates the same record: retry on a version race
            job = self.store.get(job_id)
            webhook = {**job.webhook, "deliveries": {**(job.webhook.get("deliveries") or {}), event: delivery}}
            try:
                self.store.update(job_id, expected_version=job.version, webhook=webhook)
                return
            except VersionConflict:
                time.sleep(0.01)
        log.warning("webhook state of %s %s not saved (busy record)", job_id, event)
