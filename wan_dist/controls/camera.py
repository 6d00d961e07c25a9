"""Camera paths: moves with easing, handheld shake, one pose per output frame, and the prompt's camera words.

A request's ``camera`` (INTERFACES.md) is a list of moves, each ``{type, amount, start, end, easing}``, plus an
optional ``shake {intensity, frequency_hz}``, a ``mode`` (``guided``: the model is steered along the path;
``exact``: a virtual camera moves over a static render) and a ``strength`` (see :data:`DEFAULT_STRENGTH`).

Units and signs (the scene's background plane sits at depth 1; a pinhole camera of horizontal field of view
``fov_deg``):

- ``pan``, ``tilt``, ``roll``, ``orbit``: degrees. Pan positive turns toward the right of the frame (the scene
  slides left), tilt positive looks up, roll positive turns the camera clockwise (the picture turns
  counter-clockwise), orbit positive circles the camera to the right around the subject (at the foreground
  layer's depth) while it keeps the subject centred.
- ``zoom``, ``dolly``: scale factors, > 1 in. Zoom changes the focal length (every depth alike); dolly moves
  the camera forward until the background plane appears ``amount`` times larger (nearer layers grow more).
- ``truck``, ``pedestal``: fractions of the frame: how far the background plane slides (frame widths for
  truck, positive right; frame heights for pedestal, positive up). Nearer layers slide further (parallax).
- ``start``/``end``: fractions of the clip; ``easing``: linear, ease_in (t^2), ease_out (1 - (1-t)^2),
  ease_in_out (smoothstep 3t^2 - 2t^3). Moves may overlap: rotations and shifts add, scales multiply (each as
  ``amount ** eased``, so a zoom keeps a constant rate in log scale).
- ``shake``: band-limited noise in one octave around ``frequency_hz``, drawn from the request's seed; its RMS
  image displacement is ``intensity * SHAKE_FULL_SCALE`` of the frame's short side (plus a little roll).

Output frame ``i`` of ``F`` sits at clip time ``i / (F - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["MOVE_TYPES", "EASINGS", "MODES", "ControlError", "ease", "Move", "Shake", "CameraPath", "SampledPath",
           "camera_phrases", "with_camera_phrases", "SHAKE_FULL_SCALE", "DEFAULT_STRENGTH"]

MOVE_TYPES = ("pan", "tilt", "roll", "zoom", "dolly", "truck", "pedestal", "orbit")
EASINGS = ("linear", "ease_in", "ease_out", "ease_in_out")
MODES = ("guided", "exact")
# |amount| limits per move type; zoom and dolly are scales in [SCALE_LIMITS]
_AMOUNT_LIMITS = {"pan": 180.0, "tilt": 90.0, "roll": 180.0, "orbit": 90.0, "truck": 2.0, "pedestal": 2.0}
SCALE_LIMITS = (0.1, 10.0)
SHAKE_FULL_SCALE = 0.02  # RMS shake displacement at intensity 1, as a share of the frame's short side
SHAKE_ROLL_DEG = 0.5  # RMS shake roll at intensity 1
DEFAULT_FOV_DEG = 60.0
# SDEdit's convention (diffusers' ``strength``): the share of the denoising steps that run, from the proxy clip
# noised to that level (image-to-video); the share of fresh noise mixed into the warped noise (text-to-video).
# 0 follows the proxy most closely, 1 leaves the model free (the camera then acts through the prompt alone).
DEFAULT_STRENGTH = 0.8
DEFAULT_PIVOT_DEPTH = 0.5  # orbit pivot / foreground depth without layers (parallax 2)


class ControlError(ValueError):
    """A bad control value: ``field`` is its path inside the control (``moves[1].start``), ``reason`` why."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self):
        return (ControlError, (self.field, self.reason))


