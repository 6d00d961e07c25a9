"""Holding a render at a chosen step, so a test acts while it is in progress and never races it.

The render groups of a test run with the step hook :data:`HOOK` (``GroupConfig.step_hook``,
``serve.renderer.group.step_hook``, ``batch.group.step_hook``; see ``wan_dist.engine.control``). Before a request
starts, a test plans a hold for the request's prompt (:meth:`Holds.plan`): when the render of that prompt reaches
step ``step`` its result rank writes a "reached" note (its actor id and process id) and waits there until
the test releases it (:meth:`Holds.release`). A hold happens once per plan: a rerun of the same prompt
(the job's next attempt, a batch's rerun) passes the step.

The folder of plans is shared with every Ray worker through the environment (``WAN_DIST_TEST_HOLDS``,
set by conftest.py before Ray starts, with ``PYTHONPATH`` naming this folder so the ranks import this
module). Only files cross processes: the hook runs in rank actors, the test in the driver.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

__all__ = ["HOOK", "HOLDS_ENV", "Holds", "hook"]

HOOK = "step_holds:hook"
HOLDS_ENV = "WAN_DIST_TEST_HOLDS"
_GIVE_UP_S = 600.0  # a test that never releases must not hang the suite forever: the render then fails


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class HoldAt:
    """The step control of one held request (picklable; runs on the result rank)."""

    folder: str
    key: str

    def _path(self, suffix: str) -> str:
        return os.path.join(self.folder, f"{self.key}.{suffix}")

    def __call__(self, step: int, total: int) -> None:
        try:
            with open(self._path("plan")) as handle:
                plan = json.load(handle)
        except FileNotFoundError:
            return
        if step != plan["step"] or os.path.exists(self._path("reached")):
            return
        import ray

        note = {"actor_id": ray.get_runtime_context().get_actor_id(), "pid": os.getpid(), "step": step,
                "total": total}
        _write(self._path("reached"), note)
        started = time.monotonic()
        while not os.path.exists(self._path("release")) or time.monotonic() - started < plan["min_s"]:
            if time.monotonic() - started > _GIVE_UP_S:
                raise RuntimeError(f"hold of {self.key} at step {step} was never released")
            time.sleep(0.01)
        _write(self._path("left"), {"step": step})


def hook(request) -> HoldAt | None:
    """The step hook (``HOOK``): a HoldAt for every request while the holds folder is set."""
    folder = os.environ.get(HOLDS_ENV)
    return HoldAt(folder, _key(request.prompt)) if folder else None


def _write(path: str, data: dict) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)  # whole or absent to a reader in another process


class Holds:
    """The test's side of the holds folder (``folder``: the one in the environment by default)."""

    def __init__(self, folder: str | None = None):
        self.folder = folder or os.environ[HOLDS_ENV]

    def _path(self, prompt: str, suffix: str) -> str:
        return os.path.join(self.folder, f"{_key(prompt)}.{suffix}")

    def plan(self, prompt: str, step: int, *, min_s: float = 0.0) -> str:
        """Hold the next render of ``prompt`` after step ``step`` (1-based) until :meth:`release`, and for at
        least ``min_s`` seconds (e.g. longer than a step control's throttle, so it runs again right after).
        Returns ``prompt``."""
        for suffix in ("reached", "release", "left"):
            if os.path.exists(self._path(prompt, suffix)):
                os.remove(self._path(prompt, suffix))
        _write(self._path(prompt, "plan"), {"step": step, "min_s": min_s})
        return prompt

    def reached(self, prompt: str) -> dict | None:
        """The hold's note once the render waits at its step ({actor_id, pid, step, total}), else None."""
        try:
            with open(self._path(prompt, "reached")) as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def wait_reached(self, prompt: str, timeout_s: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while (note := self.reached(prompt)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for the render of {prompt!r} "
                                     "to reach its hold")
            time.sleep(0.02)
        return note

    def left(self, prompt: str) -> bool:
        """Whether the held render went on past its hold (it was released)."""
        return os.path.exists(self._path(prompt, "left"))

    def release(self, prompt: str) -> None:
        _write(self._path(prompt, "release"), {})

    def release_all(self) -> None:
        """Release every planned hold (a test's teardown: nothing stays held for the next test)."""
        for name in os.listdir(self.folder):
            if name.endswith(".plan"):
                _write(os.path.join(self.folder, name[:-len(".plan")] + ".release"), {})
