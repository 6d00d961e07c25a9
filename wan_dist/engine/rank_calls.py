"""The calls a render group's driver sends to every rank (``RenderGroup.submit(call)``), as types.

Each call is a small frozen dataclass that carries its arguments and knows what a rank does with it
(:meth:`RankCall.run` on the rank's :class:`~wan_dist.engine.rank_program.RankProgram`), so the driver never
names a rank method by a string and a typo is an AttributeError at the call site, not a remote failure.
Every call runs on every rank in submission order; the group's result rank returns the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wan_dist.config import OutputConfig

__all__ = ["RankCall", "Generate", "Render", "GenerateCall", "ModelRecord"]


class RankCall:
    """One call every rank of a group runs; ``control`` (a step control or None) where the call renders."""

    control: Any = None

    def run(self, program) -> Any:  # program: RankProgram
        raise NotImplementedError


@dataclass(frozen=True)
class Generate(RankCall):
    """Render ``request``; the result rank returns the WanOutput (frames to publish elsewhere), the others None."""

    request: Any  # RenderRequest
    control: Any = None

    def run(self, program) -> Any:
        return program.generate(self.request, self.control)


@dataclass(frozen=True)
class Render(RankCall):
    """Render and publish ``request`` to ``output``; the result rank returns the RenderResult, the others None."""

    request: Any  # RenderRequest
    output: OutputConfig
    model_source: str | None = None
    control: Any = None

    def run(self, program) -> Any:
        return program.render(self.request, self.output, model_source=self.model_source, control=self.control)


@dataclass(frozen=True)
class GenerateCall(RankCall):
    """``WanPipeline.generate(*args, **kwargs)`` through the rank's layout (what ``load_pipeline(source,
    parallel=...)`` sends); the result rank returns the WanOutput, the others None."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def run(self, program) -> Any:
        return program.generate_call(self.args, self.kwargs)


@dataclass(frozen=True)
class ModelRecord(RankCall):
    """The sidecar's model section for clips of this group (``engine.render.model_record``)."""

    source: str | None = None

    def run(self, program) -> Any:
        from wan_dist.engine.render import model_record

        return model_record(program.pipe, self.source)
