"""Renditions: one rendered clip made into each requested platform's output (reframe, overlays, guides).

The pure part of the engine's post pass: a request's ``renditions`` (profile names, INTERFACES.md) checked
against the profiles (built in plus config's custom ones), and each rendition's frames: the clip reframed to the
profile (:mod:`~wan_dist.controls.reframe`), the overlays laid out for it and drawn
(:mod:`~wan_dist.controls.overlays`), and with ``guides`` a preview copy with the safe areas drawn. Encoding,
publishing and the sidecar entry are the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from wan_dist.controls.camera import ControlError
from wan_dist.controls.overlays import Layout, OverlaySpec, draw_guides, layout_overlays, render_overlays
from wan_dist.controls.platforms import PlatformProfile, profiles
from wan_dist.controls.reframe import reframe

__all__ = ["Rendition", "parse_renditions", "make_rendition", "rendition_record", "MAX_RENDITIONS"]

MAX_RENDITIONS = 8


def parse_renditions(value: Any, custom: Mapping[str, Any] | None = None,
                     field: str = "renditions") -> tuple[PlatformProfile, ...]:
    """The profiles named by ``value`` (a list of names), in order; ControlError naming ``renditions[i]`` for an
    unknown or repeated name."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ControlError(field, f"must be a non-empty list of profile names, got {value!r:.60}")
    if len(value) > MAX_RENDITIONS:
        raise ControlError(field, f"at most {MAX_RENDITIONS} renditions, got {len(value)}")
    table = profiles(custom)
    chosen = []
    for index, name in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(name, str) or name not in table:
            raise ControlError(where, f"unknown profile {name!r:.60}; known: {', '.join(sorted(table))}")
        if name in (made.name for made in chosen):
            raise ControlError(where, f"{name} is listed twice")
        chosen.append(table[name])
    return tuple(chosen)


@dataclass(frozen=True, eq=False)
class Rendition:
    """One platform's output: ``frames`` [F', profile.height, profile.width, 3] uint8 at ``profile.fps``;
    ``windows`` the crop path [F, 4] in source pixels; ``layout`` the overlays' boxes; ``guides`` the preview
    copy (or None)."""

    profile: PlatformProfile
    frames: np.ndarray
    windows: np.ndarray
    layout: Layout | None
    guides: np.ndarray | None

    def record(self) -> dict:
        """What a sidecar lists about this rendition (besides its URIs)."""
        return rendition_record(self.profile, len(self.frames), self.windows, self.layout)


def rendition_record(profile: PlatformProfile, num_frames: int, windows: np.ndarray, layout: Layout | None) -> dict:
    """What a sidecar lists about a rendition of ``num_frames`` frames cut along ``windows`` (besides its URIs)."""
    boxes = None if layout is None else {"title_box": layout.title_box, "logo_box": layout.logo_box,
                                         "title_lines": list(layout.title_lines)}
    return {"profile": profile.name, **profile.to_dict(), "num_frames": num_frames,
            "crop_path": np.round(windows, 2).tolist(), "overlays": boxes}


def make_rendition(frames: np.ndarray, fps: float, profile: PlatformProfile, *, subject_box=None,
                   overlays: OverlaySpec | None = None, logo: np.ndarray | None = None,
                   subject: np.ndarray | None = None) -> Rendition:
    """``frames`` [F, H, W, 3] uint8 at ``fps`` made into ``profile``'s rendition. ``logo``: the decoded logo
    (RGBA or RGB uint8) when the overlays have one. ``subject``: the clip's subject track when made already (see
    ``controls.reframe.reframe``). Raises ControlError (``overlays...``) when an overlay does not fit this profile."""
    reframed, windows = reframe(frames, profile, fps=fps, subject_box=subject_box, subject=subject)
    layout, guides = None, None
    if overlays is not None and (overlays.title is not None or overlays.logo is not None):
        logo_size = None if logo is None else (logo.shape[1], logo.shape[0])
        layout = layout_overlays(overlays, profile, logo_size=logo_size)
        reframed = render_overlays(reframed, overlays, layout, fps=profile.fps, logo=logo)
    if overlays is not None and overlays.guides:
        guides = draw_guides(reframed, profile)
    return Rendition(profile=profile, frames=reframed, windows=windows, layout=layout, guides=guides)
