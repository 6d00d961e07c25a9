"""Disaggregated expert stages: a render group split into a high-noise and a low-noise stage.

Global ranks ``[0, a)`` form stage 0, which holds only the high-noise expert (``expert_dirs[0]``);
ranks ``[a, a + b)`` form stage 1, which holds only the low-noise expert. A request runs its
high-noise steps on stage 0; at the boundary, stage 0's leader (its first rank) sends a
:class:`HandOff` (latents, solver state, text contexts, seed) point-to-point to stage 1's leader,
which broadcasts it inside stage 1; stage 1 runs the remaining steps and decodes. Over a queue
(:meth:`DisaggregatedRunner.run`) stage 0 starts request i + 1 as soon as it has handed request i
over, so both stages are busy and each GPU holds one expert.

Inside a stage every rank holds the whole batch; the stage's own ``cfg`` x ``ring`` x ``ulysses``
mesh applies (any combination :class:`~wan_dist.parallel.mesh.ParallelMesh` supports; its groups
name global ranks). A ``data`` axis inside a stage is not supported (replicate the whole group
instead). Text encoding runs on stage 0's leader only (:mod:`wan_dist.parallel.text`: it broadcasts the
contexts inside stage 0; stage 1 gets them in the hand-off); the I2V
condition is recomputed on stage 1 from the request's image; the VAE decode runs on stage 1.

Layering: the pipeline is duck-typed as in :mod:`wan_dist.parallel.runtime`; a stage runs part of a
render through the pipeline's public stages (``resolve``, ``prepare``, ``denoise`` over a range of steps,
``finish``), so nothing here imports the engine. The hand-off's wire format and transport live in
:mod:`wan_dist.parallel.handoff` (re-exported here).

Step controls: a request may carry ``callback`` (``callback(step_index, num_steps, latents, estimate)``,
collective inside a stage: see :attr:`DisaggregatedRunner.control_scope`). Each stage calls it for the
steps it runs. A :class:`~wan_dist.sampling.stop.StopRender` it raises on stage 0 is handed to stage 1
(``HandOff.stop``) in place of the latents, so every rank of the group raises it for that request.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from wan_dist.config import ParallelConfig
from wan_dist.models import checkpoint
from wan_dist.parallel.cfg import cfg_parallel_prediction
from wan_dist.parallel.dit import parallelize_dit
from wan_dist.parallel.handoff import (HandOff, PendingSend, _to_wire, _wire_device, broadcast_handoff, recv_handoff,
                                       send_handoff)
from wan_dist.parallel.mesh import AXES, AxisGroup, ParallelMesh, coords_of, rank_of
from wan_dist.parallel.text import TEXT_RANK, share_text
from wan_dist.sampling.stop import StopRender, stop_code, stop_reason

# what a stage accepts of ``WanPipeline.generate``'s arguments (no experts / predict / data_shard hooks)
GENERATE_KEYS = frozenset({"prompt", "negative_prompt", "image", "height", "width", "num_frames",
                           "num_inference_steps", "guidance_scale", "guidance_scale_2", "boundary_ratio", "shift",
                           "seed", "solver", "schedule", "prompt_embeds", "negative_prompt_embeds", "latents",
                           "output_type", "callback", "camera", "layers", "fps", "loras", "style_lock", "cache",
                           "cache_threshold", "cache_retention"})
_RESOLVE_KEYS = ("prompt", "negative_prompt", "image", "height", "width", "num_frames", "num_inference_steps",
                 "guidance_scale", "guidance_scale_2", "boundary_ratio", "shift", "solver", "schedule",
                 "prompt_embeds", "output_type", "camera", "cache", "cache_threshold", "cache_retention")
# the request's camera path and style lock: both stages prepare them alike
_PREPARE_KEYS = ("camera", "layers", "fps", "style_lock")


def _checked(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - GENERATE_KEYS)
    if unknown:
        raise TypeError(f"disaggregated generate: unsupported argument(s) {unknown}")
    return dict(kwargs)


__all__ = ["StageLayout", "plan_stages", "stage_sizes_by_steps", "load_stage_expert", "stage_expert_loader",
           "HandOff", "PendingSend", "send_handoff", "recv_handoff", "broadcast_handoff", "StageEvent",
           "DisaggregatedRunner", "DisaggregatedGenerate", "make_disaggregated_generate"]


# ----------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class StageLayout:
    """Stage sizes ``(a, b)`` and each stage's inner degrees (``configs[s].world_size == sizes[s]``)."""

    sizes: tuple[int, int]
    configs: tuple[ParallelConfig, ParallelConfig]

    def __post_init__(self) -> None:
        if len(self.sizes) != 2 or min(self.sizes) < 1:
            raise ValueError(f"stage_sizes: two stages of at least one rank each, got {self.sizes}")
        for stage, (size, config) in enumerate(zip(self.sizes, self.configs)):
            if config.world_size != size:
                raise ValueError(f"stage {stage}: degrees multiply to {config.world_size}, the stage has {size} ranks")
            if config.data != 1:
                raise ValueError(f"stage {stage}: a data axis inside a stage is not supported (data={config.data})")

    @property
    def world_size(self) -> int:
        return sum(self.sizes)

    def ranks(self, stage: int) -> range:
        """Global ranks of ``stage``; the first is its leader."""
        start = 0 if stage == 0 else self.sizes[0]
        return range(start, start + self.sizes[stage])

    def leader(self, stage: int) -> int:
        return self.ranks(stage)[0]

    def stage_of(self, rank: int) -> int:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside a group of {self.world_size}")
        return 0 if rank < self.sizes[0] else 1


