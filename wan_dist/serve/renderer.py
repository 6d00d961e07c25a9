"""A renderer: one model loaded in this process, a JobWorker thread taking that model's jobs from the store.

Each clip lands at ``{output}/{job id}/clip.mp4`` + ``clip.json``. The render's step callback renews the
job's lease, reports progress and stops between denoising steps when the job is cancelled or late.
This renderer runs the single-device pipeline of its replica (one GPU, or the CPU); a replica owning a
multi-rank render group is the next step (see README, "HTTP API").
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from wan_dist.config import OutputConfig
from wan_dist.serve.jobs import Job, open_store
from wan_dist.serve.schemas import render_request
from wan_dist.serve.service import ServeSettings
from wan_dist.serve.worker import JobWorker

__all__ = ["RendererCore"]

log = logging.getLogger("wan_dist.serve")


class RendererCore:
    def __init__(self, settings: ServeSettings, model: str, *, poll_s: float = 0.2,
                 lease_s: float | None = None):
        self.settings = settings
        self.model = model
        self.source = settings.sources.get(model, model)
        self.pipe = None
        self.store = open_store(settings.store)
        self.worker = JobWorker(self.store, model, self.render, poll_s=poll_s,
                                lease_s=settings.lease_s if lease_s is None else lease_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.pipe is not None and self._thread is not None and self._thread.is_alive()

    def load(self) -> None:
        from wan_dist.cli.render import torch_dtype
        from wan_dist.engine.pipeline import load_pipeline

        s = self.settings
        self.pipe = load_pipeline(self.source, device=s.device, dtype=torch_dtype(s.dtype, s.device), layout=s.layout)
        log.info("renderer %s: %s loaded on %s", self.worker.worker_id, self.model, s.device)

    def start(self) -> "RendererCore":
        if self.pipe is None:
            self.load()
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,), name=f"renderer-{self.model}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.store.close()

    def render(self, job: Job, on_step):
        from wan_dist.engine.render import render

        request = dataclasses.replace(render_request(job.request), name=job.id)
        return render(self.pipe, request, OutputConfig(uri=self.settings.output), model_source=self.source,
                      callback=lambda step, total, _latents: on_step(step, total))
