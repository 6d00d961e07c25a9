"""The API's rules, independent of HTTP framing and of Ray: who may create what, when a queue is full,
and the webhook notifier that turns terminal jobs into signed deliveries.

``ServeSettings`` is the typed config of ``wan-dist serve`` (conf/serve.yaml). ``JobService.create``
persists an accepted job before the API answers. ``Notifier`` polls the store for jobs that reached a
terminal state (or made progress, when asked) and delivers their events at least once: the delivery
state lives on the job, so a restarted API resumes deliveries that were pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from wan_dist.config import from_dict
from wan_dist.serve.auth import RateLimiter
from wan_dist.serve.jobs import ACTIVE_STATUSES, Job, JobStatus, JobStore, VersionConflict
from wan_dist.serve.schemas import RequestError, ValidatedRequest, job_view, video_object
from wan_dist.serve.webhooks import WebhookDispatcher

__all__ = ["ServeSettings", "JobService", "QueueFull", "Notifier", "API_VERSIONS"]

log = logging.getLogger("wan_dist.serve")
API_VERSIONS = ("2.2",)  # Wan-Version header values this server answers; the first is the default


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    models: tuple[str, ...] = ("tiny",)  # variants (presets) served, one renderer deployment each
    sources: dict = field(default_factory=dict)  # variant -> checkpoint source (default: the name)
    store: str = "sqlite:///outputs/serve/jobs.db"
    output: str = "outputs/serve"  # clips land at {output}/{job id}/clip.mp4
    api_keys: tuple[str, ...] = ()
    allow_anonymous: bool = False
    rate_per_s: float = 10.0
    burst: int = 20
    max_active_per_key: int = 100  # queued + in_progress jobs of one key
    max_queue_per_model: int = 1000
    default_deadline_s: float = 3600.0
    max_attempts: int = 3
    allow_private_urls: bool = False
    poll_after_ms: int = 2000
    presign_expires_s: int = 3600
    layout: str = "diffusers"
    device: str = "cpu"
    dtype: str = "auto"
    renderer_replicas: int = 1  # fixed count, unless renderer_autoscaling is set
    # {} = a fixed renderer_replicas; else RendererAutoscaling fields (min/max_replicas, jobs_per_replica, delays):
    # replicas follow the model's queue length (wan_dist.serve.autoscale)
    renderer_autoscaling: dict = field(default_factory=dict)
    # each renderer replica owns a render group of this layout (ParallelConfig fields; {} = one rank), one
    # placement-group bundle per rank: cpus_per_rank CPUs, and one GPU when device is "cuda"
    parallel: dict = field(default_factory=dict)
    cpus_per_rank: float = 1.0
    env: dict = field(default_factory=dict)  # environment of the API, renderer and rank processes (e.g. AWS_*)
    interactive_per_batch_row: int = 2  # fair turns: at most this many interactive jobs while a batch row waits
    batch_retry_backoff_s: float = 2.0
    batch_results_flush_rows: int = 25
    webhook_max_attempts: int = 8
    webhook_base_delay_s: float = 1.0
    webhook_secret: str | None = field(default=None, repr=False)  # whsec_...; None: $WAN_DIST_WEBHOOK_SECRET
    preview_every_s: float = 2.0  # a preview frame of a rendering job at most this often (0: none); engine/preview.py
    preview_max_side: int = 256
    lease_s: float = 60.0  # a renderer's lease on its job (renewed while rendering): a dead one's job reruns after it
    step_hook: str = ""  # "package.module:name": a step control for every render of the renderers (engine/control.py)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve.models: name at least one model")
        for name in ("rate_per_s", "default_deadline_s", "lease_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("burst", "max_active_per_key", "max_queue_per_model", "max_attempts", "renderer_replicas",
                     "interactive_per_batch_row", "batch_results_flush_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"serve.{name}: must be >= 1, got {getattr(self, name)}")
        if self.preview_every_s < 0 or self.preview_max_side < 16:
            raise ValueError(f"serve.preview_every_s must be >= 0 and serve.preview_max_side >= 16, got "
                             f"{self.preview_every_s} / {self.preview_max_side}")
        if self.cpus_per_rank <= 0 or self.batch_retry_backoff_s < 0:
            raise ValueError("serve.cpus_per_rank: must be > 0 and serve.batch_retry_backoff_s >= 0")
        try:
            self.parallel_config  # noqa: B018 - validated now
        except (TypeError, ValueError) as error:
            raise ValueError(f"serve.parallel: {error}") from None
        try:
            self.autoscaling  # noqa: B018 - validated now
        except (TypeError, ValueError) as error:
            raise ValueError(f"serve.renderer_autoscaling: {error}") from None

    @property
    def autoscaling(self):
        """The RendererAutoscaling of ``renderer_autoscaling``, or None for a fixed replica count."""
        from wan_dist.serve.autoscale import RendererAutoscaling

        return from_dict(RendererAutoscaling, dict(self.renderer_autoscaling)) if self.renderer_autoscaling else None

    @property
    def parallel_config(self):
        from wan_dist.config import ParallelConfig

        return from_dict(ParallelConfig, dict(self.parallel))


class QueueFull(RequestError):
    def __init__(self, message: str, retry_after_s: float, code: str):
        super().__init__(429, message, code=code, type="rate_limit_error")
        self.retry_after_s = retry_after_s


class JobService:
    def __init__(self, settings: ServeSettings, store: JobStore):
        self.settings = settings
        self.store = store
        self.limiter = RateLimiter(settings.rate_per_s, settings.burst)

    def check_rate(self, owner: str) -> None:
        wait = self.limiter.check(owner)
        if wait is not None:
            raise QueueFull(f"rate limit of {self.settings.rate_per_s:g} requests/s exceeded", wait, "rate_limited")

    def create(self, *, owner: str, variant: str, validated: ValidatedRequest, kind: str,
               idempotency_key: str | None, body_hash: str | None) -> tuple[Job, bool]:
        """Persist a queued job (before the API answers). Raises QueueFull past the model's queue bound or
        the key's active-job quota; an Idempotency-Key seen before returns the first job (created False)."""
        s = self.settings
        if idempotency_key is None or self.store.find_by_key(owner, idempotency_key) is None:
            if self.store.count(model=variant, status=JobStatus.QUEUED) >= s.max_queue_per_model:
                raise QueueFull(f"the queue of {variant} is full ({s.max_queue_per_model} jobs)", 5.0, "queue_full")
            if self.store.count(owner=owner, status=tuple(ACTIVE_STATUSES)) >= s.max_active_per_key:
                raise QueueFull(f"this key has {s.max_active_per_key} jobs queued or running", 5.0, "too_many_jobs")
        deadline = validated.deadline_s or s.default_deadline_s
        job = Job.new(model=variant, owner=owner, request=validated.record(), kind=kind, deadline_s=deadline,
                      max_attempts=s.max_attempts, webhook_url=validated.webhook_url,
                      metadata=dict(validated.metadata), idempotency_key=idempotency_key, body_hash=body_hash,
                      webhook={"progress": validated.progress_webhooks})
        return self.store.create(job)

    def get(self, job_id: str, owner: str, kinds: tuple[str, ...] = ("job", "video")) -> Job:
        """The owner's record of one of ``kinds``: another key's job, and a batch asked for as a job (or the
        reverse), do not exist for this key."""
        from wan_dist.serve.jobs import JobNotFound

        job = self.store.get(job_id)
        if job.owner != owner or job.kind not in kinds:
            raise JobNotFound(job_id)
        return job

    def view(self, job: Job) -> dict:
        position = self.store.queue_position(job.id) if job.status == JobStatus.QUEUED else None
        view = job_view(job.to_dict(), queue_position=position)
        if job.result and job.status == JobStatus.COMPLETED:
            view["result"] = {**job.result, "clip_url": self.presign(job.result["clip_uri"])}
        return view

    def batch(self, job: Job) -> dict:
        from wan_dist.serve.batches import batch_view

        return batch_view(job, output_root=self.settings.output)

    def video(self, job: Job) -> dict:
        return video_object({**job.to_dict(), "expires_at": None})

    def presign(self, uri: str) -> str | None:
        from wan_dist.storage.objects import presigned_url

        try:
            return presigned_url(uri, expires_s=self.settings.presign_expires_s)
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
        while True:
            try:
                await asyncio.to_thread(self.scan)
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


def settings_from_dict(data: dict) -> ServeSettings:
    """ServeSettings from plain config (Hydra, Serve `args`): lists become tuples, model names variants."""
    data = {k: tuple(v) if k in ("models", "api_keys") else v for k, v in data.items()}
    if "models" in data:  # public names (wan2.2-t2v-a14b) or variant names (t2v-a14b, tiny)
        from wan_dist.serve.schemas import MODEL_NAMES

        unknown = [m for m in data["models"] if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"serve.models: unknown model(s) {unknown}; known: {sorted(MODEL_NAMES)}")
        data["models"] = tuple(MODEL_NAMES[m] for m in data["models"])
    return from_dict(ServeSettings, data)  # names unknown fields
