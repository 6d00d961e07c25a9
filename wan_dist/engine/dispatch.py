"""Requests on render groups: the one path the batch runner and the Serve renderers share.

* :class:`GroupHolder`: a started ``RenderGroup`` with the sidecar's model record of the clips it renders. A
  group that breaks is rebuilt once, by whoever notices first (a Serve renderer's job thread and its batch
  thread can both see the same failure), and everybody then renders on the new one.
* :func:`settle`: wait on a submitted call and say what it came to (:class:`Settled`): a value, a failed
  request (permanent when it is bad input), a stop by its step control, or a broken group.
* :class:`RetryPolicy`: how many tries a request gets and how long to wait before the next (exponential
  backoff with jitter, so that many failed rows do not come back in step).
* :func:`render_once`: one request rendered and published on a holder's group, synchronously: submit, settle,
  rebuild a broken group (a Serve job; the batch runner keeps many calls in flight with the same parts).
* :class:`SharedGroup`: a holder lent to a batch runner by its owner, with the gate both feed it through.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

from wan_dist.config import OutputConfig
from wan_dist.engine.control import StopRender
from wan_dist.engine.group import GroupCall, GroupConfig, RenderGroup, RenderGroupFailed, RequestFailed
from wan_dist.engine.rank_calls import Render

__all__ = ["GroupHolder", "RetryPolicy", "Settled", "SharedGroup", "render_once", "settle"]

log = logging.getLogger("wan_dist.engine")


class GroupHolder:
    """A started render group and ``record``, the model section of its clips' sidecars."""

    def __init__(self, group: RenderGroup, source: str):
        self.group, self.source = group, source
        self.record: dict[str, Any] = group.model_record(source)
        self._lock = threading.Lock()

    @classmethod
    def start(cls, config: GroupConfig, *, ready_timeout_s: float = 300) -> "GroupHolder":
        """Start a group of ``config`` (its model loaded on every rank) and hold it."""
        return cls(RenderGroup(config).start(ready_timeout_s=ready_timeout_s), config.source)

    @property
    def generation(self) -> int:
        return self.group.generation

    def rebuild(self, generation: int) -> "GroupHolder":
        """Bring the group back after it broke at ``generation``: rebuilt here unless somebody already did."""
        with self._lock:
            if self.group.generation == generation or not self.group.workers:
                log.warning("render group %d broke: rebuilding it", generation)
                self.group.rebuild()
                self.record = self.group.model_record(self.source)
        return self

    def shutdown(self) -> None:
        self.group.shutdown()


@dataclass(frozen=True)
class Settled:
    """What a call on a group came to. Exactly one of: ``value`` (it succeeded), ``error`` (the request failed,
    the group is fine; ``permanent`` when it is bad input a retry cannot help), ``stopped`` (its step control
    stopped it between two steps; the group renders on), ``broken`` (the group broke: rebuild it).
    ``cause``: the ranks' exception behind ``error``."""

    value: Any = None
    error: str | None = None
    permanent: bool = False
    cause: BaseException | None = None
    stopped: StopRender | None = None
    broken: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.stopped is None and self.broken is None


def settle(group: RenderGroup, call: GroupCall, *, fetch: bool = True) -> Settled:
    """Wait for ``call`` on ``group`` (the result rank's value, or its object ref with ``fetch=False``)."""
    try:
        return Settled(value=group.wait(call, fetch=fetch))
    except RequestFailed as error:
        if isinstance(error.cause, StopRender):
            return Settled(stopped=error.cause)
        return Settled(error=str(error), permanent=error.permanent, cause=error.cause)
    except RenderGroupFailed as error:
        return Settled(broken=str(error))


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all; the n-th retry waits ``backoff_s * 2**(n-1)``, times a jitter in [0.5, 1.5)."""

    max_attempts: int
    backoff_s: float

    def delay(self, attempts: int, *, permanent: bool = False) -> float | None:
        """Seconds to wait before the next try after ``attempts`` failed ones; None: give up."""
        if permanent or attempts >= self.max_attempts:
            return None
        return self.backoff_s * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)


def render_once(holder: GroupHolder, request, output: OutputConfig, control=None) -> Settled:
    """Render ``request`` on the holder's group and publish it under ``output`` (on the result rank); a broken
    group is rebuilt before this returns, so the caller's retry finds it up. ``value``: the ``RenderResult``."""
    group = holder.group
    try:
        call = group.submit(Render(request, output, holder.source, control))
    except RenderGroupFailed as error:  # shut down under us (a rebuild that failed): try to bring it back
        settled = Settled(broken=str(error))
    else:
        settled = settle(group, call)
    if settled.broken is not None:
        holder.rebuild(group.generation)
    return settled


@dataclass
class SharedGroup:
    """A holder lent to a batch runner (``wan_dist.batch.runner``) by the owner that also feeds it.

    ``gate``: ``try_acquire() -> bool`` (never blocks) before each call, ``release()`` once its result is in.
    The runner renders only rows of ``model``, never reloads or shuts the group down, and asks the holder to
    rebuild it when it breaks (the holder does it once for both feeders).
    """

    holder: GroupHolder
    model: str
    gate: Any
