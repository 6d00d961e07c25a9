"""Overlays: a title and a logo laid out per rendition inside its title-safe area and clear of the app's
interface, and ``guides`` (the safe areas drawn on a preview copy).

A request's ``overlays`` (INTERFACES.md) is ``{"title": {...}, "logo": {...}, "guides": bool}``:

- ``title``: ``text`` (``\\n`` breaks lines; long lines wrap at spaces), ``size`` (cap height share of the frame's
  short side, default 0.06), ``colour`` (``#rrggbb``, a CSS colour name or ``[r, g, b]``), ``position`` (one of
  :data:`POSITIONS`, relative to the title-safe area), ``start`` / ``end`` (seconds; ``end`` null = to the end) and
  ``fade`` (seconds of fade in and of fade out).
- ``logo``: ``image`` (a URL the engine fetches under its URL rules; here only a non-empty string), ``anchor`` (one of
  :data:`POSITIONS`), ``scale`` (logo width as a share of the title-safe width), ``margin`` (share of the frame's
  short side kept between the logo and the edge of the clear area), ``opacity``.

Layout works on the *clear areas* of a profile: the maximal rectangles inside its title-safe area that meet none of
its interface regions. An item anchored ``bottom`` goes to the bottom centre of the clear area that puts it nearest
the bottom centre of the title-safe area. Text that fits no clear area even wrapped is an error naming
``title.text``. The font is Pillow's own scalable default (Aileron, shipped inside Pillow >= 10.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from wan_dist.controls.camera import ControlError, _choice, _keys, _number
from wan_dist.controls.platforms import Box, PlatformProfile

__all__ = ["POSITIONS", "TitleSpec", "LogoSpec", "OverlaySpec", "Layout", "clear_areas", "place", "layout_overlays",
           "fade_envelope", "render_overlays", "draw_guides"]

# (horizontal, vertical) share of the free space left of / above the item
POSITIONS = {"top_left": (0.0, 0.0), "top": (0.5, 0.0), "top_right": (1.0, 0.0), "left": (0.0, 0.5),
             "center": (0.5, 0.5), "right": (1.0, 0.5), "bottom_left": (0.0, 1.0), "bottom": (0.5, 1.0),
             "bottom_right": (1.0, 1.0)}
_LINE_SPACING = 1.25  # line pitch as a multiple of the font size
_STROKE = 0.06  # dark outline width as a share of the font size: legible on any picture
MAX_TITLE_CHARS = 300  # far beyond what fits a frame; bounds the layout's work on hostile input


def _colour(value: Any, field: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        try:
            return ImageColor.getrgb(value)[:3]
        except ValueError:
            raise ControlError(field, f"unknown colour {value!r:.40} (use #rrggbb, a CSS name or [r, g, b])") from None
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return tuple(int(_number(v, f"{field}[{i}]", 0, 255)) for i, v in enumerate(value))
    raise ControlError(field, f"must be #rrggbb, a CSS colour name or [r, g, b], got {value!r:.40}")


def _timing(data, field: str) -> tuple[float, float | None, float]:
    start = _number(data.get("start", 0.0), f"{field}.start", 0.0, 3600.0)
    end = data.get("end")
    if end is not None:
        end = _number(end, f"{field}.end", 0.0, 3600.0)
        if end <= start:
            raise ControlError(f"{field}.end", f"must be after start ({start:g} s), got {end:g}")
    return start, end, _number(data.get("fade", 0.5), f"{field}.fade", 0.0, 60.0)


@dataclass(frozen=True)
class TitleSpec:
    text: str
    size: float = 0.06
    colour: tuple[int, int, int] = (255, 255, 255)
    position: str = "bottom"
    start: float = 0.0
    end: float | None = None
    fade: float = 0.5

    @classmethod
    def from_dict(cls, data: Any, field: str = "title") -> "TitleSpec":
        data = _keys(data, field, ("text", "size", "colour", "color", "position", "start", "end", "fade"))
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ControlError(f"{field}.text", "required: a non-empty string")
        if len(text) > MAX_TITLE_CHARS:
            raise ControlError(f"{field}.text", f"at most {MAX_TITLE_CHARS} characters, got {len(text)}")
        start, end, fade = _timing(data, field)
        return cls(text=text.strip(), size=_number(data.get("size", 0.06), f"{field}.size", 0.01, 0.5),
                   colour=_colour(data.get("colour", data.get("color", "#ffffff")), f"{field}.colour"),
                   position=_choice(data.get("position", "bottom"), f"{field}.position", tuple(POSITIONS), "position"),
                   start=start, end=end, fade=fade)

    def to_dict(self) -> dict:
        return {"text": self.text, "size": self.size, "colour": "#%02x%02x%02x" % self.colour,
                "position": self.position, "start": self.start, "end": self.end, "fade": self.fade}


MAX_LOGO_URI_CHARS = 2048


@dataclass(frozen=True)
class LogoSpec:
    image: str
    anchor: str = "top_right"
    scale: float = 0.15
    margin: float = 0.02
    opacity: float = 1.0

    @classmethod
    def from_dict(cls, data: Any, field: str = "logo") -> "LogoSpec":
        data = _keys(data, field, ("image", "anchor", "scale", "margin", "opacity"))
        image = data.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ControlError(f"{field}.image", "required: the logo's URL")
        if len(image) > MAX_LOGO_URI_CHARS or any(ord(char) < 32 for char in image):
            raise ControlError(f"{field}.image", f"must be a path or URL of at most {MAX_LOGO_URI_CHARS} characters")
        return cls(image=image.strip(),
                   anchor=_choice(data.get("anchor", "top_right"), f"{field}.anchor", tuple(POSITIONS), "anchor"),
                   scale=_number(data.get("scale", 0.15), f"{field}.scale", 0.01, 1.0),
                   margin=_number(data.get("margin", 0.02), f"{field}.margin", 0.0, 0.25),
                   opacity=_number(data.get("opacity", 1.0), f"{field}.opacity", 0.0, 1.0))

    def to_dict(self) -> dict:
        return {"image": self.image, "anchor": self.anchor, "scale": self.scale, "margin": self.margin,
                "opacity": self.opacity}


@dataclass(frozen=True)
class OverlaySpec:
    title: TitleSpec | None = None
    logo: LogoSpec | None = None
    guides: bool = False

    @classmethod
    def from_dict(cls, data: Any, field: str = "overlays") -> "OverlaySpec":
        if isinstance(data, OverlaySpec):
            return data
        data = _keys(data, field, ("title", "logo", "guides"))
        guides = data.get("guides", False)
        if not isinstance(guides, bool):
            raise ControlError(f"{field}.guides", f"must be true or false, got {guides!r:.40}")
        title, logo = data.get("title"), data.get("logo")
        return cls(title=None if title is None else TitleSpec.from_dict(title, f"{field}.title"),
                   logo=None if logo is None else LogoSpec.from_dict(logo, f"{field}.logo"), guides=guides)

    def to_dict(self) -> dict:
        return {"title": self.title and self.title.to_dict(), "logo": self.logo and self.logo.to_dict(),
                "guides": self.guides}


# ----------------------------------------------------------------------------- layout
def clear_areas(profile: PlatformProfile) -> list[tuple[int, int, int, int]]:
    """The maximal pixel rectangles (x0, y0, x1, y1; x1/y1 exclusive) inside the title-safe area that meet no
    interface region. Brute force over the edges of the regions: a handful per profile."""
    safe = profile.title_safe.pixels(profile.width, profile.height)
    # interface regions are rounded outwards: an item may touch them but never cover one of their pixels
    regions = [(int(np.floor(b.x0 * profile.width)), int(np.floor(b.y0 * profile.height)),
                int(np.ceil(b.x1 * profile.width)), int(np.ceil(b.y1 * profile.height))) for _, b in profile.interface]
    xs = sorted({safe[0], safe[2], *(v for r in regions for v in (r[0], r[2]) if safe[0] < v < safe[2])})
    ys = sorted({safe[1], safe[3], *(v for r in regions for v in (r[1], r[3]) if safe[1] < v < safe[3])})
    found = []
    for i, x0 in enumerate(xs):
        for x1 in xs[i + 1:]:
            for j, y0 in enumerate(ys):
                for y1 in ys[j + 1:]:
                    if not any(x0 < r[2] and r[0] < x1 and y0 < r[3] and r[1] < y1 for r in regions):
                        found.append((x0, y0, x1, y1))
    return [a for a in found if not any(b != a and b[0] <= a[0] and b[1] <= a[1] and b[2] >= a[2] and b[3] >= a[3]
                                        for b in found)]


def _anchor_target(anchor: str, profile: PlatformProfile) -> np.ndarray:
    hx, vy = POSITIONS[anchor]
    safe = profile.title_safe.pixels(profile.width, profile.height)
    return np.array([safe[0] + hx * (safe[2] - safe[0]), safe[1] + vy * (safe[3] - safe[1])])


def _place_in(area, size: tuple[int, int], anchor: str, margin: int):
    """``size`` at ``anchor`` inside ``area`` inset by ``margin``: (box, anchor point), or None if it fits not."""
    hx, vy = POSITIONS[anchor]
    x0, y0, x1, y1 = area[0] + margin, area[1] + margin, area[2] - margin, area[3] - margin
    width, height = size
    if x1 - x0 < width or y1 - y0 < height:
        return None
    left, top = x0 + int(round(hx * (x1 - x0 - width))), y0 + int(round(vy * (y1 - y0 - height)))
    return (left, top, left + width, top + height), np.array([left + hx * width, top + vy * height])


def place(size: tuple[int, int], anchor: str, profile: PlatformProfile,
          margin: int = 0) -> tuple[int, int, int, int] | None:
    """A pixel box of ``size`` (width, height) at ``anchor`` inside a clear area (inset by ``margin``), the one
    nearest the anchor point of the title-safe area; None when it fits none."""
    target = _anchor_target(anchor, profile)
    placed = [found for area in clear_areas(profile) if (found := _place_in(area, size, anchor, margin))]
    if not placed:
        return None
    return min(placed, key=lambda found: float(np.hypot(*(found[1] - target))))[0]


def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, pixels))


def _wrap(text: str, font, width: int) -> list[str]:
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if line and font.getlength(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


@dataclass(frozen=True)
class Layout:
    """Where one rendition's overlays go, in its pixels (x0, y0, x1, y1; exclusive ends)."""

    profile: str
    title_box: tuple[int, int, int, int] | None = None
    title_lines: tuple[str, ...] = ()
    font_size: int = 0
    logo_box: tuple[int, int, int, int] | None = None


