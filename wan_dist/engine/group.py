"""Ray render groups: a gang-scheduled set of rank actors that render one request together (SPMD).

A group is a placement group (STRICT_PACK; one GPU per bundle on GPU clusters, CPU bundles otherwise)
plus one ``RankWorker`` actor per bundle. Rank 0's node address and a free port found there are the
rendezvous (never a fixed port); the ranks join one torch.distributed group (NCCL on GPUs, gloo on CPU).
The driver sends a request once; the whole denoising loop runs inside the ranks; the group's result
rank returns the result: rank 0, or with disaggregated placement the leader of the low-noise stage
(the high-noise stage returns right after its hand-off and starts the next queued call). A rank
that dies fails the request with ``RenderGroupFailed``; ``rebuild()`` starts a new gang and the
request can be retried. A step control (``wan_dist.engine.control``) passed with a request sees every
denoising step on the result rank and can stop every rank between two steps: ``wait`` then raises
``RequestFailed`` with the ``StopRender`` as its cause, and the group renders the next request.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from wan_dist.config import GroupSpec, OutputConfig
from wan_dist.engine.control import StopRender
from wan_dist.engine.rank_calls import ModelRecord, RankCall, Render
from wan_dist.engine.settings import negative_prompts
from wan_dist.engine.sources import EMBEDDED_PRESETS, resolve_source

__all__ = ["GroupConfig", "GroupCall", "RenderGroup", "RenderGroupFailed", "RequestFailed", "RankWorker"]

log = logging.getLogger(__name__)
_RESOLVE_LOCK = threading.Lock()  # groups may start from several threads; one writes an embedded preset


class RenderGroupFailed(RuntimeError):
    """A rank of the group died or raised; the group must be rebuilt before it renders again."""


class RequestFailed(RuntimeError):
    """Every rank raised the same error for one request and the group is still healthy.

    ``cause`` is the result rank's exception (another rank's if it has none); ``permanent`` is True for
    bad input (ValueError, a missing object), which a retry cannot fix. A render stopped by its step
    control has a ``StopRender`` cause and is not permanent.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None, permanent: bool = False):
        super().__init__(message)
        self.cause = cause
        self.permanent = permanent

    def __reduce__(self):
        return (_request_failed, (str(self), self.cause, self.permanent))


def _request_failed(message, cause, permanent):
    return RequestFailed(message, cause=cause, permanent=permanent)


@dataclass(frozen=True)
class GroupCall:
    """One request in flight on every rank of a group (see ``RenderGroup.submit``).

    ``refs``: one object ref per rank, in rank order; ``result_index``: the rank whose ref holds the
    call's value (``RenderGroup.result_rank`` when submitted).
    """

    refs: tuple
    generation: int
    result_index: int = 0

    @property
    def leader(self):
        """The result rank's object ref: what ``ray.wait`` on many groups' calls should watch. With
        disaggregated placement other ranks' refs may be ready earlier (stage 0 hands off and returns)."""
        return self.refs[self.result_index]


@dataclass(frozen=True, kw_only=True)
class GroupConfig(GroupSpec):
    """What a render group loads, on top of how it is laid out and placed (its GroupSpec fields: parallel,
    use_gpus, cpus_per_rank, threads_per_rank, dtype, step_hook; see wan_dist.config.GroupSpec).
    ``use_gpus=None`` is decided when the group starts: GPUs when the cluster has them."""

    source: str
    layout: str = "diffusers"  # layout an embedded preset is written in
    collective_timeout_s: float = 120.0
    # disaggregated placement: the stage leaders' hand-off waits for the other stage to finish its
    # previous request (denoise, decode, publish), so this must exceed one stage's time per request;
    # it has its own process group, so collective_timeout_s can stay short
    handoff_timeout_s: float = 1800.0
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the rank processes
    # Place the ranks in the caller's placement group (rank i in bundle bundle_offset + i) instead of
    # creating one, when the caller runs in one: a Ray Serve replica sits in bundle 0 of its
    # placement_group_bundles and owns its render group this way. That group is not ours: shutdown()
    # leaves it. Without a current placement group, one is created as usual.
    reuse_placement_group: bool = False
    bundle_offset: int = 1
    # how the ranks read a request's image and LoRA URLs (WanPipeline.fetch_policy): None, the operator's;
    # a storage.fetch.FetchPolicy for tenants' requests (the Serve renderers set one)
    fetch: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bundle_offset < 0:
            raise ValueError(f"GroupConfig.bundle_offset: must be >= 0, got {self.bundle_offset}")
        for name in ("collective_timeout_s", "handoff_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GroupConfig.{name}: must be > 0, got {getattr(self, name)}")

    @classmethod
    def from_spec(cls, spec: GroupSpec, *, source: str, **fields: Any) -> "GroupConfig":
        """The GroupConfig of a group laid out and placed as ``spec`` that loads ``source``."""
        placed = {f.name: getattr(spec, f.name) for f in dataclasses.fields(GroupSpec)}
        return cls(**placed, source=source, **fields)


