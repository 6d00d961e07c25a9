"""Observing and stopping a render between two denoising steps, on every rank of a render group at once.

A *step control* is any picklable callable ``control(step, total) -> None``: ``step`` counts the
denoising steps done so far (1 .. ``total``), ``total`` is the number of steps of the request. It runs
on the group's result rank only (rank 0 for SPMD layouts), after every step; it may renew a lease,
report progress, and raise :class:`StopRender` to stop the render there.

A control that also defines ``preview_due(step, total) -> bool`` and ``on_preview(frame, step, total)``
gets preview frames: when it says one is due (and the step did not stop the render), the result rank
decodes the first frame of the step's clean-latent estimate (:mod:`wan_dist.engine.preview`) and hands
it over as uint8 [H, W, 3]. A preview that fails is logged and skipped; it never stops the render.
A control that defines ``on_window(window)`` is told on the result rank when a long clip's next window starts
(:mod:`wan_dist.engine.long`): ``{"index", "count", "shot", "shots"}``, 1-based (``shot`` / ``shots`` of a
storyboard, else 1 / 1); the steps then count over every window of the clip. It never stops the render either.

The ranks of a group are inside collectives together, so they must all stop after the same step:
:func:`make_step_callback` turns the result rank's decision into a small integer and broadcasts it
from the result rank to every rank after each step (torch.distributed's default group), then every
rank raises the same ``StopRender``. This needs the per-step callback to be called on every rank at
every step in the same order, which the SPMD generate (:mod:`wan_dist.parallel.runtime`) does: every
rank runs every step (the data axis splits rows, never steps). Disaggregated placement runs a request's
steps on two stages, one after the other: there each stage's leader runs the control for the steps its
stage runs (steps 1 .. boundary on the high-noise stage, the rest on the low-noise one), broadcasts
inside its stage, and a stop on the high-noise stage travels to the other stage in the hand-off
(:mod:`wan_dist.parallel.stages`), so every rank of the group raises the same ``StopRender``.

A *step hook* (``GroupConfig.step_hook``, ``"package.module:name"``) names a factory
``factory(request) -> control | None`` that every rank of a group imports at load; for each request its
control runs on the result rank before the request's own (:func:`with_step_hook`). It lets an operator add
per-step behaviour to every render of a group without touching the front doors (a metric, an external
throttle, a breakpoint that holds a render at a step for debugging); tests use one to hold a render at a
chosen step until they have acted (killed a replica, read an event), so they never race the render.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from wan_dist.sampling.stop import STOP_CODES, StopRender, stop_code, stop_reason

__all__ = ["StopRender", "StepControl", "STOP_CODES", "ChainedControl", "make_step_callback",
           "load_step_hook", "stop_code", "stop_reason", "with_step_hook"]

log = logging.getLogger(__name__)


class StepControl(Protocol):
    def __call__(self, step: int, total: int) -> None: ...


class ChainedControl:
    """Several step controls as one: each runs in order after a step (the first StopRender stops the render);
    previews go to the first member that takes them."""

    def __init__(self, *controls):
        self.controls = tuple(c for c in controls if c is not None)
        self._previewer = next((c for c in self.controls if hasattr(c, "preview_due") and hasattr(c, "on_preview")),
                               None)

    def __call__(self, step: int, total: int) -> None:
        for control in self.controls:
            control(step, total)

    def preview_due(self, step: int, total: int) -> bool:
        return self._previewer is not None and self._previewer.preview_due(step, total)

    def on_preview(self, frame, step: int, total: int) -> None:
        self._previewer.on_preview(frame, step, total)

    def on_window(self, window: dict) -> None:
        for control in self.controls:
            if hasattr(control, "on_window"):
                control.on_window(window)


def load_step_hook(path: str) -> Callable[[Any], Any]:
    """The factory a step hook ``"package.module:name"`` names (imported here); ValueError naming the hook
    when it is malformed, does not import or is not callable."""
    import importlib

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"step_hook: expected 'package.module:name', got {path!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"step_hook: cannot load {path!r}: {error}") from None
    if not callable(factory):
        raise ValueError(f"step_hook: {path!r} is not callable")
    return factory


def with_step_hook(control, hook: Callable[[Any], Any] | None, request):
    """``control`` with the hook's control for ``request`` run before it (see the module docstring). With a
    hook the result is never None, so every rank of the group takes part in the per-step broadcast."""
    if hook is None:
        return control
    return ChainedControl(hook(request), control)


def make_step_callback(control: Callable[[int, int], None] | None, *, rank: int, result_rank: int,
                       world_size: int, device: Any = "cpu", preview: Callable[[Any], Any] | None = None,
                       group: Any = None) -> Callable[..., None] | None:
    """``callback(step_index, num_steps, latents, estimate)`` for ``pipe.generate`` on one rank, or None without
    a control. ``preview(estimate tensor) -> frame``: the result rank's decoder of preview frames (see the
    module docstring), or None for no previews.

    ``step_index`` is 0-based (as ``WanPipeline.generate`` passes it); the control sees ``step_index + 1``.
    On ``result_rank`` the callback calls ``control``; a StopRender it raises becomes a code
    (:data:`STOP_CODES`). With ``world_size > 1`` every rank then takes part in a broadcast of that code
    from ``result_rank`` over the default process group (a 1-element int64 tensor on ``device``: a CUDA
    device for NCCL, the CPU for gloo), and every rank raises StopRender when it is not 0 — the result
    rank re-raises the control's own exception. Any other exception from the control also stops the
    render, as ``StopRender("control_failed: <type>: <message>")`` on the result rank (logged there with
    its traceback; code 3 for the others): raised on the result rank alone it would leave the other ranks
    in the broadcast until the collective timeout and break the group.
    Collective: every rank must call the callback at every step, in the same order. ``group``: the process
    group of the broadcast (default: the default group), ``result_rank`` a global rank in it and
    ``world_size`` its size (a disaggregated stage: its leader, its ranks, its group).
    """
    if control is None:
        return None
    is_result_rank = rank == result_rank

    wants_previews = preview is not None and hasattr(control, "preview_due") and hasattr(control, "on_preview")

    def callback(step_index: int, num_steps: int, _latents=None, estimate=None) -> None:
        stop: StopRender | None = None
        if is_result_rank:
            try:
                control(step_index + 1, num_steps)
            except StopRender as error:
                stop = error
            except Exception as error:  # noqa: BLE001 - see the docstring: stop every rank, keep the group
                log.exception("step control failed at step %d of %d; stopping the render", step_index + 1, num_steps)
                stop = StopRender(f"control_failed: {type(error).__name__}: {error}")
            if stop is None and wants_previews and estimate is not None:
                _preview(control, preview, estimate, step_index + 1, num_steps)
        if world_size > 1:
            import torch
            import torch.distributed as dist

            value = torch.tensor([0 if stop is None else stop_code(stop.reason)], dtype=torch.int64, device=device)
            dist.broadcast(value, src=result_rank, group=group)
            code = int(value.item())
        else:
            code = 0 if stop is None else stop_code(stop.reason)
        if stop is not None:
            raise stop
        if code:
            raise StopRender(stop_reason(code))

    if is_result_rank and hasattr(control, "on_window"):
        callback.on_window = lambda window: _on_window(control, window)
    return callback


def _on_window(control, window: dict) -> None:
    try:
        control.on_window(window)
    except Exception:  # noqa: BLE001 - a report, as a preview: it never stops the render
        log.exception("step control: on_window failed for %s; the render goes on", window)


def _preview(control, decode, estimate, step: int, total: int) -> None:
    try:
        if control.preview_due(step, total):
            control.on_preview(decode(estimate()), step, total)
    except Exception:  # noqa: BLE001 - a preview is a convenience: the render goes on without it
        log.exception("preview at step %d of %d failed; the render goes on", step, total)