def _title_layout(title: TitleSpec, profile: PlatformProfile, field: str):
    """The title's box and lines: wrapped to each clear area in turn, the placement nearest its position."""
    font_size = max(6, round(title.size * min(profile.width, profile.height)))
    font = _font(font_size)
    stroke = max(1, round(_STROKE * font_size))
    ascent, descent = font.getmetrics()
    target = _anchor_target(title.position, profile)
    best, needed = None, None
    for area in clear_areas(profile):
        lines = _wrap(title.text, font, area[2] - area[0] - 2 * stroke)
        size = (max(int(np.ceil(font.getlength(line))) for line in lines) + 2 * stroke,
                round(_LINE_SPACING * font_size) * (len(lines) - 1) + ascent + descent + 2 * stroke)
        found = _place_in(area, size, title.position, 0)
        if found is None:
            needed = needed or (size, len(lines))
            continue
        distance = float(np.hypot(*(found[1] - target)))
        if best is None or distance < best[0]:
            best = (distance, found[0], tuple(lines))
    if best is None:
        (width, height), count = needed
        raise ControlError(f"{field}.text", f"too long for the title-safe area of {profile.name}: needs "
                           f"{width}x{height} px in {count} line(s), the clear areas are "
                           f"{[(a[2] - a[0], a[3] - a[1]) for a in clear_areas(profile)]} px; shorten it or lower size")
    return best[1], best[2], font_size


