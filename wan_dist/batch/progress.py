"""Progress of a batch run: a text progress bar in the job log and Ray metrics on the dashboard.

The log line (every ``interval_s``, and at the end) reads
``[#########...........] 45% 120/266 done, 3 failed, 143 remaining | 41.2 clips/h | ETA 3h32m``.
The same numbers are exported through ``ray.util.metrics`` (Prometheus names ``ray_wan_dist_batch_*``),
which the Ray dashboard's metrics view and any Prometheus scraping the cluster show.
"""

from __future__ import annotations

import logging
import time

__all__ = ["Progress", "format_duration"]

log = logging.getLogger("wan_dist.batch")


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class _Metrics:
    """Ray metrics of the run; absent (no-ops) when Ray's metrics are unavailable."""

    def __init__(self, run_id: str):
        try:
            from ray.util import metrics
        except ImportError:  # pragma: no cover - ray is a dependency
            self.rows = None
            return
        tags = {"run_id": run_id}
        self.rows = metrics.Counter("wan_dist_batch_rows", "Manifest rows finished, by status and model",
                                    tag_keys=("run_id", "status", "model"))
        self.remaining = metrics.Gauge("wan_dist_batch_rows_remaining", "Manifest rows not finished yet",
                                       tag_keys=("run_id",))
        self.rate = metrics.Gauge("wan_dist_batch_clips_per_hour", "Clips published per hour (this run)",
                                  tag_keys=("run_id",))
        self.clip_seconds = metrics.Histogram("wan_dist_batch_render_seconds", "Render time per clip",
                                              boundaries=[1, 5, 15, 30, 60, 120, 300, 600, 1200],
                                              tag_keys=("run_id", "model"))
        for metric in (self.rows, self.remaining, self.rate, self.clip_seconds):
            metric.set_default_tags(tags)

    def finished(self, status: str, model: str, render_s: float | None, remaining: int, rate: float) -> None:
        if self.rows is None:
            return
        self.rows.inc(1, tags={"status": status, "model": model})
        if render_s is not None:
            self.clip_seconds.observe(render_s, tags={"model": model})
        self.remaining.set(remaining)
        self.rate.set(rate)


class Progress:
    """Counts rows as they finish; logs a bar line at most every ``interval_s`` seconds."""

    def __init__(self, total: int, *, run_id: str, interval_s: float = 10.0, width: int = 20, metrics: bool = True):
        self.total = total
        self.interval_s = interval_s
        self.width = width
        self.counts = {"completed": 0, "failed": 0, "skipped": 0}
        self.started = time.monotonic()
        self.first_render_at: float | None = None
        self._last_log = 0.0
        self._metrics = _Metrics(run_id) if metrics else None

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return self.total - self.finished

    def clips_per_hour(self) -> float:
        if self.first_render_at is None or not self.counts["completed"]:
            return 0.0
        return self.counts["completed"] * 3600 / max(time.monotonic() - self.first_render_at, 1e-9)

    def rendering_started(self) -> None:
        if self.first_render_at is None:
            self.first_render_at = time.monotonic()

    def row_finished(self, status: str, model: str, render_s: float | None = None) -> None:
        self.counts[status] += 1
        if self._metrics is not None:
            self._metrics.finished(status, model, render_s, self.remaining, self.clips_per_hour())
        self.maybe_log()

    def line(self) -> str:
        done = self.counts["completed"] + self.counts["skipped"]
        share = self.finished / self.total if self.total else 1.0
        filled = int(share * self.width)
        rate = self.clips_per_hour()
        eta = self.remaining * 3600 / rate if rate else float("nan")
        skipped = f" ({self.counts['skipped']} already published)" if self.counts["skipped"] else ""
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} {done}/{self.total} done{skipped}, "
                f"{self.counts['failed']} failed, {self.remaining} remaining | {rate:.1f} clips/h | "
                f"ETA {format_duration(eta) if self.remaining else '0m00s'}")

    def maybe_log(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_log >= self.interval_s:
            self._last_log = now
            log.info("%s", self.line())
