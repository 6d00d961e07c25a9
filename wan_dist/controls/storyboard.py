"""Storyboards: a request's ``shots`` and the transitions between them (pure data and numpy).

``shots``: ``[{prompt, duration_s, camera, transition, transition_s}]``. ``transition`` is how the shot begins:

- ``cut`` (the default, and the first shot's only choice): a fresh start, nothing shared with the shot before;
- ``crossfade``: the shot continues the previous one (it is rendered conditioned on its last frames, as a long
  clip's next window) and the ``transition_s`` both shots share are cross-faded;
- ``dip_to_black``: as crossfade, but the shared frames fade the previous shot out to black, then the new one in;
- ``whip_pan``: as crossfade, but across the shared frames the previous shot slides out to the left and the new one
  in from the right, fast in the middle (ease in-out), blurred along the motion in proportion to its speed.

Shared frames are a whole number of latent frames of the model (``s (o - 1) + 1``, ``o`` >= 2): a transition of
``transition_s`` gets the nearest such count a window can hold (:func:`transition_latents`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from wan_dist.controls.camera import CameraPath, ControlError, ease

__all__ = ["TRANSITIONS", "DEFAULT_TRANSITION_S", "shot_item", "transition_latents", "apply_transition",
           "sub_path", "whip_pan", "dip_to_black"]

TRANSITIONS = ("cut", "crossfade", "dip_to_black", "whip_pan")
DEFAULT_TRANSITION_S = 0.5
MAX_SHOTS = 64
_ADDITIVE = ("pan", "tilt", "roll", "orbit", "truck", "pedestal")


def shot_item(index: int, item: Any) -> dict:
    """One entry of ``shots``, normalised to ``{prompt, duration_s, camera, transition, transition_s}``; a
    ControlError names the part (``[1].duration_s``)."""
    at = f"[{index}]"
    if not isinstance(item, Mapping):
        raise ControlError(at, f"must be an object {{prompt, duration_s, camera, transition}}, got "
                               f"{type(item).__name__}")
    known = ("prompt", "duration_s", "camera", "transition", "transition_s")
    unknown = sorted(set(item) - set(known))
    if unknown:
        raise ControlError(f"{at}.{unknown[0]}", f"unknown field; known: {', '.join(known)}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ControlError(f"{at}.prompt", "required: what the shot shows")
    duration = item.get("duration_s")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or not 0 < duration <= 3600:
        raise ControlError(f"{at}.duration_s", f"required: seconds in (0, 3600], got {duration!r:.60}")
    transition = item.get("transition") or "cut"
    if transition not in TRANSITIONS:
        raise ControlError(f"{at}.transition", f"must be one of {', '.join(TRANSITIONS)}; got {transition!r:.60}")
    if index == 0 and transition != "cut":
        raise ControlError(f"{at}.transition", f"the first shot has no shot before it: cut, not {transition}")
    length = item.get("transition_s")
    if length is not None and (isinstance(length, bool) or not isinstance(length, (int, float))
                               or not math.isfinite(length) or length <= 0):
        raise ControlError(f"{at}.transition_s", f"must be a positive number of seconds, got {length!r:.60}")
    camera = item.get("camera")
    if camera is not None:
        try:
            camera = CameraPath.from_dict(camera).to_dict()
        except ControlError as error:
            raise ControlError(f"{at}.camera.{error.field}".rstrip("."), error.reason) from None
    return {"prompt": prompt, "duration_s": float(duration), "camera": camera, "transition": transition,
            "transition_s": None if transition == "cut" else float(length or DEFAULT_TRANSITION_S)}


def transition_latents(seconds: float, fps: int, *, temporal_stride: int, window_latents: int) -> int:
    """Latent frames ``o`` shared by a transition of ``seconds``: the ``s (o - 1) + 1`` frames nearest, at least 2
    latent frames (a transition of one frame is a cut) and below the window's ``window_latents``."""
    frames = seconds * fps
    latents = round((frames - 1) / temporal_stride) + 1
    return int(min(max(latents, 2), window_latents - 1))


