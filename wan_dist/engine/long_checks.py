"""What the request checks of a long clip (engine/long.py renders it): whether a request renders window by window,
its windows, the fields a windowed render refuses, the storyboard's frames, and which render-group layouts can run
it. Kept apart from the renderer so engine/request.py can check a request without importing the render path."""

from __future__ import annotations

from wan_dist.controls.camera import ControlError
from wan_dist.controls.long import LongSpec, plan_windows

__all__ = ["check_long", "long_layout_problem", "window_count", "is_windowed", "window_frames"]

_WINDOWED_REFUSES = {
    "camera": "a camera path over a clip longer than one window is given per shot (shots) instead",
    "layers": "comes with a camera path, not available for a clip longer than one window",
}


def window_frames(long: dict | None, spec) -> int:
    """Frames per window: the request's ``long.window``, else the model's own clip length."""
    given = None if long is None else long.get("window")
    return int(given or spec.defaults.num_frames)


def is_windowed(request, spec) -> bool:
    """Whether ``request`` renders window by window: a storyboard, or ``long`` set and more frames than a window."""
    if request.shots:
        return True
    frames = request.num_frames or spec.defaults.num_frames
    return request.long is not None and frames > window_frames(request.long, spec)


def window_count(request, spec) -> int:
    """How many windows ``request`` renders on variant ``spec`` (1 for a one-window clip): the cost of its
    denoising, in the request's steps per window, for budgets (``sliding`` counts as its windows too)."""
    if not is_windowed(request, spec):
        return 1
    from wan_dist.engine.storyboard import plan_shots

    long = LongSpec.from_dict(request.long or {})
    window, stride = window_frames(request.long, spec), spec.vae.temporal_stride
    if request.shots:
        shots = plan_shots(request.shots, fps=request.render_fps(spec.defaults.fps), window=window,
                           overlap=long.overlap, temporal_stride=stride)
        return sum(len(shot.windows) for shot in shots)
    return len(plan_windows(request.num_frames or spec.defaults.num_frames, window=window, overlap=long.overlap,
                            temporal_stride=stride))


def long_layout_problem(parallel) -> str | None:
    """Why a render group laid out as ``parallel`` (a ParallelConfig) cannot render a clip beyond one window, or
    None. Every rank of a colocated group runs the windows in lockstep with its parallel experts (Ulysses, ring,
    CFG, FSDP); a long clip is one row, so a data degree has nothing to split, and disaggregated stages hand one
    render's latents across once, where each window would need its seam from the stage that decodes."""
    if parallel.placement == "disaggregated":
        return "a clip beyond one window renders on a colocated group; this one is disaggregated"
    if parallel.data > 1:
        return f"a clip beyond one window is one row; this group's data degree is {parallel.data}"
    return None


def check_long(values: dict, spec, *, frames_field: str, max_frames: int, fps: int,
               given_frames: bool = False) -> list[tuple[str, str]]:
    """Problems of a request's loose ``values`` as a long clip (``values["long"]`` is set to the defaults when
    the frames exceed ``max_frames`` and none is given) or a storyboard (``values["num_frames"]`` set to the
    shots' frames, at ``fps``: the rate the model renders). Empty for a one-window clip. ``given_frames``:
    num_frames came from the caller."""
    if values.get("shots"):
        return _check_storyboard(values, spec, given_frames=given_frames, max_frames=max_frames, fps=fps)
    frames = values.get("num_frames") or spec.defaults.num_frames
    stride = spec.vae.temporal_stride
    if values.get("long") is None:
        if frames <= max_frames:
            return []
        values["long"] = LongSpec().to_dict()
    long, window, refused = _windows(values, spec, max_frames)
    if refused:
        return refused
    if frames <= window or (frames - 1) % stride:
        return []  # one window (or frames the variant's rules refuse by name)
    problems = [(name, reason) for name, reason in _WINDOWED_REFUSES.items() if values.get(name) is not None]
    if long.method == "sliding":  # the post passes read the kept windows again; a sliding clip is decoded once
        problems += [(name, f"{what} a long clip from its kept windows, and a sliding clip is decoded once: use "
                            "long.method continue") for name, what in (("style_lock", "regrades"),
                                                                       ("renditions", "are cut from"))
                     if values.get(name) is not None]
    if long.method == "sliding" and values.get("cache") not in (None, "off"):
        problems.append(("cache", "sliding windows run the model on every window at each step, and a step cache "
                                  "reuses one forward: use long.method continue, or cache off"))
    if long.method == "sliding" and spec.task != "t2v":
        problems.append(("long", f"method: sliding fuses text-to-video windows; {spec.name} is {spec.task}: "
                                 "use continue"))
    return problems


def _windows(values: dict, spec, max_frames: int) -> tuple[LongSpec, int, list[tuple[str, str]]]:
    """(the request's long spec, its window's frames, the problems of that window on the model: none if it fits)."""
    long = LongSpec.from_dict(values["long"])
    window = window_frames(values["long"], spec)
    try:
        long.check_model(window=window, temporal_stride=spec.vae.temporal_stride, field="")
    except ControlError as error:
        return long, window, [("long", f"{error.field.lstrip('.')}: {error.reason}")]
    if window > max_frames:
        return long, window, [("long", f"window: at most {max_frames} frames, got {window}")]
    return long, window, []


def _check_storyboard(values: dict, spec, *, given_frames: bool, max_frames: int,
                      fps: int) -> list[tuple[str, str]]:
    from wan_dist.engine.storyboard import check_shots

    values["long"] = values.get("long") or LongSpec().to_dict()
    long, window, refused = _windows(values, spec, max_frames)
    if refused:
        return refused
    problems = [(name, "give each shot its own camera (shots[i].camera)" if name == "camera" else reason)
                for name, reason in _WINDOWED_REFUSES.items() if values.get(name) is not None]
    if long.method == "sliding":
        problems.append(("long", "method: a storyboard continues shot after shot: use continue"))
    if given_frames:
        problems.append(("num_frames", "a storyboard is as long as its shots: give duration_s (checked against "
                                       "their sum) or neither"))
    total, found = check_shots(values["shots"], fps=fps, window=window, overlap=long.overlap,
                               temporal_stride=spec.vae.temporal_stride, duration_s=values.get("duration_s"))
    values["num_frames"] = total
    return problems + found