def layout_overlays(spec: OverlaySpec, profile: PlatformProfile, *, logo_size: tuple[int, int] | None = None,
                    field: str = "overlays") -> Layout:
    """The title's and logo's pixel boxes on ``profile`` (``logo_size``: the logo image's width and height).
    Raises ControlError naming the field that cannot be satisfied."""
    title_box, lines, font_size, logo_box = None, (), 0, None
    if spec.title is not None:
        title_box, lines, font_size = _title_layout(spec.title, profile, f"{field}.title")
    if spec.logo is not None:
        logo_width, logo_height = logo_size or (1, 1)
        safe = profile.title_safe.pixels(profile.width, profile.height)
        width = max(1, round(spec.logo.scale * (safe[2] - safe[0])))
        height = max(1, round(width * logo_height / logo_width))
        margin = round(spec.logo.margin * min(profile.width, profile.height))
        logo_box = place((width, height), spec.logo.anchor, profile, margin)
        if logo_box is None:
            raise ControlError(f"{field}.logo.scale", f"a {width}x{height} px logo fits no clear area of {profile.name}")
        if title_box is not None and Box(*logo_box).intersects(Box(*title_box)):
            raise ControlError(f"{field}.logo.anchor", f"the logo at {spec.logo.anchor} covers the title on "
                               f"{profile.name}; choose another anchor or title position")
    return Layout(profile=profile.name, title_box=title_box, title_lines=lines, font_size=font_size, logo_box=logo_box)


