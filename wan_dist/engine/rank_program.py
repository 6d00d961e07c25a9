"""What each rank of a render group runs for one request (SPMD): generate together, the result rank publishes."""

from __future__ import annotations

from datetime import timedelta

from wan_dist.config import OutputConfig, ParallelConfig
from wan_dist.engine.control import load_step_hook, make_step_callback, with_step_hook
from wan_dist.engine.render import RenderRequest, RenderResult, generate_for, model_record, publish

__all__ = ["RankProgram"]


class RankProgram:
    """Binds a loaded pipeline to this rank's place in the group.

    One rank: the single-device pipeline. More: ``wan_dist.parallel``'s SPMD generate, with the same
    signature and results as ``WanPipeline.generate``. ``result_rank``: the rank whose ``generate``
    returns the WanOutput (and whose ``render`` publishes): rank 0, or for disaggregated placement
    stage 1's leader. There stage 0's ranks return as soon as stage 1 has taken their hand-off, so
    the next queued call starts on stage 0 while stage 1 finishes this one.
    ``handoff_timeout_s``: how long a disaggregated hand-off may wait for the other stage (more than
    one stage's time per request; see ``DisaggregatedRunner``).
    ``step_hook``: ``"package.module:name"`` of a step-control factory run for every request
    (:func:`wan_dist.engine.control.with_step_hook`), or "" for none.
    """

    def __init__(self, pipe, parallel: ParallelConfig, *, rank: int, world_size: int,
                 handoff_timeout_s: float | None = None, step_hook: str = ""):
        if parallel.world_size != world_size:
            raise ValueError(f"parallel: degrees multiply to {parallel.world_size}, the group has {world_size} ranks")
        self.step_hook = load_step_hook(step_hook) if step_hook else None
        self.pipe = pipe
        self.parallel = parallel
        self.rank = rank
        self.world_size = world_size
        # this rank's generate of the layout: a callable with result_rank, mesh, control_scope, encodes_text, events()
        self.generate_fn = (SingleDevice(pipe) if world_size == 1 else
                            _parallel_generate(pipe, parallel, handoff_timeout_s))
        self.result_rank: int = self.generate_fn.result_rank
        self.encodes_text: bool = self.generate_fn.encodes_text

    def warmup(self) -> None:
        """One tiny step so first-request costs (allocations, collectives' first use) are paid at start."""
        spec = self.pipe.spec
        stride = spec.vae.spatial_stride * spec.dit.patch_size[1]
        image = None
        if spec.task == "i2v":
            import torch

            image = torch.zeros(3, stride, stride)
        self.generate_fn("warmup", image=image, height=stride, width=stride, num_frames=1, num_inference_steps=1,
                         seed=0, output_type="latent")

    def generate(self, request: RenderRequest, control=None):
        """Every rank runs the request; the result rank returns the WanOutput (frames, settings, timings),
        the others None.

        ``control``: a step control (:mod:`wan_dist.engine.control`), called on the result rank after
        every denoising step; a StopRender it raises stops every rank after that step (each raises it).
        Every rank must get a control or none. With disaggregated placement each stage's leader calls it
        for its stage's steps (see :mod:`wan_dist.engine.control`).
        """
        control = with_step_hook(control, self.step_hook, request)
        counter = None if self.generate_fn.mesh is None else self.generate_fn.mesh.counter
        if counter is not None:
            counter.reset()
        out = generate_for(self.pipe, request, generate=self.generate_fn, callback=self._step_callback(control))
        if self.rank != self.result_rank:
            return None
        if counter is not None:  # the result rank's traffic; the layouts are symmetric (see parallel/comm.py)
            steps = out.settings.num_inference_steps
            out.timings.update({"comm_bytes": float(counter.total), "comm_bytes_per_step": counter.total / steps,
                                **{f"comm_bytes.{op}": float(n) for op, n in counter.snapshot().items()}})
        return out

    def render(self, request: RenderRequest, output: OutputConfig, *, model_source: str | None = None,
               control=None) -> RenderResult | None:
        """Generate, then the result rank publishes the clip and returns the RenderResult (the others None).
        ``control``: as in :meth:`generate` (a stopped render publishes nothing). A clip beyond one window
        renders window by window and is encoded as it goes (engine/long.py); on a colocated group every rank
        runs the windows with its parallel experts and the result rank keeps and publishes them."""
        from wan_dist.engine.long_checks import is_windowed, long_layout_problem
        from wan_dist.engine.render import render_windowed

        if is_windowed(request, self.pipe.spec):
            group = {}
            if self.world_size > 1:
                problem = long_layout_problem(self.parallel)
                if problem is not None:
                    raise ValueError(f"long: {problem}")
                import dataclasses

                import torch.distributed as dist

                request = dataclasses.replace(request, seed=self.generate_fn.shared_seed(request.seed))
                group = {**self.generate_fn.window_layout(), "publishes": self.rank == self.result_rank,
                         "barrier": dist.barrier}
            control = with_step_hook(control, self.step_hook, request)
            return render_windowed(self.pipe, request, output, model_source=model_source,
                                   callback=self._step_callback(control), **group)
        out = self.generate(request, control)
        if out is None:
            return None
        return publish(model_record(self.pipe, model_source), request, out, output)

    def _step_callback(self, control):
        if control is None:
            return None
        device = "cpu"  # gloo broadcasts CPU tensors, NCCL only CUDA ones
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":
                device = self.pipe.device
        # where the control runs and its decision is broadcast: the group's result rank, or this rank's stage
        leader, size, group = self.generate_fn.control_scope
        preview = None
        if self.rank == leader:
            from wan_dist.engine.preview import PreviewDecoder

            preview = PreviewDecoder(self.pipe.vae)
        return make_step_callback(control, rank=self.rank, result_rank=leader, world_size=size, device=device,
                                  preview=preview, group=group)

    def generate_call(self, args: tuple, kwargs: dict):
        """``generate(*args, **kwargs)`` through this rank's layout; the result rank returns the WanOutput."""
        out = self.generate_fn(*args, **kwargs)
        return out if self.rank == self.result_rank else None

    def stage_events(self) -> list:
        """This rank's ``StageEvent`` per denoising step so far (disaggregated placement; else empty)."""
        return self.generate_fn.events()


class SingleDevice:
    """The layout program of a one-rank group: the pipeline's own generate."""

    result_rank = 0
    mesh = None
    encodes_text = True
    control_scope = (0, 1, None)  # the control runs here, nothing to broadcast

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, *args, **kwargs):
        return self.pipe.generate(*args, **kwargs)

    def events(self) -> list:
        return []


def _parallel_generate(pipe, parallel: ParallelConfig, handoff_timeout_s: float | None):
    if parallel.placement == "disaggregated":
        from wan_dist.parallel.stages import make_disaggregated_generate

        # last_stage: stage 0 does not wait for stage 1's result, so queued calls pipeline over the stages
        timeout = None if handoff_timeout_s is None else timedelta(seconds=handoff_timeout_s)
        return make_disaggregated_generate(pipe, parallel, results_on="last_stage", handoff_timeout=timeout)
    from wan_dist.parallel.runtime import make_parallel_generate

    return make_parallel_generate(pipe, parallel)