def _blend(earlier: np.ndarray, later: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight.reshape(-1, 1, 1, 1)
    mixed = (1.0 - w) * earlier.astype(np.float64) + w * later.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def dip_to_black(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """``earlier`` fades to black over the first half of the shared frames, ``later`` in from black over the
    rest (the middle frame of an odd count is black)."""
    count = len(earlier)
    level = np.abs(np.linspace(-1.0, 1.0, count))  # brightness: 1 -> 0 -> 1
    source = np.where((np.arange(count) < count / 2).reshape(-1, 1, 1, 1), earlier, later)
    return np.clip(np.rint(source.astype(np.float64) * level.reshape(-1, 1, 1, 1)), 0, 255).astype(np.uint8)


def whip_pan(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """A fast pan across the shared frames: both pictures side by side slide left by one frame width (ease
    in-out), each output frame blurred horizontally over the distance it moved since the frame before."""
    count, height, width, _ = earlier.shape
    progress = ease("ease_in_out", np.linspace(0.0, 1.0, count))
    speed = np.abs(np.gradient(progress)) * width if count > 1 else np.zeros(1)
    out = np.empty_like(earlier)
    for index in range(count):
        strip = np.concatenate([earlier[index], later[index]], axis=1).astype(np.float64)  # [H, 2W, 3]
        offset = progress[index] * width
        columns = np.arange(width) + offset
        left = np.floor(columns).astype(int).clip(0, 2 * width - 1)
        right = (left + 1).clip(0, 2 * width - 1)
        frac = (columns - np.floor(columns)).reshape(1, -1, 1)
        frame = strip[:, left] * (1 - frac) + strip[:, right] * frac
        out[index] = np.clip(np.rint(_box_blur(frame, int(round(speed[index])))), 0, 255).astype(np.uint8)
    return out


def _box_blur(frame: np.ndarray, length: int) -> np.ndarray:
    """``frame`` [H, W, 3] averaged over ``length`` columns (edges repeated)."""
    if length <= 1:
        return frame
    pad = length // 2
    padded = np.pad(frame, ((0, 0), (pad, length - 1 - pad), (0, 0)), mode="edge")
    summed = np.cumsum(np.pad(padded, ((0, 0), (1, 0), (0, 0))), axis=1)
    return (summed[:, length:] - summed[:, :-length]) / length


def apply_transition(kind: str, earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """The shared frames ``[P, H, W, 3]`` of a ``kind`` transition from ``earlier`` (the previous shot's last
    ``P``) to ``later`` (the new shot's first ``P``); ``continue`` (within a shot) and ``crossfade`` blend linearly."""
    if earlier.shape != later.shape:
        raise ValueError(f"transition frames differ in shape: {earlier.shape} vs {later.shape}")
    if kind in ("continue", "crossfade"):
        count = len(earlier)
        return _blend(earlier, later, (np.arange(count) + 1.0) / (count + 1.0))
    if kind == "dip_to_black":
        return dip_to_black(earlier, later)
    if kind == "whip_pan":
        return whip_pan(earlier, later)
    raise ValueError(f"transition: unknown kind {kind!r}")


def sub_path(camera: dict | None, start: float, end: float) -> dict | None:
    """The part of camera path ``camera`` (loose form) over clip fractions ``[start, end]``, as a path of its own
    over ``[0, 1]``: a move wholly inside keeps its easing; one crossing an end keeps the share of its amount
    done inside (scales as powers), linear there. None when nothing moves and nothing shakes."""
    if camera is None:
        return None
    span = end - start
    moves = []
    for move in camera.get("moves", []):
        lo, hi = max(move["start"], start), min(move["end"], end)
        if hi <= lo:
            continue
        length = move["end"] - move["start"]
        done = ease(move["easing"], (np.array([lo, hi]) - move["start"]) / length)
        share = float(done[1] - done[0])
        inside = move["start"] >= start and move["end"] <= end
        amount = move["amount"] ** share if move["type"] in ("zoom", "dolly") else move["amount"] * share
        moves.append({**move, "amount": amount, "start": (lo - start) / span, "end": (hi - start) / span,
                      "easing": move["easing"] if inside else "linear"})
    if not moves and not camera.get("shake"):
        return None
    return {**camera, "moves": moves}
