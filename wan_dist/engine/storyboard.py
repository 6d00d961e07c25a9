"""Storyboards: a request's ``shots`` planned as a sequence of windows (rendered by engine/long.py).

Shot ``i`` adds ``own_i = frames_for_duration(duration_s) - 1`` frames to the clip (the first shot one more: the clip
is ``1 + sum(own_i)`` frames, ``4k + 1``, about the sum of the durations). It is rendered as ``own_i + shared_i``
frames, in windows of the long clip's size: ``shared_i`` frames at its start are the ones it shares with the shot
before (``s (o - 1) + 1`` for a transition of ``o`` latent frames, :func:`controls.storyboard.transition_latents`),
combined by the transition (``apply_transition``); after a cut it shares nothing and its first frame is dropped
(``shared_i = 1``, never shown), so every shot renders ``4k + 1`` frames. A shot's time must hold the transition out
of it (``own_i >= shared_{i+1}``): two transitions never overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from wan_dist.controls.long import Window, plan_windows
from wan_dist.controls.storyboard import transition_latents
from wan_dist.engine.settings import frames_for_duration

__all__ = ["ShotPlan", "plan_shots", "check_shots"]


@dataclass(frozen=True)
class ShotPlan:
    """Shot ``index``: ``frames`` rendered (``4k+1``), the first ``shared`` of them shared with the shot before
    (``entry_latents`` latent frames; a cut: 1 frame dropped, 0 latents), in ``windows`` (starts within the shot)."""

    index: int
    prompt: str
    camera: dict | None
    transition: str
    own: int
    shared: int
    entry_latents: int
    frames: int
    windows: tuple[Window, ...]

    def record(self) -> dict:
        data = asdict(self)
        data["windows"] = [w.to_dict() for w in self.windows]
        return data


def plan_shots(shots: list[dict], *, fps: int, window: int, overlap: int, temporal_stride: int) -> list[ShotPlan]:
    """The plan of normalised ``shots`` (``controls.storyboard.shot_item``) for windows of ``window`` frames
    sharing ``overlap`` latent frames inside a shot."""
    window_latents = (window - 1) // temporal_stride + 1
    plans = []
    for index, shot in enumerate(shots):
        own = frames_for_duration(shot["duration_s"], fps, temporal_stride) - 1
        if shot["transition"] == "cut":
            entry, shared = 0, 1
        else:
            entry = transition_latents(shot["transition_s"], fps, temporal_stride=temporal_stride,
                                       window_latents=window_latents)
            shared = temporal_stride * (entry - 1) + 1
        frames = own + shared
        windows = tuple(plan_windows(frames, window=window, overlap=overlap, temporal_stride=temporal_stride))
        plans.append(ShotPlan(index=index, prompt=shot["prompt"], camera=shot.get("camera"),
                              transition=shot["transition"], own=own, shared=shared, entry_latents=entry,
                              frames=frames, windows=windows))
    return plans


def check_shots(shots: list[dict], *, fps: int, window: int, overlap: int, temporal_stride: int,
                duration_s: float | None) -> tuple[int, list[tuple[str, str]]]:
    """(the clip's frames, problems): every shot holds the transition out of it and at least one latent frame;
    a given ``duration_s`` equals the sum of the shots' durations (within half a frame)."""
    plans = plan_shots(shots, fps=fps, window=window, overlap=overlap, temporal_stride=temporal_stride)
    problems = []
    for plan, after in zip(plans, plans[1:] + [None]):
        needed = after.shared if after is not None and after.transition != "cut" else 0
        if plan.own < max(needed, temporal_stride):
            what = (f"the {after.transition} into shot {after.index} ({needed} frames, {needed / fps:g} s)"
                    if needed else f"one latent frame ({temporal_stride} frames)")
            problems.append((f"shots[{plan.index}].duration_s",
                             f"{shots[plan.index]['duration_s']:g} s ({plan.own} frames at {fps} fps) is too short "
                             f"for {what}"))
    total = sum(shot["duration_s"] for shot in shots)
    if duration_s is not None and abs(total - duration_s) > 0.5 / fps:
        problems.append(("shots", f"the shots' durations add up to {total:g} s, but duration_s is {duration_s:g} s"))
    return 1 + sum(plan.own for plan in plans), problems
