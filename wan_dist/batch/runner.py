"""Run a manifest: K render groups fed from one queue, clips published beside them, results appended.

The driver is one event loop around ``ray.wait``:

* **groups** (``RenderGroup``): each is loaded with one model; ``queue_depth`` requests are queued on it
  (Ray runs an actor's calls in order), so the next clip starts denoising the moment the current one
  is decoded. Rows of one model share a group's loaded weights; when a model's queue runs dry, its
  group reloads the model with the most rows left (mixed manifests).
* **publishers**: rank 0 hands the decoded frames back as an object ref; a separate Ray task encodes
  the MP4 and uploads clip + sidecar while the group renders on.
* **failures**: a rank that dies fails its group's queued calls; their rows go back to the queue and
  the group is rebuilt in the background. Bad input that every rank rejects fails the row at once; other
  errors (storage, timeouts) retry with exponential backoff and jitter up to ``max_attempts``.
* **resume**: rows whose sidecar is already published (``{output}/{prefix}/{id}/clip.json``; the sidecar
  is written last) are skipped. A stop (SIGTERM from ``ray job stop``) flushes the results and leaves
  every published clip whole: clip and sidecar are each written to a temporary key and published atomically.
* **shared group** (``shared=``, an ``engine.dispatch.SharedGroup``: the HTTP API's batches): one render group
  that somebody else owns and also feeds (a renderer replica and its interactive jobs). The runner renders only
  rows of that group's model, one call at a time, each call taken through ``shared.gate`` (the fair policy
  between batch rows and interactive jobs); it never reloads or shuts the group down, and a broken one is
  rebuilt by the shared holder (once for both feeders). A stop lets the call in flight finish and publish.
* **part of a manifest** (``config.only_models``): only those variants' rows; the others are left, unrecorded, to
  sibling runs over the same manifest and output (the HTTP API's mixed batches: one run per model's renderer).

Groups are held, settled, rebuilt and retried with :mod:`wan_dist.engine.dispatch`, as the Serve renderers do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from wan_dist.batch.gallery import write_gallery_quietly
from wan_dist.batch.manifest import ManifestRow, read_manifest
from wan_dist.batch.progress import Progress
from wan_dist.batch.results import ResultsWriter, renditions_column, sidecar_renditions, write_summary
from wan_dist.batch.sizing import group_count
from wan_dist.config import BatchConfig, OutputConfig
from wan_dist.engine.clips import SIDECAR_NAME
from wan_dist.engine.dispatch import GroupHolder, RetryPolicy, SharedGroup, settle
from wan_dist.engine.group import GroupConfig
from wan_dist.engine.rank_calls import Generate, Render
from wan_dist.batch.resume import plan_resume, published_rows
from wan_dist.storage.objects import join, presigned_url

__all__ = ["BatchRunner", "run_batch", "published_rows"]

log = logging.getLogger("wan_dist.batch")


def _publish(model: dict, request, out, output: OutputConfig):
    from wan_dist.engine.render import RenderResult, publish

    if isinstance(out, RenderResult):  # a long clip: its rank published it as it rendered (engine/long.py)
        return out
    return publish(model, request, out, output)


@dataclass
class _Task:
    row: ManifestRow
    attempts: int = 0  # renders tried
    publish_attempts: int = 0
    first_submit: float | None = None
    not_before: float = 0.0
    error: str | None = None
    render_s: float | None = None
    out_ref: Any = None  # rank 0's WanOutput, kept until published
    record: dict | None = None  # the model section of its sidecar


@dataclass
class _Slot:
    index: int
    model: str | None = None
    holder: GroupHolder | None = None  # its group, with the sidecar's model section
    starting: Future | None = None
    start_failures: int = 0
    calls: list = field(default_factory=list)  # [(GroupCall, _Task, set of pending refs)], in order
    first_submit: float | None = None
    last_done: float | None = None

    @property
    def group(self):
        return None if self.holder is None else self.holder.group


class BatchRunner:
    """Runs ``config.manifest`` into ``output.uri`` with render groups laid out and placed as ``config.group``."""

    def __init__(self, config: BatchConfig, output: OutputConfig, *,
                 storage_options: dict | None = None, install_signal_handlers: bool = False,
                 shared: SharedGroup | None = None, on_tick=None, row_control=None):
        if shared is not None:
            config = replace(config, queue_depth=1)  # one row on the shared group at a time: the gate decides
        self.config = config
        self.shared = shared
        self.on_tick = on_tick  # called with the runner on every turn of the loop (lease renewal, cancel checks)
        # row -> a step control for its render (engine.control), or None; a StopRender it raises stops the run
        self.row_control = row_control
        self.retries = RetryPolicy(config.max_attempts, config.retry_backoff_s)
        self.output = output
        self.group = config.group  # use_gpus decided for the cluster when the groups start
        self.storage_options = storage_options
        self.run_id = config.run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.stop_requested = threading.Event()
        self._install_signals = install_signal_handlers
        self._queues: dict[str, deque[_Task]] = {}
        self._publishing: dict[Any, _Task] = {}
        self._to_publish: deque[_Task] = deque()
        self._ref_owner: dict[Any, _Slot] = {}
        self._failed_models: dict[str, str] = {}
        self.busy_s = 0.0  # seconds the groups spent rendering (rank 0's generate time)
        self.failed_rows: list[dict[str, Any]] = []  # the first 20 (id, error, column), for the summary
        self._first_submit: float | None = None
        self._last_publish: float | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="group-start")

    # -- entry --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import ray

        started = time.time()
        cfg = self.config
        manifest = read_manifest(cfg.manifest, default_model=cfg.default_model, layout=cfg.layout,
                                 storage_options=self.storage_options)  # duplicate ids raise here
        if cfg.only_models:
            manifest = manifest.of_models(cfg.only_models)
        rows, invalid = manifest.rows, (manifest.invalid if cfg.record_invalid_rows else [])
        self.results = ResultsWriter(self.output.uri, self.run_id, flush_rows=cfg.results_flush_rows,
                                     flush_s=cfg.results_flush_s, storage_options=self.storage_options)
        total = len(rows) + len(invalid)
        self.progress = Progress(total, run_id=self.run_id, interval_s=cfg.progress_interval_s)
        log.info("run %s: %d rows (%d invalid) from %s into %s", self.run_id, total, len(invalid),
                 cfg.manifest, self.output.uri)
        for bad in invalid:
            self._finish(None, "failed", model="?", row_id=bad.id, index=bad.index, error=bad.reason,
                         error_column=bad.column)
        todo = self._skip_published(rows)
        if self.shared is not None:
            todo = self._only_shared_model(todo)
        for row in todo:
            self._queues.setdefault(row.model, deque()).append(_Task(row))
        if self._install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop_requested.set())
        self.slots = slots = []
        try:
            if todo and self.shared is not None:
                shared = self.shared
                slots.append(_Slot(0, model=shared.model, holder=shared.holder))
                self._loop(slots)
            elif todo:
                count, self.group = group_count(cfg, ray.cluster_resources())
                slots.extend(_Slot(i) for i in range(min(count, len(todo))))
                log.info("starting %d render group(s) of %d rank(s) on %s", len(slots), self.group.world_size,
                         "GPUs" if self.group.use_gpus else "CPUs")
                self._loop(slots)
        finally:
            for slot in slots:
                if slot.starting is not None:
                    slot.starting.cancel()
                if slot.holder is not None and self.shared is None:
                    slot.holder.shutdown()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.results.close()
            self.progress.maybe_log(force=True)
            summary = self._summary(slots, started)
            summary["gallery_uri"] = write_gallery_quietly(self.output.uri, cfg.gallery, manifest=cfg.manifest,
                                                           storage_options=self.storage_options)
            summary["summary_uri"] = write_summary(self.output.uri, self.run_id, summary,
                                                   storage_options=self.storage_options)
        return summary

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self, slots: list[_Slot]) -> None:
        import ray

        while not self.stop_requested.is_set() or (self.shared is not None and self._in_flight(slots)):
            if self.on_tick is not None:
                self.on_tick(self)
            for slot in slots:
                self._tend(slot, slots)
            self._start_publishes()
            busy = any(s.calls or s.starting for s in slots) or self._publishing or self._to_publish
            if not busy and not any(self._queues.values()):
                break
            if not busy and all(s.model is None for s in slots):  # nothing can render what is left
                for model, queue in self._queues.items():
                    while queue:
                        task = queue.popleft()
                        self._fail(task, self._failed_models.get(model, "no render group could serve it"))
                break
            refs = [r for s in slots for (_, _, pending) in s.calls for r in pending] + list(self._publishing)
            if refs:
                done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
                for ref in done:
                    if ref in self._publishing:
                        self._published(ref)
                    elif ref in self._ref_owner:
                        self._call_progressed(self._ref_owner[ref], ref)
            else:
                time.sleep(0.1)
            self.progress.maybe_log()
        if self.stop_requested.is_set():
            log.warning("stop requested: %d row(s) left for a rerun", sum(len(q) for q in self._queues.values()))

    def _in_flight(self, slots: list[_Slot]) -> bool:
        """Calls on the groups or clips being published (what a stop of a shared runner lets finish)."""
        return any(s.calls or s.starting for s in slots) or bool(self._publishing or self._to_publish)

    def _only_shared_model(self, rows: list[ManifestRow]) -> list[ManifestRow]:
        """A shared group renders its own model only: rows naming another fail alone."""
        keep = []
        for row in rows:
            if row.model == self.shared.model:
                keep.append(row)
            else:
                self._finish(row, "failed", error=f"model: {row.model!r} is not this batch's model "
                                                  f"{self.shared.model!r}", error_column="model", attempts=0)
        return keep

    def _tend(self, slot: _Slot, slots: list[_Slot]) -> None:
        """Start, finish starting, reassign or feed one slot."""
        if slot.starting is not None:
            if not slot.starting.done():
                return
            self._started(slot)
        if self.shared is not None:
            self._tend_shared(slot)
            return
        if slot.group is None and slot.starting is None:
            model = self._pick_model(slot, slots)
            if model is not None:
                self._start(slot, model)
            return
        queue = self._queues.get(slot.model)
        if not slot.calls and not self._ready(queue):
            if not queue:  # this model is done: serve another
                other = self._pick_model(slot, slots)
                if other is not None and other != slot.model:
                    slot.holder.shutdown()
                    slot.holder = None
                    self._start(slot, other)
            return
        while len(slot.calls) < self.config.queue_depth and self._ready(queue):
            self._submit(slot, queue.popleft())

    def _tend_shared(self, slot: _Slot) -> None:
        """Feed the shared group one row at a time, each through the gate; nothing new after a stop."""
        if slot.group is None or slot.calls or self.stop_requested.is_set():
            return
        queue = self._queues.get(slot.model)
        if self._ready(queue) and self.shared.gate.try_acquire():
            self._submit(slot, queue.popleft())

    @staticmethod
    def _ready(queue: deque | None) -> bool:
        return bool(queue) and queue[0].not_before <= time.monotonic()

    def _pick_model(self, slot: _Slot, slots: list[_Slot]) -> str | None:
        """The model with the most queued rows per group serving it (the slot's own first)."""
        def load(model: str) -> float:
            serving = sum(1 for s in slots if s.model == model and s is not slot)
            return len(self._queues[model]) / (serving + 1)

        candidates = [m for m, q in self._queues.items() if q and m not in self._failed_models]
        if slot.model in candidates:
            return slot.model
        return max(candidates, key=load, default=None)

    def _start(self, slot: _Slot, model: str) -> None:
        cfg = self.config
        config = GroupConfig.from_spec(self.group, source=cfg.sources.get(model, model), layout=cfg.layout)
        slot.model, slot.holder = model, None
        slot.starting = self._pool.submit(GroupHolder.start, config, ready_timeout_s=cfg.group_ready_timeout_s)

    def _started(self, slot: _Slot) -> None:
        future, slot.starting = slot.starting, None
        try:
            slot.holder = future.result()
            slot.start_failures = 0
            log.info("group %d: %s loaded (generation %d)", slot.index, slot.model, slot.group.generation)
        except Exception as error:  # noqa: BLE001 - a group that cannot start is reported, not fatal
            slot.start_failures += 1
            reason = f"render group for model {slot.model!r} failed to start: {type(error).__name__}: {error}"
            log.error("group %d: %s", slot.index, reason)
            if slot.start_failures >= self.config.max_attempts or isinstance(error, ValueError):
                self._failed_models[slot.model] = reason
                queue = self._queues.get(slot.model, deque())
                while queue:
                    self._fail(queue.popleft(), reason)
                slot.start_failures = 0
            slot.model = None

    def _submit(self, slot: _Slot, task: _Task) -> None:
        now = time.monotonic()
        task.first_submit = task.first_submit or now
        self._first_submit = self._first_submit or now
        slot.first_submit = slot.first_submit or now
        self.progress.rendering_started()
        control = self.row_control(task.row) if self.row_control else None
        if task.row.request.long is not None:  # a long clip is encoded on its rank as it renders: never whole
            source = slot.holder.record.get("source")
            call = slot.group.submit(Render(task.row.request, self._row_output(task.row), source, control))
        else:
            call = slot.group.submit(Generate(task.row.request, control))
        slot.group.prefetch(task.row.request)  # its prompts are encoded while the call before it renders
        slot.calls.append((call, task, set(call.refs)))
        for ref in call.refs:
            self._ref_owner[ref] = slot

    def _call_progressed(self, slot: _Slot, ref) -> None:
        import ray

        index = next(i for i, (_, _, pending) in enumerate(slot.calls) if ref in pending)
        call, task, pending = slot.calls[index]
        pending.discard(ref)
        del self._ref_owner[ref]
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayError:
            pending.clear()  # the group decides what the error means
        if pending:
            return
        settled = settle(slot.group, call, fetch=False)
        self._release_gate()
        if settled.broken is not None:
            self._group_failed(slot, settled.broken)
            return
        slot.calls.pop(index)
        if settled.stopped is not None:  # the row's control stopped the run (a cancel): left undone
            self.stop_requested.set()
        elif settled.error is not None:
            self._retry(task, settled.error, permanent=settled.permanent)
        else:
            slot.last_done = time.monotonic()
            task.attempts += 1
            task.out_ref, task.record = settled.value, slot.holder.record
            self._to_publish.append(task)

    def _release_gate(self) -> None:
        if self.shared is not None:
            self.shared.gate.release()

    def _group_failed(self, slot: _Slot, reason: str) -> None:
        """Every call queued on the group goes back to the front of its queue; the group is rebuilt."""
        log.error("group %d: %s; rebuilding", slot.index, reason)
        queue = self._queues.setdefault(slot.model, deque())
        for position, (call, task, pending) in reversed(list(enumerate(slot.calls))):
            for ref in pending:
                self._ref_owner.pop(ref, None)
            if position == 0:  # the request that was running when the group broke
                task.attempts += 1
                if task.attempts >= self.config.max_attempts:
                    self._fail(task, reason)
                    continue
            task.error = reason
            queue.appendleft(task)
        slot.calls = []
        holder, slot.holder = slot.holder, None  # a shared holder is rebuilt once for its owner and this runner
        slot.starting = self._pool.submit(holder.rebuild, holder.generation)

    def _retry(self, task: _Task, error: str, *, permanent: bool = False) -> None:
        task.attempts += 1
        task.error = error
        delay = self.retries.delay(task.attempts, permanent=permanent)
        if delay is None:
            self._fail(task, error)
            return
        task.not_before = time.monotonic() + delay
        log.warning("row %s: attempt %d failed (%s); retrying", task.row.id, task.attempts, error.splitlines()[0])
        self._queues[task.row.model].appendleft(task)

    # -- publishing ---------------------------------------------------------------------------
    def _start_publishes(self) -> None:
        import ray

        remote = ray.remote(num_cpus=self.config.publish_cpus, max_retries=1)(_publish)
        now = time.monotonic()
        waiting = deque()
        while self._to_publish and len(self._publishing) < self.config.publishers:
            task = self._to_publish.popleft()
            if task.not_before > now:
                waiting.append(task)
                continue
            ref = remote.remote(task.record, task.row.request, task.out_ref, self._row_output(task.row))
            self._publishing[ref] = task
        self._to_publish.extendleft(reversed(waiting))

    def _published(self, ref) -> None:
        import ray

        task = self._publishing.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as error:
            result = None
            error_text = f"publisher failed: {type(error).__name__}: {str(error).splitlines()[0]}"
        else:
            error_text = result.error
        if result is not None and result.status == "completed":
            task.out_ref = None
            self._complete(task, result)
            return
        task.publish_attempts += 1
        delay = self.retries.delay(task.publish_attempts)
        if delay is None:
            self._fail(task, error_text or "publishing failed")
            return
        log.warning("row %s: publishing failed (%s); retrying", task.row.id, (error_text or "").splitlines()[0])
        task.not_before = time.monotonic() + delay
        self._to_publish.append(task)

    def _row_output(self, row: ManifestRow) -> OutputConfig:
        if not row.output_prefix:
            return self.output
        return replace(self.output, uri=join(self.output.uri, row.output_prefix))

    # -- records ------------------------------------------------------------------------------
    def _skip_published(self, rows: list[ManifestRow]) -> list[ManifestRow]:
        if not self.config.resume:
            return list(rows)
        todo, done, conflicts = plan_resume(rows, self.output.uri, storage_options=self.storage_options)
        for row, prefix, entries in done:
            self._finish(row, "skipped", clip_uri=join(prefix, "clip.mp4"), sidecar_uri=join(prefix, SIDECAR_NAME),
                         clip_url=self._presign(join(prefix, "clip.mp4")), request_digest=row.request.digest(),
                         renditions=renditions_column(*sidecar_renditions(entries), self._presign))
        for row, prefix, _ in conflicts:  # never keep a clip of another request silently, nor overwrite it
            self._finish(row, "failed", error=f"a clip rendered from a different request is already published at "
                         f"{prefix}; give this row a new id, or delete that folder to render it again",
                         error_column="id", request_digest=row.request.digest())
        return todo

    def _presign(self, uri: str) -> str | None:
        try:
            return presigned_url(uri, expires_s=self.config.presign_expires_s, storage_options=self.storage_options)
        except Exception:  # noqa: BLE001 - a URL is a convenience; the URI is the result
            return None

    def _complete(self, task: _Task, result) -> None:
        timings = dict(result.timings)
        self.busy_s += timings.get("total_s", 0.0)
        self._last_publish = time.monotonic()
        self._finish(task.row, "completed", attempts=task.attempts, clip_uri=result.clip_uri,
                     sidecar_uri=result.sidecar_uri, clip_url=self._presign(result.clip_uri), seed=result.seed,
                     render_s=timings.get("total_s"), publish_s=timings.get("encode_upload_s"),
                     wall_s=time.monotonic() - task.first_submit, timings=json.dumps(timings, sort_keys=True),
                     request_digest=task.row.request.digest(),
                     renditions=renditions_column(result.renditions, result.rendition_guides, self._presign))

    def _fail(self, task: _Task, error: str) -> None:
        self._finish(task.row, "failed", attempts=max(task.attempts, 1), error=error)

    def _finish(self, row: ManifestRow | None, status: str, *, model: str | None = None, row_id: str | None = None,
                index: int | None = None, **fields) -> None:
        model, row_id = model or row.model, row_id if row is None else row.id
        self.results.add({"id": row_id, "index": index if row is None else row.index, "model": model,
                          "status": status, **fields})
        self.progress.row_finished(status, model, fields.get("render_s"))
        if status == "failed" and len(self.failed_rows) < 20:  # the results table has every one
            self.failed_rows.append({"id": row_id, "error": fields.get("error"),
                                     "error_column": fields.get("error_column")})

    def _summary(self, slots: list[_Slot], started: float) -> dict[str, Any]:
        counts = dict(self.progress.counts)
        spans = [(s.first_submit, s.last_done) for s in slots if s.first_submit and s.last_done]
        render_span = sum(end - start for start, end in spans)
        active = (self._last_publish - self._first_submit) if self._last_publish and self._first_submit else None
        return {"run_id": self.run_id, "manifest": self.config.manifest, "output": self.output.uri,
                "rows": self.progress.total, **counts,
                "stopped": self.stop_requested.is_set(), "groups": len(slots),
                "group_size": self.group.world_size, "parallel": dataclasses.asdict(self.group.parallel),
                "wall_s": time.time() - started, "render_s": self.busy_s,
                # per group: rendering time / (first request submitted .. last one rendered); 1.0 = never idle
                "group_busy_share": (self.busy_s / render_span) if render_span else None,
                "active_s": active,  # first request submitted .. last clip published
                "clips_per_hour": self.progress.clips_per_hour(), "result_parts": list(self.results.parts),
                "failed_rows": list(self.failed_rows)}


def run_batch(config: BatchConfig, output: OutputConfig, **kwargs):
    """Run a manifest to the end (or until SIGTERM); returns the run summary."""
    return BatchRunner(config, output, **kwargs).run()
