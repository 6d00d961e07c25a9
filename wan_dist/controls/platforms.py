"""Platform profiles: output size, frame rate, safe areas and the regions each app covers with its interface.

Every area is a :class:`Box` in fractions of the output frame (x0, y0, x1, y1; origin top left), so one profile
serves any resolution; :meth:`Box.pixels` rounds inwards to whole pixels.

Sources (also in WAVE2_FACTS.md, "Safe zones"):

- Safe areas: SMPTE ST 2046-1:2009 ("Safe Areas for 16:9 Television Production"): safe action 93% and safe
  title 90% of the picture's width and height, centred (1920x1080: ~1786x1004 and 1728x972). The standard is
  written for 16:9; the same percentages are applied to the other aspects here (the platforms publish none).
- Instagram Reels (1080x1920): Meta's Reels guidance as relayed by secondary sources: keep 14% at the top, 35% at
  the bottom and 6% on each side clear of text and logos (~269 / 672 / 65 px).
- TikTok (1080x1920): no official numbers; widely used overlay templates cover ~250 px at the top, ~420 px at the
  bottom and a ~170 px column on the right (the like / comment / share buttons).
- YouTube Shorts (1080x1920): the bottom ~25% (title, channel, music) plus the right button column (taken as
  the TikTok-like ~170 px column over the lower part of the frame, an approximation).
- Frame sizes: 1920x1080 for YouTube (YouTube Help, "Recommended upload encoding settings", 16:9); 1080x1920 for
  vertical video (9:16) on all three apps; Instagram feed 1080x1080 (1:1) and 1080x1350 (4:5) (Instagram Help,
  "resolution of photos/videos"). 30 fps everywhere: each platform accepts 24-60, 30 is their common default.

Custom profiles come from config as ``{"name": {"width", "height", "fps", "action_safe", "title_safe",
"interface"}}`` (boxes as ``[x0, y0, x1, y1]`` fractions, ``interface`` a mapping of region name to box), or as
an existing profile's name plus overrides (``"base": "tiktok"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from wan_dist.controls.camera import ControlError, _keys, _number

__all__ = ["Box", "PlatformProfile", "PROFILES", "ACTION_SAFE", "TITLE_SAFE", "profile", "profiles",
           "parse_profile", "centred"]

ACTION_SAFE = 0.93  # SMPTE ST 2046-1: safe action, share of width and of height
TITLE_SAFE = 0.90  # SMPTE ST 2046-1: safe title


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in fractions of a frame: ``x0 < x1``, ``y0 < y1``, all in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def parse(cls, value: Any, field: str) -> "Box":
        if isinstance(value, Box):
            return value
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise ControlError(field, f"must be [x0, y0, x1, y1] (fractions of the frame), got {value!r:.60}")
        x0, y0, x1, y1 = (_number(v, f"{field}[{i}]", 0.0, 1.0) for i, v in enumerate(value))
        if x0 >= x1 or y0 >= y1:
            raise ControlError(field, f"needs x0 < x1 and y0 < y1, got {list(value)}")
        return cls(x0, y0, x1, y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def contains(self, other: "Box", tolerance: float = 1e-9) -> bool:
        return (other.x0 >= self.x0 - tolerance and other.y0 >= self.y0 - tolerance
                and other.x1 <= self.x1 + tolerance and other.y1 <= self.y1 + tolerance)

    def intersects(self, other: "Box") -> bool:
        """True when the interiors overlap (touching edges do not)."""
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Whole pixels inside the box (rounded inwards): (x0, y0, x1, y1), x1/y1 exclusive."""
        return (math.ceil(self.x0 * width - 1e-9), math.ceil(self.y0 * height - 1e-9),
                math.floor(self.x1 * width + 1e-9), math.floor(self.y1 * height + 1e-9))

    def to_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


def centred(share: float) -> Box:
    """The centred box covering ``share`` of the frame's width and of its height."""
    margin = (1.0 - share) / 2
    return Box(margin, margin, 1.0 - margin, 1.0 - margin)


@dataclass(frozen=True)
class PlatformProfile:
    """One output format. ``interface``: region name -> box the app draws its own interface over (vertical
    video); overlays stay clear of them, the subject is kept inside ``action_safe``."""

    name: str
    width: int
    height: int
    fps: int = 30
    action_safe: Box = field(default_factory=lambda: centred(ACTION_SAFE))
    title_safe: Box = field(default_factory=lambda: centred(TITLE_SAFE))
    interface: tuple[tuple[str, Box], ...] = ()

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fps": self.fps,
                "action_safe": self.action_safe.to_list(), "title_safe": self.title_safe.to_list(),
                "interface": {name: box.to_list() for name, box in self.interface}}


