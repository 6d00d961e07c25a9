"""Frame-rate conversion: more frames by motion-compensated interpolation, fewer by even drops.

A clip of ``F`` frames at ``from_fps`` spans ``(F - 1) / from_fps`` seconds; at ``to_fps`` it has
:func:`retimed_count` frames, output frame ``j`` showing the time ``j / to_fps``, i.e. the input position
``j * from_fps / to_fps`` (exact integer arithmetic, :func:`retime_positions`). Below the input rate each output
frame is the input frame nearest its time (frames are dropped evenly); above it a position between input frames
``i`` and ``i + 1`` is interpolated at ``tau`` = the fraction, by :func:`interpolate`:

1. Optical flow both ways with OpenCV's DIS (``cv2.DISOpticalFlow``: the medium preset with 8-pixel patches
   every 4 pixels down to full resolution; the preset's coarser patches miss small fast objects). DIS reads one
   8-bit plane, and grey alone misses edges between colours of equal brightness (a green shape on a grey
   ground), so the flow is computed on grey and on the two colour planes of CIE Lab, and each pixel keeps the
   candidate whose warp matches the colours best in a 7x7 window (a per-pixel fusion of flow candidates).
2. Occlusion: each pixel's inconsistency is its forward/backward error ``|w + w'|^2`` (the flow and the flow
   back from where it lands should cancel; Sundaram, Brox & Keutzer 2010) plus the colour mismatch where it lands.
   A pixel that fails their test (``|w + w'|^2 > 0.01 (|w|^2 + |w'|^2) + 0.5``) counts as hidden in the other
   frame (the record's ``hidden_share``).
3. The motion at ``tau`` is splatted forward from both frames (each pixel to the 2x2 pixels around where it is at
   ``tau``); where several land on one pixel the least inconsistent wins (an object visible in both frames beats
   the ground it is covering); pixels nothing lands on take their neighbours' motion.
4. Each output pixel reads A back along that motion and B forward along it and blends them by time, each side's
   weight divided by ``1 + e / 10``, ``e`` the inconsistency of the other side's source pixel: content that one
   frame shows and the other does not (being covered or uncovered) is taken from the frame that shows it.

For large frames steps 1-3 run at a working size whose short side is at most ``flow_short_side`` pixels
(default 360) and the motion is scaled up; the frames are read at full size.

Deterministic: the same frames give the same output (numpy, and OpenCV calls whose results do not depend on
its thread count; DIS runs its patch search in stripes, one per OpenCV thread, yet with opencv 5.1 its flow was
measured equal for 1 to 16 threads, which tests/test_interpolate.py keeps checking). Pure numpy / OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["METHODS", "FLOW_SHORT_SIDE", "PairMotion", "Retimer", "retimed_count", "retime_positions", "convert_fps",
           "pair_motion", "interpolate", "blend", "dis_flow"]

METHODS = ("flow", "blend", "repeat")  # interpolation above the input rate: the product's, and two baselines
FLOW_SHORT_SIDE = 360
_MIN_FLOW_SIDE = 16  # DIS refuses images smaller than its patch pyramid allows
_DIS = {"PatchSize": 8, "PatchStride": 4, "FinestScale": 0}
_CONSISTENCY = (0.01, 0.5)  # Sundaram et al.'s alpha (relative) and beta (px^2)
_FUSION_WINDOW = 7
_MISMATCH_WEIGHT = 3.0  # colour mismatch (sum of |RGB| differences, 3x3 mean) per squared pixel of flow error
_TRUST = 10.0  # inconsistency at which a side's weight halves


def retimed_count(num_frames: int, from_fps: int, to_fps: int) -> int:
    """Frames at ``to_fps`` over the span of ``num_frames`` frames at ``from_fps``: the first at 0 s, one every
    ``1 / to_fps`` s up to the last input frame's time, ``floor((num_frames - 1) * to_fps / from_fps) + 1``."""
    _check_rates(num_frames, from_fps, to_fps)
    return (num_frames - 1) * to_fps // from_fps + 1


