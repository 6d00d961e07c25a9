"""A mesh of named parallel axes over the current process group.

Axes, outermost first: ``data`` (batch rows), ``cfg`` (cond / uncond), ``ring`` (ring attention),
``ulysses`` (head-parallel all-to-all). A global rank is

    rank = ((data_index * cfg + cfg_index) * ring + ring_index) * ulysses + ulysses_index

Ulysses is innermost on purpose: its all-to-alls move the most bytes per layer and are latency
bound, so its ranks should be neighbours (the same NVLink island); the ring's point-to-point
exchanges overlap with attention compute and tolerate slower links (yunchang's default layout).

The ``sequence`` group is ring x ulysses (the ranks of one (data, cfg) coordinate) in rank order;
sequence shard ``s`` of a sample lives on sequence rank ``s = ring_index * ulysses + ulysses_index``,
so the ``ulysses`` ranks of one ring position hold consecutive shards (a Ulysses all-to-all then
gathers one contiguous chunk of the sequence).

``ParallelMesh.build`` calls ``torch.distributed.new_group`` for every group of every axis (all ranks
must call it together, in the same order). An axis of size 1 gets no process group.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import timedelta

import torch.distributed as dist

from wan_dist.config import DiTConfig, ParallelConfig
from wan_dist.parallel.comm import CommCounter

__all__ = ["AXES", "AxisGroup", "ParallelMesh", "rank_of", "coords_of"]

AXES = ("data", "cfg", "ring", "ulysses")


@dataclass(frozen=True)
class AxisGroup:
    """This rank's group along one axis.

    name: axis name. size: ranks in the group. index: this rank's position in it. ranks: the global
    ranks of the group in axis order (``ranks[index]`` is this rank). group: its process group, or
    None when size is 1.
    """

    name: str
    size: int
    index: int
    ranks: tuple[int, ...]
    group: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)

    def global_rank(self, index: int) -> int:
        """Global rank of position ``index`` (taken modulo size) of this group."""
        return self.ranks[index % self.size]


def _degrees(config: ParallelConfig) -> dict[str, int]:
    return {axis: int(getattr(config, axis)) for axis in AXES}


def rank_of(coords: dict[str, int], degrees: dict[str, int]) -> int:
    """Global rank of mesh coordinates (axis -> index), data-major, ulysses innermost."""
    rank = 0
    for axis in AXES:
        rank = rank * degrees[axis] + coords[axis]
    return rank


def coords_of(rank: int, degrees: dict[str, int]) -> dict[str, int]:
    """Mesh coordinates (axis -> index) of a global rank; inverse of :func:`rank_of`."""
    coords = {}
    for axis in reversed(AXES):
        coords[axis] = rank % degrees[axis]
        rank //= degrees[axis]
    return coords


def _group_ranks(coords: dict[str, int], degrees: dict[str, int], axes: tuple[str, ...]) -> tuple[int, ...]:
    """Global ranks that share every coordinate of ``coords`` except those along ``axes``, in rank order."""
    ranks = []
    for values in itertools.product(*(range(degrees[a]) for a in axes)):
        ranks.append(rank_of({**coords, **dict(zip(axes, values))}, degrees))
    return tuple(sorted(ranks))


class ParallelMesh:
    """Named axes (``data``, ``cfg``, ``ring``, ``ulysses``) plus the ``sequence`` group (ring x ulysses).

    Attributes: ``config`` (the ParallelConfig), ``rank``/``world_size`` (global), ``coords``
    (axis -> this rank's index), ``counter`` (a :class:`CommCounter` every parallel collective of
    this mesh reports to). Use :meth:`axis` for an :class:`AxisGroup`.
    """

    def __init__(self, config: ParallelConfig, rank: int, groups: dict[str, AxisGroup]):
        self.config = config
        self.rank = rank
        self.world_size = config.world_size
        self.degrees = _degrees(config)
        self.coords = coords_of(rank, self.degrees)
        self._groups = groups
        self.counter = CommCounter()

    @classmethod
    def build(cls, config: ParallelConfig, *, num_heads: int | None = None,
              timeout: timedelta | None = None) -> "ParallelMesh":
        """Validate ``config`` against the current process group and create every axis' groups.

        Collective over the whole default group (every rank must call it). Without an initialised
        process group only a world of size 1 is accepted. ``num_heads`` (the DiT's) is checked against
        the ulysses degree here already. Raises ValueError naming the offending degree.
        """
        cls.validate(config, num_heads=num_heads)
        initialized = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if initialized else 1
        if config.world_size != world_size:
            degrees = " x ".join(f"{a}={d}" for a, d in _degrees(config).items())
            raise ValueError(f"ParallelMesh: {degrees} = {config.world_size} ranks, but the process group "
                             f"has {world_size}")
        rank = dist.get_rank() if initialized else 0
        degrees = _degrees(config)
        spans = {axis: (axis,) for axis in AXES}
        spans["sequence"] = ("ring", "ulysses")
        groups: dict[str, AxisGroup] = {}
        mine = coords_of(rank, degrees)
        for name, axes in spans.items():
            size = math.prod(degrees[a] for a in axes)
            own = _group_ranks(mine, degrees, axes)
            own_group = None
            if size > 1:
                # every rank creates every group of this axis, in the same order (new_group is collective)
                seen = []
                for other in range(world_size):
                    ranks = _group_ranks(coords_of(other, degrees), degrees, axes)
                    if ranks in seen:
                        continue
                    seen.append(ranks)
                    group = dist.new_group(list(ranks), timeout=timeout)
                    if ranks == own:
                        own_group = group
            groups[name] = AxisGroup(name=name, size=size, index=own.index(rank), ranks=own, group=own_group)
        return cls(config, rank, groups)

    @staticmethod
    def validate(config: ParallelConfig, *, num_heads: int | None = None) -> None:
        """Checks that need no process group: degrees vs the model's heads."""
        if num_heads is not None and num_heads % config.ulysses:
            raise ValueError(f"ParallelMesh: ulysses degree {config.ulysses} must divide the DiT's "
                             f"num_heads={num_heads}")

    def check_model(self, config: DiTConfig) -> None:
        """Raise ValueError when this mesh cannot run a DiT of ``config``."""
        self.validate(self.config, num_heads=config.num_heads)

    def axis(self, name: str) -> AxisGroup:
        """The :class:`AxisGroup` of ``data``, ``cfg``, ``ring``, ``ulysses`` or ``sequence``."""
        try:
            return self._groups[name]
        except KeyError:
            raise ValueError(f"ParallelMesh: unknown axis {name!r}; known: {sorted(self._groups)}") from None

    @property
    def sequence(self) -> AxisGroup:
        return self._groups["sequence"]

    def __repr__(self) -> str:
        degrees = ", ".join(f"{a}={d}" for a, d in self.degrees.items())
        return f"ParallelMesh(rank={self.rank}, {degrees}, coords={self.coords})"