class RankWorker:
    """One rank of a render group. Lifecycle: setup -> load -> warmup -> render* -> shutdown."""

    def __init__(self, rank: int, world_size: int):
        self.rank = rank
        self.world_size = world_size
        self.pipe = None
        self.program = None

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's address and a port free on it (asked of rank 0 only)."""
        import ray

        from wan_dist.parallel.local import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, address: str, port: int, *, backend: str, threads: int, timeout_s: float,
              memory_limit_mb: int = 0) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        if memory_limit_mb and backend == "nccl":  # GroupSpec.memory_limit_mb of a GPU rank: a watch of its RSS
            from wan_dist.engine.memory_watch import watch_memory

            watch_memory(memory_limit_mb)
        elif memory_limit_mb:  # of a CPU rank: this process's private memory, heap and anonymous maps
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            resource.setrlimit(resource.RLIMIT_DATA, (memory_limit_mb * 2**20, hard))
        if self.world_size > 1:
            dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=self.rank,
                                    world_size=self.world_size, timeout=timedelta(seconds=timeout_s))

    def load(self, config: GroupConfig) -> dict[str, Any]:
        import torch

        from wan_dist.engine.pipeline import load_local_pipeline
        from wan_dist.engine.rank_program import RankProgram
        from wan_dist.models.dtypes import torch_dtype
        from wan_dist.parallel.text import TEXT_RANK

        device = "cuda" if config.use_gpus and torch.cuda.is_available() else "cpu"
        dtype = torch_dtype(config.dtype, device)
        # one rank encodes the prompts and broadcasts the embeddings: the others never read the text encoder
        self.pipe = load_local_pipeline(config.source, device=device, dtype=dtype, layout=config.layout,
                                        expert_loader=self._sharded_loader(config, device, dtype),
                                        text_encoder=self.rank == TEXT_RANK)
        self.pipe.fetch_policy = config.fetch
        self.program = RankProgram(self.pipe, config.parallel, rank=self.rank, world_size=self.world_size,
                                   handoff_timeout_s=config.handoff_timeout_s, step_hook=config.step_hook)
        if self.pipe.text_encoder is not None:
            from wan_dist.engine.prompt_cache import PromptCache

            self.pipe.prompt_cache = PromptCache(self.pipe.encode_prompt_uncached, size=8)
        return {"rank": self.rank, "variant": self.pipe.spec.name, "device": device,
                "result_rank": self.program.result_rank}

    def _sharded_loader(self, config: GroupConfig, device, dtype):
        """What this rank reads of the experts: its stage's expert only (disaggregated placement), or
        with FSDP only its rows of each expert tensor; never a full copy it does not need."""
        if config.parallel.placement == "disaggregated":
            from wan_dist.parallel.stages import plan_stages, stage_expert_loader

            layout = plan_stages(config.parallel, self.world_size)
            return stage_expert_loader(layout.stage_of(self.rank), device=device, dtype=dtype)
        if not config.parallel.fsdp or self.world_size == 1:
            return None
        from wan_dist.parallel.fsdp import load_dit_sharded
        from wan_dist.parallel.mesh import ParallelMesh

        mesh = ParallelMesh.build(config.parallel)

        def load(folder, info):
            return load_dit_sharded(folder, info.spec.dit, layout=info.layout, mesh=mesh, device=device, dtype=dtype)

        return load

    def warmup(self) -> None:
        self.program.warmup()

    def run(self, call: RankCall) -> Any:
        """Run one :class:`~wan_dist.engine.rank_calls.RankCall` (every rank gets the same calls in one order)."""
        return call.run(self.program)

    def prefetch_text(self, request) -> None:
        """Encode ``request``'s prompts into the pipeline's PromptCache. Runs in the "prefetch" concurrency
        group, beside the render in progress; a failure here only means the render encodes them itself."""
        cache = self.pipe.prompt_cache
        if cache is None or not self.program.encodes_text:
            return
        try:
            cache.prefetch([request.prompt])
            cache.prefetch(negative_prompts(self.pipe.spec, request.negative_prompt, 1))
        except Exception:  # noqa: BLE001
            log.warning("rank %d: prefetching a prompt failed", self.rank, exc_info=True)

    def prompt_cache_stats(self) -> dict[str, int] | None:
        cache = self.pipe.prompt_cache
        return None if cache is None else {"hits": cache.hits, "misses": cache.misses}

    def stage_events(self) -> list:
        """This rank's ``StageEvent`` per denoising step so far (disaggregated placement; else empty).
        Times are ``time.monotonic()``: comparable between ranks of one machine only."""
        return self.program.stage_events()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class RenderGroup:
    """A gang of ``config.world_size`` RankWorker actors on one placement group."""

    def __init__(self, config: GroupConfig):
        self.config = config
        self.placement_group = None
        self._owns_placement_group = False  # False: the caller's (reuse_placement_group), never removed here
        self._bundle_offset = 0
        # One call goes to every rank in a loop; a rank runs its calls in arrival order. Two threads
        # submitting at once (a renderer's interactive jobs and batch rows) could interleave their loops
        # so that rank 0 gets A then B and rank 1 B then A: the ranks of different requests would then
        # meet in collectives and hang. The lock makes every rank see the calls in the same order.
        self._submit_lock = threading.Lock()
        self.workers: list = []
        self.generation = 0
        self.result_rank = 0  # the rank whose calls return the result (see RankProgram.result_rank)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, *, ready_timeout_s: float = 300) -> "RenderGroup":
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.config.use_gpus is None:  # GPUs when the cluster has them (GroupSpec.for_cluster)
            self.config = self.config.for_cluster(ray.cluster_resources())
        config = self.config
        if config.source in EMBEDDED_PRESETS:  # written once here, not raced by every rank (local Ray only)
            with _RESOLVE_LOCK:
                config = replace(config, source=str(resolve_source(config.source, layout=config.layout)))
        self._place(ready_timeout_s)
        actor = ray.remote(concurrency_groups={"prefetch": 1})(RankWorker)
        env = {"OMP_NUM_THREADS": str(config.threads_per_rank), **config.env}
        self.workers = [
            actor.options(num_cpus=config.cpus_per_rank, num_gpus=1 if config.use_gpus else 0,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(
                              placement_group=self.placement_group,
                              placement_group_bundle_index=self._bundle_offset + rank),
                          runtime_env={"env_vars": env}, max_restarts=0).remote(rank, config.world_size)
            for rank in range(config.world_size)]
        address, port = ray.get(self.workers[0].rendezvous_address.remote())
        backend = "nccl" if config.use_gpus else "gloo"
        self._all(lambda w: w.setup.remote(address, port, backend=backend, threads=config.threads_per_rank,
                                           timeout_s=config.collective_timeout_s,
                                           memory_limit_mb=config.memory_limit_mb))
        infos = self._all(lambda w: w.load.remote(config))
        result_ranks = {info["result_rank"] for info in infos}
        if len(result_ranks) != 1:
            self.shutdown()
            raise RenderGroupFailed(f"render group: ranks disagree on the result rank: {sorted(result_ranks)}")
        self.result_rank = result_ranks.pop()
        self._all(lambda w: w.warmup.remote())
        self.generation += 1
        log.info("render group %d ready: %d ranks on %s", self.generation, config.world_size, address)
        return self

    def _place(self, ready_timeout_s: float) -> None:
        """The caller's placement group (``config.reuse_placement_group`` inside one) or a new one."""
        import ray
        from ray.util.placement_group import get_current_placement_group, placement_group

        config = self.config
        current = get_current_placement_group() if config.reuse_placement_group else None
        if current is not None:
            needed = config.bundle_offset + config.world_size
            if current.bundle_count < needed:
                raise ValueError(f"reuse_placement_group: the current placement group has {current.bundle_count} "
                                 f"bundles; {config.world_size} ranks from bundle {config.bundle_offset} need {needed}")
            # the caller runs in it, so it is ready already
            self.placement_group, self._owns_placement_group, self._bundle_offset = current, False, config.bundle_offset
            return
        self.placement_group = placement_group([config.rank_bundle() for _ in range(config.world_size)],
                                               strategy="STRICT_PACK")
        self._owns_placement_group, self._bundle_offset = True, 0
        ray.get(self.placement_group.ready(), timeout=ready_timeout_s)

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead is fine
                pass
        self.workers = []
        if self.placement_group is not None and self._owns_placement_group:
            remove_placement_group(self.placement_group)
        self.placement_group = None

    def rebuild(self) -> "RenderGroup":
        self.shutdown()
        return self.start()

    # -- work ---------------------------------------------------------------------------------
    def render(self, request, output: OutputConfig, *, model_source: str | None = None):
        """Render and publish ``request`` on every rank; returns the result rank's RenderResult.

        Raises RenderGroupFailed (and tears the gang down) if a rank dies, RequestFailed if every
        rank rejected the request (the group stays up).
        """
        return self.wait(self.submit(Render(request, output, model_source)))

    def submit(self, call: RankCall) -> GroupCall:
        """Send one call to every rank without waiting. Calls run in submission order on each rank, so a
        driver can queue the next request while the current one renders (the group never idles).
        Thread-safe: calls from several threads reach every rank in one order.

        ``call``: a :mod:`wan_dist.engine.rank_calls` type (``Generate``, ``Render`` take a step control:
        see :mod:`wan_dist.engine.control`).
        """
        with self._submit_lock:
            if not self.workers:
                raise RenderGroupFailed("render group is not running (start or rebuild it)")
            refs = tuple(w.run.remote(call) for w in self.workers)
            return GroupCall(refs, self.generation, self.result_rank)

    def wait(self, call: GroupCall, *, timeout_s: float | None = None, fetch: bool = True):
        """The result rank's return value of ``call`` (its object ref with ``fetch=False``, e.g. frames
        to hand to another task without pulling them here); see ``render`` for the errors. Waits for
        every rank's part of the call (a disaggregated group's high-noise stage ends its part first).

        The first failure surfaces at once: a dead rank fails the call without waiting for the survivors
        (stuck in a collective with it). If a rank raised, the others get one collective timeout to
        raise the same error (bad input fails every rank before any collective) before the group is
        declared broken.
        """
        import ray

        if call.generation != self.generation or not self.workers:
            raise RenderGroupFailed(f"render group {call.generation} is gone (rebuilt or shut down)")
        pending, errors = list(call.refs), {}  # errors: rank -> its exception, in the order they came
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:
                self._broken(f"no answer within {timeout_s} s")
            try:
                ray.get(done[0])
            except ray.exceptions.RayTaskError as error:
                errors[call.refs.index(done[0])] = getattr(error, "cause", None) or error
                if deadline is None or deadline - time.monotonic() > self.config.collective_timeout_s:
                    deadline = time.monotonic() + self.config.collective_timeout_s + 10
                timeout_s = self.config.collective_timeout_s
            except ray.exceptions.RayError as error:  # a dead actor: the gang cannot go on
                self._broken(f"a rank failed: {type(error).__name__}: {str(error).splitlines()[0]}", error)
        if errors:
            # the result rank's error when it has one: with a step control it holds the exact stop reason
            cause = errors.get(call.result_index, next(iter(errors.values())))
            # a disaggregated request stopped on the low-noise stage: the high-noise stage had handed it off
            # and returned, every rank is out of the request's collectives, the group is healthy
            stopped_late = all(isinstance(e, StopRender) for e in errors.values()) and call.result_index in errors
            if (len(errors) < len(call.refs) and not stopped_late) or len({type(e) for e in errors.values()}) > 1:
                self._broken(f"a rank failed: {type(cause).__name__}: {str(cause).splitlines()[0]}", cause)
            permanent = isinstance(cause, (ValueError, FileNotFoundError))  # bad input: a retry cannot help
            raise RequestFailed(f"{type(cause).__name__}: {cause}", cause=cause, permanent=permanent)
        return ray.get(call.leader) if fetch else call.leader

    def _broken(self, reason: str, cause: BaseException | None = None):
        self.shutdown()
        raise RenderGroupFailed(f"render group {self.generation}: {reason}") from cause

    def model_record(self, source: str | None = None) -> dict[str, Any]:
        """The sidecar's model section for clips this group renders (see ``engine.render.model_record``)."""
        return self.wait(self.submit(ModelRecord(source)))

    def prefetch(self, request) -> list:
        """Encode ``request``'s prompts beside the render in progress, on the rank that encodes text (the
        others have no encoder and return at once): queue it with the request so text encoding leaves the
        critical path. Returns the refs (nothing needs to wait on them)."""
        return [worker.prefetch_text.options(concurrency_group="prefetch").remote(request) for worker in self.workers]

    def stage_events(self) -> list[list]:
        """Each rank's ``StageEvent`` list so far (disaggregated placement; empty lists otherwise).
        Runs after the calls already queued on the ranks."""
        return self._all(lambda w: w.stage_events.remote())

    def _all(self, call) -> list:
        import ray

        refs = [call(worker) for worker in self.workers]
        pending = list(refs)
        try:
            while pending:  # surface the first failure at once instead of waiting on the others
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done[0])
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as error:
            self.shutdown()
            raise RenderGroupFailed(f"render group {self.generation}: a rank failed: "
                                    f"{type(error).__name__}: {str(error).splitlines()[0]}") from error
        return ray.get(refs)
