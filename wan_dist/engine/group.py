"""Ray render groups: a gang-scheduled set of rank actors that render one request together (SPMD).

A group is a placement group (STRICT_PACK; one GPU per bundle on GPU clusters, CPU bundles otherwise)
plus one ``RankWorker`` actor per bundle. Rank 0's node address and a free port found there are the
rendezvous (never a fixed port); the ranks join one torch.distributed group (NCCL on GPUs, gloo on CPU).
The driver sends a request once; the whole denoising loop runs inside the ranks; rank 0 returns the
result. A rank that dies fails the request with ``RenderGroupFailed``; ``rebuild()`` starts a new gang
and the request can be retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from wan_dist.config import OutputConfig, ParallelConfig
from wan_dist.engine.sources import EMBEDDED_PRESETS, resolve_source

__all__ = ["GroupConfig", "RenderGroup", "RenderGroupFailed", "RankWorker"]

log = logging.getLogger(__name__)


class RenderGroupFailed(RuntimeError):
    """A rank of the group died or raised; the group must be rebuilt before it renders again."""


@dataclass(frozen=True, kw_only=True)
class GroupConfig:
    """What a render group loads and how it is placed."""

    source: str
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    use_gpus: bool = False
    cpus_per_rank: float = 1.0
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    layout: str = "diffusers"  # layout an embedded preset is written in
    threads_per_rank: int = 1
    collective_timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the rank processes

    def __post_init__(self) -> None:
        if self.cpus_per_rank <= 0:
            raise ValueError(f"cpus_per_rank: must be > 0, got {self.cpus_per_rank}")
        if self.threads_per_rank < 1:
            raise ValueError(f"threads_per_rank: must be >= 1, got {self.threads_per_rank}")

    @property
    def world_size(self) -> int:
        return self.parallel.world_size


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

    def setup(self, address: str, port: int, *, backend: str, threads: int, timeout_s: float) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        if self.world_size > 1:
            dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=self.rank,
                                    world_size=self.world_size, timeout=timedelta(seconds=timeout_s))

    def load(self, config: GroupConfig) -> dict[str, Any]:
        import torch

        from wan_dist.cli.render import torch_dtype
        from wan_dist.engine.pipeline import load_pipeline
        from wan_dist.engine.rank_program import RankProgram

        device = "cuda" if config.use_gpus and torch.cuda.is_available() else "cpu"
        dtype = torch_dtype(config.dtype, device)
        self.pipe = load_pipeline(config.source, device=device, dtype=dtype, layout=config.layout,
                                  expert_loader=self._sharded_loader(config, device, dtype))
        self.program = RankProgram(self.pipe, config.parallel, rank=self.rank, world_size=self.world_size)
        return {"rank": self.rank, "variant": self.pipe.spec.name, "device": device}

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

    def render(self, request, output: OutputConfig, model_source: str | None):
        """Every rank runs the request; rank 0 returns the RenderResult, the others None."""
        return self.program.render(request, output, model_source=model_source)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class RenderGroup:
    """A gang of ``config.world_size`` RankWorker actors on one placement group."""

    def __init__(self, config: GroupConfig):
        self.config = config
        self.placement_group = None
        self.workers: list = []
        self.generation = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, *, ready_timeout_s: float = 300) -> "RenderGroup":
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        config = self.config
        if config.source in EMBEDDED_PRESETS:  # written once here, not raced by every rank (local Ray only)
            config = replace(config, source=str(resolve_source(config.source, layout=config.layout)))
        bundle = {"CPU": config.cpus_per_rank, **({"GPU": 1} if config.use_gpus else {})}
        self.placement_group = placement_group([dict(bundle) for _ in range(config.world_size)],
                                               strategy="STRICT_PACK")
        ray.get(self.placement_group.ready(), timeout=ready_timeout_s)
        actor = ray.remote(RankWorker)
        env = {"OMP_NUM_THREADS": str(config.threads_per_rank), **config.env}
        self.workers = [
            actor.options(num_cpus=config.cpus_per_rank, num_gpus=1 if config.use_gpus else 0,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(
                              placement_group=self.placement_group, placement_group_bundle_index=rank),
                          runtime_env={"env_vars": env}, max_restarts=0).remote(rank, config.world_size)
            for rank in range(config.world_size)]
        address, port = ray.get(self.workers[0].rendezvous_address.remote())
        backend = "nccl" if config.use_gpus else "gloo"
        self._all(lambda w: w.setup.remote(address, port, backend=backend, threads=config.threads_per_rank,
                                           timeout_s=config.collective_timeout_s))
        self._all(lambda w: w.load.remote(config))
        self._all(lambda w: w.warmup.remote())
        self.generation += 1
        log.info("render group %d ready: %d ranks on %s", self.generation, config.world_size, address)
        return self

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead is fine
                pass
        self.workers = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None

    def rebuild(self) -> "RenderGroup":
        self.shutdown()
        return self.start()

    # -- work ---------------------------------------------------------------------------------
    def render(self, request, output: OutputConfig, *, model_source: str | None = None):
        """Render ``request`` on every rank; returns rank 0's RenderResult.

        Raises RenderGroupFailed (and tears the gang down) if any rank dies or raises: the
        survivors would otherwise wait in a collective for their dead peer.
        """
        if not self.workers:
            raise RenderGroupFailed("render group is not running (start or rebuild it)")
        results = self._all(lambda w: w.render.remote(request, output, model_source))
        return results[0]

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