def _vertical(name: str, *, top_px: int, bottom_px: int, right_px: int = 0, right_from_px: int = 0,
              side_px: int = 0) -> PlatformProfile:
    """A 1080x1920 profile whose app covers ``top_px`` / ``bottom_px`` full-width bands, a right column of
    ``right_px`` from ``right_from_px`` down to the bottom band, and ``side_px`` on both sides."""
    width, height = 1080, 1920
    regions = [("top", Box(0.0, 0.0, 1.0, top_px / height)), ("bottom", Box(0.0, 1.0 - bottom_px / height, 1.0, 1.0))]
    if right_px:
        regions.append(("right_rail", Box(1.0 - right_px / width, right_from_px / height, 1.0, 1.0)))
    if side_px:
        regions += [("left_edge", Box(0.0, 0.0, side_px / width, 1.0)), ("right_edge", Box(1.0 - side_px / width, 0.0, 1.0, 1.0))]
    return PlatformProfile(name=name, width=width, height=height, interface=tuple(regions))


PROFILES: dict[str, PlatformProfile] = {
    "youtube": PlatformProfile(name="youtube", width=1920, height=1080),
    # bottom 25% (title, channel, music) and the button column over the lower half (like, dislike, comment, share)
    "youtube_shorts": _vertical("youtube_shorts", top_px=120, bottom_px=480, right_px=170, right_from_px=960),
    # ~250 top (following / for you), ~420 bottom (caption, sound), ~170 right (avatar, like, comment, share)
    "tiktok": _vertical("tiktok", top_px=250, bottom_px=420, right_px=170, right_from_px=700),
    # Meta: 14% top, 35% bottom, 6% each side
    "instagram_reels": _vertical("instagram_reels", top_px=269, bottom_px=672, side_px=65),
    "instagram_feed": PlatformProfile(name="instagram_feed", width=1080, height=1080),
    "instagram_feed_4x5": PlatformProfile(name="instagram_feed_4x5", width=1080, height=1350),
}


def parse_profile(name: str, data: Any, field: str = "profiles") -> PlatformProfile:
    """A custom profile from config (see the module docstring); raises ControlError naming the field."""
    where = f"{field}.{name}"
    data = _keys(data, where, ("base", "width", "height", "fps", "action_safe", "title_safe", "interface"))
    base = PROFILES[_known(data["base"], f"{where}.base", PROFILES)] if "base" in data else None
    if base is None and ("width" not in data or "height" not in data):
        raise ControlError(f"{where}.width" if "width" not in data else f"{where}.height", "required without a base")
    width = int(_number(data.get("width", base.width if base else 0), f"{where}.width", 16, 8192))
    height = int(_number(data.get("height", base.height if base else 0), f"{where}.height", 16, 8192))
    fps = int(_number(data.get("fps", base.fps if base else 30), f"{where}.fps", 1, 240))
    action = Box.parse(data["action_safe"], f"{where}.action_safe") if "action_safe" in data else (
        base.action_safe if base else centred(ACTION_SAFE))
    title = Box.parse(data["title_safe"], f"{where}.title_safe") if "title_safe" in data else (
        base.title_safe if base else centred(TITLE_SAFE))
    if "interface" in data:
        regions = data["interface"]
        if not isinstance(regions, Mapping):
            raise ControlError(f"{where}.interface", "must map region names to [x0, y0, x1, y1]")
        interface = tuple((str(key), Box.parse(box, f"{where}.interface.{key}")) for key, box in regions.items())
    else:
        interface = base.interface if base else ()
    return PlatformProfile(name=name, width=width, height=height, fps=fps, action_safe=action, title_safe=title,
                           interface=interface)


def _known(name: Any, field: str, known: Mapping) -> str:
    if not isinstance(name, str) or name not in known:
        raise ControlError(field, f"unknown profile {name!r:.60}; known: {', '.join(sorted(known))}")
    return name


def profiles(custom: Mapping[str, Any] | None = None, field: str = "profiles") -> dict[str, PlatformProfile]:
    """The built-in profiles plus the custom ones of config (which may replace a built-in by name)."""
    table = dict(PROFILES)
    for name, data in (custom or {}).items():
        table[str(name)] = parse_profile(str(name), data, field)
    return table


def profile(name: Any, custom: Mapping[str, Any] | None = None, field: str = "renditions") -> PlatformProfile:
    """The profile called ``name``; ControlError(``field``) naming the known ones when there is none."""
    table = profiles(custom)
    return table[_known(name, field, table)]