def ease(easing: str, progress) -> np.ndarray:
    """The eased share of a move done at ``progress`` (clipped to [0, 1]); 0 -> 0, 1 -> 1, monotone."""
    p = np.clip(np.asarray(progress, dtype=np.float64), 0.0, 1.0)
    if easing == "linear":
        return p
    if easing == "ease_in":
        return p * p
    if easing == "ease_out":
        return 1.0 - (1.0 - p) ** 2
    if easing == "ease_in_out":
        return p * p * (3.0 - 2.0 * p)
    raise ControlError("easing", f"must be one of {', '.join(EASINGS)}; got {easing!r}")


# ----------------------------------------------------------------------------- checks of loose values
def _keys(data: Any, field: str, known: tuple[str, ...]) -> Mapping:
    if not isinstance(data, Mapping):
        raise ControlError(field, f"must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ControlError(f"{field}.{unknown[0]}" if field else unknown[0], f"unknown field; known: {', '.join(known)}")
    return data


def _number(value: Any, field: str, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ControlError(field, f"must be a finite number, got {value!r:.60}")
    if value < low or value > high or (open_low and value == low):
        raise ControlError(field, f"must be in {'(' if open_low else '['}{low:g}, {high:g}], got {value:g}")
    return float(value)


def _choice(value: Any, field: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ControlError(field, f"unknown {what} {value!r:.60}; known: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Move:
    type: str
    amount: float
    start: float = 0.0
    end: float = 1.0
    easing: str = "ease_in_out"

    @classmethod
    def from_dict(cls, data: Any, field: str = "move") -> "Move":
        data = _keys(data, field, ("type", "amount", "start", "end", "easing"))
        if "type" not in data:
            raise ControlError(f"{field}.type", f"required: one of {', '.join(MOVE_TYPES)}")
        kind = _choice(data["type"], f"{field}.type", MOVE_TYPES, "move type")
        if "amount" not in data:
            raise ControlError(f"{field}.amount", "required")
        if kind in ("zoom", "dolly"):
            amount = _number(data["amount"], f"{field}.amount", *SCALE_LIMITS)
        else:
            limit = _AMOUNT_LIMITS[kind]
            amount = _number(data["amount"], f"{field}.amount", -limit, limit)
        start = _number(data.get("start", 0.0), f"{field}.start", 0.0, 1.0)
        end = _number(data.get("end", 1.0), f"{field}.end", 0.0, 1.0)
        if start > end:
            raise ControlError(f"{field}.start", f"must be <= end ({end:g}), got {start:g}")
        easing = _choice(data.get("easing", "ease_in_out"), f"{field}.easing", EASINGS, "easing")
        return cls(type=kind, amount=amount, start=start, end=end, easing=easing)

    def eased(self, clip_time) -> np.ndarray:
        """The share of this move done at ``clip_time`` (fractions of the clip)."""
        u = np.asarray(clip_time, dtype=np.float64)
        if self.end > self.start:
            return ease(self.easing, (u - self.start) / (self.end - self.start))
        return (u >= self.start).astype(np.float64)  # an instant move: a cut to the new pose

    def to_dict(self) -> dict:
        return {"type": self.type, "amount": self.amount, "start": self.start, "end": self.end, "easing": self.easing}


@dataclass(frozen=True)
class Shake:
    intensity: float = 0.0
    frequency_hz: float = 2.0

    @classmethod
    def from_dict(cls, data: Any, field: str = "shake") -> "Shake":
        data = _keys(data, field, ("intensity", "frequency_hz"))
        return cls(intensity=_number(data.get("intensity", 0.0), f"{field}.intensity", 0.0, 1.0),
                   frequency_hz=_number(data.get("frequency_hz", 2.0), f"{field}.frequency_hz", 0.0, 30.0,
                                        open_low=True))

    def to_dict(self) -> dict:
        return {"intensity": self.intensity, "frequency_hz": self.frequency_hz}

    def track(self, num_frames: int, fps: float, seed: int) -> np.ndarray:
        """[F, 3] unit-free shake: (x, y) with RMS magnitude ``intensity * SHAKE_FULL_SCALE`` (share of the short
        side) and roll (degrees) with RMS ``intensity * SHAKE_ROLL_DEG``; zero mean; the seed decides it."""
        out = np.zeros((num_frames, 3))
        if self.intensity == 0.0 or num_frames < 2:
            return out
        rng = np.random.default_rng([int(seed), 0x5A4E])
        length = max(4 * num_frames, 64)
        freqs = np.fft.rfftfreq(length, d=1.0 / fps)
        centre = min(self.frequency_hz, fps / 2)  # above Nyquist a shake cannot be shown: clipped
        band = (freqs >= centre / math.sqrt(2)) & (freqs <= centre * math.sqrt(2)) & (freqs > 0)
        if not band.any():  # a short clip has few bins: the nearest one
            band[1 + int(np.argmin(np.abs(freqs[1:] - centre)))] = True
        for axis in range(3):
            spectrum = np.zeros(len(freqs), dtype=np.complex128)
            spectrum[band] = rng.normal(size=band.sum()) + 1j * rng.normal(size=band.sum())
            signal = np.fft.irfft(spectrum, n=length)[:num_frames]
            signal -= signal.mean()
            out[:, axis] = signal / max(float(np.sqrt(np.mean(signal ** 2))), 1e-12)
        out[:, :2] *= self.intensity * SHAKE_FULL_SCALE / math.sqrt(2)  # each axis half the mean square
        out[:, 2] *= self.intensity * SHAKE_ROLL_DEG
        return out


@dataclass(frozen=True)
class CameraPath:
    """A validated camera request (see the module docstring); :meth:`sample` gives its poses."""

    moves: tuple[Move, ...] = ()
    shake: Shake | None = None
    mode: str = "guided"
    strength: float = DEFAULT_STRENGTH
    fov_deg: float = DEFAULT_FOV_DEG
    overscan: float | None = None  # exact mode's crop factor; None: the least the path needs

    @classmethod
    def from_dict(cls, data: Any) -> "CameraPath":
        """Checked; raises ControlError naming the field (``moves[1].start``)."""
        if isinstance(data, CameraPath):
            return data
        data = _keys(data, "", ("moves", "shake", "mode", "strength", "fov_deg", "overscan"))
        moves = data.get("moves") or []
        if not isinstance(moves, (list, tuple)):
            raise ControlError("moves", f"must be a list of moves, got {type(moves).__name__}")
        if len(moves) > 32:
            raise ControlError("moves", f"at most 32 moves, got {len(moves)}")
        shake = data.get("shake")
        overscan = data.get("overscan")
        return cls(moves=tuple(Move.from_dict(m, f"moves[{i}]") for i, m in enumerate(moves)),
                   shake=None if shake is None else Shake.from_dict(shake),
                   mode=_choice(data.get("mode", "guided"), "mode", MODES, "mode"),
                   strength=_number(data.get("strength", DEFAULT_STRENGTH), "strength", 0.0, 1.0),
                   fov_deg=_number(data.get("fov_deg", DEFAULT_FOV_DEG), "fov_deg", 10.0, 120.0),
                   overscan=None if overscan is None else _number(overscan, "overscan", 1.0, 3.0))

    def to_dict(self) -> dict:
        """The normalised loose form (every default written out): what a request and a sidecar record."""
        return {"moves": [m.to_dict() for m in self.moves],
                "shake": None if self.shake is None else self.shake.to_dict(),
                "mode": self.mode, "strength": self.strength, "fov_deg": self.fov_deg, "overscan": self.overscan}

    def sample(self, *, num_frames: int, fps: float, width: int, height: int, seed: int,
               pivot_depth: float = DEFAULT_PIVOT_DEPTH) -> "SampledPath":
        """One pose per output frame. ``pivot_depth``: the orbit's centre (the foreground layer's depth)."""
        if num_frames < 1:
            raise ControlError("num_frames", f"must be >= 1, got {num_frames}")
        u = np.arange(num_frames) / max(num_frames - 1, 1)
        focal = (width / 2) / math.tan(math.radians(self.fov_deg) / 2)
        angles = {kind: np.zeros(num_frames) for kind in ("pan", "tilt", "roll", "orbit")}
        log_scale = {"zoom": np.zeros(num_frames), "dolly": np.zeros(num_frames)}
        shift = {"truck": np.zeros(num_frames), "pedestal": np.zeros(num_frames)}
        for move in self.moves:
            done = move.eased(u)
            if move.type in angles:
                angles[move.type] += move.amount * done
            elif move.type in log_scale:
                log_scale[move.type] += math.log(move.amount) * done
            else:
                shift[move.type] += move.amount * done
        orbit = np.radians(angles["orbit"])
        position = np.stack([shift["truck"] * width / focal + pivot_depth * np.sin(orbit),
                             -shift["pedestal"] * height / focal,  # y points down
                             1.0 - np.exp(-log_scale["dolly"]) + pivot_depth * (1 - np.cos(orbit))], axis=-1)
        shake = (self.shake or Shake()).track(num_frames, fps, seed)
        shake[:, :2] *= min(width, height)
        return SampledPath(width=width, height=height, fps=float(fps), focal=focal,
                           pan=angles["pan"] - angles["orbit"], tilt=angles["tilt"], roll=angles["roll"],
                           zoom=np.exp(log_scale["zoom"]), position=position, shake=shake)


def _rotation(pan: float, tilt: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation (x right, y down, z forward): yaw about y, then pitch about x, then roll."""
    a, b, c = (math.radians(v) for v in (pan, tilt, roll))
    yaw = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rolled = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return yaw @ pitch @ rolled


@dataclass(frozen=True, eq=False)
class SampledPath:
    """Poses per output frame [F]: ``pan``/``tilt``/``roll`` degrees, ``zoom`` focal factor, ``position``
    [F, 3] camera centre in units of the background's depth (x right, y down, z forward), ``shake`` [F, 3]
    (dx, dy pixels, roll degrees) applied in the image. ``focal``: the base focal length in pixels."""

    width: int
    height: int
    fps: float
    focal: float
    pan: np.ndarray
    tilt: np.ndarray
    roll: np.ndarray
    zoom: np.ndarray
    position: np.ndarray
    shake: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.pan)

    def _at(self, values: np.ndarray, t: float):
        """Linear interpolation at fractional frame ``t`` (clamped to the clip)."""
        t = min(max(float(t), 0.0), self.num_frames - 1.0)
        low = int(math.floor(t))
        high = min(low + 1, self.num_frames - 1)
        return values[low] + (t - low) * (values[high] - values[low])

    def homography(self, t: float, depth: float = 1.0) -> np.ndarray:
        """3x3 map from pixel positions in frame 0 of a fronto-parallel plane at ``depth`` to frame ``t``
        (fractional frames interpolate). Pixel centres at integers, as OpenCV's warps take them."""
        cx, cy = (self.width - 1) / 2, (self.height - 1) / 2
        k0 = np.array([[self.focal, 0, cx], [0, self.focal, cy], [0, 0, 1.0]])
        f = self.focal * self._at(self.zoom, t)
        kt = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
        rotation = _rotation(self._at(self.pan, t), self._at(self.tilt, t), self._at(self.roll, t))
        centre = self._at(self.position, t)
        plane = np.eye(3) - np.outer(centre, [0.0, 0.0, 1.0]) / depth
        h = kt @ rotation.T @ plane @ np.linalg.inv(k0)
        dx, dy, droll = self._at(self.shake, t)
        angle = math.radians(droll)
        turn = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
        about = np.array([[1, 0, cx + dx], [0, 1, cy + dy], [0, 0, 1.0]]) @ turn @ np.array(
            [[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
        h = about @ h
        return h / h[2, 2]

    def image_motion(self, t: float, depth: float = 1.0) -> np.ndarray:
        """Where the frame centre of frame 0 (plane at ``depth``) sits at frame ``t``, less where it started:
        (dx, dy) pixels."""
        centre = np.array([(self.width - 1) / 2, (self.height - 1) / 2, 1.0])
        moved = self.homography(t, depth) @ centre
        return moved[:2] / moved[2] - centre[:2]

    def record(self) -> dict:
        """The sampled path as plain data for a sidecar: one entry per frame, y reported positive up."""
        frames = [{"pan": round(float(self.pan[i]), 6), "tilt": round(float(self.tilt[i]), 6),
                   "roll": round(float(self.roll[i]), 6), "zoom": round(float(self.zoom[i]), 6),
                   "x": round(float(self.position[i, 0]), 6), "y": round(float(-self.position[i, 1]), 6),
                   "z": round(float(self.position[i, 2]), 6),
                   "shake": [round(float(v), 6) for v in (self.shake[i, 0], -self.shake[i, 1], self.shake[i, 2])]}
                  for i in range(self.num_frames)]
        return {"width": self.width, "height": self.height, "fps": self.fps, "focal_px": round(self.focal, 6),
                "frames": frames}


# ----------------------------------------------------------------------------- prompt words
# Wan 2.2's own camera vocabulary (WAVE2_FACTS.md) and the toy world's captions (wan_dist/world/caption.py).
_WORDS = {
    "pan": ("the camera pans right", "the camera pans left"),
    "tilt": ("the camera tilts up", "the camera tilts down"),
    "roll": ("the camera rolls clockwise", "the camera rolls counter-clockwise"),
    "zoom": ("the camera zooms in", "the camera zooms out"),
    "dolly": ("the camera pushes forward", "the camera pulls back"),
    "truck": ("tracking shot, the camera moves left to right", "tracking shot, the camera moves right to left"),
    "pedestal": ("the camera rises", "the camera lowers"),
    "orbit": ("the camera circles around the subject to the right", "the camera circles around the subject to the left"),
}
_SHAKE_WORDS = ((0.55, "the handheld camera shakes slightly"), (0.8, "the handheld camera shakes noticeably"),
                (1.01, "the handheld camera shakes strongly"))


def camera_phrases(path: CameraPath) -> list[str]:
    """Phrases for the prompt, in the order the moves start. Exact mode asks for a static render: its
    virtual camera moves afterwards, so a model that moves too would move twice."""
    if path.mode == "exact":
        return ["static shot, the camera is static"]
    phrases: list[str] = []
    for move in sorted(path.moves, key=lambda m: m.start):
        positive = move.amount > 1 if move.type in ("zoom", "dolly") else move.amount > 0
        still = move.amount == 1 if move.type in ("zoom", "dolly") else move.amount == 0
        phrase = _WORDS[move.type][0 if positive else 1]
        if not still and phrase not in phrases:
            phrases.append(phrase)
    if path.shake is not None and path.shake.intensity > 0:
        phrases.append(next(words for limit, words in _SHAKE_WORDS if path.shake.intensity < limit))
    return phrases or ["the camera is static"]


def with_camera_phrases(prompt, path: CameraPath | None):
    """``prompt`` (a string or a list of them) with a sentence of :func:`camera_phrases` appended."""
    if path is None or prompt is None:
        return prompt
    if isinstance(prompt, (list, tuple)):
        return [with_camera_phrases(p, path) for p in prompt]
    sentence = ", ".join(camera_phrases(path))
    text = prompt.rstrip()
    joiner = " " if not text or text[-1] in ".!?" else ". "
    return f"{text}{joiner}{sentence[0].upper()}{sentence[1:]}.".lstrip()