# ----------------------------------------------------------------------------- drawing
def fade_envelope(time: float, start: float, end: float | None, fade: float, duration: float) -> float:
    """Opacity in [0, 1] at ``time`` seconds of an item shown from ``start`` to ``end`` (None: ``duration``),
    fading in and out over ``fade`` seconds (linear ramps inside the interval)."""
    end = duration if end is None else min(end, duration)
    if time < start or time > end:
        return 0.0
    if fade <= 0:
        return 1.0
    fade_out = (end - time) / fade if end < duration else np.inf  # an item shown to the end is cut with the clip
    return float(min(1.0, (time - start) / fade, fade_out))


def _title_patch(title: TitleSpec, layout: Layout) -> np.ndarray:
    x0, y0, x1, y1 = layout.title_box
    canvas = Image.new("RGBA", (x1 - x0, y1 - y0), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    stroke = max(1, round(_STROKE * layout.font_size))
    hx = POSITIONS[title.position][0]
    pitch = round(_LINE_SPACING * layout.font_size)
    for index, line in enumerate(layout.title_lines):
        left = stroke + hx * (x1 - x0 - 2 * stroke - font.getlength(line))
        draw.text((left, stroke + index * pitch), line, font=font, fill=(*title.colour, 255), stroke_width=stroke,
                  stroke_fill=(0, 0, 0, 255))
    return np.asarray(canvas)


def _blend(frame: np.ndarray, patch: np.ndarray, box: tuple[int, int, int, int], opacity: float) -> None:
    x0, y0, x1, y1 = box
    alpha = patch[..., 3:4].astype(np.float32) / 255.0 * opacity
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(np.rint(region * (1 - alpha) + patch[..., :3] * alpha), 0, 255).astype(np.uint8)


def render_overlays(frames: np.ndarray, spec: OverlaySpec, layout: Layout, *, fps: float,
                    logo: np.ndarray | None = None, start: int = 0, duration: float | None = None) -> np.ndarray:
    """``frames`` [F, H, W, 3] uint8 (one rendition) with the title (faded per its timing) and the ``logo``
    (RGBA or RGB uint8 [h, w, 4|3]) drawn at ``layout``'s boxes; a new array. A rendition drawn in parts (a long
    clip) gives each part's first frame index ``start`` and the whole rendition's ``duration`` (seconds)."""
    out = frames.copy()
    duration = len(frames) / fps if duration is None else duration
    title_patch = _title_patch(spec.title, layout) if spec.title is not None and layout.title_box else None
    logo_patch = None
    if spec.logo is not None and layout.logo_box is not None and logo is not None:
        rgba = logo if logo.shape[-1] == 4 else np.concatenate([logo, np.full(logo.shape[:2] + (1,), 255, np.uint8)], -1)
        x0, y0, x1, y1 = layout.logo_box
        logo_patch = cv2.resize(rgba, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    for index in range(len(out)):
        if title_patch is not None:
            t = spec.title
            opacity = fade_envelope((start + index) / fps, t.start, t.end, t.fade, duration)
            if opacity > 0:
                _blend(out[index], title_patch, layout.title_box, opacity)
        if logo_patch is not None:
            _blend(out[index], logo_patch, layout.logo_box, spec.logo.opacity)
    return out


def draw_guides(frames: np.ndarray, profile: PlatformProfile) -> np.ndarray:
    """A preview copy of ``frames`` [F, H, W, 3] uint8 with the interface regions tinted red, the action-safe
    area outlined green and the title-safe area yellow."""
    height, width = frames.shape[1:3]
    out = frames.copy()
    tint = np.zeros((height, width), bool)
    for _, region in profile.interface:
        x0, y0, x1, y1 = region.pixels(width, height)
        tint[y0:y1, x0:x1] = True
    out[:, tint] = (out[:, tint] * 0.55 + np.array([255, 0, 0]) * 0.45).astype(np.uint8)
    thickness = max(1, min(width, height) // 270)
    for box, colour in ((profile.action_safe, (0, 255, 0)), (profile.title_safe, (255, 220, 0))):
        x0, y0, x1, y1 = box.pixels(width, height)
        for frame in out:
            cv2.rectangle(frame, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
    return out