def retime_positions(num_frames: int, from_fps: int, to_fps: int) -> list[tuple[int, int, int]]:
    """Where each output frame sits in the input, as ``(i, numerator, denominator)``: at or above the input rate
    the position ``i + numerator / denominator`` (exact; numerator 0 means input frame ``i`` as it is), below it
    the nearest input frame ``(i, 0, 1)`` (ties go to the later frame)."""
    count = retimed_count(num_frames, from_fps, to_fps)
    if to_fps < from_fps:
        return [((2 * j * from_fps + to_fps) // (2 * to_fps), 0, 1) for j in range(count)]
    return [(j * from_fps // to_fps, j * from_fps % to_fps, to_fps) for j in range(count)]


def _check_rates(num_frames: int, from_fps: int, to_fps: int) -> None:
    for name, value in (("num_frames", num_frames), ("from_fps", from_fps), ("to_fps", to_fps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray, nearest: bool = False) -> np.ndarray:
    return cv2.remap(image, x, y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def _planes(frame: np.ndarray, pad_y: int, pad_x: int) -> list[np.ndarray]:
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
    planes = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), lab[..., 1], lab[..., 2]]
    return [cv2.copyMakeBorder(np.ascontiguousarray(p), 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE) for p in planes]


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Optical flow [H, W, 2] float32 (x, y pixels) from RGB uint8 frame ``a`` to ``b``: ``a[y, x]`` shows what
    ``b`` shows at ``(x, y) + flow[y, x]``. DIS on grey and Lab's a and b, fused per pixel by warped colour error."""
    _check_pair(a, b)
    height, width = a.shape[:2]
    pad_y, pad_x = max(0, _MIN_FLOW_SIDE - height), max(0, _MIN_FLOW_SIDE - width)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for key, value in _DIS.items():
        getattr(dis, "set" + key)(value)
    candidates = [dis.calc(plane_a, plane_b, None)[:height, :width]
                  for plane_a, plane_b in zip(_planes(a, pad_y, pad_x), _planes(b, pad_y, pad_x))]
    xs, ys = _grid(height, width)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    costs = [cv2.blur(np.abs(_sample(b32, xs + f[..., 0], ys + f[..., 1]) - a32).sum(-1),
                      (_FUSION_WINDOW, _FUSION_WINDOW)) for f in candidates]
    best = np.argmin(np.stack(costs), axis=0)
    return np.take_along_axis(np.stack(candidates), best[None, ..., None], axis=0)[0]


@dataclass(frozen=True)
class PairMotion:
    """The motion between frames A and B at the working size: ``forward`` / ``backward`` flow [h, w, 2]
    (A -> B, B -> A; working pixels), each pixel's inconsistency [h, w] (``forward_error``: of A's pixels; zero
    everywhere when made without occlusion handling) and whether it is hidden in the other frame
    (``hidden_in_b``: A's pixels B does not show). ``full_size``: (height, width) of the frames."""

    forward: np.ndarray
    backward: np.ndarray
    forward_error: np.ndarray
    backward_error: np.ndarray
    hidden_in_b: np.ndarray
    hidden_in_a: np.ndarray
    full_size: tuple[int, int]

    @property
    def hidden_share(self) -> float:
        """The share of pixels of either frame the other does not show."""
        return float((self.hidden_in_b.mean() + self.hidden_in_a.mean()) / 2)


def _consistency(flow: np.ndarray, back: np.ndarray, source: np.ndarray, target: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(inconsistency, hidden) of each pixel of ``source`` given its ``flow`` to ``target`` and ``back``."""
    xs, ys = _grid(*flow.shape[:2])
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    returned = _sample(back, x, y)
    error = ((flow + returned) ** 2).sum(-1)
    alpha, beta = _CONSISTENCY
    hidden = error > alpha * ((flow ** 2).sum(-1) + (returned ** 2).sum(-1)) + beta
    mismatch = cv2.blur(np.abs(_sample(target, x, y) - source).sum(-1), (3, 3))
    return error + _MISMATCH_WEIGHT * mismatch, hidden


def _working(frame: np.ndarray, short_side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


def pair_motion(a: np.ndarray, b: np.ndarray, *, flow_short_side: int = FLOW_SHORT_SIDE,
                occlusion: bool = True, flows: tuple[np.ndarray, np.ndarray] | None = None) -> PairMotion:
    """Flow both ways and occlusion between RGB uint8 frames ``a`` and ``b`` [H, W, 3] (see the module doc).
    ``occlusion=False`` (an ablation): every pixel counts as consistent. ``flows``: (forward, backward) flow
    [h, w, 2] at the working size from elsewhere (another estimator, or the true motion) instead of DIS."""
    _check_pair(a, b)
    if isinstance(flow_short_side, bool) or not isinstance(flow_short_side, int) or flow_short_side < _MIN_FLOW_SIDE:
        raise ValueError(f"flow_short_side: must be an integer >= {_MIN_FLOW_SIDE}, got {flow_short_side!r}")
    small_a, small_b = _working(a, flow_short_side), _working(b, flow_short_side)
    if flows is None:
        forward, backward = dis_flow(small_a, small_b), dis_flow(small_b, small_a)
    else:
        forward, backward = (np.asarray(f, dtype=np.float32) for f in flows)
        for name, flow in (("flows[0]", forward), ("flows[1]", backward)):
            if flow.shape != small_a.shape[:2] + (2,):
                raise ValueError(f"{name}: must be [{small_a.shape[0]}, {small_a.shape[1]}, 2], got {flow.shape}")
    a32, b32 = small_a.astype(np.float32), small_b.astype(np.float32)
    forward_error, hidden_in_b = _consistency(forward, backward, a32, b32)
    backward_error, hidden_in_a = _consistency(backward, forward, b32, a32)
    if not occlusion:
        forward_error, backward_error = np.zeros_like(forward_error), np.zeros_like(backward_error)
    return PairMotion(forward=forward, backward=backward, forward_error=forward_error,
                      backward_error=backward_error, hidden_in_b=hidden_in_b, hidden_in_a=hidden_in_a,
                      full_size=a.shape[:2])


def _splat(x: np.ndarray, y: np.ndarray, error: np.ndarray, best: np.ndarray, offset: int) -> None:
    """Candidates ``offset + k`` (source pixel k, landing at ``(x, y)``) onto the 2x2 pixels around where they
    land: per target pixel ``best`` keeps the smallest key, i.e. the lowest ``error``, then the nearer landing,
    then the lower candidate number (deterministic)."""
    height, width = best.shape
    count = best.size
    left, top = np.floor(x).astype(np.int64).ravel(), np.floor(y).astype(np.int64).ravel()
    x, y = x.ravel(), y.ravel()
    source = np.arange(count, dtype=np.int64) + offset
    rank = np.round(np.minimum(error.ravel(), 1e5) * 16).astype(np.int64)  # quantised: 1/16 steps
    for dy in (0, 1):
        for dx in (0, 1):
            cx, cy = left + dx, top + dy
            distance = np.abs(x - cx) + np.abs(y - cy)
            keep = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height) & (distance < 1.0)
            key = (rank[keep] * 64 + (distance[keep] * 32).astype(np.int64)) * (2 * count) + source[keep]
            np.minimum.at(best.reshape(-1), cy[keep] * width + cx[keep], key)


def _motion_at(motion: PairMotion, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """The A -> B motion [h, w, 2] of the content at each pixel at time ``tau`` (working size), and the hole mask
    (pixels nothing landed on, filled from their neighbours)."""
    height, width = motion.forward.shape[:2]
    xs, ys = _grid(height, width)
    count = height * width
    empty = np.iinfo(np.int64).max
    best = np.full((height, width), empty, dtype=np.int64)
    forward, backward = motion.forward, motion.backward
    _splat(xs + tau * forward[..., 0], ys + tau * forward[..., 1], motion.forward_error, best, 0)
    _splat(xs + (1 - tau) * backward[..., 0], ys + (1 - tau) * backward[..., 1], motion.backward_error, best, count)
    candidates = np.concatenate([forward.reshape(-1, 2), -backward.reshape(-1, 2)])
    found = best != empty
    result = np.zeros((height, width, 2), np.float32)
    result[found] = candidates[best[found] % (2 * count)]
    return _fill_holes(result, found), ~found


def _fill_holes(field: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``field`` where ``known``, elsewhere the mean of known neighbours, growing inward ring by ring."""
    if known.all() or not known.any():
        return field
    weight = known.astype(np.float32)
    field = field * weight[..., None]
    while not known.all():
        around, total = cv2.blur(weight, (3, 3)), cv2.blur(field, (3, 3))
        ring = ~known & (around > 0)
        field[ring] = total[ring] / around[ring][:, None]
        weight[ring], known = 1.0, known | ring
    return field


def interpolate(a: np.ndarray, b: np.ndarray, tau: float, motion: PairMotion | None = None) -> np.ndarray:
    """The frame [H, W, 3] uint8 at time ``tau`` in (0, 1) between RGB uint8 frames ``a`` (0) and ``b`` (1), by
    motion-compensated interpolation with occlusion handling (module doc). ``motion``: :func:`pair_motion` of
    the two, when several times between them are wanted."""
    _check_pair(a, b)
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau: must be strictly between 0 and 1, got {tau}")
    motion = motion if motion is not None else pair_motion(a, b)
    if motion.full_size != a.shape[:2]:
        raise ValueError(f"motion: computed for frames of {motion.full_size}, not {a.shape[:2]}")
    small, _ = _motion_at(motion, tau)
    height, width = a.shape[:2]
    scale_x, scale_y = width / small.shape[1], height / small.shape[0]
    if small.shape[:2] != (height, width):
        small = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR) * np.float32([scale_x, scale_y])
    xs, ys = _grid(height, width)
    ax, ay = xs - tau * small[..., 0], ys - tau * small[..., 1]
    bx, by = xs + (1 - tau) * small[..., 0], ys + (1 - tau) * small[..., 1]
    from_a = _sample(a.astype(np.float32), ax, ay)
    from_b = _sample(b.astype(np.float32), bx, by)
    # inconsistency of each side's source pixel (working size): B's source unseen in A discounts A, and back
    unseen_by_b = _sample(motion.forward_error, (ax + 0.5) / scale_x - 0.5, (ay + 0.5) / scale_y - 0.5)
    unseen_by_a = _sample(motion.backward_error, (bx + 0.5) / scale_x - 0.5, (by + 0.5) / scale_y - 0.5)
    weight_a = (1 - tau) / (1 + unseen_by_a / _TRUST)
    weight_b = tau / (1 + unseen_by_b / _TRUST)
    out = (from_a * weight_a[..., None] + from_b * weight_b[..., None]) / (weight_a + weight_b)[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def blend(a: np.ndarray, b: np.ndarray, tau: float) -> np.ndarray:
    """The naive in-between: ``(1 - tau) a + tau b`` (a cross-fade; moving edges double)."""
    _check_pair(a, b)
    return np.clip(a * (1.0 - tau) + b.astype(np.float64) * tau + 0.5, 0, 255).astype(np.uint8)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, frame in (("a", a), ("b", b)):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{name}: must be an RGB uint8 frame [H, W, 3], got "
                             f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}")
    if a.shape != b.shape:
        raise ValueError(f"b: frames differ in size, {a.shape} and {b.shape}")


def convert_fps(frames: np.ndarray, from_fps: int, to_fps: int, *, method: str = "flow",
                flow_short_side: int = FLOW_SHORT_SIDE, occlusion: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """``frames`` [F, H, W, 3] uint8 at ``from_fps`` as :func:`retimed_count` frames at ``to_fps`` over the same
    span, and a record of what was done (for a sidecar). Below the input rate frames are dropped evenly; above
    it the in-between frames are made by ``method``: ``flow`` (:func:`interpolate`; ``occlusion=False`` is its
    ablation without occlusion handling), or the baselines ``blend`` (cross-fade) and ``repeat`` (the nearest
    earlier frame). The same rate returns ``frames`` as they are."""
    _check_frames(frames)
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}; got {method!r}")
    if to_fps == from_fps:
        _check_rates(len(frames), from_fps, to_fps)
        return frames, {"from_fps": from_fps, "to_fps": to_fps, "frames_in": len(frames), "frames_out": len(frames),
                        "method": "none"}
    retimer = Retimer(len(frames), from_fps, to_fps, method=method, flow_short_side=flow_short_side,
                      occlusion=occlusion)
    return retimer.push(frames), retimer.record()


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames: must be RGB uint8 [F, H, W, 3], got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")


class Retimer:
    """:func:`convert_fps` of a clip of ``num_frames`` frames that arrive in parts (a long clip's windows): each
    :meth:`push` of the next input frames returns the output frames they complete, holding only the last input
    frame between parts (an in-between frame needs the frames on both sides). The parts' outputs concatenated
    equal ``convert_fps`` of the whole clip; :meth:`record` is its record once every frame was pushed."""

    def __init__(self, num_frames: int, from_fps: int, to_fps: int, *, method: str = "flow",
                 flow_short_side: int = FLOW_SHORT_SIDE, occlusion: bool = True):
        if method not in METHODS:
            raise ValueError(f"method: must be one of {', '.join(METHODS)}; got {method!r}")
        self.positions = retime_positions(num_frames, from_fps, to_fps)
        self.num_frames, self.from_fps, self.to_fps = num_frames, from_fps, to_fps
        self.method, self.flow_short_side, self.occlusion = method, flow_short_side, occlusion
        self._next = 0  # the next output frame
        self._seen = 0  # input frames pushed so far
        self._last: np.ndarray | None = None  # input frame _seen - 1
        self._motion: tuple[int, PairMotion] | None = None
        self._hidden: list[float] = []

    def push(self, frames: np.ndarray) -> np.ndarray:
        """The output frames that ``frames`` (the next input frames, [n, H, W, 3] uint8) complete."""
        _check_frames(frames)
        start, end = self._seen, self._seen + len(frames)
        if end > self.num_frames:
            raise ValueError(f"frames: {end} pushed, the clip has {self.num_frames}")

        def frame(index: int) -> np.ndarray:
            return frames[index - start] if index >= start else self._last

        out = []
        while self._next < len(self.positions):
            index, numerator, denominator = self.positions[self._next]
            if (index + 1 if numerator else index) >= end:
                break  # waits for the next part
            out.append(frame(index) if numerator == 0 else self._between(frame(index), frame(index + 1), index,
                                                                        numerator / denominator))
            self._next += 1
        if len(frames):
            self._seen, self._last = end, frames[-1]
        return np.stack(out) if out else np.empty((0,) + frames.shape[1:], np.uint8)

    def _between(self, a: np.ndarray, b: np.ndarray, index: int, tau: float) -> np.ndarray:
        if self.method == "repeat":
            return a
        if self.method == "blend":
            return blend(a, b, tau)
        if self._motion is None or self._motion[0] != index:  # positions only increase: one pair's motion at a time
            self._motion = (index, pair_motion(a, b, flow_short_side=self.flow_short_side, occlusion=self.occlusion))
            self._hidden.append(self._motion[1].hidden_share)
        return interpolate(a, b, tau, self._motion[1])

    def record(self) -> dict[str, Any]:
        """What was done, for a sidecar: rates, frames in and out, the method (and the flow's settings)."""
        record: dict[str, Any] = {"from_fps": self.from_fps, "to_fps": self.to_fps, "frames_in": self.num_frames,
                                  "frames_out": len(self.positions)}
        if self.to_fps < self.from_fps:
            picks = {index for index, _, _ in self.positions}
            return {**record, "method": "drop", "dropped": self.num_frames - len(picks)}
        record.update(method="dis_flow" if self.method == "flow" else self.method,
                      interpolated=sum(1 for _, numerator, _ in self.positions if numerator))
        if self.method == "flow":
            record.update(flow_short_side=self.flow_short_side, occlusion=self.occlusion,
                          hidden_share=round(float(np.mean(self._hidden)), 6) if self._hidden else 0.0)
        return record