def stage_sizes_by_steps(world_size: int, stage_steps: Sequence[int]) -> tuple[int, int]:
    """Ranks per stage in proportion to its steps (T2V 26:14, I2V 15:25), at least one each."""
    if world_size < 2:
        raise ValueError(f"disaggregated stages need at least 2 ranks, got {world_size}")
    high, low = stage_steps
    first = min(max(round(world_size * high / (high + low)), 1), world_size - 1)
    return first, world_size - first


def _stage_degrees(parallel: ParallelConfig, world_size: int, size: int, num_heads: int | None) -> ParallelConfig:
    degrees = {axis: int(getattr(parallel, axis)) for axis in AXES}
    if parallel.world_size != size:
        if parallel.world_size == world_size and world_size % size == 0:
            factor = world_size // size  # the stage axis takes the place of the outermost degrees
            for axis in AXES:
                common = math.gcd(degrees[axis], factor)
                degrees[axis], factor = degrees[axis] // common, factor // common
        else:
            ulysses = math.gcd(size, num_heads or size)
            degrees = dict(ulysses=ulysses, ring=size // ulysses)
    return ParallelConfig(attention=parallel.attention, ulysses_backend=parallel.ulysses_backend, **degrees)


def plan_stages(parallel: ParallelConfig, world_size: int, *, stage_sizes: Sequence[int] | None = None,
                stage_parallel: Sequence[ParallelConfig] | None = None,
                num_heads: int | None = None) -> StageLayout:
    """This group's :class:`StageLayout`.

    ``stage_sizes``: default an even split. ``stage_parallel``: each stage's degrees, explicit. Otherwise,
    per stage of n ranks: ``parallel``'s degrees when they multiply to n (they describe one stage); when
    they multiply to ``world_size`` (they describe the group) and n divides it, those degrees divided by
    ``world_size / n``, outermost (data, cfg, ring) first; else Ulysses over gcd(n, heads) and a ring for
    the rest. Raises ValueError for a group that cannot split.
    """
    if stage_sizes is None:
        if world_size < 2 or world_size % 2:
            raise ValueError(f"stage_sizes: an even split needs an even group of >= 2 ranks, got {world_size}; "
                             "pass stage_sizes")
        stage_sizes = (world_size // 2, world_size // 2)
    sizes = tuple(int(s) for s in stage_sizes)
    if sum(sizes) != world_size:
        raise ValueError(f"stage_sizes: {sizes} add up to {sum(sizes)}, the group has {world_size} ranks")
    configs = tuple(stage_parallel) if stage_parallel is not None else tuple(
        _stage_degrees(parallel, world_size, size, num_heads) for size in sizes)
    layout = StageLayout(sizes=sizes, configs=configs)  # type: ignore[arg-type]
    for config in layout.configs:
        ParallelMesh.validate(config, num_heads=num_heads)
    return layout


def load_stage_expert(info, stage: int, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load only ``stage``'s expert (``info.expert_dirs[stage]``, a CheckpointInfo); the other is never read."""
    if len(info.expert_dirs) != 2:
        raise ValueError(f"{info.root}: {len(info.expert_dirs)} expert(s); disaggregated stages need two")
    return checkpoint.load_dit(info.expert_dirs[stage], info.spec.dit, layout=info.layout, device=device, dtype=dtype)


def stage_expert_loader(stage: int, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """An ``expert_loader(expert_dir, info)`` for ``load_pipeline`` / ``WanPipeline.from_folder``: loads
    ``stage``'s expert and returns None for the other, whose folder is never read."""
    def loader(expert_dir, info):
        if Path(expert_dir) != Path(info.expert_dirs[stage]):
            return None
        return load_stage_expert(info, stage, device=device, dtype=dtype)

    return loader


def _stage_mesh(layout: StageLayout, rank: int, timeout: timedelta | None) -> tuple[ParallelMesh, Any]:
    """This rank's mesh inside its stage, and the stage's process group (None for one rank).

    Collective over the default group: every rank creates every group of both stages, in order.
    The mesh's ``rank`` and ``coords`` are stage-local; its axis groups list global ranks.
    """
    mine = layout.stage_of(rank)
    spans = {axis: (axis,) for axis in AXES}
    spans["sequence"] = ("ring", "ulysses")
    groups: dict[str, AxisGroup] = {}
    stage_group = None
    for stage in (0, 1):
        config, offset = layout.configs[stage], layout.ranks(stage)[0]
        degrees = {axis: int(getattr(config, axis)) for axis in AXES}
        local = rank - offset
        for name, axes in spans.items():
            size, seen, own_group = math.prod(degrees[a] for a in axes), [], None
            own = _axis_ranks(local, degrees, axes, offset) if stage == mine else None
            for other in range(config.world_size if size > 1 else 0):
                ranks = _axis_ranks(other, degrees, axes, offset)
                if ranks not in seen:
                    seen.append(ranks)
                    group = dist.new_group(list(ranks), timeout=timeout)
                    own_group = group if ranks == own else own_group
            if stage == mine:
                groups[name] = AxisGroup(name=name, size=size, index=own.index(rank), ranks=own, group=own_group)
        if layout.sizes[stage] > 1:
            group = dist.new_group(list(layout.ranks(stage)), timeout=timeout)
            stage_group = group if stage == mine else stage_group
    return ParallelMesh(layout.configs[mine], rank - layout.ranks(mine)[0], groups), stage_group


def _axis_ranks(local: int, degrees: dict[str, int], axes: tuple[str, ...], offset: int) -> tuple[int, ...]:
    """Global ranks sharing every coordinate of stage-local rank ``local`` except those along ``axes``."""
    coords, ranks = coords_of(local, degrees), []
    for values in np.ndindex(*(degrees[a] for a in axes)):
        ranks.append(offset + rank_of({**coords, **dict(zip(axes, values))}, degrees))
    return tuple(sorted(ranks))


# ----------------------------------------------------------------------------- stages at work

@dataclass(frozen=True)
class StageEvent:
    """One denoising step as a rank ran it: ``start`` / ``end`` from ``time.monotonic()`` (one clock for
    every process of a machine), so events of different ranks can be ordered in real time."""

    stage: int
    request: int
    step: int
    start: float
    end: float


def _absent_expert(expert: int, stage: int):
    def expert_fn(*_):
        raise RuntimeError(f"stage {stage} does not hold expert {expert}: the step plan crossed the boundary")
    return expert_fn


class DisaggregatedRunner:
    """This rank's part of a disaggregated group. Collective to build (every rank, after
    ``torch.distributed`` is initialised); then every rank calls :meth:`run` with the same requests.

    ``pipe``: a WanPipeline whose ``experts[stage]`` is this stage's expert (load it with
    :func:`load_stage_expert`; the other entry may be None). With ``release_other_expert`` the other
    entry is set to None, so a pipeline loaded whole still ends up with one expert per rank.
    ``send_depth``: hand-offs stage 0 may have in flight before it waits for stage 1 to take one.
    ``handoff_timeout``: how long the leaders' hand-off may wait (None: the default group's timeout).
    A send completes only once stage 1's leader posts its receive, i.e. after stage 1 has finished its
    previous request (denoise, decode and whatever its caller does before the next call); a receive
    waits for stage 0's high-noise steps. So it must exceed one stage's time per request. Given, the
    hand-off runs on its own two-rank group and the default group's timeout can stay short. A stage's
    other ranks wait as long for their leader in the stage's collectives: with several ranks per
    stage, ``timeout`` (the stage groups', torch's default when None) must be as long.
    ``events``: a :class:`StageEvent` per step this rank ran, in order; requests are numbered over
    every :meth:`run` of this runner (both stages count the same calls).
    """

    def __init__(self, pipe, layout: StageLayout, *, timeout: timedelta | None = None,
                 release_other_expert: bool = True, send_depth: int = 1,
                 handoff_timeout: timedelta | None = None):
        if not pipe.spec.two_experts:
            raise ValueError(f"disaggregated placement: {pipe.spec.name} has one expert; use 'colocated'")
        world = dist.get_world_size() if dist.is_initialized() else 1
        if layout.world_size != world:
            raise ValueError(f"stages of {layout.sizes} need {layout.world_size} ranks, the group has {world}")
        self.pipe, self.layout, self.send_depth = pipe, layout, max(int(send_depth), 1)
        self.rank = dist.get_rank()
        self.stage = layout.stage_of(self.rank)
        self.mesh, self.stage_group = _stage_mesh(layout, self.rank, timeout)
        self.handoff_group = None if handoff_timeout is None else dist.new_group(
            [layout.leader(0), layout.leader(1)], timeout=handoff_timeout)  # collective: every rank
        self.next_request = 0
        model = pipe.experts[self.stage]
        if model is None:
            raise ValueError(f"stage {self.stage} (rank {self.rank}): the pipeline holds no expert {self.stage}")
        if release_other_expert:
            pipe.experts = [m if i == self.stage else None for i, m in enumerate(pipe.experts)]
        # stage 0's leader is TEXT_RANK: it encodes, the rest of stage 0 receives (stage 1 never encodes)
        self.encodes_text = self.rank == TEXT_RANK
        if self.stage == 0 and self.stage_group is not None:
            share_text(pipe, self.stage_group)
        wrapped = parallelize_dit(model, self.mesh)
        self.experts = [_absent_expert(0, self.stage), _absent_expert(1, self.stage)]
        self.experts[self.stage] = lambda x, t, context, *, blocks=None: wrapped(x, t, context, blocks=blocks).float()
        default = getattr(pipe, "default_predict", None)  # the pipeline's cfg_mode when cfg is not split
        split = self.mesh.axis("cfg").size > 1
        self.predict = cfg_parallel_prediction(self.mesh) if split or default is None else default()
        self.events: list[StageEvent] = []

    @property
    def control_scope(self) -> tuple[int, int, Any]:
        """(leader, size, process group) of this rank's stage: where a step callback runs its control and
        broadcasts the decision (``make_step_callback(result_rank=leader, world_size=size, group=group)``)."""
        return self.layout.leader(self.stage), len(self.layout.ranks(self.stage)), self.stage_group

    def run(self, requests: Sequence[dict], *, results_on: str = "all") -> list:
        """Render ``requests`` (``pipe.generate`` keyword dicts) in order, pipelined over the stages.

        Returns one WanOutput per request: on every rank with ``results_on="all"`` (one broadcast from
        stage 1's leader after the whole queue), on stage 1's ranks only with ``"last_stage"`` (stage 0
        ranks get None per request). A request stopped by its ``callback`` raises StopRender on every rank,
        once every request of the call has run (the other stage is waiting for their hand-offs).
        """
        if results_on not in ("all", "last_stage"):
            raise ValueError(f"results_on: 'all' or 'last_stage', got {results_on!r}")
        requests = [_checked(kwargs) for kwargs in requests]
        first, self.next_request = self.next_request, self.next_request + len(requests)
        results = self._run_high(requests, first) if self.stage == 0 else self._run_low(requests, first)
        if results_on == "all" and self.layout.world_size > 1:
            box = [results]
            dist.broadcast_object_list(box, src=self.layout.leader(1))
            results = box[0]
        stopped = next((r for r in results if isinstance(r, StopRender)), None)
        if stopped is not None:
            raise stopped
        return results

    def _resolve(self, kwargs: dict, seed: int):
        return self.pipe.resolve(**{k: kwargs[k] for k in _RESOLVE_KEYS if k in kwargs}, seed=seed)

    # stage 0 ----------------------------------------------------------------------------------
    def _run_high(self, requests: list[dict], first: int) -> list:
        pending: list[PendingSend] = []
        results: list = []
        for index, kwargs in enumerate(requests, start=first):
            handoff, stopped = self._high(index, kwargs)
            results.append(stopped)
            if self.rank == self.layout.leader(0):
                while len(pending) >= self.send_depth:
                    pending.pop(0).wait()
                pending.append(send_handoff(_to_wire(handoff, _wire_device(self.pipe)), self.layout.leader(1),
                                            group=self.handoff_group))
        for send in pending:
            send.wait()
        return results

    @torch.no_grad()
    def _high(self, index: int, kwargs: dict) -> tuple[HandOff, StopRender | None]:
        """Stage 0's part of a request: its hand-off, and the StopRender its callback raised (then the
        hand-off carries the stop code and placeholder tensors) or None."""
        pipe = self.pipe
        seed = self._stage_seed(kwargs.get("seed"))
        prepared = pipe.prepare(self._resolve(kwargs, seed), image=kwargs.get("image"),
                                prompt_embeds=kwargs.get("prompt_embeds"),
                                negative_prompt_embeds=kwargs.get("negative_prompt_embeds"), latents=kwargs.get("latents"),
                                loras=kwargs.get("loras"), **{k: kwargs[k] for k in _PREPARE_KEYS if k in kwargs})
        boundary = self._boundary(prepared.steps)
        solver = prepared.make_solver()

        def handoff(latents, stop: int = 0) -> HandOff:
            return HandOff(request=index, seed=seed, latents=latents, state=solver.get_state(),
                           context=prepared.context, negative_context=prepared.negative_context, stop=stop,
                           cache=None if stop else prepared.step_cache)

        try:
            latents = self._denoise(index, prepared, None, prepared.steps[:boundary], solver, kwargs)
        except StopRender as stop:
            return handoff(prepared.latents, stop_code(stop.reason)), stop
        return handoff(latents), None

    def _stage_seed(self, seed: int | None) -> int:
        """``seed``, or one drawn on this stage's leader and broadcast inside the stage (stage 1 gets
        it in the hand-off: no collective spans both stages, so they never wait on each other)."""
        if seed is not None:
            return seed
        value = torch.tensor([random.randrange(2**31)], dtype=torch.int64)
        if self.stage_group is not None:
            dist.broadcast(value, self.layout.leader(self.stage), group=self.stage_group)
        return int(value.item())

    # stage 1 ----------------------------------------------------------------------------------
    def _run_low(self, requests: list[dict], first: int) -> list:
        results = []
        for index, kwargs in enumerate(requests, start=first):
            # bad input fails here as on stage 0, before any message: not as a hand-off that never comes
            settings = self._resolve(kwargs, kwargs.get("seed") or 0)
            self._boundary(self.pipe.step_plan(settings)[1])
            waited = time.perf_counter()
            device = _wire_device(self.pipe)
            leader = self.rank == self.layout.leader(1)
            handoff = (recv_handoff(self.layout.leader(0), group=self.handoff_group, device=device) if leader
                       else None)
            if self.stage_group is not None:
                handoff = broadcast_handoff(handoff, self.layout.leader(1), self.stage_group, device=device)
            if handoff.request != index:
                raise RuntimeError(f"stage 1: expected the hand-off of request {index}, got {handoff.request}")
            if handoff.stop:
                results.append(StopRender(stop_reason(handoff.stop)))
                continue
            try:
                results.append(self._low(index, kwargs, handoff, waited=time.perf_counter() - waited))
            except StopRender as stop:
                results.append(stop)
        return results

    @torch.no_grad()
    def _low(self, index: int, kwargs: dict, handoff: HandOff, *, waited: float):
        pipe = self.pipe
        device = pipe.device
        negative = handoff.negative_context
        prepared = pipe.prepare(self._resolve(kwargs, handoff.seed), image=kwargs.get("image"),
                                latents=handoff.latents, contexts=(handoff.context, negative), handoff=True,
                                loras=kwargs.get("loras"),
                                **{k: kwargs[k] for k in _PREPARE_KEYS if k in kwargs})
        prepared.timings["handoff_wait_s"] = waited
        solver = prepared.make_solver()
        solver.set_state(handoff.state.to(device))
        latents = self._denoise(index, prepared, prepared.latents, prepared.steps[self._boundary(prepared.steps):],
                                solver, kwargs)
        if handoff.cache is not None:  # the high-noise stage's counts: the record covers the whole render
            prepared.add_cache_stats(handoff.cache)
        return pipe.finish(prepared, latents)

    # both -------------------------------------------------------------------------------------
    @staticmethod
    def _boundary(steps) -> int:
        """How many (the first) steps use the high-noise expert; ValueError unless high-noise then low-noise."""
        experts = [plan.expert for plan in steps]
        if experts != sorted(experts):
            raise ValueError(f"disaggregated placement: expert plan {experts} is not high-noise then low-noise")
        return experts.count(0)

    def _denoise(self, index, prepared, latents, steps, solver, kwargs):
        last = [time.monotonic()]
        callback = kwargs.get("callback")

        def on_step(step_index, num_steps, step_latents, estimate):
            now = time.monotonic()
            self.events.append(StageEvent(stage=self.stage, request=index, step=step_index, start=last[0], end=now))
            last[0] = now
            if callback is not None:
                callback(step_index, num_steps, step_latents, estimate)

        return self.pipe.denoise(prepared, latents, steps=steps, solver=solver, experts=self.experts,
                                 predict=self.predict, callback=on_step)


class DisaggregatedGenerate:
    """This rank's ``generate(*args, **kwargs)`` with ``pipe.generate``'s signature over a disaggregated group
    (one request per call through :attr:`runner`).

    ``results_on="all"``: every rank returns the same WanOutput (broadcast from stage 1's leader, so stage 0
    waits for stage 1's part). ``"last_stage"``: stage 0's ranks return None as soon as their hand-off is
    taken, so consecutive calls pipeline (stage 0 renders call i + 1 while stage 1 renders call i); stage 1's
    ranks return the WanOutput. ``result_rank``: a rank that holds the result (0, or stage 1's leader);
    ``mesh``: this rank's mesh inside its stage; ``layout``: the :class:`StageLayout`; ``encodes_text``: only
    stage 0's leader encodes prompts (the rest of stage 0 receives them; stage 1 gets them in the hand-off).
    """

    def __init__(self, runner: DisaggregatedRunner, *, results_on: str):
        if results_on not in ("all", "last_stage"):
            raise ValueError(f"results_on: 'all' or 'last_stage', got {results_on!r}")
        self.runner, self.results_on = runner, results_on
        self.mesh, self.layout = runner.mesh, runner.layout
        self.result_rank = 0 if results_on == "all" else runner.layout.leader(1)
        self.encodes_text = runner.encodes_text

    def __call__(self, *args, **kwargs):
        if len(args) > 2:
            raise TypeError("generate: at most prompt and negative_prompt are positional")
        kwargs.update(zip(("prompt", "negative_prompt"), args))
        return self.runner.run([kwargs], results_on=self.results_on)[0]

    @property
    def control_scope(self) -> tuple[int, int, Any]:
        return self.runner.control_scope

    def events(self) -> list:
        """This rank's :class:`StageEvent` per denoising step so far."""
        return list(self.runner.events)


def make_disaggregated_generate(pipe, parallel: ParallelConfig, *, timeout: timedelta | None = None,
                                stage_sizes: Sequence[int] | None = None,
                                stage_parallel: Sequence[ParallelConfig] | None = None,
                                results_on: str = "all", handoff_timeout: timedelta | None = None
                                ) -> DisaggregatedGenerate:
    """This rank's :class:`DisaggregatedGenerate`. Collective to build and to call. Stages from
    :func:`plan_stages` (default: an even split of the default group). ``handoff_timeout``: see
    :class:`DisaggregatedRunner`.
    """
    if results_on not in ("all", "last_stage"):
        raise ValueError(f"results_on: 'all' or 'last_stage', got {results_on!r}")
    world = dist.get_world_size() if dist.is_initialized() else 1
    layout = plan_stages(parallel, world, stage_sizes=stage_sizes, stage_parallel=stage_parallel,
                         num_heads=pipe.spec.dit.num_heads)
    runner = DisaggregatedRunner(pipe, layout, timeout=timeout, handoff_timeout=handoff_timeout)
    return DisaggregatedGenerate(runner, results_on=results_on)
