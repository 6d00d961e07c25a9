"""Autoscaling renderer replicas on the length of their model's queue.

Renderers answer no HTTP requests (they pull jobs from the store), so Serve's request-based autoscaler
sees no load on them. :class:`QueueLengthPolicy` is a Serve custom autoscaling policy (a class: Serve makes
one per deployment in its controller, with ``policy_kwargs``, and calls it every control-loop tick) that
reads the demand from the job store instead: the model's queued and running jobs, videos and batches.

    desired = max(running, ceil((queued + running) / jobs_per_replica))

``running`` is a floor so that the autoscaler never asks for fewer replicas than there are jobs being
rendered. Serve then applies the deployment's ``min_replicas`` / ``max_replicas`` and its upscale / downscale
delays. Because the store is read directly, a model scaled to zero replicas scales up as soon as a job is
queued (a per-replica metric could not: no replica, no metric).

Serve picks which replica to stop when it scales down; a stopped renderer hands its running job back to
the queue at once (``RendererCore.stop``), without counting an attempt, so another replica resumes it.

The controller process opens the store: it needs the store's credentials in its environment (object
stores), or the SQLite file on its machine. A failing read holds the current target and is logged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

__all__ = ["RendererAutoscaling", "QueueLengthPolicy", "desired_replicas", "POLICY"]

log = logging.getLogger("ray.serve")
POLICY = "wan_dist.serve.autoscale:QueueLengthPolicy"


@dataclass(frozen=True, kw_only=True)
class RendererAutoscaling:
    """``serve.app.renderer.autoscaling`` (conf/serve.yaml): bounds and pace of a model's renderer replicas."""

    min_replicas: int = 0
    max_replicas: int = 1
    jobs_per_replica: float = 1.0  # queued + running jobs one replica is meant to carry
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 300.0
    refresh_s: float = 1.0  # how often the controller counts the queue

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.max_replicas < self.min_replicas:
            raise ValueError(f"min_replicas / max_replicas: need 0 <= min_replicas <= max_replicas and "
                             f"max_replicas >= 1, got {self.min_replicas} / {self.max_replicas}")
        for name in ("jobs_per_replica", "refresh_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")

    def serve_config(self, store: str, model: str) -> dict:
        """The deployment's ``autoscaling_config`` (plain, JSON-able: it also goes into Serve config files)."""
        kwargs = {"store": store, "model": model, "jobs_per_replica": self.jobs_per_replica,
                  "refresh_s": self.refresh_s}
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": self.min_replicas, "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s, "downscale_to_zero_delay_s": self.downscale_delay_s,
                "policy": {"policy_function": POLICY, "policy_kwargs": kwargs}}


def desired_replicas(queued: int, running: int, jobs_per_replica: float) -> int:
    """Replicas for ``queued`` + ``running`` jobs at ``jobs_per_replica`` each, never fewer than ``running``."""
    return max(running, math.ceil((queued + running) / jobs_per_replica))


class QueueLengthPolicy:
    """A Serve autoscaling policy: ``policy(ctx) -> (desired replicas, policy state)`` from the job store."""

    def __init__(self, store: str, model: str, jobs_per_replica: float = 1.0, refresh_s: float = 1.0):
        self.store_uri = store
        self.model = model
        self.jobs_per_replica = float(jobs_per_replica)
        self.refresh_s = float(refresh_s)
        self._store = None
        self._counted_at = float("-inf")
        self._desired: int | None = None

    def demand(self) -> tuple[int, int]:
        """(queued, running) jobs of every kind for the model: its job queue and its batch queue."""
        from wan_dist.serve.batches import batch_queue
        from wan_dist.serve.jobs import JobStatus
        from wan_dist.serve.stores import open_store

        if self._store is None:
            self._store = open_store(self.store_uri)
        queued = running = 0
        for queue in (self.model, batch_queue(self.model)):
            queued += self._store.count(model=queue, status=JobStatus.QUEUED)
            running += self._store.count(model=queue, status=JobStatus.IN_PROGRESS)
        return queued, running

    def __call__(self, ctx) -> tuple[int, dict]:
        now = time.monotonic()
        if self._desired is None or now - self._counted_at >= self.refresh_s:
            try:
                queued, running = self.demand()
            except Exception:  # noqa: BLE001 - the controller must go on; hold the target until the store answers
                log.exception("renderer autoscaling of %s: counting the queue in %s failed", self.model,
                              self.store_uri)
                return ctx.target_num_replicas, {}
            self._counted_at = now
            self._desired = desired_replicas(queued, running, self.jobs_per_replica)
        return self._desired, {}
